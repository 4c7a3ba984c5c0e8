"""Progress reports and cancellation for long work.

Long work in core is a plain function ``fn(..., *, progress=None, cancel=None)``.
Only ``app/`` owns threads; core just reports and checks.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from core.errors import Cancelled

__all__ = ["Progress", "ProgressFn", "CancelToken", "report", "check"]


@dataclass(frozen=True)
class Progress:
    """One report from long work."""

    stage: str
    """What is being done, e.g. ``"export"``, ``"join"``, ``"embed"``."""
    done: int
    """Units finished so far."""
    total: int | None = None
    """Units in all, when known."""
    unit: str = ""
    """What a unit is (``"bytes"``, ``"files"``, ``"chunks"``)."""
    message: str = ""
    """A short human line about the current item."""
    elapsed_s: float = 0.0
    """Seconds since the stage started."""
    detail: dict = field(default_factory=dict)
    """Stage-specific counters, e.g. ``{"files": 3, "files_total": 20, "pages": 152, "chunks": 1204}``."""

    @property
    def fraction(self) -> float | None:
        if not self.total:
            return None
        return min(1.0, self.done / self.total)

    @property
    def rate(self) -> float | None:
        """Units per second, when measurable."""
        if self.elapsed_s <= 0 or self.done <= 0:
            return None
        return self.done / self.elapsed_s

    @property
    def eta_s(self) -> float | None:
        """Seconds left at the current rate, when measurable."""
        rate = self.rate
        if rate is None or not self.total:
            return None
        return max(0.0, (self.total - self.done) / rate)


ProgressFn = Callable[[Progress], None]


class CancelToken:
    """Set from any thread; checked by the worker between units of work."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise Cancelled("cancelled")


def report(progress: Optional[ProgressFn], stage: str, done: int, total: int | None = None,
           *, unit: str = "", message: str = "", started: float | None = None,
           detail: dict | None = None) -> None:
    """Send a Progress to ``progress`` if one was given."""
    if progress is None:
        return
    elapsed = time.monotonic() - started if started is not None else 0.0
    progress(Progress(stage, done, total, unit, message, elapsed, dict(detail or {})))


def check(cancel: Optional[CancelToken]) -> None:
    """Raise Cancelled if ``cancel`` was set."""
    if cancel is not None:
        cancel.raise_if_cancelled()
