"""``sift eval rewrites``: retrieval scored with each query rewrite, on a small real BEIR folder."""
from __future__ import annotations

import json

import pytest

from core.eval.beir import ingest_corpus, load_beir
from core.eval.rewrites import evaluate_rewrites
from core.kb import KnowledgeBase

DOCS = {
    "d1": "The pilot misjudged the clearance over trees during the final approach to the private airstrip.",
    "d2": "The student pilot lost directional control in a crosswind during the landing roll.",
    "d3": "Annual revenue of the retailer grew by ten percent on online sales.",
    "d4": "The archive will digitise records and make them available to the public online.",
}
QUERIES = {"q1": "Why did the airplane hit the trees?", "q2": "What happened to the retailer's sales?"}


class _Paraphraser:
    """Writes fixed paraphrases and counts calls (this test is about scoring and caching, not the model)."""

    name = "paraphraser"

    def __init__(self) -> None:
        self.calls = 0

    def chat(self, messages, **kw):
        self.calls += 1
        q = messages[-1].content
        return "What caused the collision with trees on approach?\nWhy did the plane strike trees?" if "trees" in q \
            else "How did the retailer's revenue change?"


@pytest.fixture()
def beir(tmp_path):
    folder = tmp_path / "mini"
    (folder / "qrels").mkdir(parents=True)
    with open(folder / "corpus.jsonl", "w") as f:
        for i, t in DOCS.items():
            f.write(json.dumps({"_id": i, "title": "", "text": t}) + "\n")
    with open(folder / "queries.jsonl", "w") as f:
        for i, t in QUERIES.items():
            f.write(json.dumps({"_id": i, "text": t}) + "\n")
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td3\t1\n")
    return folder


def test_each_configuration_is_scored_and_rewrites_are_cached(beir, tmp_path):
    ds = load_beir(beir, "test")
    llm = _Paraphraser()
    with KnowledgeBase(tmp_path / "kb", device="cpu") as kb:
        ingest_corpus(kb, ds)
        kb.set_llm(llm)
        runs = evaluate_rewrites(kb, ds, configs=("none", "multi_query"))
        assert set(runs) == {"none", "multi_query"}
        assert runs["none"].rewritten == 0 and runs["multi_query"].rewritten == 2
        for r in runs.values():
            assert r.metrics["ndcg@10"] == pytest.approx(1.0)  # both queries find their document first
            assert set(r.to_json()) >= {"ndcg@10", "recall@100", "mrr@10", "hit@1", "p50_ms", "rewritten"}
        assert llm.calls == 2
        evaluate_rewrites(kb, ds, configs=("multi_query",))
        assert llm.calls == 2  # the second run reads the cache in the knowledge-base folder
        with pytest.raises(ValueError, match="unknown rewrite"):
            evaluate_rewrites(kb, ds, configs=("bogus",))


def test_cli_registers_eval_rewrites(capsys):
    from app.cli import main

    with pytest.raises(SystemExit) as e:
        main(["eval", "rewrites", "--help"])
    assert e.value.code == 0 and "multi_query" in capsys.readouterr().out
