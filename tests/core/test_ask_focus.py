"""The answer path's handling of small-model failures (issue 5): the model sees the passages' question-
relevant sentences, a bare-marker reply is retried, and the aligner ignores words about the sources."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from core.answer.align import Source, align_answer, claim_words, content_words
from core.answer.ask import RETRY_PROMPT, SYSTEM_PROMPT, _answer_passages, _Run, build_prompt, focus
from core.answer.types import AskOptions

PASSAGE = ("Experiments Setup\nMLM+BRLM-HA 36.30 34.98 29.91 34.99 14.21 24.26. Three pivot settings are conducted in "
           "our experiments. We use 80K BPE splits as the vocabulary. The prediction accuracy of masked words is "
           "used as a stopping criterion. We compare our ap-\nproaches with related approaches of pivoting, "
           "multilingual\nNMT (MNMT), and cross-lingual transfer. The results show that our approaches "
           "consistently outperform other approaches. Table 3 reports the Multi-UN results.")


def _src(n=1, text=PASSAGE, heading="Experiments Setup", kind="text") -> Source:
    return Source(n=n, chunk_id=10 + n, doc_id=1, document="paper.pdf", path="/d/paper.pdf", text=text, kind=kind,
                  heading=heading)


def test_focus_keeps_the_sentences_about_the_question_in_reading_order():
    (s,) = focus("which multilingual approaches do they compare with in the pivot settings?", [_src()], keep=3)
    body = s.text  # the heading goes to the source tag (build_prompt)
    prompt, _ = build_prompt("q", [s], count_tokens=lambda t: len(t.split()), budget=1000)
    assert 'section="Experiments Setup"' in prompt and "Experiments Setup\n" not in prompt
    # the best sentence (joined across its hyphenated line break), the one after it, and the next best
    # (before them in the text: reading order, not score order), gaps marked; nothing unrelated
    assert body == ("Three pivot settings are conducted in our experiments. … We compare our approaches with "
                    "related approaches of pivoting, multilingual NMT (MNMT), and cross-lingual transfer. The "
                    "results show that our approaches consistently outperform other approaches.")


def test_focus_leaves_short_passages_and_tables_whole():
    short = _src(text="Experiments Setup\nWe compare with pivoting. It is strong.")
    table = _src(text="Table: p7-t1\nModel | F1\nAQA | 40.5", kind="table", heading="")
    a, b = focus("what do they compare with?", [short, table])
    assert a.text == "We compare with pivoting. It is strong." and b.text == table.text
    assert (a.n, a.chunk_id, b.n) == (1, 11, 1)


def test_meta_words_of_an_answer_are_not_claims():
    words = claim_words('The baselines are presented in the text, specifically in the section titled "Setup" '
                        'where it mentions pivoting.')
    assert set(words) == {"baselin", "setup", "pivot"}
    assert "text" in content_words("the text")  # sources keep them


def test_an_answer_that_talks_about_its_source_is_still_aligned():
    src = _src(text="Existing methods are divided into four categories: pivot-based method, transfer learning, "
                    "multilingual NMT, and unsupervised NMT.", heading="")
    al = align_answer('The pivot-based baselines are presented in the text, specifically where it mentions '
                      '"pivot-based method, transfer learning, multilingual NMT, and unsupervised NMT."', [src])
    assert [s.supported for s in al.sentences] == [True] and al.best[0] >= 0.6


def test_words_hyphenated_across_a_pdf_line_break_align():
    al = align_answer("They compare with related approaches of pivoting.", [_src(heading="")])
    assert al.sentences[0].supported and "We compare our ap-\nproaches" in al.citations[0].text


class _ScriptedLLM:
    """Replies from a script, one per call (the retry logic does not care which model runs)."""

    n_ctx = 4096
    name = "scripted"

    def __init__(self, *replies: str) -> None:
        self.replies, self.systems = list(replies), []

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def stream_chat(self, messages, **kw):
        self.systems.append(messages[0].content)
        yield self.replies.pop(0)


@pytest.fixture(scope="module")
def embedder():
    from core.models.embedder import Embedder

    return Embedder.default(device="cpu")


def _hit(text: str):
    return SimpleNamespace(chunk_id=11, doc_id=1, name="paper.pdf", path="/d/paper.pdf", text=text, kind="text",
                           spans=(), table=None, row_ids=(), page=5, heading="", stages=())


def test_a_reply_of_bare_markers_is_asked_again(embedder):
    llm = _ScriptedLLM("[1] [2] [3]", "They compare with pivoting, multilingual NMT and cross-lingual transfer [1].")
    kb = SimpleNamespace(llm=llm, embedder=embedder, store=SimpleNamespace(get_page=lambda doc, page: None))
    trace: dict = {}
    streamed: list[str] = []
    run = _Run(kb, "which approaches do they compare with?", AskOptions(), streamed.append, None, None, trace=trace)
    reply, al = _answer_passages(run, run.question, [_hit(PASSAGE)])
    assert llm.systems == [SYSTEM_PROMPT, RETRY_PROMPT]
    assert trace["reply"] == "[1] [2] [3]" and trace["retry"] == reply and trace["outcome"] == "answered"
    assert "" in streamed  # the bare markers shown so far are cleared
    assert al is not None and al.sentences[0].supported and al.citations[0].page == 5


def test_a_reply_that_only_lists_the_sources_says_nothing():
    from core.answer.ask import _says_nothing

    srcs = [_src(1), _src(2, heading="4 TRAINING")]
    assert _says_nothing("[1] [2] [3]", srcs) and _says_nothing("[1], [2].", srcs)
    assert _says_nothing("[1] Experiments Setup\n[2] 4 TRAINING\n[3] paper.pdf", srcs)
    assert not _says_nothing("No [1].", srcs) and not _says_nothing("Yes.", srcs)
    assert not _says_nothing("They compare with pivoting [1].", srcs)
    q = "What is the Random Kitchen Sink approach?"
    assert _says_nothing("The Random Kitchen Sink approach is described in the text [1].", srcs, q)
    assert _says_nothing("The Random Kitchen Sink approach is described in the first source, [1].", srcs, q)
    assert not _says_nothing("It maps data vectors to a space where they separate linearly [1].", srcs, q)


def test_a_second_reply_that_says_nothing_is_declined(embedder):
    llm = _ScriptedLLM("[1] [2]", "The approaches are described in the text [1].")
    kb = SimpleNamespace(llm=llm, embedder=embedder, store=SimpleNamespace(get_page=lambda doc, page: None))
    trace: dict = {}
    run = _Run(kb, "which approaches do they compare with?", AskOptions(), None, None, None, trace=trace)
    _, al = _answer_passages(run, run.question, [_hit(PASSAGE)])
    assert al is None and len(llm.systems) == 2 and trace["outcome"] == "said nothing"


def test_a_decline_off_topic_is_not_asked_again(embedder):
    llm = _ScriptedLLM("The documents do not contain an answer to this question.")
    kb = SimpleNamespace(llm=llm, embedder=embedder, store=SimpleNamespace(get_page=lambda doc, page: None))
    trace: dict = {}
    run = _Run(kb, "what is the capital of Peru?", AskOptions(), None, None, None, trace=trace)
    _, al = _answer_passages(run, run.question, [_hit(PASSAGE)])
    assert al is None and len(llm.systems) == 1 and trace["outcome"] == "model declined" and "retry" not in trace


def test_a_decline_with_the_answering_sentence_shown_is_asked_again(embedder):
    from core.answer.ask import DECLINE_TEXT

    q = "which multilingual approaches do they compare with?"
    for second, outcome in (("They compare with pivoting and multilingual NMT [2].", "answered"),
                            (DECLINE_TEXT, "model declined"),
                            ("They compare with the Zorblax method and Quintic NMT.", "nothing supported")):
        llm = _ScriptedLLM(DECLINE_TEXT, second)
        kb = SimpleNamespace(llm=llm, embedder=embedder, store=SimpleNamespace(get_page=lambda doc, page: None))
        trace: dict = {}
        _, al = _answer_passages(_Run(kb, q, AskOptions(), None, None, None, trace=trace), q, [_hit(PASSAGE)])
        assert llm.systems == [SYSTEM_PROMPT, RETRY_PROMPT] and trace["retry_after"] == "declined"
        assert trace["outcome"] == outcome and (al is not None) == (outcome == "answered")
