"""Where errors go: known errors into a non-blocking message area, bugs into a crash dialog.

(After qutebrowser: a message the user can act on is never a crash report, and a bug is never a
one-line message.)
"""
from __future__ import annotations

import platform
import sys
import traceback

from app.gui.qt import (PYSIDE_VERSION, QDialog, QDialogButtonBox, QFrame, QGuiApplication, QHBoxLayout, QLabel,
                        QPlainTextEdit, QTimer, QToolButton, QVBoxLayout, QWidget, Qt, Signal, qVersion)
from core import __version__
from core.errors import KnownError

__all__ = ["MessageArea", "CrashDialog", "crash_report"]

_COLORS = {"info": ("#e8f1fd", "#1d4f91"), "warning": ("#fff4d6", "#7a5300"), "error": ("#fde7e7", "#8c1d1d")}


class MessageArea(QWidget):
    """A stack of dismissable one-line messages above the panels; never blocks the window."""

    shown = Signal(str, str)
    """(level, text) of each message shown."""

    def __init__(self, parent: QWidget | None = None, *, max_messages: int = 4) -> None:
        super().__init__(parent)
        self.max_messages = max_messages
        self._layout = QVBoxLayout(self)
        self._layout.setContentsMargins(6, 4, 6, 0)
        self._layout.setSpacing(3)
        self.messages: list[QFrame] = []
        self.setVisible(False)

    def show_message(self, text: str, level: str = "info", *, timeout_ms: int = 0) -> QFrame:
        bg, fg = _COLORS.get(level, _COLORS["info"])
        frame = QFrame(self)
        frame.setObjectName(f"message-{level}")
        frame.setStyleSheet(f"QFrame#{frame.objectName()} {{ background: {bg}; border: 1px solid {fg}; "
                            f"border-radius: 4px; }} QLabel {{ color: {fg}; }}")
        row = QHBoxLayout(frame)
        row.setContentsMargins(8, 3, 3, 3)
        label = QLabel(text, frame)
        label.setWordWrap(True)
        label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        row.addWidget(label, 1)
        close = QToolButton(frame)
        close.setText("✕")
        close.setAutoRaise(True)
        close.setToolTip("Dismiss")
        close.clicked.connect(lambda: self.dismiss(frame))
        row.addWidget(close)
        self._layout.addWidget(frame)
        self.messages.append(frame)
        while len(self.messages) > self.max_messages:
            self.dismiss(self.messages[0])
        self.setVisible(True)
        if timeout_ms:
            QTimer.singleShot(timeout_ms, frame, lambda: self.dismiss(frame))
        self.shown.emit(level, text)
        return frame

    def show_error(self, error: BaseException) -> QFrame:
        """A KnownError (or any message-worthy error) as an error line with its fix."""
        text = str(error.args[0]) if isinstance(error, KnownError) and error.args else str(error)
        fix = getattr(error, "fix", None)
        return self.show_message(text + (f" — {fix}" if fix else ""), "error")

    def dismiss(self, frame: QFrame) -> None:
        if frame in self.messages:
            self.messages.remove(frame)
            frame.hide()
            frame.deleteLater()
        self.setVisible(bool(self.messages))

    def texts(self) -> list[str]:
        return [f.findChild(QLabel).text() for f in self.messages]


def crash_report(error: BaseException | None, tb: str, *, context: str = "") -> str:
    """The text a person pastes into a bug report: what, versions, traceback."""
    lines = [f"Sift {__version__} crashed" + (f" while {context}" if context else ""),
             f"Python {platform.python_version()} on {platform.platform()}",
             f"Qt {qVersion()}, PySide6 {PYSIDE_VERSION}"]
    for dist in ("pymupdf", "onnxruntime", "onnxruntime-gpu", "llama-cpp-python", "hnswlib"):
        try:
            from importlib.metadata import version
            lines.append(f"{dist} {version(dist)}")
        except Exception:  # noqa: BLE001 - a missing package is simply not listed
            pass
    body = tb.rstrip() if tb else ("".join(traceback.format_exception(error)).rstrip() if error else "")
    lines += ["", body]
    return "\n".join(lines)


class CrashDialog(QDialog):
    """A bug: what happened, and a report to copy."""

    def __init__(self, report: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Sift hit a bug")
        self.resize(720, 460)
        lay = QVBoxLayout(self)
        intro = QLabel("Something went wrong inside Sift. Your documents and knowledge bases are safe; "
                       "the work in progress was stopped. Please copy this report into a bug report.", self)
        intro.setWordWrap(True)
        lay.addWidget(intro)
        self.text = QPlainTextEdit(report, self)
        self.text.setReadOnly(True)
        self.text.setLineWrapMode(QPlainTextEdit.LineWrapMode.NoWrap)
        lay.addWidget(self.text, 1)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close, self)
        copy = buttons.addButton("Copy report", QDialogButtonBox.ButtonRole.ActionRole)
        copy.clicked.connect(self.copy)
        buttons.rejected.connect(self.reject)
        lay.addWidget(buttons)

    def copy(self) -> None:
        QGuiApplication.clipboard().setText(self.text.toPlainText())


def install_excepthook(show) -> None:
    """Route exceptions that escape Qt slots to ``show(error, traceback_text)`` (the crash dialog)."""
    previous = sys.excepthook

    def hook(etype, value, tb):
        text = "".join(traceback.format_exception(etype, value, tb))
        try:
            show(value, text)
        except Exception:  # noqa: BLE001 - never recurse into the hook
            previous(etype, value, tb)

    sys.excepthook = hook
