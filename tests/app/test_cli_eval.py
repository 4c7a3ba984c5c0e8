"""`sift eval retrieval` and `sift search` as a user runs them (in-process, with the real embedder)."""
from __future__ import annotations

import json

import pytest

from app import cli, cli_eval
from core.errors import KnownError
from tests.core.test_eval import write_beir


def sift(*argv: str) -> int:
    """Run ``sift ARGV`` through app.cli's parser, the way ``app.cli.main`` does."""
    ap = cli.build_parser()
    sub = next(a for a in ap._actions if a.dest == "command")
    if "search" not in sub.choices:  # until app.cli registers app.cli_eval itself
        cli_eval.add_parsers(sub)
    args = ap.parse_args(list(argv))
    return int(args.fn(args) or 0)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-eval")
    return write_beir(root / "toy"), root / "kb"


def test_eval_retrieval_json_has_the_documented_shape(toy, capsys):
    folder, kb = toy
    assert sift("--kb", str(kb), "eval", "retrieval", str(folder), "--split", "train", "--json") == 0
    out = json.loads(capsys.readouterr().out)  # exactly one JSON object on stdout
    assert set(out) == {"dataset", "split", "n_queries", "runs", "best"}
    assert (out["dataset"], out["split"], out["n_queries"]) == ("toy", "train", 3)
    assert set(out["runs"]) == {"bm25", "dense", "hybrid", "hybrid-minmax"} and out["best"] in out["runs"]
    for r in out["runs"].values():
        assert set(r) == {"ndcg@10", "recall@100", "mrr@10", "hit@1", "hit@5", "hit@10", "p50_ms", "p95_ms"}

    assert sift("--kb", str(kb), "eval", "retrieval", str(folder), "--stages", "bm25,hybrid", "--limit", "2") == 0
    text = capsys.readouterr().out
    assert "toy / train: 2 queries" in text and "nDCG@10" in text and "hybrid" in text and "dense " not in text


def test_eval_retrieval_rejects_an_unknown_run(toy):
    folder, kb = toy
    with pytest.raises(KnownError, match="unknown run"):
        sift("--kb", str(kb), "eval", "retrieval", str(folder), "--stages", "colbert")


def test_search_json_returns_hits_with_document_and_page(toy, capsys):
    folder, kb = toy
    sift("--kb", str(kb), "eval", "retrieval", str(folder), "--stages", "bm25", "--json")  # stores the corpus
    capsys.readouterr()
    assert sift("--kb", str(kb), "search", "does aspirin prevent heart attacks", "--k", "3", "--json") == 0
    hits = json.loads(capsys.readouterr().out)
    assert 1 <= len(hits) <= 3
    assert hits[0]["document"] == "beir://toy/d1" and hits[0]["page"] == 1 and hits[0]["name"] == "d1"
    assert {"rank", "score", "text", "spans", "stages", "chunk_id"} <= hits[0].keys()
    assert set(hits[0]["stages"]) == {"bm25", "dense"}

    assert sift("--kb", str(kb), "search", "heart attack", "--explain", "--doc", "d5", "--pages", "1-1") == 0
    text = capsys.readouterr().out
    assert "d5 p.1" in text and "explain:" in text and "d1 " not in text
    assert sift("--kb", str(kb), "search", "heart attack", "--type", "pdf") == 0
    assert "no matches" in capsys.readouterr().out
    with pytest.raises(KnownError, match="no document"):
        sift("--kb", str(kb), "search", "heart", "--doc", "nope.pdf")


def test_every_new_command_has_help():
    ap = cli.build_parser()
    sub = next(a for a in ap._actions if a.dest == "command")
    if "search" not in sub.choices:
        cli_eval.add_parsers(sub)
    helps = {a.dest: a.help for a in sub._choices_actions}
    assert helps["search"] and helps["eval"]
    with pytest.raises(SystemExit):
        ap.parse_args(["search", "q", "--pages", "5-3"])


def test_search_with_second_stages_and_eval_of_a_late_run(toy, capsys):
    folder, kb = toy
    sift("--kb", str(kb), "eval", "retrieval", str(folder), "--stages", "bm25", "--json")  # stores the corpus
    capsys.readouterr()
    assert sift("--kb", str(kb), "search", "aspirin heart attack", "--k", "3", "--late", "--late-top", "5",
                "--explain") == 0
    text = capsys.readouterr().out
    assert "late #" in text and "timings:" in text and "late " in text.split("timings:")[1]
    assert sift("--kb", str(kb), "search", "aspirin heart attack", "--k", "3", "--late", "--json") == 0
    hits = json.loads(capsys.readouterr().out)
    assert all("late" in h["stages"] for h in hits)
    with pytest.raises(KnownError, match="no cross-encoder configured"):
        sift("--kb", str(kb), "search", "aspirin", "--rerank", "cross-encoder")
    assert sift("--kb", str(kb), "eval", "retrieval", str(folder), "--stages", "hybrid-minmax,hybrid+late",
                "--json") == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["runs"]) == {"hybrid-minmax", "hybrid+late"}
    assert set(out["runs"]["hybrid+late"]) == {"ndcg@10", "recall@100", "mrr@10", "hit@1", "hit@5", "hit@10",
                                               "p50_ms", "p95_ms"}
    assert sift("--kb", str(kb), "eval", "retrieval", str(folder), "--stages", "hybrid+late") == 0
    assert "hybrid+late: late p50" in capsys.readouterr().out
