"""Turn a Hugging Face model folder into an ONNX folder, once, cached by content hash.

The cache key is the sha256 over the folder's files (names and bytes), so the same
weights are exported once wherever they lie, and changed weights are exported again.
torch and optimum are needed here only; running the result needs onnxruntime alone.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Iterator

from core.config import model_cache_dir
from core.errors import ModelError, UnsupportedModel
from core.jobs import CancelToken, ProgressFn, check, report

__all__ = ["folder_sha256", "validate_folder", "cached_export", "export_onnx", "staged_folder", "EXPORT_FORMAT"]

EXPORT_FORMAT = 1  # bump when the layout of an export folder changes
_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
_SKIP_DIRS = {".git", "onnx", "openvino", "__pycache__"}


def _files(folder: Path) -> list[Path]:
    out = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.startswith("."))
        for name in sorted(files):
            if not name.startswith(".") and not name.endswith((".md", ".pyc")):
                out.append(Path(root) / name)
    return out


def folder_sha256(folder: Path) -> str:
    """sha256 over relative names and file hashes; memoised per file by (size, mtime)."""
    from core.models.registry import sha256_file

    h = hashlib.sha256()
    for f in _files(folder):
        h.update(f.relative_to(folder).as_posix().encode() + b"\0")
        h.update(sha256_file(f).encode() + b"\n")
    return h.hexdigest()


def validate_folder(folder: Path, task: str = "feature-extraction") -> dict:
    """Return the model's config, or raise UnsupportedModel saying why the folder is not usable."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UnsupportedModel(f"{folder}: not a folder")
    if (folder / "model.onnx").exists() and (folder / "tokenizer.json").exists():
        cfg = folder / "config.json"
        return json.loads(cfg.read_text()) if cfg.exists() else {}
    cfg_path = folder / "config.json"
    if not cfg_path.exists():
        raise UnsupportedModel(
            f"{folder}: not a supported model folder: no config.json (expected a Hugging Face model folder "
            "with config.json, weights and tokenizer, or an ONNX folder with model.onnx and tokenizer.json)")
    try:
        cfg = json.loads(cfg_path.read_text())
    except ValueError as e:
        raise UnsupportedModel(f"{cfg_path}: not valid JSON ({e})") from None
    if not any((folder / w).exists() for w in _WEIGHTS):
        raise UnsupportedModel(f"{folder}: not a supported model folder: no weights ({' or '.join(_WEIGHTS)})")
    if not any((folder / t).exists() for t in ("tokenizer.json", "vocab.txt", "tokenizer_config.json")):
        raise UnsupportedModel(f"{folder}: not a supported model folder: no tokenizer files")
    model_type = cfg.get("model_type")
    try:
        import optimum.exporters.onnx.model_configs  # noqa: F401  (fills the task registry)
        from optimum.exporters.tasks import TasksManager
    except ImportError:
        return cfg  # running without the export extras: the export itself will say so
    try:
        supported = TasksManager.get_supported_tasks_for_model_type(model_type, exporter="onnx",
                                                                    library_name="transformers")
    except (KeyError, ValueError):
        supported = {}
    if task not in supported:
        raise UnsupportedModel(
            f"{folder}: model type {model_type!r} cannot be exported to ONNX for {task}"
            + (f" (it supports: {', '.join(sorted(supported))})" if supported else ""))
    return cfg


def _cache_root() -> Path:
    return model_cache_dir() / "onnx"


def _target(digest: str, task: str) -> Path:
    return _cache_root() / f"{digest[:20]}-{task}"


def cached_export(folder: Path, task: str = "feature-extraction") -> Path | None:
    """The export folder for ``folder`` if it was exported already, else None."""
    folder = Path(folder)
    if (folder / "model.onnx").exists() and (folder / "tokenizer.json").exists():
        return folder
    if not folder.is_dir():
        return None
    target = _target(folder_sha256(folder), task)
    meta = target / "sift-export.json"
    if meta.exists() and json.loads(meta.read_text()).get("format") == EXPORT_FORMAT:
        return target
    return None


def _pooling(folder: Path) -> dict:
    """Pooling and length limit as sentence-transformers would use them."""
    pooling = {"mode": "mean", "normalize": True, "max_length": 512}
    pcfg = folder / "1_Pooling" / "config.json"
    if pcfg.exists():
        p = json.loads(pcfg.read_text())
        if p.get("pooling_mode_cls_token"):
            pooling["mode"] = "cls"
        elif p.get("pooling_mode_max_tokens"):
            pooling["mode"] = "max"
    sbert = folder / "sentence_bert_config.json"
    if sbert.exists():
        pooling["max_length"] = int(json.loads(sbert.read_text()).get("max_seq_length", 512))
    return pooling


@contextlib.contextmanager
def staged_folder(target: Path) -> Iterator[Path]:
    """A fresh temp folder beside ``target`` that replaces ``target`` in one rename when the block
    ends normally, and is deleted when it raises (or is cancelled): a model folder in the cache is
    either complete or absent."""
    tmp = target.with_name(target.name + f".{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def export_onnx(folder: Path, task: str = "feature-extraction", *, progress: ProgressFn | None = None,
                cancel: CancelToken | None = None) -> Path:
    """Export ``folder`` with optimum into the cache and return the export folder.

    The export runs in a temp folder beside the target and is renamed into place, so an
    interrupted export never looks finished.
    """
    folder = Path(folder).resolve()
    cfg = validate_folder(folder, task)
    done = cached_export(folder, task)
    if done is not None:
        return done
    try:
        from optimum.exporters.onnx import main_export
    except ImportError as e:
        raise ModelError(f"cannot export {folder} to ONNX: optimum is not installed ({e})",
                         fix="run ./scripts/run --setup-only, which installs the export tools") from None
    digest = folder_sha256(folder)
    target = _target(digest, task)
    t0 = time.monotonic()
    report(progress, "export", 0, 1, message=f"exporting {folder.name} to ONNX", started=t0)
    check(cancel)
    with staged_folder(target) as tmp:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import warnings

        # the exporter's tracer warnings are about torch internals, not the user's model
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            main_export(str(folder), output=str(tmp), task=task, library_name="transformers",
                        local_files_only=True, do_validation=False)
        if not (tmp / "tokenizer.json").exists():
            from transformers import AutoTokenizer

            AutoTokenizer.from_pretrained(str(folder), use_fast=True).save_pretrained(str(tmp))
        if not (tmp / "tokenizer.json").exists():
            raise UnsupportedModel(f"{folder}: its tokenizer has no fast (tokenizer.json) form")
        check(cancel)
        meta = {
            "format": EXPORT_FORMAT,
            "task": task,
            "source": str(folder),
            "source_sha256": digest,
            "model_type": cfg.get("model_type"),
            "hidden_size": cfg.get("hidden_size"),
            "pooling": _pooling(folder),
            "exported_s": round(time.monotonic() - t0, 2),
        }
        (tmp / "sift-export.json").write_text(json.dumps(meta, indent=2))
    report(progress, "export", 1, 1, message=f"exported {folder.name}", started=t0)
    return target
