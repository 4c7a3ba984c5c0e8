"""Run core work off the GUI thread (after Anki's ``QueryOp``).

``JobRunner.run(op, ...)`` calls ``op(job)`` on a pool thread. ``op`` must never touch a widget:
it uses ``job.progress`` and ``job.cancel_token`` (pass them to core as ``progress=``/``cancel=``),
``job.stream`` for text pieces and ``job.publish`` for the latest value of anything else. All of
it is plain data that the GUI thread *polls* every ``POLL_MS``. The result comes back through a
queued signal, so every handler runs on the GUI thread.

A ``core.errors.Cancelled`` raised by ``op`` ends the job quietly (``cancelled``); any other
``KnownError`` is ``failed`` with ``known=True`` (shown in the message area); anything else is a
bug (``failed`` with ``known=False`` and the traceback, shown in the crash dialog).
"""
from __future__ import annotations

import os
import sys
import threading
import traceback
from dataclasses import dataclass
from typing import Any, Callable

from app.gui.qt import QObject, QThreadPool, QTimer, Signal, QtCore
from core.errors import Cancelled, KnownError
from core.jobs import CancelToken, Progress

__all__ = ["Job", "JobError", "JobRunner", "POLL_MS"]

_NOTHING = object()
POLL_MS = 100
"""How often the GUI thread looks at a running job's progress and streamed text."""
WORKER_NICE = 10
"""Worker threads (and the threads and processes they start: ONNX Runtime, llama.cpp) run at this
nice value on Linux, so that on a busy CPU the GUI thread is scheduled first and the window keeps
answering within a frame or two. Jobs that mostly run Python (ingestion: ``priority="normal"``)
are the exception: a low-priority thread that holds the GIL is preempted by the other background
work and the GUI thread waits for it (a 136 ms stall caught unpickling one 1 ms page); they run
at normal priority and only their parse worker processes are lowered (``SIFT_WORKER_NICE``)."""


def _lower_this_threads_priority() -> None:
    if not sys.platform.startswith("linux"):
        return  # elsewhere the setting is per process, which would slow the GUI thread too
    try:
        tid = threading.get_native_id()
        current = os.getpriority(os.PRIO_PROCESS, tid)
        if current < WORKER_NICE:
            os.setpriority(os.PRIO_PROCESS, tid, WORKER_NICE)
    except OSError:
        pass


@dataclass(frozen=True)
class JobError:
    """Why a job failed."""

    error: BaseException
    known: bool
    """True for a ``KnownError`` (a message for the user), False for a bug."""
    traceback: str
    """The formatted traceback (for the crash report)."""
    label: str
    """What the job was doing."""


class _Task(QtCore.QRunnable):
    def __init__(self, job: "Job", *, low_priority: bool = True) -> None:
        super().__init__()
        self.job = job
        self.low_priority = low_priority
        self.setAutoDelete(True)

    def run(self) -> None:  # pool thread: no widgets here
        if self.low_priority:
            _lower_this_threads_priority()
        job = self.job
        try:
            result = job._op(job)
            outcome = ("ok", result)
        except Cancelled:
            outcome = ("cancelled", None)
        except BaseException as e:  # noqa: BLE001 - a bug must reach the crash dialog, not vanish
            outcome = ("error", JobError(e, isinstance(e, KnownError), traceback.format_exc(), job.label))
        job._outcome = outcome
        job._completed.emit()  # queued to the GUI thread, where the Job lives


class Job(QObject):
    """One piece of background work. Signals are emitted on the GUI thread."""

    progressed = Signal(object)
    """The latest ``core.jobs.Progress`` (polled; intermediate reports are skipped)."""
    published = Signal(object)
    """The latest value given to ``job.publish`` (polled)."""
    streamed = Signal(str)
    """Text pieces sent with ``job.stream`` since the last poll, joined."""
    finished = Signal(object)
    """The op's return value."""
    failed = Signal(object)
    """A ``JobError``."""
    cancelled = Signal()
    done = Signal()
    """After ``finished``, ``failed`` or ``cancelled``."""
    _completed = Signal()

    def __init__(self, op: Callable[..., Any], label: str, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._op = op
        self.label = label
        self.cancel_token = CancelToken()
        self._lock = threading.Lock()
        self._latest: Progress | None = None
        self._sent: Progress | None = None
        self._pieces: list[str] = []
        self._published: Any = _NOTHING
        self._outcome: tuple[str, Any] | None = None
        self.running = False
        self.result: Any = None
        self.error: JobError | None = None
        self._timer = QTimer(self)
        self._timer.setInterval(POLL_MS)
        self._timer.timeout.connect(self._poll)
        self._completed.connect(self._on_completed, QtCore.Qt.ConnectionType.QueuedConnection)

    # ---- called from the worker thread (plain data only)

    def progress(self, p: Progress) -> None:
        """A ``core.jobs.ProgressFn``: keeps the latest report for the GUI; safe from any thread."""
        with self._lock:
            self._latest = p

    def publish(self, value: Any) -> None:
        """Offer a plain value to the GUI (only the latest one is delivered); safe from any thread."""
        with self._lock:
            self._published = value

    def stream(self, piece: str) -> None:
        """Queue a piece of text for the GUI (e.g. an answer token); safe from any thread."""
        with self._lock:
            self._pieces.append(piece)

    # ---- GUI thread

    def cancel(self) -> None:
        self.cancel_token.cancel()

    def _poll(self) -> None:
        with self._lock:
            latest, pieces, published = self._latest, self._pieces, self._published
            self._pieces = []
            self._published = _NOTHING
        if latest is not None and latest is not self._sent:
            self._sent = latest
            self.progressed.emit(latest)
        if published is not _NOTHING:
            self.published.emit(published)
        if pieces:
            self.streamed.emit("".join(pieces))

    def _on_completed(self) -> None:
        self._timer.stop()
        self._poll()
        self.running = False
        kind, value = self._outcome or ("error", None)
        if kind == "ok":
            self.result = value
            self.finished.emit(value)
        elif kind == "cancelled":
            self.cancelled.emit()
        else:
            self.error = value
            self.failed.emit(value)
        self.done.emit()


class JobRunner(QObject):
    """Owns the worker threads and keeps running jobs alive until they end."""

    job_failed = Signal(object)
    """Every ``JobError`` that a job's own handlers did not claim (see ``run(on_error=)``)."""

    def __init__(self, parent: QObject | None = None, *, max_threads: int = 6) -> None:
        super().__init__(parent)
        self.pool = QThreadPool(self)
        self.pool.setMaxThreadCount(max_threads)
        # A thread's priority can be lowered but not raised again, so normal-priority jobs get
        # threads of their own.
        self.normal_pool = QThreadPool(self)
        self.normal_pool.setMaxThreadCount(2)
        self.jobs: list[Job] = []
        os.environ.setdefault("SIFT_WORKER_NICE", str(WORKER_NICE))

    def run(self, op: Callable[["Job"], Any], *, label: str, on_done: Callable[[Any], None] | None = None,
            on_error: Callable[[JobError], None] | None = None, on_progress: Callable[[Progress], None] | None = None,
            on_cancel: Callable[[], None] | None = None, priority: str = "low") -> Job:
        """Start ``op(job)`` in the background; handlers run on the GUI thread.

        Without ``on_error`` a failure goes to ``job_failed`` (the window shows it). ``priority``:
        ``low`` (nice ``WORKER_NICE``; for jobs whose work is in native threads) or ``normal``
        (for jobs that mostly run Python, see ``WORKER_NICE``).
        """
        if priority not in ("low", "normal"):
            raise ValueError(f"unknown priority {priority!r}")
        job = Job(op, label, self)
        if on_done:
            job.finished.connect(on_done)
        job.failed.connect(on_error or self.job_failed.emit)
        if on_progress:
            job.progressed.connect(on_progress)
        if on_cancel:
            job.cancelled.connect(on_cancel)
        job.done.connect(lambda: self._forget(job))
        self.jobs.append(job)
        job.running = True
        job._timer.start()
        pool = self.pool if priority == "low" else self.normal_pool
        pool.start(_Task(job, low_priority=priority == "low"))
        return job

    def _forget(self, job: Job) -> None:
        if job in self.jobs:
            self.jobs.remove(job)
        # Handed back to Python: freed when the last reference (a handler, a test) lets go. A
        # deleteLater here would pull the object out from under anyone still holding it.
        job.setParent(None)

    @property
    def busy(self) -> bool:
        return bool(self.jobs)

    def cancel_all(self) -> None:
        for job in list(self.jobs):
            job.cancel()

    def wait(self, timeout_ms: int = 30_000) -> bool:
        """Block until every worker thread is idle (used when the window closes)."""
        import time

        end = time.monotonic() + timeout_ms / 1000
        done = self.pool.waitForDone(timeout_ms)
        return self.normal_pool.waitForDone(max(0, int((end - time.monotonic()) * 1000))) and done
