"""Asking in the window with the real chat model: streaming, citation chips, evidence, history."""
from __future__ import annotations

import pytest

from app.gui.evidence_data import PageEvidence
from app.gui.qt import QApplication, QUrl
from core.kb import KnowledgeBase
from tests.app.test_gui import (TALLAHASSEE, data_dir, demo_copy, demo_template, norm, open_window,  # noqa: F401
                                words_in)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not hasattr(KnowledgeBase, "ask"), reason="KnowledgeBase.ask is not there yet"),
]
ANSWER_TIMEOUT = 900_000  # the 0.5B model on a busy 2-core CPU takes minutes


def test_ask_streams_cites_and_the_citation_shows_its_highlighted_sentence(qtbot, demo_copy):
    w = open_window(qtbot, demo_copy)
    pieces: list[str] = []
    with qtbot.waitSignal(w.chat.answered, timeout=ANSWER_TIMEOUT) as blocker:
        w.chat.input.setText(TALLAHASSEE)
        w.chat.ask_btn.click()
        w.chat.job.streamed.connect(pieces.append)
    ans = blocker.args[0]
    assert w.chat.job is None and w.chat.copy_btn.isEnabled() and w.chat.ask_btn.isVisible()
    assert len(pieces) >= 2, "the answer should arrive piece by piece"
    assert ans.citations, ans.text
    assert "misjudged" in ans.text.lower() or "obstacle" in ans.text.lower(), ans.text
    shown = w.chat.view.toHtml()
    n = ans.citations[0].n
    assert f"cite:0:{n}" in shown and "route: " + ans.route in w.chat.view.toPlainText()

    cit = ans.citation(n)
    with qtbot.waitSignal(w.evidence.shown, timeout=60_000) as ev_blocker:
        w.chat.view.anchorClicked.emit(QUrl(f"cite:0:{n}"))  # what a click on the [n] chip sends
    ev = ev_blocker.args[0]
    assert isinstance(ev, PageEvidence)
    assert ev.item.path == cit.path and ev.page.number == cit.page
    assert ev.rects
    lit = norm(words_in(ev.page, ev.rects))
    assert set(norm(cit.text)) <= set(lit), (cit.text, lit)
    assert "misjudged" in lit or "obstacles" in lit
    view = w.evidence.visible_page_rect()
    assert view.top() <= ev.rects[0][1] <= view.bottom()

    copied = w.chat.copy_turn(0)
    assert QApplication.clipboard().text() == copied and f"[{n}] {cit.document}, page {cit.page}" in copied

    w.close()  # history survives a restart, and its citations still open their evidence
    w2 = open_window(qtbot, demo_copy)
    assert [t.answer for t in w2.chat.turns] == [ans]
    with qtbot.waitSignal(w2.evidence.shown, timeout=60_000) as ev_blocker:
        w2.chat.view.anchorClicked.emit(QUrl(f"cite:0:{n}"))
    assert ev_blocker.args[0].rects == ev.rects
