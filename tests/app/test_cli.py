"""The `sift` command line, run as a user runs it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.cli import build_parser
from tests.conftest import ROOT

SIFT = Path(sys.executable).with_name("sift")


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(SIFT), *args], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, **(env or {})}, timeout=300)


def test_models_json_lists_the_embedder_and_default_llm_ready():
    r = run("models", "--json")
    assert r.returncode == 0, r.stderr
    rows = {m["id"]: m for m in json.loads(r.stdout)}
    for m in rows.values():
        assert {"id", "role", "ready", "device", "size", "sha256", "source", "license"} <= m.keys()
    emb = [m for m in rows.values() if m["role"] == "embedding"]
    assert emb and emb[0]["ready"] is True and emb[0]["device"] in ("cpu", "cuda")
    assert rows["qwen2.5-coder-0.5b"]["role"] == "llm" and rows["qwen2.5-coder-0.5b"]["ready"] is True


def test_models_table_is_readable():
    r = run("models")
    assert r.returncode == 0
    assert "minilm-l6" in r.stdout and "qwen2.5-coder-0.5b" in r.stdout and "ready" in r.stdout


def test_doctor_json_reports_versions_providers_and_folders():
    r = run("doctor", "--json")
    rep = json.loads(r.stdout)
    assert "CPUExecutionProvider" in rep["execution_providers"]
    assert rep["versions"]["onnxruntime"] or rep["versions"]["onnxruntime-gpu"]
    assert rep["fts5"] is True
    assert rep["data_dir"] == os.environ["SIFT_DATA_DIR"]
    assert r.returncode == (1 if rep["problems"] else 0)
    for p in rep["problems"]:
        assert p["what"] and p["fix"]


def test_doctor_names_a_problem_and_its_fix(tmp_path):
    blocked = tmp_path / "file-not-folder"
    blocked.write_text("")
    r = run("doctor", env={"SIFT_DATA_DIR": str(blocked / "sub")})
    assert r.returncode == 1
    assert "not writable" in r.stdout and "fix:" in r.stdout


def test_models_import_refuses_a_folder_that_is_not_a_model(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    r = run("models", "import", str(tmp_path))
    assert r.returncode == 1
    assert str(tmp_path) in r.stderr and "no config.json" in r.stderr


def test_models_import_accepts_a_gguf_path():
    from core.models import registry

    path = registry.prepared_path(registry.llm_for_tier("default"))
    r = run("models", "import", str(path))
    assert r.returncode == 0, r.stderr
    assert "GGUF chat model" in r.stdout and "chat template from the file" in r.stdout


def _subparsers(parser):
    for action in parser._actions:
        if action.__class__.__name__ == "_SubParsersAction":
            for name, sub in action.choices.items():
                yield name, sub, action
                yield from _subparsers(sub)


def test_every_command_has_help_text():
    parser = build_parser()
    helps = {}
    for name, sub, action in _subparsers(parser):
        helps[name] = next((c.help for c in action._choices_actions if c.dest == name), None)
    assert {"models", "doctor", "setup", "gui", "import"} <= helps.keys()
    assert all(helps.values()), helps


@pytest.mark.parametrize("argv", [["--help"], ["models", "--help"], ["doctor", "--help"]])
def test_help_exits_cleanly(argv):
    assert run(*argv).returncode == 0
