"""Sift's desktop window (PySide6). Talks to core only through ``core.kb.KnowledgeBase``.

Qt is imported in ``app.gui.qt`` alone; long work runs through ``app.gui.jobs``.
"""
from __future__ import annotations
