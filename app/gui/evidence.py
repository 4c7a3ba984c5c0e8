"""The evidence panel: the cited page rendered with its highlights, or the cited table."""
from __future__ import annotations

from pathlib import Path

from app.gui.evidence_data import EvidenceItem, PageEvidence, TableEvidence, find_rects, load_evidence
from app.gui.qt import (QAbstractItemView, QCheckBox, QColor, QDesktopServices, QHBoxLayout, QImage, QLabel,
                        QLineEdit, QPainter, QPen, QPixmap, QRectF, QScrollArea, QStackedWidget, QTableWidget,
                        QTableWidgetItem, QToolButton, QUrl, QVBoxLayout, QWidget, Qt, Signal)

__all__ = ["EvidencePanel", "HIGHLIGHT_FILL", "ZOOMS"]

HIGHLIGHT_FILL = QColor(255, 200, 0, 110)
HIGHLIGHT_EDGE = QColor(230, 120, 0, 230)
FIND_FILL = QColor(40, 200, 90, 90)
ROW_FILL = QColor(255, 236, 160)
CELL_FILL = QColor(255, 196, 60)
ZOOMS = (0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0)
DEFAULT_ZOOM = 1.5


class EvidencePanel(QWidget):
    """Shows one ``EvidenceItem`` at a time out of a list (next / previous)."""

    shown = Signal(object)
    """The ``PageEvidence`` or ``TableEvidence`` just drawn."""
    failed = Signal(object)
    """A ``JobError`` from loading."""

    def __init__(self, runner, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.runner = runner
        self.kb = None
        self.items: list[EvidenceItem] = []
        self.index = -1
        self.zoom: float | None = None
        """Pixels per PDF point; None fits the page to the panel's width."""
        self.current: PageEvidence | TableEvidence | None = None
        self.find_hits: list[tuple] = []
        self.find_index = -1
        self._job = None
        self._pending: tuple | None = None

        lay = QVBoxLayout(self)
        lay.setContentsMargins(4, 4, 4, 4)
        bar = QHBoxLayout()
        self.prev_btn = self._tool("◀", "Previous citation (Alt+Left)", self.previous)
        self.next_btn = self._tool("▶", "Next citation (Alt+Right)", self.next)
        self.title = QLabel("Evidence appears here when you click a citation or a search result.", self)
        self.title.setWordWrap(True)
        self.zoom_out_btn = self._tool("−", "Zoom out (Ctrl+-)", lambda: self.step_zoom(-1))
        self.zoom_label = QLabel(self)
        self.zoom_in_btn = self._tool("+", "Zoom in (Ctrl+=)", lambda: self.step_zoom(1))
        self.fit_btn = self._tool("Fit", "Fit the page to the panel's width (Ctrl+0)", self.fit_width)
        self.open_btn = self._tool("Open", "Open the file in the system viewer", self.open_external)
        self.relevance_box = QCheckBox("Token relevance", self)
        self.relevance_box.setToolTip("Shade each word by how strongly it matches the question "
                                      "(late interaction: each token's best match among the question's tokens)")
        self.relevance_box.toggled.connect(lambda _: self.reload())
        for w in (self.prev_btn, self.next_btn):
            bar.addWidget(w)
        bar.addWidget(self.title, 1)
        for w in (self.relevance_box, self.zoom_out_btn, self.zoom_label, self.zoom_in_btn, self.fit_btn,
                  self.open_btn):
            bar.addWidget(w)
        lay.addLayout(bar)

        find = QHBoxLayout()
        self.find_edit = QLineEdit(self)
        self.find_edit.setPlaceholderText("Find on this page (Ctrl+F), Enter for the next match")
        self.find_edit.setAcceptDrops(False)
        self.find_edit.setClearButtonEnabled(True)
        self.find_edit.textChanged.connect(self._find_changed)
        self.find_edit.returnPressed.connect(self.find_next)
        self.find_label = QLabel(self)
        find.addWidget(self.find_edit, 1)
        find.addWidget(self.find_label)
        lay.addLayout(find)

        self.stack = QStackedWidget(self)
        self.scroll = QScrollArea(self)
        self.scroll.setAlignment(Qt.AlignmentFlag.AlignHCenter)
        self.page_label = QLabel(self.scroll)
        self.page_label.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        self.scroll.setWidget(self.page_label)
        self.scroll.setWidgetResizable(False)
        self.table = QTableWidget(self)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table_title = QLabel(self)
        tbox = QWidget(self)
        tl = QVBoxLayout(tbox)
        tl.setContentsMargins(0, 0, 0, 0)
        tl.addWidget(self.table_title)
        tl.addWidget(self.table, 1)
        self.stack.addWidget(self.scroll)
        self.stack.addWidget(tbox)
        lay.addWidget(self.stack, 1)
        self._update_controls()

    def _tool(self, text: str, tip: str, slot) -> QToolButton:
        b = QToolButton(self)
        b.setText(text)
        b.setToolTip(tip)
        b.clicked.connect(slot)
        return b

    # ------------------------------------------------------------------ API

    def set_kb(self, kb) -> None:
        self.kb = kb
        self.clear()

    def clear(self) -> None:
        self.items, self.index, self.current = [], -1, None
        self.page_label.clear()
        self.page_label.resize(0, 0)
        self.table.clear()
        self.table.setRowCount(0)
        self.title.setText("Evidence appears here when you click a citation or a search result.")
        self._update_controls()

    def show_items(self, items: list[EvidenceItem], index: int = 0) -> None:
        """Show ``items[index]``; next / previous walk the list."""
        self.items = list(items)
        self.index = max(0, min(index, len(self.items) - 1))
        self.reload()

    def next(self) -> None:
        if self.items and self.index + 1 < len(self.items):
            self.index += 1
            self.reload()

    def previous(self) -> None:
        if self.items and self.index > 0:
            self.index -= 1
            self.reload()

    @property
    def shown_zoom(self) -> float:
        """The zoom on screen now (the fitted one when fitting)."""
        if self.zoom is not None:
            return self.zoom
        if isinstance(self.current, PageEvidence):
            return self.current.zoom / self._dpr()
        return DEFAULT_ZOOM

    def step_zoom(self, step: int) -> None:
        now = self.shown_zoom
        bigger = [z for z in ZOOMS if z > now + 1e-6]
        smaller = [z for z in ZOOMS if z < now - 1e-6]
        if step > 0 and bigger:
            self.set_zoom(bigger[0])
        elif step < 0 and smaller:
            self.set_zoom(smaller[-1])

    def fit_width(self) -> None:
        self.set_zoom(None)

    def set_zoom(self, zoom: float | None) -> None:
        if zoom != self.zoom:
            self.zoom = zoom
            self.reload()

    def open_external(self) -> None:
        if 0 <= self.index < len(self.items):
            QDesktopServices.openUrl(QUrl.fromLocalFile(self.items[self.index].path))

    def focus_find(self) -> None:
        self.find_edit.setFocus()
        self.find_edit.selectAll()

    @property
    def item(self) -> EvidenceItem | None:
        return self.items[self.index] if 0 <= self.index < len(self.items) else None

    # ------------------------------------------------------------------ loading

    def reload(self) -> None:
        item = self.item
        self._update_controls()
        if item is None or self.kb is None:
            return
        kb, zoom, rel, dpr = self.kb, self.zoom, self.relevance_box.isChecked(), self._dpr()
        fit = max(200, self.scroll.viewport().width() - 24)
        where = f"page {item.page}" if item.page else (item.table or "")
        self.title.setText(f"[{item.n}] {item.document} — {where} (loading…)")
        job = self.runner.run(lambda job: load_evidence(kb, item, zoom=zoom, fit_width=fit, scale=dpr,
                                                        relevance=rel),
                              label=f"showing {item.document}", on_done=self._loaded, on_error=self._load_failed)
        self._job = job

    def _dpr(self) -> float:
        return max(1.0, float(self.devicePixelRatioF()))

    def _load_failed(self, err) -> None:
        self.title.setText(f"Cannot show this evidence: {err.error}")
        self.failed.emit(err)

    def _loaded(self, ev) -> None:
        if ev.item is not self.item:  # the user moved on while it loaded
            return
        self.current = ev
        if isinstance(ev, TableEvidence):
            self._show_table(ev)
        else:
            self._find_changed(self.find_edit.text(), scroll=False)
            self._paint()
            self._scroll_to(ev.rects)
        self._update_controls()
        self.shown.emit(ev)

    # ------------------------------------------------------------------ drawing

    def _paint(self) -> None:
        ev = self.current
        if not isinstance(ev, PageEvidence):
            return
        img = QImage(ev.image, ev.width, ev.height, ev.stride, QImage.Format.Format_RGB888).copy()
        painter = QPainter(img)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        z = ev.zoom
        painter.setPen(Qt.PenStyle.NoPen)
        for r, score in ev.relevance:
            if score > 0.35:
                painter.setBrush(QColor(60, 130, 255, int(30 + 150 * (score - 0.35) / 0.65)))
                painter.drawRect(self._qrect(r, z, pad=0.5))
        painter.setBrush(HIGHLIGHT_FILL)
        painter.setPen(QPen(HIGHLIGHT_EDGE, max(1.5, z)))
        for r in ev.rects:
            painter.drawRoundedRect(self._qrect(r, z, pad=1.5), 2 * z, 2 * z)
        if self.find_hits:
            painter.setPen(Qt.PenStyle.NoPen)
            for k, rects in enumerate(self.find_hits):
                painter.setBrush(FIND_FILL if k != self.find_index else QColor(40, 200, 90, 170))
                for r in rects:
                    painter.drawRect(self._qrect(r, z, pad=1.0))
        painter.end()
        pix = QPixmap.fromImage(img)
        pix.setDevicePixelRatio(self._dpr())
        self.page_label.setPixmap(pix)
        self.page_label.resize(int(ev.width / self._dpr()), int(ev.height / self._dpr()))
        item = ev.item
        rel = f" · {len(ev.relevance)} words scored" if ev.relevance else ""
        self.title.setText(f"[{item.n}] {item.document} — page {ev.page.number} of {ev.page_count} · "
                           f"{len(ev.rects)} highlight{'s' if len(ev.rects) != 1 else ''}{rel}")

    @staticmethod
    def _qrect(r, z: float, pad: float = 0.0) -> QRectF:
        x0, y0, x1, y1 = r
        return QRectF((x0 - pad) * z, (y0 - pad) * z, (x1 - x0 + 2 * pad) * z, (y1 - y0 + 2 * pad) * z)

    def _scroll_to(self, rects) -> None:
        ev = self.current
        if not rects or not isinstance(ev, PageEvidence):
            self.scroll.verticalScrollBar().setValue(0)
            return
        z = ev.zoom / self._dpr()
        x0 = min(r[0] for r in rects) * z
        y0 = min(r[1] for r in rects) * z
        y1 = max(r[3] for r in rects) * z
        # top of the highlight a little below the top of the view, so its context shows too
        margin = max(40, int(self.scroll.viewport().height() * 0.25))
        self.scroll.ensureVisible(int(x0), int(y1), 40, 40)
        self.scroll.ensureVisible(int(x0), int(y0), 40, margin)

    def visible_page_rect(self) -> QRectF:
        """The part of the page in view, in PDF points (what a person sees)."""
        ev = self.current
        if not isinstance(ev, PageEvidence):
            return QRectF()
        z = ev.zoom / self._dpr()
        vp = self.scroll.viewport()
        x = self.scroll.horizontalScrollBar().value()
        y = self.scroll.verticalScrollBar().value()
        return QRectF(x / z, y / z, vp.width() / z, vp.height() / z)

    def _show_table(self, ev: TableEvidence) -> None:
        self.stack.setCurrentIndex(1)
        self.table.clear()
        self.table.setColumnCount(len(ev.header))
        self.table.setHorizontalHeaderLabels(list(ev.header))
        self.table.setRowCount(len(ev.rows))
        first = None
        for r, (rid, cells) in enumerate(ev.rows):
            self.table.setVerticalHeaderItem(r, QTableWidgetItem(str(rid)))
            cited = rid in ev.cited_rows
            for c, text in enumerate(cells):
                it = QTableWidgetItem(text)
                if cited:
                    whole = not ev.cited_columns
                    it.setBackground(CELL_FILL if (whole or c in ev.cited_columns) else ROW_FILL)
                    it.setForeground(QColor(0, 0, 0))
                    f = it.font()
                    f.setBold(whole or c in ev.cited_columns)
                    it.setFont(f)
                self.table.setItem(r, c, it)
            if cited and first is None:
                first = r
        self.table.resizeColumnsToContents()
        if first is not None:
            self.table.scrollToItem(self.table.item(first, 0), QAbstractItemView.ScrollHint.PositionAtCenter)
        more = f" ({ev.truncated} more rows not shown)" if ev.truncated else ""
        self.table_title.setText(f"Table {ev.title}: {len(ev.cited_rows)} cited row(s) highlighted{more}")
        item = ev.item
        self.title.setText(f"[{item.n}] {item.document} — table {ev.title}")

    # ------------------------------------------------------------------ find

    def _find_changed(self, text: str, scroll: bool = True) -> None:
        ev = self.current
        if not isinstance(ev, PageEvidence):
            self.find_hits, self.find_index = [], -1
            self.find_label.setText("")
            return
        self.find_hits = find_rects(ev.page, text)
        self.find_index = 0 if self.find_hits else -1
        self.find_label.setText(f"{len(self.find_hits)} found" if text.strip() else "")
        if scroll:
            self._paint()
            if self.find_hits:
                self._scroll_to(self.find_hits[0])

    def find_next(self) -> None:
        if not self.find_hits:
            return
        self.find_index = (self.find_index + 1) % len(self.find_hits)
        self.find_label.setText(f"{self.find_index + 1} of {len(self.find_hits)}")
        self._paint()
        self._scroll_to(self.find_hits[self.find_index])

    # ------------------------------------------------------------------ state

    def _update_controls(self) -> None:
        has = self.item is not None
        self.prev_btn.setEnabled(has and self.index > 0)
        self.next_btn.setEnabled(has and self.index + 1 < len(self.items))
        is_page = isinstance(self.current, PageEvidence)
        if is_page:
            self.stack.setCurrentIndex(0)
        for w in (self.zoom_in_btn, self.zoom_out_btn, self.fit_btn, self.relevance_box):
            w.setEnabled(has and (is_page or self.current is None))
        self.open_btn.setEnabled(has and Path(self.items[self.index].path).exists() if has else False)
        self.zoom_label.setText(("fit " if self.zoom is None else "") + f"{round(self.shown_zoom * 100)}%")
