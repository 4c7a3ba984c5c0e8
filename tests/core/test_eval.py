"""Retrieval evaluation: trec_eval metrics on toy runs, BEIR loading, corpus ingest and the harness."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from core.errors import KnownError
from core.eval.beir import DatasetError, corpus_id_of, doc_path, ingest_corpus, load_beir
from core.eval.metrics import METRICS, evaluate, per_query, percentile
from core.eval.retrieval import BASE_RUNS, DEFAULT_RUN, RUNS, evaluate_retrieval, run_names
from core.kb import KnowledgeBase

CORPUS = [
    ("d1", "Aspirin and heart attacks", "Daily low-dose aspirin lowers the risk of a first heart attack in men."),
    ("d2", "Coffee and sleep", "Caffeine taken in the evening delays sleep onset and shortens deep sleep."),
    ("d3", "Exercise and depression", "Aerobic exercise three times a week reduces symptoms of depression."),
    ("d4", "Vitamin C and colds", "Vitamin C supplements do not prevent the common cold in most people."),
    ("d5", "Statins and cholesterol", "Statins reduce LDL cholesterol and cardiovascular events."),
    ("d6", "Salt and blood pressure", "Reducing dietary salt lowers blood pressure in hypertensive adults."),
    ("d7", "Smoking and lung cancer", "Cigarette smoking is the main cause of lung cancer."),
    ("d8", "", "Sunlight exposure raises vitamin D levels in the skin."),
]
QUERIES = [("q1", "Aspirin prevents heart attacks."), ("q2", "Evening coffee disturbs sleep."),
           ("q3", "Physical activity helps against depression."), ("q4", "a query nobody judged")]
QRELS = [("q1", "d1", 1), ("q2", "d2", 1), ("q3", "d3", 2), ("q3", "d6", 0)]


def write_beir(folder: Path, split: str = "train") -> Path:
    """A tiny BEIR folder in the real format."""
    (folder / "qrels").mkdir(parents=True)
    with open(folder / "corpus.jsonl", "w", encoding="utf-8") as f:
        for cid, title, text in CORPUS:
            f.write(json.dumps({"_id": cid, "title": title, "text": text}) + "\n")
    with open(folder / "queries.jsonl", "w", encoding="utf-8") as f:
        for qid, text in QUERIES:
            f.write(json.dumps({"_id": qid, "text": text}) + "\n")
    (folder / "qrels" / f"{split}.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t{s}\n" for q, d, s in QRELS), encoding="utf-8")
    return folder


# ----------------------------------------------------------------------------- metrics


def test_a_perfect_run_scores_one():
    qrels = {"a": {"x": 1}, "b": {"y": 1, "z": 2}}
    run = {"a": ["x", "n1"], "b": ["z", "y", "n2"]}
    assert evaluate(qrels, run) == {m: 1.0 for m in METRICS}


def test_known_values_from_trec_eval():
    qrels = {"a": {"x": 1}}
    second = evaluate(qrels, {"a": ["n", "x"]})
    assert second["ndcg@10"] == pytest.approx(1 / math.log2(3))
    assert second["mrr@10"] == pytest.approx(0.5)
    assert (second["hit@1"], second["hit@5"], second["hit@10"], second["recall@100"]) == (0.0, 1.0, 1.0, 1.0)
    eleventh = evaluate(qrels, {"a": [f"n{i}" for i in range(10)] + ["x"]})
    assert eleventh["mrr@10"] == 0.0 and eleventh["hit@10"] == 0.0 and eleventh["ndcg@10"] == 0.0
    assert eleventh["recall@100"] == 1.0
    # graded judgements use linear gains (trec_eval): DCG = 1 + 2/log2(3), ideal = 2 + 1/log2(3)
    graded = evaluate({"a": {"x": 2, "y": 1}}, {"a": ["y", "x"]})
    assert graded["ndcg@10"] == pytest.approx((1 + 2 / math.log2(3)) / (2 + 1 / math.log2(3)))
    assert graded["recall@100"] == 1.0


def test_the_given_order_counts_not_the_ids_and_missing_queries_count_as_zero():
    qrels = {"a": {"b1": 1}, "b": {"z": 1}}
    res = per_query(qrels, {"a": ["z9", "b1"]})  # trec_eval alone would sort equal scores by id
    assert res["a"]["mrr@10"] == 0.5
    assert res["b"] == {m: 0.0 for m in METRICS}
    assert evaluate(qrels, {"a": ["b1"]})["ndcg@10"] == pytest.approx(0.5)
    assert evaluate({"a": {"x": 0}}, {"a": ["x"]})["hit@1"] == 0.0  # relevance 0 is not relevant


def test_percentile():
    assert percentile([1, 2, 3, 4, 5], 50) == 3
    assert percentile([10.0, 20.0], 95) == pytest.approx(19.5)
    assert math.isnan(percentile([], 50))


# ----------------------------------------------------------------------------- BEIR data


def test_load_beir_keeps_judged_queries(tmp_path):
    ds = load_beir(write_beir(tmp_path / "toy"))
    assert (ds.name, ds.split) == ("toy", "train")
    assert list(ds.queries) == ["q1", "q2", "q3"] and "q4" not in ds.qrels
    assert ds.qrels["q3"] == {"d3": 2, "d6": 0}
    assert ds.corpus["d1"].page_text == "Aspirin and heart attacks\n" + CORPUS[0][2]
    assert ds.corpus["d8"].page_text == CORPUS[7][2]
    assert doc_path("toy", "d1") == "beir://toy/d1" and corpus_id_of("beir://toy/d1", "toy") == "d1"
    assert corpus_id_of("beir://other/d1", "toy") is None
    with pytest.raises(DatasetError, match="no split 'test'"):
        load_beir(tmp_path / "toy", "test")
    with pytest.raises(KnownError):
        load_beir(tmp_path / "missing")


def test_run_names():
    assert run_names(None) == list(BASE_RUNS) and set(BASE_RUNS) < set(RUNS)
    assert run_names(["bm25,dense", "hybrid", "bm25"]) == ["bm25", "dense", "hybrid"]
    assert run_names("hybrid+late,hybrid+rerank-llm,hybrid+rerank-ce") == ["hybrid+late", "hybrid+rerank-llm",
                                                                           "hybrid+rerank-ce"]
    assert RUNS["hybrid+late+rerank-llm"].late and RUNS["hybrid+late+rerank-llm"].rerank == "llm"
    assert DEFAULT_RUN in RUNS
    with pytest.raises(ValueError):
        run_names("bm25,colbert")


@pytest.fixture(scope="module")
def toy_kb(tmp_path_factory):
    ds = load_beir(write_beir(tmp_path_factory.mktemp("beir") / "toy"))
    kb = KnowledgeBase(tmp_path_factory.mktemp("toy-kb"))
    yield kb, ds
    kb.close()


def test_ingest_stores_one_document_per_entry_and_is_reused(toy_kb):
    kb, ds = toy_kb
    first = ingest_corpus(kb, ds)
    assert (first.added, first.skipped) == (len(CORPUS), 0) and first.chunks == len(CORPUS)
    again = ingest_corpus(kb, ds)
    assert (again.added, again.skipped, again.chunks) == (0, len(CORPUS), 0)
    docs = {d.path: d for d in kb.list()}
    assert set(docs) == {f"beir://toy/{cid}" for cid, _, _ in CORPUS}
    d1 = docs["beir://toy/d1"]
    assert (d1.kind, d1.n_pages, d1.n_chunks, d1.title) == ("text", 1, 1, "Aspirin and heart attacks")
    assert kb.store.get_page(d1.id, 1).text == ds.corpus["d1"].page_text
    assert kb.counts().consistent


def test_evaluate_retrieval_scores_every_run(toy_kb):
    kb, ds = toy_kb
    ingest_corpus(kb, ds)
    rep = evaluate_retrieval(kb, ds)
    out = rep.to_json()
    assert (out["dataset"], out["split"], out["n_queries"], out["best"]) == ("toy", "train", 3, DEFAULT_RUN)
    assert set(out["runs"]) == set(BASE_RUNS)
    for name, r in out["runs"].items():
        assert set(r) == {*METRICS, "p50_ms", "p95_ms"}
        assert all(0.0 <= r[m] <= 1.0 for m in METRICS)
        assert r["hit@1"] <= r["hit@5"] <= r["hit@10"] and r["p50_ms"] <= r["p95_ms"]
        assert r["recall@100"] == 1.0  # 8 documents: every one is in the top 100
        assert len(rep.runs[name].run["q1"]) == len(CORPUS) or name == "bm25"
    assert out["runs"]["hybrid"]["hit@1"] == 1.0  # each claim names its abstract's words
    limited = evaluate_retrieval(kb, ds, runs=["bm25"], limit=1)
    assert limited.n_queries == 1 and list(limited.runs) == ["bm25"]


def test_evaluate_retrieval_with_a_late_stage(toy_kb):
    """``hybrid+late`` with no late-interaction model configured: MiniLM's own token vectors."""
    kb, ds = toy_kb
    ingest_corpus(kb, ds)
    rep = evaluate_retrieval(kb, ds, runs=["hybrid-minmax", "hybrid+late"], late_top=5)
    late = rep.runs["hybrid+late"]
    assert {"bm25", "dense", "fusion", "late", "hydrate", "total"} <= set(late.stage_ms)
    assert "late" not in rep.runs["hybrid-minmax"].stage_ms
    assert all(a <= b for a, b in late.stage_ms.values())
    assert late.metrics["recall@100"] == 1.0
    # only the top 5 were re-scored: the rest of each ranking is the fused order
    base = rep.runs["hybrid-minmax"].run
    for q, ranked in late.run.items():
        assert ranked[5:] == base[q][5:] and set(ranked[:5]) == set(base[q][:5])
