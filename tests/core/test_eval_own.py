"""``sift eval own``: sampling, question checks, the question cache, scoring with the real search
over the demo NTSB reports, and one run with the bundled chat model."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from core.errors import Cancelled
from core.eval.own import (MIN_WORDS, PROMPT_VERSION, GeneratedQuestion, OwnEvalError, QuestionCache, SearchConfig,
                           clean_reply, default_configs, evaluate_own, generate_questions, parse_configs,
                           question_problem, sample_chunks)
from core.jobs import CancelToken

ROOT = Path(__file__).resolve().parents[2]
PASSAGE = ("The pilot, age 85, was attempting to land a Piper PA-22-150 at his private airstrip. While on final "
           "approach for the 1,500-foot-long turf strip, the airplane contacted trees, then utility wires, and came "
           "to rest upright.")


# ---------------------------------------------------------------------- replies and checks


@pytest.mark.parametrize("reply, question", [
    ("How old was the pilot of the Piper PA-22-150?", "How old was the pilot of the Piper PA-22-150?"),
    ('Question: "How old was the pilot of the Piper?"\nAnswer: 85', "How old was the pilot of the Piper?"),
    ("\n\n1. What did the Piper hit on final approach? It hit trees.", "What did the Piper hit on final approach?"),
    ("", ""),
])
def test_clean_reply_keeps_the_question(reply, question):
    assert clean_reply(reply) == question


@pytest.mark.parametrize("question, problem", [
    ("What did the Piper PA-22-150 strike before it came to rest?", ""),
    ("The pilot was 85.", "not a question"),
    ("Age of pilot?", "too short"),
    ("What is the main topic of the passage about the pilot?", "refers to the passage"),
    ("Was the pilot attempting to land a Piper PA-22-150 at his private airstrip?", "copies the passage"),
    ("When was the Cologne Cathedral in Germany completed?", "not about the passage"),
    ("What " + "very " * 40 + "long question about the pilot?", "too long"),
])
def test_degenerate_questions_are_rejected(question, problem):
    assert question_problem(question, PASSAGE) == problem


def test_a_repeated_question_is_rejected():
    q = "What did the Piper PA-22-150 strike before it came to rest?"
    assert question_problem(q.lower(), PASSAGE, seen=[q]) == "duplicate"


# ---------------------------------------------------------------------- configurations


def test_default_configs_are_the_first_stage_runs_with_later_stages_off():
    cfgs = {c.name: c.options for c in default_configs()}
    assert list(cfgs) == ["bm25", "dense", "hybrid", "hybrid-minmax"]
    assert cfgs["bm25"]["stages"] == ("bm25",) and cfgs["hybrid"]["fusion"] == "rrf"
    assert all(o.get("late") is False and o.get("rerank") is False for o in cfgs.values())


def test_parse_configs_takes_names_and_json_options():
    cfgs = parse_configs(["bm25,dense", 'mine={"stages": ["bm25", "dense"], "fusion": "rrf", "candidates": 50}'])
    assert [c.name for c in cfgs] == ["bm25", "dense", "mine"]
    assert cfgs[2].options == {"stages": ("bm25", "dense"), "fusion": "rrf", "candidates": 50}
    assert [c.name for c in parse_configs(None)] == [c.name for c in default_configs()]
    with pytest.raises(ValueError, match="unknown configuration 'colbert'"):
        parse_configs(["colbert"])
    with pytest.raises(ValueError, match="not JSON"):
        parse_configs(["x={stages: bm25}"])


# ---------------------------------------------------------------------- a real knowledge base


@pytest.fixture(scope="module")
def kb(tmp_path_factory):
    """The two demo NTSB reports, stored for real."""
    from core.kb import KnowledgeBase

    root = tmp_path_factory.mktemp("own")
    docs = root / "docs"
    docs.mkdir()
    for name in ("20071229X02007.pdf", "20080111X00040.pdf"):
        shutil.copy(ROOT / "resources" / "demo" / name, docs)
    k = KnowledgeBase(root / "kb")
    rep = k.add([docs])
    assert len(rep.by_status("added")) == 2
    yield k
    k.close()


def test_sample_is_spread_over_documents_and_repeatable(kb):
    docs = kb.store.list_documents(state="ready")
    eligible = {int(d.id): [c for c in kb.store.document_chunks(d.id) if c.kind == "text"
                            and len(c.text.split()) >= MIN_WORDS] for d in docs}
    assert all(eligible.values())
    s = sample_chunks(kb.store, 4, seed=1)
    assert len(s) == 4
    per_doc = {d: sum(1 for c in s if int(c.doc_id) == d) for d in eligible}
    assert sorted(per_doc.values()) == [2, 2]  # each report gives its share before either gives more
    assert [c.chunk_id for c in s] == [c.chunk_id for c in sample_chunks(kb.store, 4, seed=1)]
    assert all(len(c.text.split()) >= MIN_WORDS and c.document.endswith(".pdf") for c in s)
    everything = sample_chunks(kb.store, 10_000, seed=1)
    assert len(everything) == sum(len(v) for v in eligible.values())  # n larger than the pool: all of it
    assert len({c.chunk_id for c in everything}) == len(everything)


class ScriptedLLM:
    """Replies from a function of the passage; records each call. The sampling, caching and
    scoring code around the model does not depend on which model writes the questions."""

    path = Path("scripted-model.gguf")

    def __init__(self, write):
        self.write = write
        self.calls: list[tuple[str, float]] = []

    def chat(self, messages, *, max_tokens=48, temperature=0.0, cancel=None):
        passage = re.search(r"<<<\n(.*)\n>>>", messages[-1].content, re.S).group(1)
        self.calls.append((passage, temperature))
        return self.write(passage, len(self.calls))


def _question_from(passage: str, call: int) -> str:
    """A question that names some of the passage's rarer words (what a good question does)."""
    words = [w for w in re.findall(r"[A-Za-z][A-Za-z-]{5,}", passage)]
    rare = sorted(set(words), key=lambda w: (words.count(w), w))[:6]
    return f"Which report mentions {', '.join(rare)}?"


def test_questions_are_cached_by_chunk_model_and_prompt(kb, tmp_path):
    chunks = sample_chunks(kb.store, 3, seed=0)
    cache_path = tmp_path / "q.json"
    llm = ScriptedLLM(_question_from)
    qs, written = generate_questions(llm, chunks, cache=QuestionCache(cache_path))
    assert written == 3 and all(q.question and not q.cached for q in qs)
    data = json.loads(cache_path.read_text(encoding="utf-8"))
    assert len(data) == 3 and all(k.endswith(f":scripted-model.gguf:{PROMPT_VERSION}") for k in data)

    again = ScriptedLLM(_question_from)
    qs2, written2 = generate_questions(again, chunks, cache=QuestionCache(cache_path))
    assert written2 == 0 and again.calls == [] and all(q.cached for q in qs2)
    assert [q.question for q in qs2] == [q.question for q in qs]

    other = ScriptedLLM(_question_from)
    other.path = Path("another-model.gguf")
    generate_questions(other, chunks, cache=QuestionCache(cache_path))
    assert len(other.calls) == 3  # another model writes its own


def test_a_rejected_reply_is_retried_once_with_sampling(kb):
    chunks = sample_chunks(kb.store, 2, seed=0)
    llm = ScriptedLLM(lambda p, n: "What does the passage say?" if n in (1, 3, 4) else _question_from(p, n))
    qs, written = generate_questions(llm, chunks)
    assert written == 4 and [t for _, t in llm.calls] == [0.0, 0.8, 0.0, 0.8]
    assert qs[0].question and not qs[0].rejected
    assert qs[1] == GeneratedQuestion(chunks[1].chunk_id, chunks[1].document, "", "refers to the passage")


def test_cancel_stops_generation_and_keeps_what_was_written(kb, tmp_path):
    chunks = sample_chunks(kb.store, 3, seed=0)
    cancel = CancelToken()

    def write(passage, n):
        if n == 2:
            cancel.cancel()
        return _question_from(passage, n)

    cache_path = tmp_path / "q.json"
    with pytest.raises(Cancelled):
        generate_questions(ScriptedLLM(write), chunks, cache=QuestionCache(cache_path), cancel=cancel)
    assert len(json.loads(cache_path.read_text(encoding="utf-8"))) == 1  # the second reply was cut by the cancel


def test_evaluation_scores_every_configuration_with_the_real_search(kb, tmp_path):
    progress = []
    configs = [SearchConfig("bm25", {"stages": ("bm25",)}), SearchConfig("default", {})]
    rep = evaluate_own(kb, n=6, seed=0, configs=configs, llm=ScriptedLLM(_question_from), progress=progress.append)
    assert rep.n_sampled == 6 and len(rep.accepted) == 6 and rep.generated == 6
    assert set(rep.results) == {"bm25", "default"} and rep.best in rep.results
    for r in rep.results.values():
        m = r.metrics
        assert 0 <= m["hit@1"] <= m["hit@5"] <= m["hit@10"] <= 1
        assert m["hit@10"] > 0  # questions built from a chunk's rare words find it
        assert len(r.ranks) == 6 and r.p50_ms > 0
        found = [v for v in r.ranks.values() if v]
        assert m["hit@1"] == pytest.approx(sum(1 for v in found if v == 1) / 6)
        assert m["mrr@10"] == pytest.approx(sum(1 / v for v in found) / 6)
    j = rep.to_json()
    assert set(j["configs"]["bm25"]) == {"hit@1", "hit@5", "hit@10", "mrr@10", "p50_ms", "p95_ms"}
    assert j["n_questions"] == 6 and j["rejected"] == {} and len(j["questions"]) == 6
    assert {p.stage for p in progress} == {"questions", "eval"}
    assert (Path(kb.folder) / "eval" / "own_questions.json").is_file()  # cached in the knowledge base folder


def test_no_usable_question_is_a_known_error(kb):
    with pytest.raises(OwnEvalError, match="no usable question"):
        evaluate_own(kb, n=2, llm=ScriptedLLM(lambda p, n: "Hello!"), use_cache=False)


def test_a_knowledge_base_without_prose_is_a_known_error(tmp_path):
    from core.kb import KnowledgeBase

    with KnowledgeBase(tmp_path / "empty") as empty:
        with pytest.raises(OwnEvalError, match="no text chunks"):
            evaluate_own(empty, n=5, llm=ScriptedLLM(_question_from))


@pytest.mark.slow
def test_the_bundled_model_writes_questions_that_are_cached(kb):
    rep = evaluate_own(kb, n=2, seed=3, configs=[SearchConfig("hybrid", {})])
    assert rep.n_sampled == 2 and rep.generated >= 2
    texts = {c.chunk_id: c.text for c in sample_chunks(kb.store, 2, seed=3)}
    for q in rep.questions:  # each outcome is a question that passes the checks, or a named rejection
        assert (q.question and question_problem(q.question, texts[q.chunk_id]) == "") or (not q.question
                                                                                           and q.rejected)
    rep2 = evaluate_own(kb, n=2, seed=3, configs=[SearchConfig("hybrid", {})])
    assert rep2.generated == 0 and [q.question for q in rep2.questions] == [q.question for q in rep.questions]
