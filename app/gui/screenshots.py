"""Drive the real window through its main states and save PNGs (``scripts/screenshots``).

A fresh data folder makes it a first run: the demo knowledge base is created and the demo
documents are added; then the sample question is asked, the first citation clicked, token
relevance switched on, table evidence shown, and the settings dialog opened. Each state is
saved as a PNG of the window. Runs under any display (``scripts/screenshots`` uses Xvfb).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", nargs="?", default="docs/screenshots", help="folder for the PNGs")
    ap.add_argument("--question", default=None)
    ap.add_argument("--size", default="1600x980", help="window size, WxH")
    ap.add_argument("--timeout", type=int, default=1200, help="give up after this many seconds")
    args = ap.parse_args(argv)
    data = tempfile.mkdtemp(prefix="sift-screens-")
    os.environ["SIFT_DATA_DIR"] = data

    from app.gui import kbfolders
    from app.gui.evidence_data import TableEvidence, from_hit
    from app.gui.qt import QApplication, QTimer, QUrl
    from app.gui.window import MainWindow, apply_palette

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    question = args.question or kbfolders.SAMPLE_QUESTION
    app = QApplication.instance() or QApplication([sys.argv[0]])
    app.setApplicationName("Sift")
    apply_palette(app)
    w = MainWindow(first_run=True)
    width, height = (int(x) for x in args.size.split("x"))
    w.resize(width, height)
    w.show()
    saved: list[Path] = []
    state = {"pieces": 0, "streamed_shot": False, "step": "ingest", "failed": ""}

    def shot(name: str, widget=None) -> None:
        app.processEvents()
        p = out / f"{name}.png"
        (widget or w).grab().save(str(p))
        saved.append(p)
        print(f"saved {p}", flush=True)

    def fail(text: str) -> None:
        state["failed"] = text
        print(f"screenshots: {text}", file=sys.stderr, flush=True)
        app.exit(1)

    def on_published(s) -> None:
        p = s.get("add")
        if p is not None and p.detail.get("files", 0) >= 1 and state["step"] == "ingest":
            state["step"] = "ingest-shot"
            shot("01-adding-documents")

    def on_opened(kb) -> None:
        if w.library.job is not None:
            w.library.job.published.connect(on_published)

    def on_added(rep) -> None:
        if rep.failed:
            print(f"screenshots: some demo files failed: {[(o.path, o.reason) for o in rep.failed]}", file=sys.stderr)
        state["step"] = "added"

    def on_job_ended() -> None:
        if state["step"] != "added":
            return
        shot("02-library")
        for f in list(w.messages.messages):  # keep the later shots uncluttered
            w.messages.dismiss(f)
        state["step"] = "ask"
        w.chat.ask(question)
        if w.chat.job is not None:
            w.chat.job.streamed.connect(on_piece)

    def on_piece(_piece: str) -> None:
        state["pieces"] += 1
        if state["pieces"] == 12 and not state["streamed_shot"]:
            state["streamed_shot"] = True
            shot("03-answer-streaming")

    def first_chip(turn) -> int:
        if turn.answer is not None:
            return turn.answer.citations[0].n if turn.answer.citations else 0
        return turn.hits[0].rank if turn.hits else 0

    def on_answer(_obj) -> None:
        turn = w.chat.turns[-1]
        shot("04-answer")
        n = first_chip(turn)
        if not n:
            fail("the answer has no citation to click")
            return
        state["step"] = "evidence"
        scheme = "cite" if turn.answer is not None else "hit"
        w.chat.view.anchorClicked.emit(QUrl(f"{scheme}:{len(w.chat.turns) - 1}:{n}"))

    def on_shown(ev) -> None:
        step = state["step"]
        if step == "evidence":
            shot("05-evidence")
            state["step"] = "relevance"
            w.evidence.relevance_box.setChecked(True)
        elif step == "relevance":
            shot("06-token-relevance")
            w.evidence.relevance_box.blockSignals(True)
            w.evidence.relevance_box.setChecked(False)
            w.evidence.relevance_box.blockSignals(False)
            state["step"] = "table"
            hits = [h for h in w.kb.search("How old was the pilot of the Piper?", k=10) if h.kind == "table"]
            if hits:
                w.evidence.show_items([from_hit(hits[0], "How old was the pilot of the Piper?")])
            else:
                finish()
        elif step == "table" and isinstance(ev, TableEvidence):
            shot("07-table-evidence")
            finish()

    def finish() -> None:
        dlg = w.open_settings()
        dlg.resize(900, 480)
        QTimer.singleShot(200, lambda: (shot("08-settings", dlg), dlg.reject(), app.exit(0)))

    w.kb_opened.connect(on_opened)
    w.library.add_finished.connect(on_added)
    w.library.job_ended.connect(on_job_ended)
    w.chat.answered.connect(on_answer)
    w.chat.searched.connect(on_answer)
    w.chat.ask_failed.connect(lambda e: fail(f"asking failed: {e.error}"))
    w.evidence.shown.connect(on_shown)
    w.evidence.failed.connect(lambda e: fail(f"evidence failed: {e.error}"))
    w.crashed.connect(lambda report: fail("crash:\n" + report))
    QTimer.singleShot(args.timeout * 1000, lambda: fail(f"timed out at step {state['step']}"))
    rc = app.exec()
    w.close()
    print(f"{len(saved)} screenshots in {out}" + (f"; FAILED: {state['failed']}" if state["failed"] else ""))
    return rc


if __name__ == "__main__":
    import multiprocessing

    multiprocessing.freeze_support()
    raise SystemExit(main(sys.argv[1:]))
