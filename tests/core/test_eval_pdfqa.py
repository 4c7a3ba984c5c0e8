"""``sift eval pdfqa``: the scoring functions, the questions file, the converter, and a real run
over a demo NTSB report (search hits, and answers from the bundled chat model)."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from core.eval.pdfqa import (EvidenceItem, PdfQaError, PdfQuestion, answer_correct, answer_f1, contains_text,
                             doc_matches, evaluate_pdfqa, evidence_matches, is_short, load_questions,
                             normalize_answer, normalize_text, score_evidence)

ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------- normalisation


def test_normalize_text_joins_hyphenated_line_breaks_and_drops_punctuation():
    assert normalize_text("Multi-\nlingual  NMT (MNMT),\tBIBREF19.") == "multilingual nmt mnmt bibref19"
    assert normalize_text("ﬁrst\u00a0Step") == "first step"  # NFKC: ligature and no-break space


def test_contains_text_matches_whole_words_only():
    assert contains_text("The pilot, age 85, was attempting to land.", "pilot age 85")
    assert not contains_text("The pilot, age 850, was attempting to land.", "pilot age 85")
    assert not contains_text("anything", "")


def test_normalize_answer_is_squads():
    assert normalize_answer("The  Stanford NER, and a spaCy!") == "stanford ner and spacy"
    assert normalize_answer("“Quoted” — answer") == "quoted answer"


# ---------------------------------------------------------------------- answers


def test_answer_correct_is_containment_of_a_short_gold_answer():
    golds = ["Europarl, MultiUN", "Europarl BIBREF31, MultiUN BIBREF32"]
    assert answer_correct("They used the Europarl, MultiUN corpora [1].", golds) is True
    assert answer_correct("They used MultiUN and Europarl [1].", golds) is False
    assert answer_correct("The pilot was 85 years old [2].", ["85"]) is True
    assert answer_correct("The pilot was 850 years old.", ["85"]) is False  # whole words, not substrings


def test_answer_correct_yes_no_must_lead_the_answer():
    assert answer_correct("No, the authors did not use a platform [1].", ["No", "No"]) is True
    assert answer_correct("Yes; there is no error analysis.", ["No"]) is False


def test_answer_correct_has_nothing_to_say_about_long_answers():
    long = "Based on the documents, total net sales rose from $82,959 million to $117,154 million and then fell."
    assert not is_short(long)
    assert answer_correct("Sales rose.", [long]) is None


def test_answer_f1_takes_the_best_gold_answer_and_ignores_citation_markers():
    assert answer_f1("joint goal accuracy [1]", ["joint goal accuracy"]) == 1.0
    f1 = answer_f1("the joint accuracy", ["joint goal accuracy", "slot accuracy"])
    assert f1 == pytest.approx(2 * (2 / 2) * (2 / 3) / (2 / 2 + 2 / 3))
    assert answer_f1("", ["something"]) == 0.0


# ---------------------------------------------------------------------- evidence


def _q(**kw) -> PdfQuestion:
    base = dict(question="q?", answer="a", doc="paper.pdf")
    return PdfQuestion(**{**base, **kw})


def test_evidence_hit_on_the_gold_page_of_the_gold_document():
    q = _q(page=3)
    assert evidence_matches(EvidenceItem("paper.pdf", (2, 3), "text"), q)
    assert not evidence_matches(EvidenceItem("paper.pdf", (4,), "text"), q)
    assert not evidence_matches(EvidenceItem("other.pdf", (3,), "text"), q)  # right page, wrong document


def test_evidence_hit_by_text_either_way_round():
    q = _q(evidence="firstly translates a source language into the pivot language")
    chunk = "Pivoting firstly trans-\nlates a source language into the pivot language, then into the target."
    assert evidence_matches(EvidenceItem("paper.pdf", (2,), chunk), q)
    assert not evidence_matches(EvidenceItem("paper.pdf", (2,), "a source language into the target"), q)
    # a cited sentence of 8+ words that lies inside a longer gold evidence passage counts …
    q2 = _q(evidence="The pilot reported a total flight experience of 2,319 hours; of which, most was in the same make")
    cited = "the pilot reported a total flight experience of 2,319"
    assert evidence_matches(EvidenceItem("paper.pdf", (1,), cited), q2)
    # … a shorter one does not (too easily found anywhere)
    assert not evidence_matches(EvidenceItem("paper.pdf", (1,), "total flight experience of 2,319"), q2)


def test_score_evidence_at_k_and_document_hit():
    q = _q(page=5, docs=("paper.pdf", "paper2.pdf"))
    items = [EvidenceItem("x.pdf", (5,), ""), EvidenceItem("paper2.pdf", (1,), ""), EvidenceItem("paper.pdf", (5,), "")]
    ev, doc = score_evidence(items, q, (1, 2, 5))
    assert ev == {1: False, 2: False, 5: True}
    assert doc == {1: False, 2: True, 5: True}
    ev, _ = score_evidence(items, _q(), (1, 5))  # no page, no evidence: not scored
    assert ev == {1: None, 5: None}


def test_a_gold_name_without_suffix_matches_the_file_stem():
    assert doc_matches(EvidenceItem("1912.01214.pdf", (), ""), _q(doc="1912.01214"))
    assert not doc_matches(EvidenceItem("1912.01214.pdf", (), ""), _q(doc="1912.0121"))
    assert doc_matches(EvidenceItem("2023 Q3 AAPL.PDF", (), ""), _q(doc="2023 q3 aapl.pdf"))


# ---------------------------------------------------------------------- the questions file


def test_load_questions_reads_the_format_and_its_extensions(tmp_path):
    p = tmp_path / "q.jsonl"
    p.write_text(json.dumps({"question": "How old? ", "answer": "85", "doc": "a.pdf", "page": 1}) + "\n\n"
                 + json.dumps({"question": "Which?", "answer": "x", "answers": ["x", "y"], "doc": "a.pdf",
                               "docs": ["a.pdf", "b.pdf"], "evidence": "some text", "id": "q2"}) + "\n",
                 encoding="utf-8")
    qs = load_questions(p)
    assert [q.question for q in qs] == ["How old?", "Which?"]
    assert qs[0].page == 1 and qs[0].has_evidence and qs[0].gold_answers == ("85",)
    assert qs[1].gold_answers == ("x", "y") and qs[1].gold_docs == ("a.pdf", "b.pdf") and qs[1].id == "q2"


@pytest.mark.parametrize("line, message", [
    ("not json", "not JSON"),
    ('{"question": "q", "doc": "a.pdf"}', "missing answer"),
    ('{"question": "q", "answer": "a", "doc": "a.pdf", "page": 0}', "1-based"),
    ('[1, 2]', "expected an object"),
])
def test_load_questions_names_the_bad_line(tmp_path, line, message):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"question": "q", "answer": "a", "doc": "a.pdf"}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(PdfQaError, match=f"bad.jsonl:2: .*{message}"):
        load_questions(p)


def test_a_missing_questions_file_is_a_known_error(tmp_path):
    with pytest.raises(PdfQaError, match="no such file"):
        load_questions(tmp_path / "nope.jsonl")


# ---------------------------------------------------------------------- the converter


def test_converted_sets_match_the_shared_data(eval_dir, tmp_path):
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import pdfqa_convert
    finally:
        sys.path.remove(str(ROOT / "bench"))
    assert pdfqa_convert.main(["--shared", str(eval_dir.parent), "--out", str(tmp_path)]) == 0
    for name in ("pdfqa_arxiv.jsonl", "pdfqa_sec10q.jsonl"):
        made = (tmp_path / name).read_text(encoding="utf-8")
        assert made == (ROOT / "bench" / "data" / name).read_text(encoding="utf-8"), f"{name} is stale"
    arxiv = load_questions(tmp_path / "pdfqa_arxiv.jsonl")
    present = {p.name for p in (eval_dir / "pdfqa" / "arxiv").glob("*.pdf")}
    assert arxiv and all(q.doc in present for q in arxiv)  # only papers that are here
    for q in arxiv:  # derived evidence really is on the page it names
        if q.page is not None:
            assert pdfqa_convert.locate(q.evidence, pdfqa_convert.page_texts(eval_dir / "pdfqa/arxiv" / q.doc)) \
                == [q.page]
    sec = load_questions(tmp_path / "pdfqa_sec10q.jsonl")
    assert len(sec) == 9 and all(set(q.gold_docs) <= {p.name for p in (eval_dir / "pdfqa/sec-10q/docs").glob("*.pdf")}
                                 for q in sec)
    aapl = [q for q in sec if "Apple" in q.question]
    assert aapl and all(len(q.gold_docs) == 4 and all("AAPL" in d for d in q.gold_docs) for q in aapl)


def test_arxiv_versions_are_matched_exactly():
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import pdfqa_convert
    finally:
        sys.path.remove(str(ROOT / "bench"))
    pdfs = [Path("1706.03762v7.pdf"), Path("1912.01214.pdf")]
    assert pdfqa_convert.arxiv_file("1706.03762", pdfs) == pdfs[0]
    assert pdfqa_convert.arxiv_file("1912.01214", pdfs) == pdfs[1]
    assert pdfqa_convert.arxiv_file("1706.0376", pdfs) is None


# ---------------------------------------------------------------------- a real run


@pytest.fixture(scope="module")
def ntsb(tmp_path_factory):
    """One demo NTSB report in a folder, a knowledge base beside it, and questions about it."""
    from core.kb import KnowledgeBase

    root = tmp_path_factory.mktemp("pdfqa")
    docs = root / "docs"
    docs.mkdir()
    shutil.copy(ROOT / "resources" / "demo" / "20071229X02007.pdf", docs)
    qfile = root / "q.jsonl"
    rows = [
        {"question": "How old was the pilot who tried to land the Piper PA-22-150 at his private airstrip?",
         "answer": "85", "doc": "20071229X02007.pdf", "page": 1},
        {"question": "What was the total flight experience of the pilot in hours?", "answer": "2,319 hours",
         "doc": "20071229X02007.pdf", "evidence": "total flight experience of 2,319 hours"},
        {"question": "Who signed the Gettysburg Address?", "answer": "Lincoln", "doc": "lincoln.pdf"},  # not here
    ]
    qfile.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    kb = KnowledgeBase(root / "kb")
    yield kb, docs, qfile
    kb.close()


def test_retrieval_only_run_finds_the_gold_page(ntsb):
    kb, docs, qfile = ntsb
    rep = evaluate_pdfqa(kb, load_questions(qfile), docs, retrieval_only=True, dataset="ntsb")
    j = rep.to_json()
    assert (j["mode"], j["n"], j["skipped"], j["n_evidence"]) == ("retrieval", 2, 1, 2)
    assert j["doc_hit@1"] == 1.0 and j["evidence_hit@5"] == 1.0
    assert rep.results[0].evidence_hit[1] is True  # the age is in the analysis on page 1
    assert "answer_accuracy" not in j and j["p50_ms"] > 0
    again = evaluate_pdfqa(kb, load_questions(qfile), docs, retrieval_only=True, limit=1)
    assert again.added == 0 and len(again.results) == 1  # the document is stored once


def test_no_question_about_the_folder_is_a_known_error(ntsb, tmp_path):
    kb, docs, _ = ntsb
    with pytest.raises(PdfQaError, match="none of the 1 questions"):
        evaluate_pdfqa(kb, [_q(doc="elsewhere.pdf")], docs, retrieval_only=True)


@pytest.mark.slow
def test_answer_run_with_the_bundled_model(ntsb):
    from core.kb import KnowledgeBase

    if not hasattr(KnowledgeBase, "ask"):
        pytest.fail("KnowledgeBase.ask is missing")
    kb, docs, qfile = ntsb
    out = docs.parent / "answers.jsonl"
    rep = evaluate_pdfqa(kb, load_questions(qfile), docs, limit=1, dataset="ntsb", out=out)
    j = rep.to_json()
    (row,) = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    t = row["trace"]  # why the answer came out as it did
    assert t["gate"]["passed"] in (True, False) and t["hits"] and t["hits"][0]["document"] == "20071229X02007.pdf"
    assert t["outcome"] in ("gate declined", "model declined", "empty reply", "said nothing", "nothing supported",
                            "answered")
    assert (t["outcome"] != "answered") == row["declined"]
    if t["gate"]["passed"]:
        assert t["reply"] is not None and t["sources"] and t["prompt_tokens"] > 0
        assert row["gold_in_sources"] == [s["n"] for s in t["sources"] if contains_text(s["text"], "85")]
        assert row["evidence_in_sources"]  # the gold page is among the sources
    assert (j["mode"], j["n"], j["n_short"]) == ("answer", 1, 1)
    r = rep.results[0]
    assert r.answer and r.f1 is not None
    assert r.correct is (not r.declined and "85" in normalize_answer(r.answer).split())
    assert j["answer_accuracy"] == float(r.correct)
    if not r.declined:  # an answer carries citations, and those are what evidence hit scores
        assert r.doc_hit[5] is True


def test_a_folder_whose_documents_cannot_be_stored_is_a_known_error(tmp_path):
    from core.kb import KnowledgeBase

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "report.pdf").write_bytes(b"%PDF-1.4\nthis is not really a PDF\n")
    with KnowledgeBase(tmp_path / "kb") as kb:
        with pytest.raises(PdfQaError, match="no document of .* could be stored: .*report.pdf"):
            evaluate_pdfqa(kb, [_q(doc="report.pdf")], docs, retrieval_only=True)
