"""Compressed per-token vectors for late interaction, in files beside the HNSW index.

Only a knowledge base with a late-interaction model configured has them. Each chunk's token
vectors (L2-normalised, at most 128 dimensions) are stored as codes with one fp16 scale per
vector, symmetric around zero:

``int8``  one byte per dimension (``round(v / scale * 127)``): dim + 2 bytes a token;
``int4``  two dimensions per byte (``round(v / scale * 7)``): dim / 2 + 2 bytes a token.

``codec="auto"`` picks int8 when a page of ~640 tokens fits the 64 KiB budget in int8
(dim <= 96), else int4 (a 128-dim page is then ~42 KiB). MaxSim over the decoded vectors is
what the late stage scores; the tests bound the decoding error.

On disk:

``tokvec-<n>-<token>.seg``  segments, each written once under a fresh name (temp file, fsync,
                            rename): a header, then chunk ids, token counts, scales and codes.
``token_vectors.json``      the manifest: codec, dim, model id, the live segments, the chunk ids
                            deleted since they were written, and the database generation it
                            reflects. Replaced atomically; it is the commit point.

A save writes only the vectors added since the last save as a new segment, so adding a document
costs its own bytes, not the whole store's. Deletes are recorded in the manifest; when deleted
tokens outnumber live ones the live vectors are compacted into one segment. Segments are read
with ``numpy.memmap``: the late stage touches only the candidates it scores. Chunk ids are never
reused (AUTOINCREMENT), which keeps "deleted" exact. The database stays the truth: the owner
(``core.kb``) compares the manifest with the chunks and re-encodes what is missing.
"""
from __future__ import annotations

import json
import os
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

__all__ = ["TokenVectorStore", "TokenStoreInfo", "encode_vectors", "decode_vectors", "CODECS", "MANIFEST_NAME",
           "PAGE_BUDGET_BYTES", "choose_codec", "bytes_per_token"]

MANIFEST_NAME = "token_vectors.json"
FORMAT = 1
CODECS = ("int8", "int4")
PAGE_BUDGET_BYTES = 64 * 1024
TOKENS_PER_PAGE = 640
"""A dense PDF page in MiniLM word pieces (~630 on the SEC 10-Q set); sizes the codec choice."""
_MAGIC = b"SIFTTOK1"


def bytes_per_token(dim: int, codec: str) -> int:
    return (dim if codec == "int8" else (dim + 1) // 2) + 2


def choose_codec(dim: int) -> str:
    """int8 when a page fits the budget in int8, else int4."""
    return "int8" if bytes_per_token(dim, "int8") * TOKENS_PER_PAGE <= PAGE_BUDGET_BYTES else "int4"


def encode_vectors(v: np.ndarray, codec: str) -> tuple[np.ndarray, np.ndarray]:
    """``(codes uint8 [n, bytes], scales float16 [n])`` for float vectors ``v`` [n, dim]."""
    v = np.asarray(v, dtype=np.float32)
    if v.ndim != 2:
        raise ValueError(f"token vectors must be 2-D, got shape {v.shape}")
    scale = np.abs(v).max(axis=1) if len(v) else np.zeros(0, dtype=np.float32)
    scale = np.where(scale > 0, scale, 1.0).astype(np.float16)
    s = scale.astype(np.float32)[:, None]
    if codec == "int8":
        q = np.clip(np.rint(v / s * 127.0), -127, 127).astype(np.int8)
        return q.view(np.uint8), scale
    if codec == "int4":
        q = (np.clip(np.rint(v / s * 7.0), -7, 7).astype(np.int8) + 8).astype(np.uint8)  # 1..15
        if q.shape[1] % 2:
            q = np.concatenate([q, np.full((len(q), 1), 8, dtype=np.uint8)], axis=1)
        return (q[:, 0::2] | (q[:, 1::2] << 4)).astype(np.uint8), scale
    raise ValueError(f"unknown codec {codec!r}; expected one of {CODECS}")


def decode_vectors(codes: np.ndarray, scales: np.ndarray, codec: str, dim: int) -> np.ndarray:
    """float32 [n, dim] from ``encode_vectors`` output (rows re-normalised to unit length)."""
    s = np.asarray(scales, dtype=np.float32)[:, None]
    if codec == "int8":
        v = codes.view(np.int8).astype(np.float32) / 127.0 * s
    else:
        lo = (codes & 0x0F).astype(np.int8) - 8
        hi = (codes >> 4).astype(np.int8) - 8
        q = np.empty((len(codes), codes.shape[1] * 2), dtype=np.float32)
        q[:, 0::2] = lo
        q[:, 1::2] = hi
        v = q[:, :dim] / 7.0 * s
    return v / np.clip(np.linalg.norm(v, axis=1, keepdims=True), 1e-12, None)


@dataclass(frozen=True)
class TokenStoreInfo:
    """The manifest of a saved token-vector store."""

    format: int
    dim: int
    codec: str
    model_id: str
    """The late-interaction model that made the vectors."""
    segments: tuple[str, ...]
    deleted: tuple[int, ...]
    """Chunk ids whose vectors lie in a segment but are deleted."""
    generation: int
    """The database write generation the store reflects."""


class _Segment:
    """One segment file, memory-mapped."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with open(path, "rb") as f:
            if f.read(8) != _MAGIC:
                raise ValueError(f"{path}: not a token-vector segment")
            hlen = int(np.frombuffer(f.read(4), dtype="<u4")[0])
            head = json.loads(f.read(hlen))
        self.dim, self.codec = int(head["dim"]), head["codec"]
        n, t, width = int(head["n_chunks"]), int(head["n_tokens"]), int(head["width"])
        off = int(head["data_offset"])
        self.ids = np.memmap(path, dtype="<i8", mode="r", offset=off, shape=(n,)) if n else np.zeros(0, "<i8")
        off += 8 * n
        self.counts = np.memmap(path, dtype="<i4", mode="r", offset=off, shape=(n,)) if n else np.zeros(0, "<i4")
        off += 4 * n
        self.scales = np.memmap(path, dtype="<f2", mode="r", offset=off, shape=(t,)) if t else np.zeros(0, "<f2")
        off += 2 * t
        self.codes = (np.memmap(path, dtype=np.uint8, mode="r", offset=off, shape=(t, width)) if t
                      else np.zeros((0, width), np.uint8))
        self.starts = np.concatenate([[0], np.cumsum(np.asarray(self.counts, dtype=np.int64))])

    @staticmethod
    def write(path: Path, ids: Sequence[int], entries: Sequence[tuple[np.ndarray, np.ndarray]], *, dim: int,
              codec: str) -> None:
        counts = np.asarray([len(c) for c, _ in entries], dtype="<i4")
        width = bytes_per_token(dim, codec) - 2
        codes = np.concatenate([c for c, _ in entries]) if entries else np.zeros((0, width), np.uint8)
        scales = np.concatenate([s for _, s in entries]).astype("<f2") if entries else np.zeros(0, "<f2")
        head = {"dim": dim, "codec": codec, "n_chunks": len(ids), "n_tokens": int(counts.sum()), "width": width}
        for _ in range(2):  # the header states its own length: settle it
            blob = json.dumps(head).encode()
            head["data_offset"] = ((8 + 4 + len(blob)) + 63) // 64 * 64
        blob = json.dumps(head).encode()
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(_MAGIC)
            f.write(np.asarray([len(blob)], dtype="<u4").tobytes())
            f.write(blob)
            f.write(b"\0" * (head["data_offset"] - 12 - len(blob)))
            f.write(np.asarray(ids, dtype="<i8").tobytes())
            f.write(counts.tobytes())
            f.write(scales.tobytes())
            f.write(np.ascontiguousarray(codes, dtype=np.uint8).tobytes())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)


def _fsync_dir(folder: Path) -> None:
    if os.name == "nt":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class TokenVectorStore:
    """Per-chunk compressed token vectors: add, delete, get, save, load."""

    def __init__(self, folder: Path, *, dim: int, model_id: str, codec: str = "auto") -> None:
        if dim <= 0 or dim > 128:
            raise ValueError(f"token vectors must have 1..128 dimensions, not {dim}")
        self.folder = Path(folder)
        self.dim = int(dim)
        self.model_id = model_id
        self.codec = choose_codec(dim) if codec == "auto" else codec
        if self.codec not in CODECS:
            raise ValueError(f"unknown codec {codec!r}; expected one of {CODECS} or auto")
        self._segments: list[_Segment] = []
        self._where: dict[int, tuple[int, int]] = {}  # chunk id -> (segment index, row in segment)
        self._pending: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._deleted: set[int] = set()  # ids in a segment that are deleted
        self.generation = 0
        self.dirty = False
        self._lock = threading.RLock()

    # ------------------------------------------------------------ reading

    def __len__(self) -> int:
        return len(self._where) + len(self._pending)

    def __contains__(self, chunk_id: int) -> bool:
        return int(chunk_id) in self._where or int(chunk_id) in self._pending

    def ids(self) -> set[int]:
        with self._lock:
            return set(self._where) | set(self._pending)

    @property
    def n_tokens(self) -> int:
        with self._lock:
            n = sum(len(c) for c, _ in self._pending.values())
            for cid, (si, row) in self._where.items():
                n += int(self._segments[si].counts[row])
            return n

    def get(self, chunk_ids: Iterable[int]) -> dict[int, np.ndarray]:
        """Decoded vectors (float32 [n_tokens, dim]) of the chunks that have them."""
        out: dict[int, np.ndarray] = {}
        with self._lock:
            for cid in chunk_ids:
                cid = int(cid)
                if cid in self._pending:
                    codes, scales = self._pending[cid]
                elif cid in self._where:
                    si, row = self._where[cid]
                    seg = self._segments[si]
                    a, b = int(seg.starts[row]), int(seg.starts[row + 1])
                    codes, scales = np.asarray(seg.codes[a:b]), np.asarray(seg.scales[a:b])
                else:
                    continue
                out[cid] = decode_vectors(codes, scales, self.codec, self.dim)
        return out

    def get_concat(self, chunk_ids: Iterable[int]) -> tuple[list[int], np.ndarray, np.ndarray]:
        """``(ids found, token counts, vectors)``: the decoded vectors of those chunks stacked in one
        float32 array (decoded in one pass, which is what makes re-scoring 100 candidates cheap)."""
        found: list[int] = []
        codes: list[np.ndarray] = []
        scales: list[np.ndarray] = []
        with self._lock:
            for cid in chunk_ids:
                cid = int(cid)
                if cid in self._pending:
                    c, sc = self._pending[cid]
                elif cid in self._where:
                    si, row = self._where[cid]
                    seg = self._segments[si]
                    a, b = int(seg.starts[row]), int(seg.starts[row + 1])
                    c, sc = seg.codes[a:b], seg.scales[a:b]
                else:
                    continue
                found.append(cid)
                codes.append(np.asarray(c))
                scales.append(np.asarray(sc))
        counts = np.asarray([len(c) for c in codes], dtype=np.int64)
        if not found:
            return [], counts, np.zeros((0, self.dim), np.float32)
        return found, counts, decode_vectors(np.concatenate(codes), np.concatenate(scales), self.codec, self.dim)

    def disk_bytes(self) -> int:
        """Bytes of the live segment files and the manifest."""
        files = [s.path for s in self._segments] + [self.folder / MANIFEST_NAME]
        return sum(p.stat().st_size for p in files if p.exists())

    # ------------------------------------------------------------ writing

    def add(self, chunk_ids: Sequence[int], vectors: Sequence[np.ndarray]) -> None:
        """Store each chunk's token vectors (replacing any it had)."""
        if len(chunk_ids) != len(vectors):
            raise ValueError(f"{len(chunk_ids)} chunk ids for {len(vectors)} vector sets")
        with self._lock:
            for cid, v in zip(chunk_ids, vectors):
                v = np.asarray(v, dtype=np.float32).reshape(-1, self.dim) if np.size(v) else \
                    np.zeros((0, self.dim), np.float32)
                if v.shape[1] != self.dim:
                    raise ValueError(f"token vectors of chunk {cid} have {v.shape[1]} dims, not {self.dim}")
                self._drop(int(cid))
                self._pending[int(cid)] = encode_vectors(v, self.codec)
            self.dirty = True

    def _drop(self, cid: int) -> bool:
        if cid in self._pending:
            del self._pending[cid]
            return True
        if cid in self._where:
            del self._where[cid]
            self._deleted.add(cid)
            return True
        return False

    def delete(self, chunk_ids: Iterable[int]) -> int:
        """Forget these chunks' vectors; returns how many were stored."""
        with self._lock:
            n = sum(self._drop(int(c)) for c in chunk_ids)
            if n:
                self.dirty = True
            return n

    def clear(self) -> None:
        with self._lock:
            self._deleted.update(self._where)
            self._where.clear()
            self._pending.clear()
            self.dirty = True

    # ------------------------------------------------------------ files

    def _new_segment_name(self) -> str:
        return f"tokvec-{self.generation}-{secrets.token_hex(4)}.seg"

    def save(self, generation: int) -> None:
        """Write the pending vectors as a new segment (compacting when deletes dominate), then
        replace the manifest atomically. Old segment files are removed after the commit."""
        with self._lock:
            self.generation = int(generation)
            live_tokens = self.n_tokens
            dead_tokens = 0
            if self._deleted:
                for seg in self._segments:
                    ids = np.asarray(seg.ids)
                    mask = np.isin(ids, np.fromiter(self._deleted, dtype=np.int64))
                    dead_tokens += int(np.asarray(seg.counts)[mask].sum())
            # An id written again after its old vectors were deleted (reindex, a replaced chunk) would
            # be hidden by the deleted list: rewrite everything live into one segment instead.
            compact = (dead_tokens > max(4096, live_tokens) or len(self._segments) > 64
                       or not self._deleted.isdisjoint(self._pending))
            old_files = [s.path for s in self._segments]
            if compact:
                entries = {cid: (np.asarray(self._segments[si].codes[int(self._segments[si].starts[r]):
                                                                      int(self._segments[si].starts[r + 1])]),
                                 np.asarray(self._segments[si].scales[int(self._segments[si].starts[r]):
                                                                       int(self._segments[si].starts[r + 1])]))
                           for cid, (si, r) in self._where.items()}
                entries.update(self._pending)
                names: list[str] = []
                if entries:
                    name = self._new_segment_name()
                    ids = sorted(entries)
                    _Segment.write(self.folder / name, ids, [entries[i] for i in ids], dim=self.dim, codec=self.codec)
                    names.append(name)
                deleted: set[int] = set()
            else:
                names = [s.path.name for s in self._segments]
                if self._pending:
                    name = self._new_segment_name()
                    ids = sorted(self._pending)
                    _Segment.write(self.folder / name, ids, [self._pending[i] for i in ids], dim=self.dim,
                                   codec=self.codec)
                    names.append(name)
                deleted = set(self._deleted)
            info = TokenStoreInfo(FORMAT, self.dim, self.codec, self.model_id, tuple(names), tuple(sorted(deleted)),
                                  self.generation)
            tmp = self.folder / (MANIFEST_NAME + ".tmp")
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(info.__dict__, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.folder / MANIFEST_NAME)
            _fsync_dir(self.folder)
            self._load_segments(names, deleted)
            for p in old_files:
                if p.name not in names and p.exists():
                    p.unlink()
            self.dirty = False

    def _load_segments(self, names: Sequence[str], deleted: set[int]) -> None:
        self._segments = [_Segment(self.folder / n) for n in names]
        self._where = {}
        for si, seg in enumerate(self._segments):
            for row, cid in enumerate(np.asarray(seg.ids).tolist()):
                if cid not in deleted:
                    self._where[int(cid)] = (si, row)  # a later segment overrides an earlier one
        self._deleted = {c for c in deleted}
        self._pending = {}

    @classmethod
    def open(cls, folder: Path, *, dim: int, model_id: str, codec: str = "auto") -> "TokenVectorStore":
        """Load the store saved in ``folder``; an empty one when there is none, or when the saved
        one was made by another model or is unreadable (its files are then removed)."""
        st = cls(folder, dim=dim, model_id=model_id, codec=codec)
        path = Path(folder) / MANIFEST_NAME
        info = None
        if path.exists():
            try:
                raw = json.loads(path.read_text(encoding="utf-8"))
                info = TokenStoreInfo(**{**raw, "segments": tuple(raw["segments"]), "deleted": tuple(raw["deleted"])})
            except (ValueError, TypeError, KeyError):
                info = None
        if info is not None and info.format == FORMAT and info.model_id == model_id and info.dim == dim:
            try:
                st.codec = info.codec
                st._load_segments(info.segments, set(info.deleted))
                st.generation = info.generation
                st._remove_stale(keep=set(info.segments))
                return st
            except (OSError, ValueError):
                pass
        st = cls(folder, dim=dim, model_id=model_id, codec=codec)
        st._remove_stale(keep=set())
        if path.exists():
            path.unlink()
        return st

    def _remove_stale(self, keep: set[str]) -> None:
        for p in self.folder.glob("tokvec-*.seg*"):
            if p.name not in keep:
                try:
                    p.unlink()
                except OSError:
                    pass

    @staticmethod
    def read_info(folder: Path) -> Mapping | None:
        path = Path(folder) / MANIFEST_NAME
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
