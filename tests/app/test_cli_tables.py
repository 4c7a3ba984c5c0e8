"""``sift eval tables`` as a user runs it (in-process, with the real embedder and the real default model)."""
from __future__ import annotations

import json
import shutil

import pytest

from app import cli, cli_tables
from core.eval.tables import TableDatasetError


def sift(*argv: str) -> int:
    """Run ``sift ARGV`` through app.cli's parser, registering ``eval tables`` until app.cli does."""
    ap = cli.build_parser()
    sub = next(a for a in ap._actions if a.dest == "command")
    ev = sub.choices["eval"]
    esub = next(a for a in ev._actions if a.dest == "eval_command")
    if "tables" not in esub.choices:
        cli_tables.add_parsers(esub)
    args = ap.parse_args(list(argv))
    return int(args.fn(args) or 0)


@pytest.fixture(scope="module")
def mini_wtq(tmp_path_factory, eval_dir):
    """Two real WTQ questions over their real table, in a folder of the WTQ layout."""
    src = eval_dir / "tables" / "wtq"
    root = tmp_path_factory.mktemp("mini-wtq")
    (root / "csv" / "204-csv").mkdir(parents=True)
    shutil.copy(src / "csv" / "204-csv" / "495.csv", root / "csv" / "204-csv" / "495.csv")
    lines = (src / "questions.tsv").read_text(encoding="utf-8").splitlines()
    keep = [lines[0]] + [ln for ln in lines[1:] if ln.split("\t")[2] == "csv/204-csv/495.csv"][:2]
    assert len(keep) == 3
    (root / "questions.tsv").write_text("\n".join(keep) + "\n", encoding="utf-8")
    return root


def test_eval_tables_has_help_and_rejects_a_folder_without_questions(tmp_path, capsys):
    with pytest.raises(SystemExit):
        sift("eval", "tables", "--help")
    assert "questions.tsv" in capsys.readouterr().out
    with pytest.raises(TableDatasetError, match="no questions.tsv"):
        sift("--kb", str(tmp_path / "kb"), "eval", "tables", str(tmp_path))


def test_offset_picks_the_questions_after_the_first_k(tmp_path, monkeypatch, capsys):
    """--offset K --limit N asks questions K+1..K+N in file order (checked before any model loads)."""
    seen = {}

    def fake_evaluate(kb, folder, *, questions, **kw):
        seen["ids"] = [q.id for q in questions]
        raise SystemExit(0)

    monkeypatch.setattr("core.eval.tables.evaluate_tables", fake_evaluate)
    root = tmp_path / "wtq"
    (root / "csv").mkdir(parents=True)
    (root / "csv" / "t.csv").write_text("a,b\n1,2\n", encoding="utf-8")
    (root / "questions.tsv").write_text("id\tutterance\tcontext\ttargetValue\n" + "".join(
        f"q{i}\tq{i}?\tcsv/t.csv\t{i}\n" for i in range(1, 8)), encoding="utf-8")
    with pytest.raises(SystemExit):
        sift("--kb", str(tmp_path / "kb"), "eval", "tables", str(root), "--offset", "2", "--limit", "3")
    assert seen["ids"] == ["q3", "q4", "q5"]


@pytest.mark.slow
def test_eval_tables_json_has_the_documented_shape(mini_wtq, tmp_path, capsys):
    out_file = tmp_path / "items.jsonl"
    assert sift("--kb", str(tmp_path / "kb"), "eval", "tables", str(mini_wtq), "--json", "--out", str(out_file)) == 0
    out = json.loads(capsys.readouterr().out)  # exactly one JSON object on stdout
    assert {"n", "accuracy", "p50_ms"} <= set(out) and out["n"] == 2
    assert 0.0 <= out["accuracy"] <= 1.0 and out["p50_ms"] > 0
    items = [json.loads(line) for line in out_file.read_text(encoding="utf-8").splitlines()]
    assert [i["id"] for i in items] == ["nt-4", items[1]["id"]] and items[0]["target"] == ["Derby County"]
    assert all(i["sql"] for i in items)
    nt4 = items[0]
    assert nt4["correct"] and nt4["row_ids"] == [1]  # "who was the opponent in the first game of the season?"


def test_eval_tables_rescore_scores_saved_outcomes_without_a_model(tmp_path, capsys):
    saved = tmp_path / "items.jsonl"
    saved.write_text("\n".join(json.dumps(d) for d in [
        {"id": "nt-1", "target": ["Derby County"], "predicted": ["Derby County"], "ms": 100.0, "attempts": 1},
        {"id": "nt-2", "target": ["17,204"], "predicted": ["17204"], "ms": 300.0, "attempts": 1},
        {"id": "nt-3", "target": ["3"], "predicted": [], "ms": 200.0, "attempts": 2, "error": "failed"},
    ]) + "\n", encoding="utf-8")
    assert sift("eval", "tables", str(tmp_path), "--rescore", str(saved), "--json") == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["n"], out["accuracy"], out["p50_ms"], out["errors"]) == (3, round(2 / 3, 4), 200.0, 1)
