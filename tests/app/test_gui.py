"""The desktop window, offscreen, on real files and real models. Waits on signals, never sleeps."""
from __future__ import annotations

import faulthandler
import shutil
import time
from pathlib import Path

import pytest

from app.gui.evidence_data import PageEvidence, TableEvidence, from_citation, from_hit
from app.gui.qt import (QApplication, QDragEnterEvent, QDropEvent, QMimeData, QPoint, QPointF, QTimer, QUrl, Qt)
from app.gui.window import MainWindow
from core.ingest.chunking import span_rects
from core.kb import KnowledgeBase
from tests.conftest import ROOT

DEMO = ROOT / "resources" / "demo"
TALLAHASSEE = "What was the probable cause of the accident near Tallahassee?"
OPEN_TIMEOUT = 120_000
ADD_TIMEOUT = 300_000


@pytest.fixture(scope="session")
def demo_template(tmp_path_factory) -> Path:
    """The demo documents ingested once; each test gets its own copy of the folder."""
    folder = tmp_path_factory.mktemp("gui-demo") / "Demo"
    with KnowledgeBase(folder) as kb:
        rep = kb.add([DEMO])
        assert not rep.failed, rep.files
    return folder


@pytest.fixture
def data_dir(tmp_path, monkeypatch) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    monkeypatch.setenv("SIFT_DATA_DIR", str(d))
    return d


@pytest.fixture
def demo_copy(data_dir, demo_template) -> Path:
    dst = data_dir / "kbs" / "Demo"
    shutil.copytree(demo_template, dst, ignore=shutil.ignore_patterns("sift.lock"))
    return dst


def open_window(qtbot, folder: Path | None = None, *, first_run: bool = False) -> MainWindow:
    w = MainWindow(kb_folder=folder, first_run=first_run)
    qtbot.addWidget(w)
    w.show()
    with qtbot.waitSignal(w.kb_opened, timeout=OPEN_TIMEOUT):
        pass
    return w


def drop(window: MainWindow, paths) -> None:
    """What the window receives when files are dragged from a file manager and dropped on it."""
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(p)) for p in paths])
    enter = QDragEnterEvent(QPointF(40, 40), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                            Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(window, enter)
    assert enter.isAccepted()
    ev = QDropEvent(QPointF(40, 40), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                    Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(window, ev)


def words_in(page, rects) -> str:
    """The page's words whose centres fall inside any of ``rects``."""
    out = []
    for w in page.words:
        cx, cy = (w.rect[0] + w.rect[2]) / 2, (w.rect[1] + w.rect[3]) / 2
        if any(r[0] - 1 <= cx <= r[2] + 1 and r[1] - 1 <= cy <= r[3] + 1 for r in rects):
            out.append(w.text)
    return " ".join(out)


def norm(text: str) -> list[str]:
    return [t for t in "".join(ch.lower() if ch.isalnum() else " " for ch in text).split()]


# ---------------------------------------------------------------------------------------------- library


def test_dropping_a_real_pdf_makes_it_ready(qtbot, data_dir, tmp_path):
    w = open_window(qtbot, data_dir / "kbs" / "Drop")
    pdf = tmp_path / "report.pdf"
    shutil.copy(DEMO / "20071229X02007.pdf", pdf)
    with qtbot.waitSignal(w.library.add_finished, timeout=ADD_TIMEOUT) as blocker:
        drop(w, [pdf])
    rep = blocker.args[0]
    assert [o.status for o in rep.files] == ["added"], rep.files
    row = w.library.row_for("report.pdf")
    assert row is not None and row.state == "ready" and row.pages > 0 and row.chunks > 0
    assert w.library.table.item(0, 1).text() == "ready"
    assert not w.library.busy and not w.library.bar.isVisible()
    assert w.kb.counts().consistent


def test_a_failing_file_shows_its_reason_and_the_others_finish(qtbot, data_dir, tmp_path):
    w = open_window(qtbot, data_dir / "kbs" / "Mixed")
    bad = tmp_path / "broken.pdf"
    bad.write_bytes(b"%PDF-1.7 this is not a PDF body")
    txt = tmp_path / "notes.txt"
    txt.write_text("not a document type Sift reads")
    good = tmp_path / "ntsb.csv"
    shutil.copy(DEMO / "ntsb_accidents.csv", good)
    with qtbot.waitSignal(w.library.add_finished, timeout=ADD_TIMEOUT):
        drop(w, [bad, txt, good])
    rows = {r.name: r for r in w.library.rows}
    assert rows["ntsb.csv"].state == "ready" and rows["ntsb.csv"].tables == 1
    assert rows["broken.pdf"].state == "failed" and rows["broken.pdf"].reason
    assert rows["notes.txt"].state == "failed" and "unsupported" in rows["notes.txt"].reason
    shown = "\n".join(w.messages.texts())
    assert rows["broken.pdf"].reason in shown and "notes.txt" in shown
    # the reason is in the table itself, not only in a message
    r = next(i for i, row in enumerate(w.library.rows) if row.name == "broken.pdf")
    assert w.library.table.item(r, 5).text() == rows["broken.pdf"].reason


def _many_pdfs(eval_dir, tmp_path, n: int = 40) -> Path:
    folder = tmp_path / "many"
    folder.mkdir()
    for p in DEMO.glob("*.pdf"):
        shutil.copy(p, folder / p.name)
    samples = sorted((eval_dir / "pdfs" / "samples").rglob("*.pdf"))[:n]
    for i, p in enumerate(samples):
        shutil.copy(p, folder / f"{i:03d}-{p.name}")
    return folder


def test_cancelling_a_long_ingestion_leaves_the_store_consistent(qtbot, data_dir, tmp_path, eval_dir):
    w = open_window(qtbot, data_dir / "kbs" / "Cancel")
    folder = _many_pdfs(eval_dir, tmp_path)
    seen = []

    def on_state(state):
        seen.append(state)
        p = state.get("add")
        if p is not None and p.detail.get("files", 0) >= 1:
            w.library.cancel()

    with qtbot.waitSignal(w.library.job_ended, timeout=ADD_TIMEOUT):
        w.add_paths([folder])
        w.library.job.published.connect(on_state)
    assert seen, "no progress was published"
    rep_cancelled = [m for m in w.messages.texts() if m.startswith("Cancelled")]
    assert rep_cancelled, w.messages.texts()
    report = w.kb.store.check_consistency()
    assert report.vectors == "ok" and not report.fts_rebuilt, report
    counts = w.kb.counts()
    assert counts.consistent, counts
    docs = w.kb.list()
    ready = [d for d in docs if d.state == "ready"]
    assert 1 <= len(ready) < len(list(folder.glob("*.pdf")))
    assert counts.chunks == sum(d.n_chunks for d in ready)
    assert all(d.state in ("ready", "queued", "failed") for d in docs), [(d.name, d.state) for d in docs]


def test_the_gui_thread_stays_responsive_during_ingestion(qtbot, data_dir, tmp_path, eval_dir):
    """A 10 ms timer keeps being serviced while documents are parsed and embedded."""
    w = open_window(qtbot, data_dir / "kbs" / "Busy")
    folder = _many_pdfs(eval_dir, tmp_path, n=8)
    ticks: list[float] = []
    # faulthandler's watchdog runs without the GIL: when a tick is 100 ms late it writes every
    # thread's stack, so a failure says what held the GUI thread up.
    stacks = tmp_path / "stall-stacks.txt"

    def tick() -> None:
        ticks.append(time.monotonic())
        faulthandler.dump_traceback_later(0.1, file=stack_file)

    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(tick)
    with open(stacks, "w") as stack_file:
        try:
            with qtbot.waitSignal(w.library.add_finished, timeout=ADD_TIMEOUT) as blocker:
                w.add_paths([folder])
                timer.start()
        finally:
            timer.stop()
            faulthandler.cancel_dump_traceback_later()
    rep = blocker.args[0]
    assert len(rep.by_status("added")) >= 4, rep.summary()
    gaps = [b - a for a, b in zip(ticks, ticks[1:])]
    assert len(ticks) > 20
    print(f"\nGUI timer during ingestion: {len(ticks)} ticks over {ticks[-1] - ticks[0]:.1f}s, "
          f"max gap {max(gaps) * 1000:.0f} ms, ingestion: {rep.summary()}")
    assert max(gaps) < 0.1, (f"the event loop stalled for {max(gaps) * 1000:.0f} ms; the threads then:\n"
                             + stacks.read_text()[-6000:])


# ---------------------------------------------------------------------------------------------- evidence


def _hit(kb, query: str, name: str):
    hits = kb.search(query, k=10)
    return next(h for h in hits if h.name == name)


def test_a_search_hit_shows_its_page_with_the_passage_highlighted_in_view(qtbot, demo_copy):
    w = open_window(qtbot, demo_copy)
    hit = next(h for h in w.kb.search(TALLAHASSEE, k=10) if h.kind == "text" and h.page)
    with qtbot.waitSignal(w.evidence.shown, timeout=60_000) as blocker:
        w.evidence.show_items([from_hit(hit, TALLAHASSEE)])
    ev = blocker.args[0]
    assert isinstance(ev, PageEvidence)
    assert ev.page.number == hit.page and ev.item.path == hit.path
    assert ev.rects
    lit = norm(words_in(ev.page, ev.rects))
    first = next(s for s in hit.spans if s.page == hit.page)
    expected = norm(ev.page.text[first.start:first.end])
    assert expected[:20] == lit[:20]
    view = w.evidence.visible_page_rect()
    r = ev.rects[0]
    assert view.top() <= r[1] and r[3] <= view.bottom(), (view, r)
    assert w.evidence.page_label.pixmap() is not None and not w.evidence.page_label.pixmap().isNull()


def test_a_citation_span_is_highlighted_exactly_and_next_prev_walk_the_list(qtbot, demo_copy):
    from core.answer.types import Citation

    w = open_window(qtbot, demo_copy)
    hits = [h for h in w.kb.search(TALLAHASSEE, k=10) if h.kind == "text" and h.page][:2]
    cits = []
    for n, h in enumerate(hits, 1):  # cite the first sentence of each passage, as the aligner would
        s = next(s for s in h.spans if s.page == h.page)
        page = w.kb.store.get_page(h.doc_id, h.page)
        end = page.text.find(".", s.start) + 1 or s.end
        cits.append(Citation(n=n, kind="text", document=h.name, path=h.path, doc_id=h.doc_id,
                             text=page.text[s.start:end], page=h.page, start=s.start, end=end,
                             rects=tuple(span_rects(page, s.start, end)), chunk_id=h.chunk_id))
    items = [from_citation(c, TALLAHASSEE) for c in cits]
    with qtbot.waitSignal(w.evidence.shown, timeout=60_000) as blocker:
        w.evidence.show_items(items, 0)
    ev = blocker.args[0]
    assert norm(words_in(ev.page, ev.rects)) == norm(cits[0].text)
    assert not w.evidence.prev_btn.isEnabled() and w.evidence.next_btn.isEnabled()
    with qtbot.waitSignal(w.evidence.shown, timeout=60_000) as blocker:
        w.evidence.next()
    assert blocker.args[0].item.n == 2 and blocker.args[0].page.number == cits[1].page
    # zoom re-renders larger, the highlight stays
    before = blocker.args[0].width
    with qtbot.waitSignal(w.evidence.shown, timeout=60_000) as blocker:
        w.evidence.step_zoom(1)
    assert blocker.args[0].width > before and blocker.args[0].rects
    # find on the page (Ctrl+F)
    w.evidence.find_edit.setText("probable cause")
    assert w.evidence.find_hits


def test_token_relevance_shades_the_words_that_match_the_question(qtbot, demo_copy):
    w = open_window(qtbot, demo_copy)
    hit = next(h for h in w.kb.search(TALLAHASSEE, k=10) if h.kind == "text" and h.page)
    with qtbot.waitSignal(w.evidence.shown, timeout=60_000):
        w.evidence.show_items([from_hit(hit, TALLAHASSEE)])
    with qtbot.waitSignal(w.evidence.shown, timeout=60_000) as blocker:
        w.evidence.relevance_box.setChecked(True)
    ev = blocker.args[0]
    assert ev.relevance and all(0.0 <= s <= 1.0 for _, s in ev.relevance)
    top = sorted(ev.relevance, key=lambda x: -x[1])[:5]
    top_words = {w_.text.lower().strip(".,:;()") for w_ in ev.page.words for r, _ in top if w_.rect == r}
    assert top_words & {"probable", "cause", "accident", "causes", "cause(s)"}, top_words


def test_table_evidence_shows_the_table_with_the_cited_row(qtbot, demo_copy):
    w = open_window(qtbot, demo_copy)
    hit = next(h for h in w.kb.search("Tallahassee Piper accident table", k=10) if h.kind == "table")
    item = from_hit(hit, "Tallahassee")
    with qtbot.waitSignal(w.evidence.shown, timeout=60_000) as blocker:
        w.evidence.show_items([item])
    ev = blocker.args[0]
    assert isinstance(ev, TableEvidence)
    assert ev.cited_rows == frozenset(hit.row_ids) and len(ev.rows) >= len(hit.row_ids)
    assert w.evidence.stack.currentIndex() == 1
    cited_row = next(i for i, (rid, _) in enumerate(ev.rows) if rid in ev.cited_rows)
    assert w.evidence.table.item(cited_row, 0).background().color().name() != "#000000"
    assert "Tallahassee" in " ".join(" ".join(c) for rid, c in ev.rows if rid in ev.cited_rows)


def test_remove_and_reindex_from_the_library(qtbot, demo_copy):
    w = open_window(qtbot, demo_copy)
    row = w.library.row_for("NARA2022.pdf")
    assert row is not None and row.state == "ready"
    with qtbot.waitSignal(w.library.job_ended, timeout=120_000):
        w.library.remove_documents([row])
    assert w.library.row_for("NARA2022.pdf") is None
    assert all(h.name != "NARA2022.pdf" for h in w.kb.search("strategic plan archives", k=10))
    with qtbot.waitSignal(w.library.job_ended, timeout=300_000):
        w.library.reindex()
    counts = w.kb.counts()
    assert counts.consistent and counts.chunks == sum(r.chunks for r in w.library.rows)
    assert any(t.startswith("Re-indexed") for t in w.messages.texts())


def test_a_state_change_rewrites_only_the_row_that_changed(qtbot, demo_copy):
    """Each Qt call waits for the GIL while a document is ingested, so the library updates only
    the cells that changed rather than re-rendering every row."""
    import dataclasses

    w = open_window(qtbot, demo_copy)
    lib = w.library
    docs = w.kb.list()
    assert len(lib.rows) == len(docs) >= 3
    marked = []
    for r in range(len(lib.rows)):
        for c in range(lib.table.columnCount()):
            it = lib.table.item(r, c)
            if it is not None:
                it.setData(Qt.ItemDataRole.UserRole, "kept")
                marked.append((r, c))
    changed = dataclasses.replace(docs[1], state="failed", error="cannot read: damaged")
    lib._set_docs([docs[0], changed, *docs[2:]])
    assert lib.table.item(1, 1).text() == "failed" and lib.rows[1].reason == "cannot read: damaged"
    assert not lib.table.isColumnHidden(lib.table.columnCount() - 1)  # the reason column appears
    rewritten = {(r, c) for r, c in marked if lib.table.item(r, c).data(Qt.ItemDataRole.UserRole) != "kept"}
    assert rewritten and all(r == 1 for r, _ in rewritten), rewritten
    lib._set_docs(docs)
    assert lib.table.item(1, 1).text() == "ready" and lib.table.isColumnHidden(lib.table.columnCount() - 1)
