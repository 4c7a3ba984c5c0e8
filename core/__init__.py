"""Sift's core: everything but the GUI. Never imports PySide6."""
from __future__ import annotations

__version__ = "0.1.0"
