"""The library panel: the knowledge base's documents, adding, removing, re-indexing, progress."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from app.gui.qt import (QAbstractItemView, QComboBox, QHBoxLayout, QHeaderView, QLabel, QMenu, QProgressBar,
                        QPushButton, QTableWidget, QTableWidgetItem, QToolButton, QVBoxLayout, QWidget, Qt, Signal,
                        QColor)

__all__ = ["LibraryPanel", "DocRow", "format_eta", "progress_text"]

LIST_EVERY_S = 0.5
"""How often a running ingestion re-reads the document list (in its worker thread)."""
COLUMNS = ("Document", "State", "Pages", "Tables", "Chunks", "Details")
STATE_COLORS = {"ready": QColor(30, 140, 60), "failed": QColor(200, 40, 40), "queued": QColor(120, 120, 120),
                "parsing": QColor(30, 100, 200), "ocr": QColor(140, 60, 200), "embedding": QColor(200, 120, 0),
                "cancelled": QColor(120, 120, 120)}


@dataclass(frozen=True)
class DocRow:
    """One line of the document list."""

    path: str
    name: str
    state: str
    pages: int = 0
    tables: int = 0
    chunks: int = 0
    reason: str = ""
    doc_id: int | None = None


def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return ""
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def progress_text(p, inner=None) -> str:
    """The line under the progress bar: files, pages, rate, ETA, and what is being done."""
    d = p.detail or {}
    parts = []
    if "files_total" in d:
        parts.append(f"{d.get('files', 0)}/{d['files_total']} files")
    if d.get("pages"):
        parts.append(f"{d['pages']} pages")
    if p.elapsed_s > 0 and d.get("pages"):
        parts.append(f"{d['pages'] / p.elapsed_s:.1f} pages/s")
    elif p.rate and p.unit == "bytes":
        parts.append(f"{p.rate / 1024:.0f} KB/s")
    elif p.rate and p.unit:
        parts.append(f"{p.rate:.1f} {p.unit}/s")
    eta = p.eta_s
    if eta is not None and p.done:
        parts.append(f"ETA {format_eta(eta)}")
    msg = (inner.message if inner is not None and inner.message else "") or p.message
    if inner is not None and not inner.message and inner.total:
        msg = f"{inner.stage} {inner.done}/{inner.total} {inner.unit}".strip()
    return " · ".join(parts + ([msg] if msg else []))


class LibraryPanel(QWidget):
    """Documents of the open knowledge base; runs add / remove / re-index as jobs."""

    job_started = Signal(str)
    job_ended = Signal()
    add_finished = Signal(object)
    """The ``AddReport`` of a finished add (also after a cancel)."""
    listed = Signal(list)
    """The ``DocRow``s just shown."""
    kb_selected = Signal(str)
    kb_new = Signal()
    kb_rename = Signal()
    kb_delete = Signal()
    add_files_clicked = Signal()
    add_folder_clicked = Signal()
    document_activated = Signal(object)
    """A ``DocRow`` double-clicked."""
    message = Signal(str, str)
    """(level, text) for the window's message area."""

    def __init__(self, runner, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.runner = runner
        self.kb = None
        self.job = None
        self.rows: list[DocRow] = []
        self._failed_outside: dict[str, DocRow] = {}
        self._queue: list[str] = []
        self._current_file = ""
        self._current_ocr = False

        lay = QVBoxLayout(self)
        lay.setContentsMargins(4, 4, 4, 4)
        top = QHBoxLayout()
        top.addWidget(QLabel("Knowledge base", self))
        self.kb_combo = QComboBox(self)
        self.kb_combo.setToolTip("Switch knowledge base (each one is a folder)")
        self.kb_combo.activated.connect(lambda i: self.kb_selected.emit(self.kb_combo.itemText(i)))
        top.addWidget(self.kb_combo, 1)
        self.kb_menu_btn = QToolButton(self)
        self.kb_menu_btn.setText("⋯")
        self.kb_menu_btn.setToolTip("New, rename or delete a knowledge base")
        self.kb_menu_btn.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        menu = QMenu(self.kb_menu_btn)
        menu.addAction("New knowledge base…", self.kb_new.emit)
        menu.addAction("Rename…", self.kb_rename.emit)
        menu.addAction("Delete…", self.kb_delete.emit)
        self.kb_menu_btn.setMenu(menu)
        top.addWidget(self.kb_menu_btn)
        lay.addLayout(top)

        self.table = QTableWidget(0, len(COLUMNS), self)
        self.table.setHorizontalHeaderLabels(list(COLUMNS))
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.verticalHeader().setVisible(False)
        hh = self.table.horizontalHeader()
        hh.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        for c in range(1, len(COLUMNS) - 1):
            hh.setSectionResizeMode(c, QHeaderView.ResizeMode.ResizeToContents)
        hh.setSectionResizeMode(len(COLUMNS) - 1, QHeaderView.ResizeMode.Interactive)
        self.table.setTextElideMode(Qt.TextElideMode.ElideMiddle)
        self.table.doubleClicked.connect(self._activated)
        self.table.itemSelectionChanged.connect(self._update_buttons)
        lay.addWidget(self.table, 1)
        self.empty_label = QLabel("Drop PDF, CSV or XLSX files or folders anywhere on the window, or use Add.", self)
        self.empty_label.setWordWrap(True)
        self.empty_label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        lay.addWidget(self.empty_label)

        buttons = QHBoxLayout()
        self.add_btn = QPushButton("Add…", self)
        self.add_btn.setToolTip("Add files (Ctrl+O)")
        add_menu = QMenu(self.add_btn)
        add_menu.addAction("Files…", self.add_files_clicked.emit)
        add_menu.addAction("Folder…", self.add_folder_clicked.emit)
        self.add_btn.setMenu(add_menu)
        self.remove_btn = QPushButton("Remove", self)
        self.remove_btn.setToolTip("Remove the selected documents from this knowledge base (the files stay)")
        self.remove_btn.clicked.connect(self.remove_selected)
        self.reindex_btn = QPushButton("Re-index", self)
        self.reindex_btn.setToolTip("Rebuild the search indexes from the stored documents")
        self.reindex_btn.clicked.connect(self.reindex)
        for b in (self.add_btn, self.remove_btn, self.reindex_btn):
            buttons.addWidget(b)
        lay.addLayout(buttons)

        prog = QHBoxLayout()
        self.bar = QProgressBar(self)
        self.bar.setRange(0, 1000)
        self.bar.setTextVisible(True)
        self.cancel_btn = QPushButton("Cancel", self)
        self.cancel_btn.clicked.connect(self.cancel)
        prog.addWidget(self.bar, 1)
        prog.addWidget(self.cancel_btn)
        lay.addLayout(prog)
        self.progress_label = QLabel(self)
        self.progress_label.setWordWrap(True)
        lay.addWidget(self.progress_label)
        self._show_progress(False)
        self._update_buttons()

    # ------------------------------------------------------------------ knowledge bases

    def set_kb_names(self, names: list[str], current: str) -> None:
        self.kb_combo.blockSignals(True)
        self.kb_combo.clear()
        self.kb_combo.addItems(names)
        if current in names:
            self.kb_combo.setCurrentIndex(names.index(current))
        self.kb_combo.blockSignals(False)

    def set_kb(self, kb, docs=None) -> None:
        """Show ``kb``'s documents: ``docs`` when already read, else read in the background."""
        self.kb = kb
        self.rows = []
        self._failed_outside = {}
        self._queue = []
        self._render()
        if kb is not None and docs is not None:
            self._set_docs(docs)
        elif kb is not None:
            self.refresh()

    @property
    def busy(self) -> bool:
        return self.job is not None

    # ------------------------------------------------------------------ jobs

    def refresh(self) -> None:
        kb = self.kb
        if kb is None:
            return
        self.runner.run(lambda job: kb.list(), label="listing documents",
                        on_done=lambda docs, kb=kb: self._listed(kb, docs))

    def _listed(self, kb, docs) -> None:
        if kb is self.kb:
            self._set_docs(docs)

    def add_paths(self, paths: list[str]) -> None:
        """Add files and folders; while a job runs they wait for it."""
        paths = [str(p) for p in paths]
        if not paths or self.kb is None:
            return
        if self.job is not None:
            self._queue += paths
            self.message.emit("info", f"{len(paths)} item(s) will be added after the current job")
            return
        kb = self.kb

        def op(job):
            state = {"add": None, "inner": None, "docs": None}
            last = [0.0]

            def progress(p):
                state["add" if p.stage == "add" else "inner"] = p
                now = time.monotonic()
                if now - last[0] >= LIST_EVERY_S:
                    last[0] = now
                    state["docs"] = kb.list()
                job.publish(dict(state))

            rep = kb.add(paths, progress=progress, cancel=job.cancel_token)
            return rep, kb.list()

        names = ", ".join(Path(p).name for p in paths[:3]) + (" …" if len(paths) > 3 else "")
        self._start(self.runner.run(op, label=f"adding {names}", on_done=self._added,
                                    on_cancel=self._job_cancelled, priority="normal"), f"Adding {names}")
        self.job.published.connect(self._on_add_state)

    def _start(self, job, text: str) -> None:
        self.job = job
        job.done.connect(self._job_done)
        self.bar.setValue(0)
        self.bar.setRange(0, 0)  # busy until the first report
        self.progress_label.setText(text)
        self._show_progress(True)
        self._update_buttons()
        self.job_started.emit(text)

    def _on_add_state(self, state: dict) -> None:
        p, inner = state.get("add"), state.get("inner")
        if inner is not None and inner.stage == "parse" and ": page " in inner.message:
            self._current_file = inner.message.split(": page ", 1)[0]
            self._current_ocr = inner.message.endswith("(OCR)")
        if state.get("docs") is not None:
            self._set_docs(state["docs"])
        if p is not None:
            frac = p.fraction
            if frac is not None:
                self.bar.setRange(0, 1000)
                self.bar.setValue(int(frac * 1000))
            self.progress_label.setText(progress_text(p, inner))
        elif inner is not None and inner.message:
            self.progress_label.setText(inner.message)

    def _added(self, result) -> None:
        rep, docs = result
        known = {d.path for d in docs}
        for o in rep.files:
            if o.status == "failed" and o.path not in known:
                self._failed_outside[o.path] = DocRow(o.path, Path(o.path).name, "failed", reason=o.reason)
        self._set_docs(docs)
        level = "warning" if rep.failed or rep.cancelled else "info"
        self.message.emit(level, ("Cancelled: " if rep.cancelled else "Added: ") + rep.summary())
        for o in rep.failed:
            self.message.emit("warning", f"{Path(o.path).name}: {o.reason}")
        self.add_finished.emit(rep)

    def _job_cancelled(self) -> None:
        self.message.emit("info", "Cancelled; what was finished is kept")
        self.refresh()

    def _job_done(self) -> None:
        self.job = None
        self._current_file = ""
        self._current_ocr = False
        self._show_progress(False)
        self._update_buttons()
        self.job_ended.emit()
        if self._queue:
            queued, self._queue = self._queue, []
            self.add_paths(queued)

    def cancel(self) -> None:
        if self.job is not None:
            self.job.cancel()
            self.cancel_btn.setEnabled(False)
            self.progress_label.setText("Cancelling after the current step…")

    def selected_rows(self) -> list[DocRow]:
        rows = sorted({i.row() for i in self.table.selectedIndexes()})
        return [self.rows[r] for r in rows if r < len(self.rows)]

    def remove_selected(self) -> None:
        rows = self.selected_rows()
        if rows:
            self.remove_documents(rows)

    def remove_documents(self, rows: list[DocRow]) -> None:
        kb = self.kb
        if kb is None or self.job is not None:
            return
        for r in rows:
            self._failed_outside.pop(r.path, None)
        ids = [r.doc_id for r in rows if r.doc_id is not None]

        def op(job):
            for i in ids:
                job.cancel_token.raise_if_cancelled()
                kb.remove(i)
            return kb.list()

        self._start(self.runner.run(op, label="removing documents", on_done=self._set_docs,
                                    on_cancel=self.refresh), f"Removing {len(rows)} document(s)")

    def reindex(self) -> None:
        kb = self.kb
        if kb is None or self.job is not None:
            return

        def op(job):
            counts = kb.reindex(progress=job.progress, cancel=job.cancel_token)
            return counts, kb.list()

        def done(result):
            counts, docs = result
            self._set_docs(docs)
            self.message.emit("info", f"Re-indexed {counts.chunks} chunks (full text {counts.fts}, "
                                      f"vectors {counts.vectors})")

        self._start(self.runner.run(op, label="re-indexing", on_done=done, on_progress=self._on_progress,
                                    on_cancel=self.refresh), "Re-indexing")

    def _on_progress(self, p) -> None:
        if p.fraction is not None:
            self.bar.setRange(0, 1000)
            self.bar.setValue(int(p.fraction * 1000))
        self.progress_label.setText(progress_text(p))

    # ------------------------------------------------------------------ table

    def _set_docs(self, docs) -> None:
        rows = []
        for d in docs:
            state = d.state
            if state == "queued" and self._current_file and d.name == self._current_file:
                state = "ocr" if self._current_ocr else "parsing"
            if self.job is None and state in ("queued", "parsing", "embedding") and d.n_chunks == 0:
                state = "queued"
            rows.append(DocRow(d.path, d.name, state, d.n_pages, d.n_tables, d.n_chunks,
                               d.error or ("; ".join(d.warnings) if d.warnings else ""), int(d.id)))
        paths = {r.path for r in rows}
        rows += [r for p, r in self._failed_outside.items() if p not in paths]
        if rows == self.rows:
            return  # polled every 0.5 s during a job: most polls change nothing
        old, self.rows = self.rows, rows
        self._render(old)
        self.listed.emit(rows)

    def _render(self, old: list[DocRow] | None = None) -> None:
        """Show ``self.rows``, touching only the rows that differ from ``old``.

        During ingestion every Qt call from here gives up the GIL and waits for the ingest
        thread to hand it back (up to the 1 ms switch interval): re-rendering all rows of a
        library on each document's state change was a stall of ~100 ms and more."""
        old = old or []
        if self.table.rowCount() != len(self.rows):
            self.table.setRowCount(len(self.rows))
        for i, r in enumerate(self.rows):
            if i < len(old) and old[i] == r and self.table.item(i, 0) is not None:
                continue
            prev = old[i] if i < len(old) and self.table.item(i, 0) is not None else None
            vals = (r.name, r.state, str(r.pages or ""), str(r.tables or ""), str(r.chunks or ""), r.reason)
            tip = r.path + (f"\n{r.reason}" if r.reason else "")
            pvals = ((prev.name, prev.state, str(prev.pages or ""), str(prev.tables or ""), str(prev.chunks or ""),
                      prev.reason) if prev is not None else None)
            same_tip = prev is not None and prev.path == r.path and prev.reason == r.reason
            for c, v in enumerate(vals):
                if pvals is not None and pvals[c] == v and same_tip:
                    continue
                it = QTableWidgetItem(v)
                it.setToolTip(tip)
                if c == 1 and r.state in STATE_COLORS:
                    it.setForeground(STATE_COLORS[r.state])
                if c in (2, 3, 4):
                    it.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                self.table.setItem(i, c, it)
        hide_reason = not any(r.reason for r in self.rows)
        if self.table.isColumnHidden(len(COLUMNS) - 1) != hide_reason:
            self.table.setColumnHidden(len(COLUMNS) - 1, hide_reason)
        if self.empty_label.isVisible() == bool(self.rows) or not old:
            self.empty_label.setVisible(not self.rows)
        self._update_buttons()

    def row_for(self, name: str) -> DocRow | None:
        return next((r for r in self.rows if r.name == name), None)

    def _activated(self, index) -> None:
        if 0 <= index.row() < len(self.rows):
            self.document_activated.emit(self.rows[index.row()])

    def _show_progress(self, on: bool) -> None:
        for w in (self.bar, self.cancel_btn, self.progress_label):
            w.setVisible(on)
        self.cancel_btn.setEnabled(on)

    def _update_buttons(self) -> None:
        idle = self.job is None and self.kb is not None
        self.remove_btn.setEnabled(idle and bool(self.table.selectedIndexes()))
        self.reindex_btn.setEnabled(idle and bool(self.rows))
        self.add_btn.setEnabled(self.kb is not None)
