"""Where Sift keeps things, and the settings a person can change.

Data (knowledge bases, chat history) lives in the per-user data dir; derived model
files (joined GGUF, ONNX exports) live in the per-user cache dir, keyed by content
hash, so deleting the cache only costs a re-export. Both can be moved with
``SIFT_DATA_DIR`` / ``SIFT_CACHE_DIR``.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import platformdirs

__all__ = ["data_dir", "cache_dir", "model_cache_dir", "Settings", "DEVICES", "LLM_TIERS"]

APP_NAME = "sift"
DEVICES = ("auto", "cpu", "gpu")
LLM_TIERS = ("default", "quality")


def data_dir() -> Path:
    """Per-user folder for knowledge bases and settings."""
    env = os.environ.get("SIFT_DATA_DIR")
    return Path(env).expanduser() if env else Path(platformdirs.user_data_dir(APP_NAME, appauthor=False))


def cache_dir() -> Path:
    """Per-user folder for files Sift can rebuild (model exports, joined GGUF files)."""
    env = os.environ.get("SIFT_CACHE_DIR")
    return Path(env).expanduser() if env else Path(platformdirs.user_cache_dir(APP_NAME, appauthor=False))


def model_cache_dir() -> Path:
    return cache_dir() / "models"


@dataclass(frozen=True)
class Settings:
    """User settings, stored as JSON in the data dir."""

    device: str = "auto"
    """``auto`` (GPU when present), ``cpu`` or ``gpu``."""
    llm_tier: str = "default"
    """Which bundled chat model answers: ``default`` (0.5B) or ``quality`` (1.5B)."""
    embedding_model: str = "minilm-l6"
    """Registry id or local path of the embedding model."""
    llm_model: str | None = None
    """A GGUF path that overrides the tier's model, or None."""
    extra: dict = field(default_factory=dict)
    """Settings of later features, kept verbatim."""

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, not {self.device!r}")
        if self.llm_tier not in LLM_TIERS:
            raise ValueError(f"llm_tier must be one of {LLM_TIERS}, not {self.llm_tier!r}")

    @staticmethod
    def path() -> Path:
        return data_dir() / "settings.json"

    @classmethod
    def load(cls) -> "Settings":
        p = cls.path()
        if not p.exists():
            return cls()
        raw = json.loads(p.read_text(encoding="utf-8"))
        known = {k: raw[k] for k in ("device", "llm_tier", "embedding_model", "llm_model", "extra") if k in raw}
        return cls(**known)

    def save(self) -> None:
        p = self.path()
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2), encoding="utf-8")
        os.replace(tmp, p)

    def with_(self, **changes) -> "Settings":
        return replace(self, **changes)
