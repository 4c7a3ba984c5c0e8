"""The knowledge bases the window knows: one folder each under ``<data dir>/kbs``. No Qt here."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

from core import config
from core.errors import StoreError

__all__ = ["DEMO_NAME", "DEMO_SOURCE", "SAMPLE_QUESTION", "kbs_root", "list_kbs", "kb_path", "create_kb",
           "rename_kb", "delete_kb", "check_name"]

DEMO_NAME = "Demo"
DEMO_SOURCE = Path(__file__).resolve().parents[2] / "resources" / "demo"
SAMPLE_QUESTION = "What was the probable cause of the accident near Tallahassee?"
_BAD = re.compile(r'[\\/:*?"<>|\x00-\x1f]')


def kbs_root() -> Path:
    return config.data_dir() / "kbs"


def list_kbs() -> list[str]:
    """Names of the knowledge-base folders, sorted case-insensitively."""
    root = kbs_root()
    if not root.is_dir():
        return []
    return sorted((p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=str.casefold)


def kb_path(name: str) -> Path:
    return kbs_root() / name


def check_name(name: str) -> str:
    """The cleaned name, or a StoreError saying why it cannot be a folder name."""
    name = name.strip()
    if not name or name in (".", "..") or name.startswith(".") or _BAD.search(name) or len(name) > 100:
        raise StoreError(f"{name!r} cannot be the name of a knowledge base",
                         fix="use letters, digits, spaces, - or _ (no / \\ : * ? \" < > |)")
    return name


def create_kb(name: str) -> Path:
    name = check_name(name)
    p = kb_path(name)
    if p.exists():
        raise StoreError(f"a knowledge base named {name!r} already exists", fix="choose another name")
    p.mkdir(parents=True)
    return p


def rename_kb(old: str, new: str) -> Path:
    """Rename a (closed) knowledge base's folder."""
    new = check_name(new)
    src, dst = kb_path(old), kb_path(new)
    if not src.is_dir():
        raise StoreError(f"no knowledge base named {old!r}")
    if dst.exists() and dst.resolve() != src.resolve():
        raise StoreError(f"a knowledge base named {new!r} already exists", fix="choose another name")
    src.rename(dst)
    return dst


def delete_kb(name: str) -> None:
    """Delete a (closed) knowledge base's folder and everything in it (not the source documents)."""
    p = kb_path(name)
    if not p.is_dir():
        raise StoreError(f"no knowledge base named {name!r}")
    try:
        shutil.rmtree(p)
    except OSError as e:
        raise StoreError(f"cannot delete {p}: {e.strerror or e}") from e
