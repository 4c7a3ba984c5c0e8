"""Model registry: pins, integrity checks, and loading a user's own model folder."""
from __future__ import annotations

import hashlib
import json
import shutil

import pytest

from core.errors import ModelIntegrityError, ModelNotInstalled, UnsupportedModel
from core.models import registry
from core.models.embedder import Embedder
from core.models.export import export_onnx, validate_folder


def test_join_refuses_a_wrong_sha256_and_leaves_nothing(tmp_path):
    parts = []
    for i in range(3):
        p = tmp_path / f"part{i}.bin"
        p.write_bytes(bytes([i]) * 1000)
        parts.append(p)
    dest = tmp_path / "out" / "model.gguf"
    with pytest.raises(ModelIntegrityError) as e:
        registry.join_parts(parts, dest, "0" * 64)
    assert "model.gguf" in str(e.value) and "expected " + "0" * 64 in str(e.value)
    assert not dest.exists() and not list(dest.parent.glob("*.part"))


def test_join_accepts_the_right_sha256(tmp_path):
    data = [b"GGUF" + b"a" * 100, b"b" * 50]
    parts = []
    for i, d in enumerate(data):
        (tmp_path / f"p{i}").write_bytes(d)
        parts.append(tmp_path / f"p{i}")
    want = hashlib.sha256(b"".join(data)).hexdigest()
    out = registry.join_parts(parts, tmp_path / "m.gguf", want, expected_size=154)
    assert out.read_bytes() == b"".join(data)


def test_verify_file_refuses_a_tampered_file(tmp_path):
    f = tmp_path / "x.gguf"
    f.write_bytes(b"GGUF1234")
    registry.verify_file(f, hashlib.sha256(b"GGUF1234").hexdigest())
    f.write_bytes(b"GGUF12345")  # new size/mtime: the remembered hash must not be reused
    with pytest.raises(ModelIntegrityError, match="x.gguf"):
        registry.verify_file(f, hashlib.sha256(b"GGUF1234").hexdigest())


def test_the_bundled_default_models_are_ready():
    for spec in registry.BUILTIN:
        if spec.installed_by_default:
            st = registry.status(spec)
            assert st.ready, st.problem
            assert st.license and st.source and st.size


def test_the_prepared_gguf_has_the_pinned_hash():
    spec = registry.llm_for_tier("default")
    path = registry.prepared_path(spec)
    assert path is not None and path.stat().st_size == spec.size
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    assert h.hexdigest() == spec.sha256


def test_missing_package_is_reported_with_a_fix():
    spec = registry.ModelSpec(id="nope", role="llm", title="Nope", packages=("sift-no-such-pkg==1.0",),
                              format="gguf-file", license="-", inner_path="x.gguf", sha256="0" * 64)
    with pytest.raises(ModelNotInstalled) as e:
        registry.source_paths(spec)
    assert "sift-no-such-pkg" in str(e.value) and e.value.fix


def test_unknown_model_id_names_the_known_ones():
    with pytest.raises(Exception, match="minilm-l6"):
        registry.get("bge-large")


@pytest.mark.parametrize("files, reason", [
    ({}, "no config.json"),
    ({"config.json": "{not json"}, "not valid JSON"),
    ({"config.json": json.dumps({"model_type": "bert"})}, "no weights"),
])
def test_a_folder_that_is_not_a_model_gets_a_clear_error(tmp_path, files, reason):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(UnsupportedModel, match=reason) as e:
        validate_folder(tmp_path)
    assert str(tmp_path) in str(e.value)


def test_an_unsupported_architecture_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "no-such-arch"}))
    (tmp_path / "model.safetensors").write_bytes(b"\0")
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(UnsupportedModel, match="no-such-arch"):
        validate_folder(tmp_path)


@pytest.mark.slow
def test_a_user_model_folder_is_exported_once_and_cached(tmp_path, monkeypatch):
    """Any Hugging Face folder the user has: exported with optimum, keyed by content hash."""
    monkeypatch.setenv("SIFT_CACHE_DIR", str(tmp_path / "cache"))
    (src,) = registry.source_paths(registry.get("minilm-l6"))
    user_copy = tmp_path / "my-model"
    shutil.copytree(src, user_copy)
    out = export_onnx(user_copy)
    assert (out / "model.onnx").exists() and (out / "tokenizer.json").exists()
    assert str(tmp_path / "cache") in str(out)
    mtime = (out / "model.onnx").stat().st_mtime_ns
    assert export_onnx(user_copy) == out and (out / "model.onnx").stat().st_mtime_ns == mtime
    emb = Embedder(out, device="cpu")
    assert emb.encode(["hello world"]).pooled.shape == (1, 384)
