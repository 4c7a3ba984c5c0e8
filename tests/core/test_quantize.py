"""The int8 variant of the bundled embedder: made once, reused, close to fp32, chosen on CPU by default."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest

from core.models import registry
from core.models.embedder import Embedder
from core.models.quantize import INT8_RECIPE, int8_path, int8_variant

SENTENCES = [
    "The cat sits on the mat.",
    "A feline is resting on a rug.",
    "Quarterly revenue rose 12% on strong iPhone sales.",
    "Net sales of Services increased due to higher advertising, cloud and App Store revenue.",
    "The pilot failed to maintain directional control during the landing roll.",
    "Transformers rely entirely on attention, dispensing with recurrence and convolutions.",
    "Cash used in financing activities consisted of repurchases of common stock and dividends paid.",
    "x",
]
# Measured on these sentences: the lowest cosine between int8 and fp32 vectors is about 0.99
# (0.985 over 5,232 SEC filing chunks); 0.98 leaves room for other CPUs' int8 kernels.
MIN_COSINE = 0.98


@pytest.fixture(scope="module")
def exported() -> Path:
    return registry.prepare(registry.get("minilm-l6"))


@pytest.fixture(scope="module")
def fp32(exported) -> Embedder:
    return Embedder(exported, device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def int8(exported) -> Embedder:
    return Embedder(exported, device="cpu")


@pytest.fixture()
def model_copy(tmp_path, exported) -> Path:
    """A folder that looks like the export (links, not copies) and has no int8 file yet."""
    for f in exported.iterdir():
        if not f.name.endswith(".onnx") or f.name == "model.onnx":
            os.symlink(f, tmp_path / f.name)
    return tmp_path


def test_int8_variant_is_made_once_and_reused(model_copy):
    import onnxruntime as ort

    out = int8_path(model_copy / "model.onnx")
    assert out == model_copy / "model.int8.onnx"
    os.symlink(model_copy / "model.onnx", out)  # that name without the recipe stamp: made by an older Sift
    assert int8_variant(model_copy / "model.onnx", "bert") == out
    assert out.is_file() and not out.is_symlink()
    assert out.stat().st_size < (model_copy / "model.onnx").stat().st_size * 0.8
    assert [p.name for p in model_copy.iterdir() if ".tmp" in p.name] == []
    meta = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).get_modelmeta()
    assert meta.custom_metadata_map.get("sift_int8_recipe") == INT8_RECIPE
    made = out.stat().st_mtime_ns
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = Embedder(model_copy, device="cpu", precision="int8")
    assert again.info.precision == "int8" and again.info.model_path == str(out)
    assert out.stat().st_mtime_ns == made


def test_cpu_default_is_int8_for_the_bundled_model(int8):
    assert int8.info.device == "cpu"
    assert int8.info.precision == "int8"
    assert int8.info.model_path.endswith("model.int8.onnx")
    assert "int8" in int8.info.reason


def test_fp32_can_be_forced(fp32):
    assert fp32.info.precision == "fp32"
    assert fp32.info.model_path.endswith("model.onnx") and not fp32.info.model_path.endswith("int8.onnx")


def test_unknown_precision_is_refused(exported):
    with pytest.raises(ValueError, match="precision"):
        Embedder(exported, device="cpu", precision="int4")


def test_a_model_not_checked_stays_fp32_unless_asked(model_copy):
    (model_copy / "sift-export.json").unlink()  # no source hash: int8 quality was never measured for it
    assert Embedder(model_copy, device="cpu").info.precision == "fp32"


def test_int8_vectors_stay_close_to_fp32(fp32, int8):
    a = fp32.encode(SENTENCES).pooled
    b = int8.encode(SENTENCES).pooled
    np.testing.assert_allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-5)
    cos = (a * b).sum(axis=1)
    assert cos.min() >= MIN_COSINE, cos


def test_int8_ranks_related_above_unrelated(int8):
    v = int8.encode(SENTENCES).pooled
    assert float(v[0] @ v[1]) > float(v[0] @ v[2]) + 0.2  # cat/feline above cat/revenue
    assert float(v[2] @ v[3]) > float(v[2] @ v[4]) + 0.2  # revenue/net sales above revenue/pilot
