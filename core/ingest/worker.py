"""Parse files in a separate process, so a file that hangs or crashes the parser costs only itself.

MuPDF is C code: a hostile or broken PDF can loop forever or segfault, and either would take the
whole app down if parsed in-process. ``ParsePool`` keeps one (or more) spawned worker processes,
gives each file a time limit, kills a worker that overruns it (``FileTimeout``) or replaces one
that died (``DamagedFile``: "the parser crashed"), and goes on with the next file. ``imap``
yields results in order while the next file is already being parsed, so a caller can embed file
N while file N+1 parses.

A pool is driven from one thread. Frozen apps must call ``multiprocessing.freeze_support()`` in
their entry point for the spawned workers to start.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import time
import traceback
from collections import deque
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from core.errors import (
    Cancelled,
    DamagedFile,
    EncryptedFile,
    FileTimeout,
    IngestError,
    UnsupportedFile,
)
from core.jobs import CancelToken, Progress, ProgressFn, check
from core.types import ParsedDocument

__all__ = ["parse_file", "ParsePool", "TABLE_SUFFIXES", "PDF_SUFFIXES", "SUPPORTED_SUFFIXES",
           "DEFAULT_TIMEOUT_S"]

log = logging.getLogger(__name__)

PDF_SUFFIXES = frozenset({".pdf"})
TABLE_SUFFIXES = frozenset({".csv", ".tsv", ".xlsx", ".xlsm"})
SUPPORTED_SUFFIXES = PDF_SUFFIXES | TABLE_SUFFIXES
DEFAULT_TIMEOUT_S = 120.0
_START_TIMEOUT_S = 120.0  # importing PyMuPDF and its layout model on a slow, busy laptop
_POLL_S = 0.05

_ERRORS: dict[str, type[IngestError]] = {
    cls.__name__: cls for cls in (IngestError, UnsupportedFile, EncryptedFile, DamagedFile, FileTimeout)
}


def parse_file(path: str | Path, **opts: Any) -> ParsedDocument:
    """Parse one file by its suffix: PDFs with ``parse_pdf(path, **opts)``, CSV/TSV/XLSX with
    ``core.ingest.tables.parse_table_file``. Raises UnsupportedFile for anything else."""
    path = str(path)
    suffix = Path(path).suffix.lower()
    if suffix in PDF_SUFFIXES:
        from core.ingest.pdf import parse_pdf

        return parse_pdf(path, **opts)
    if suffix in TABLE_SUFFIXES:
        if not Path(path).exists():
            raise DamagedFile(path, "cannot be read: the file does not exist")
        try:
            from core.ingest.tables import parse_table_file
        except ImportError as e:
            raise UnsupportedFile(path, f"table files cannot be read in this build ({e})") from None
        return parse_table_file(path)
    kind = f"{suffix} files" if suffix else "files without an extension"
    raise UnsupportedFile(path, f"Sift does not read {kind}",
                          fix="add PDF, CSV, TSV or XLSX files")


# ---------------------------------------------------------------- the worker process


def _worker_main(conn: Connection, parser: Callable[..., ParsedDocument]) -> None:
    """Loop: receive (job, path, opts), send progress and then ("ok", doc) or ("err", ...)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the parent to handle
    try:  # background parsing may yield to interactive work (the desktop app sets 10)
        nice = int(os.environ.get("SIFT_WORKER_NICE", "0") or 0)
        if nice > 0 and hasattr(os, "nice"):
            os.nice(nice)
    except (ValueError, OSError):
        pass
    try:
        import pymupdf

        # MuPDF's complaints about broken files go to stderr by default; the result says enough.
        pymupdf.TOOLS.mupdf_display_errors(False)
        pymupdf.TOOLS.mupdf_display_warnings(False)
    except Exception:
        pass
    try:
        from core.ingest.pdf import limit_layout_threads

        # This process is one stage of a pipeline (the embedder runs beside it): the layout model
        # gets one thread, not one per core.
        limit_layout_threads(1)
    except Exception:
        pass
    conn.send(("ready", os.getpid()))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return  # the parent is gone
        if msg is None:
            return
        job, path, opts = msg

        def progress(p: Progress, job: int = job) -> None:
            conn.send(("progress", job, p))

        try:
            doc = parser(path, progress=progress, **opts)
            reply: tuple = ("ok", job, doc)
        except IngestError as e:
            # Sent as parts: IngestError's constructor takes (path, reason), which pickle cannot call.
            reply = ("err", job, type(e).__name__, e.path, e.reason, e.fix)
        except MemoryError:
            reply = ("err", job, "DamagedFile", path, "is too large to parse in memory", None)
        except Exception as e:
            log.error("parser failed on %s:\n%s", path, traceback.format_exc())
            reply = ("err", job, "DamagedFile", path,
                     f"could not be parsed ({type(e).__name__}: {str(e).strip()})", None)
        try:
            if reply[0] == "ok" and isinstance(reply[2], ParsedDocument) and reply[2].pages:
                # Page by page: unpickling is one C call that holds the parent's GIL, and a whole
                # document of word boxes took ~300 ms there, a visible stall of the GUI thread.
                for page in reply[2].pages:
                    conn.send(("page", job, page))
                reply = ("ok", job, replace(reply[2], pages=()))
            conn.send(reply)
        except Exception as e:  # e.g. a result that cannot be pickled
            conn.send(("err", job, "DamagedFile", path, f"could not be parsed ({type(e).__name__}: {e})", None))


@dataclass
class _Job:
    """One file on its way through a worker (mutable bookkeeping, never handed out)."""

    index: int
    path: str
    opts: dict[str, Any]
    timeout_s: float
    sent_at: float = 0.0
    worker: "_Worker | None" = None
    result: ParsedDocument | IngestError | None = None
    pages: list = field(default_factory=list)
    """Pages received so far (the worker sends a document's pages one message each)."""


class _Worker:
    """One spawned process and our end of its pipe."""

    def __init__(self, ctx: Any, parser: Callable[..., ParsedDocument]) -> None:
        self.conn, child = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(target=_worker_main, args=(child, parser), daemon=True,
                                name="sift-parse")
        self.proc.start()
        child.close()
        self.job: _Job | None = None
        self.ready = False

    @property
    def pid(self) -> int | None:
        return self.proc.pid

    def wait_ready(self, timeout_s: float) -> bool:
        if self.ready:
            return True
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if self.conn.poll(_POLL_S):
                    msg = self.conn.recv()
                    if msg and msg[0] == "ready":
                        self.ready = True
                        return True
            except (EOFError, OSError):
                return False
            if not self.proc.is_alive():
                return False
        return False

    def kill(self) -> None:
        try:
            if self.proc.is_alive():
                self.proc.kill()
            self.proc.join(timeout=10)
        except Exception:
            pass
        try:
            self.conn.close()
        except Exception:
            pass
        try:
            self.proc.close()
        except Exception:
            pass

    def stop(self) -> None:
        """Ask politely, then kill."""
        try:
            self.conn.send(None)
            self.proc.join(timeout=2)
        except Exception:
            pass
        self.kill()


class ParsePool:
    """Parses files in worker processes with a per-file time limit; survives crashes and hangs.

    ``opts`` go to every parse call (e.g. ``ocr=False``); per-call options update them.
    ``parser`` is what a worker calls as ``parser(path, progress=..., **opts)``: a module-level
    function, since the spawned worker imports it by name.
    """

    def __init__(self, *, workers: int = 1, timeout_s: float = DEFAULT_TIMEOUT_S,
                 parser: Callable[..., ParsedDocument] = parse_file, **opts: Any) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self.workers = workers
        self.timeout_s = timeout_s
        self.parser = parser
        self.opts = opts
        # spawn, not fork: a forked child would inherit the parent's threads and MuPDF state.
        self._ctx = multiprocessing.get_context("spawn")
        self._idle: list[_Worker] = []
        self._busy: list[_Worker] = []
        self._closed = False

    # -- lifecycle

    def __enter__(self) -> "ParsePool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop every worker. The pool cannot be used afterwards."""
        self._closed = True
        for w in self._idle + self._busy:
            w.stop()
        self._idle.clear()
        self._busy.clear()

    def __del__(self) -> None:  # a forgotten pool must not leave processes behind
        try:
            if not self._closed:
                for w in self._idle + self._busy:
                    w.kill()
        except Exception:
            pass

    @property
    def worker_pids(self) -> list[int]:
        """Process ids of the live workers (for diagnostics)."""
        return [w.pid for w in self._idle + self._busy if w.pid is not None]

    # -- public API

    def parse(self, path: str | Path, *, timeout_s: float | None = None, progress: ProgressFn | None = None,
              cancel: CancelToken | None = None, **opts: Any) -> ParsedDocument:
        """Parse one file in a worker; raises its IngestError (FileTimeout, DamagedFile, ...)."""
        for _, result in self.imap([path], timeout_s=timeout_s, progress=progress, cancel=cancel, **opts):
            if isinstance(result, IngestError):
                raise result
            return result
        raise AssertionError("unreachable")

    def imap(self, paths: Iterable[str | Path], *, timeout_s: float | None = None,
             progress: ProgressFn | None = None, cancel: CancelToken | None = None,
             **opts: Any) -> Iterator[tuple[str, ParsedDocument | IngestError]]:
        """Yield ``(path, ParsedDocument or IngestError)`` in input order, parsing ahead.

        ``progress`` gets the workers' page reports. Setting ``cancel`` kills the workers and
        raises Cancelled from the iterator.
        """
        if self._closed:
            raise RuntimeError("the parse pool is closed")
        limit = self.timeout_s if timeout_s is None else timeout_s
        merged = {**self.opts, **opts}
        pending = iter(enumerate(paths))
        queue: deque[_Job] = deque()
        exhausted = False

        def fill() -> None:
            """Keep every worker busy: submit ahead of what the caller has consumed."""
            nonlocal exhausted
            while not exhausted and len(queue) < self.workers:
                try:
                    i, p = next(pending)
                except StopIteration:
                    exhausted = True
                    return
                job = _Job(i, str(p), merged, limit)
                queue.append(job)
                self._submit(job, cancel)

        try:
            while True:
                fill()
                if not queue:
                    return
                job = queue[0]
                self._finish(job, progress, cancel)
                queue.popleft()
                result = job.result
                assert result is not None
                fill()  # before handing the result over, so the next file parses meanwhile
                yield job.path, result
        except BaseException:
            # Cancelled, or the caller stopped iterating: jobs in flight are abandoned with their workers.
            for j in queue:
                if j.worker is not None and j.result is None:
                    self._discard(j.worker)
            raise

    # -- internals

    def _worker(self, cancel: CancelToken | None) -> _Worker:
        while self._idle:
            w = self._idle.pop()
            if w.proc.is_alive():
                return w
            w.kill()
        w = _Worker(self._ctx, self.parser)
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not w.wait_ready(0.25):
            if cancel is not None and cancel.cancelled:
                w.kill()
                check(cancel)
            if time.monotonic() > deadline or not w.proc.is_alive():
                w.kill()
                raise RuntimeError("the parse worker process did not start")
        return w

    def _submit(self, job: _Job, cancel: CancelToken | None) -> None:
        w = self._worker(cancel)
        w.job = job
        job.worker = w
        self._busy.append(w)
        try:
            w.conn.send((job.index, job.path, job.opts))
        except (OSError, EOFError, BrokenPipeError):
            job.result = DamagedFile(job.path, "the parser crashed")
            self._discard(w)
            return
        job.sent_at = time.monotonic()

    def _release(self, w: _Worker) -> None:
        w.job = None
        if w in self._busy:
            self._busy.remove(w)
        self._idle.append(w)

    def _discard(self, w: _Worker) -> None:
        w.job = None
        if w in self._busy:
            self._busy.remove(w)
        w.kill()

    def _finish(self, job: _Job, progress: ProgressFn | None, cancel: CancelToken | None) -> None:
        """Wait for ``job``'s result, forwarding progress; enforce its time limit."""
        if job.result is not None:
            return
        w = job.worker
        assert w is not None
        while True:
            if cancel is not None and cancel.cancelled:
                self._discard(w)
                raise Cancelled("cancelled")
            try:
                has_data = w.conn.poll(_POLL_S)
            except (OSError, EOFError):
                has_data = True  # recv below reports the broken pipe
            if has_data:
                try:
                    msg = w.conn.recv()
                except (EOFError, OSError):
                    code = w.proc.exitcode if w.proc.exitcode is not None else "unknown"
                    log.warning("parse worker died on %s (exit code %s)", job.path, code)
                    job.result = DamagedFile(job.path, "the parser crashed")
                    self._discard(w)
                    return
                kind = msg[0]
                if kind == "progress":
                    if progress is not None:
                        progress(msg[2])
                    continue
                if kind == "page":
                    job.pages.append(msg[2])
                    continue
                if kind == "ok":
                    job.result = replace(msg[2], pages=tuple(job.pages)) if job.pages else msg[2]
                    job.pages = []
                elif kind == "err":
                    _, _, cls_name, path, reason, fix = msg
                    job.result = _ERRORS.get(cls_name, DamagedFile)(path, reason, fix=fix)
                else:
                    continue
                self._release(w)
                return
            if not w.proc.is_alive():
                job.result = DamagedFile(job.path, "the parser crashed")
                self._discard(w)
                return
            if time.monotonic() - job.sent_at > job.timeout_s:
                self._discard(w)
                job.result = FileTimeout(job.path, f"took longer than {job.timeout_s:g} s to parse",
                                         fix="split the file, or raise the time limit in the settings")
                return
