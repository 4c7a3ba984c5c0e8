"""``sift eval own`` and ``sift eval pdfqa`` as a user runs them (in-process, real models and files)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from app import cli, cli_own
from core.errors import KnownError

ROOT = Path(__file__).resolve().parents[2]
REPORT = "20071229X02007.pdf"


def parser():
    """app.cli's parser with ``eval own`` and ``eval pdfqa`` registered (by app.cli_eval once it
    calls ``app.cli_own.add_parsers``; here directly until then)."""
    ap = cli.build_parser()
    sub = next(a for a in ap._actions if a.dest == "command")
    pe = sub.choices["eval"]
    esub = next(a for a in pe._actions if a.dest == "eval_command")
    if "own" not in esub.choices:
        cli_own.add_parsers(esub)
    return ap


def sift(*argv: str) -> int:
    args = parser().parse_args(list(argv))
    return int(args.fn(args) or 0)


def test_both_commands_are_registered_with_help():
    ap = parser()
    sub = next(a for a in ap._actions if a.dest == "command")
    esub = next(a for a in sub.choices["eval"]._actions if a.dest == "eval_command")
    for name in ("own", "pdfqa"):
        assert name in esub.choices and esub.choices[name].format_help()
    args = ap.parse_args(["eval", "own"])
    assert (args.n, args.seed, args.configs, args.json) == (200, 0, None, False)
    args = ap.parse_args(["eval", "pdfqa", "q.jsonl", "--docs", "d", "--retrieval-only", "--limit", "3"])
    assert (args.questions, args.docs, args.retrieval_only, args.limit) == ("q.jsonl", "d", True, 3)


@pytest.fixture(scope="module")
def ntsb(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-own")
    docs = root / "docs"
    docs.mkdir()
    shutil.copy(ROOT / "resources" / "demo" / REPORT, docs)
    q = root / "q.jsonl"
    q.write_text(json.dumps({"question": "How old was the pilot who tried to land the Piper PA-22-150?",
                             "answer": "85", "doc": REPORT, "page": 1}) + "\n"
                 + json.dumps({"question": "Who wrote Hamlet?", "answer": "Shakespeare", "doc": "plays.pdf"}) + "\n",
                 encoding="utf-8")
    return root / "kb", docs, q


def test_pdfqa_retrieval_only_json(ntsb, capsys):
    kb, docs, q = ntsb
    assert sift("--kb", str(kb), "eval", "pdfqa", str(q), "--docs", str(docs), "--retrieval-only", "--json") == 0
    out = json.loads(capsys.readouterr().out)  # exactly one JSON object on stdout
    assert (out["dataset"], out["mode"], out["n"], out["skipped"], out["n_evidence"]) == ("q", "retrieval", 1, 1, 1)
    assert out["evidence_hit@1"] == 1.0 and out["doc_hit@5"] == 1.0 and out["p50_ms"] > 0
    assert sift("--kb", str(kb), "eval", "pdfqa", str(q), "--docs", str(docs), "--retrieval-only") == 0
    text = capsys.readouterr().out
    assert "evidence hit@1" in text and "(n=1)" in text and "answer accuracy" not in text


def test_pdfqa_out_writes_one_line_per_question(ntsb, tmp_path, capsys):
    kb, docs, q = ntsb
    out = tmp_path / "sub" / "per_question.jsonl"
    assert sift("--kb", str(kb), "eval", "pdfqa", str(q), "--docs", str(docs), "--retrieval-only", "--json",
                "--out", str(out)) == 0
    summary = json.loads(capsys.readouterr().out)
    lines = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    assert len(lines) == summary["n"] == 1
    (row,) = lines
    assert row["question"].startswith("How old was the pilot") and row["gold"] == ["85"] and row["page"] == 1
    assert row["evidence_hit"] == {"1": True, "5": True} and row["answer"] is None and "trace" not in row


def test_pdfqa_errors_are_known(ntsb, tmp_path):
    kb, docs, q = ntsb
    with pytest.raises(KnownError, match="is not a folder"):
        sift("--kb", str(kb), "eval", "pdfqa", str(q), "--docs", str(tmp_path / "nope"), "--retrieval-only")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q"}\n', encoding="utf-8")
    with pytest.raises(KnownError, match="bad.jsonl:1: missing answer, doc"):
        sift("--kb", str(kb), "eval", "pdfqa", str(bad), "--docs", str(docs), "--retrieval-only")


def test_own_errors_are_known(ntsb, tmp_path):
    kb, docs, _ = ntsb
    with pytest.raises(KnownError, match="not a knowledge base"):
        sift("--kb", str(tmp_path / "nothing"), "eval", "own", "--n", "2")
    with pytest.raises(KnownError, match="unknown configuration"):
        sift("--kb", str(kb), "eval", "own", "--configs", "bm25,colbert")


@pytest.mark.slow
def test_own_json_with_the_bundled_model(ntsb, capsys):
    kb, docs, q = ntsb
    sift("--kb", str(kb), "eval", "pdfqa", str(q), "--docs", str(docs), "--retrieval-only", "--json")  # stores it
    capsys.readouterr()
    assert sift("--kb", str(kb), "eval", "own", "--n", "2", "--configs", "bm25,hybrid", "--json") == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n_sampled"] == 2 and out["n_questions"] + sum(out["rejected"].values()) == 2
    if out["n_questions"]:
        assert set(out["configs"]) == {"bm25", "hybrid"} and out["best"] in out["configs"]
        assert set(out["configs"]["bm25"]) == {"hit@1", "hit@5", "hit@10", "mrr@10", "p50_ms", "p95_ms"}
    # the table, from the cached questions
    assert sift("--kb", str(kb), "eval", "own", "--n", "2", "--configs", "bm25,hybrid") in (0,)
    text = capsys.readouterr().out
    assert "0 written now" in text and "MRR@10" in text
