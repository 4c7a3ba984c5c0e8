"""Dense vector index: hnswlib over L2-normalised float32 vectors, labels = chunk ids.

Inner product on normalised vectors is cosine similarity; scores are reported as the
similarity (``1 - hnswlib distance``), higher is better. Deletes use ``mark_deleted`` (the
slot stays until the next rebuild); capacity grows geometrically before an add; ``k`` is
clamped to the live count, so an empty index or ``k > count`` simply returns fewer hits.
hnswlib does not save ``ef``, so it is set again after every load, and ``resize_index`` is not
safe against concurrent ``add_items``/``knn_query``, so one lock guards every call.

On disk an index is two files in the knowledge-base folder:

``vectors-<generation>-<token>.hnsw``  the hnswlib graph, written once under a fresh name and
                                       fsynced;
``vectors.json``                       the sidecar: which graph file is current, its dim, model
                                       id, live and deleted counts, largest label and the
                                       database generation it reflects. Replaced atomically
                                       (temp file, fsync, ``os.replace``, fsync of the folder).

Replacing the sidecar is the commit point: before it, the previous pair is intact; after it,
the new one is. Graph files the sidecar does not name are leftovers and are deleted on open.
The store compares the sidecar with the database to decide whether the graph is current.
"""
from __future__ import annotations

import json
import os
import secrets
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable

import hnswlib
import numpy as np

__all__ = ["IndexInfo", "VectorIndex", "IndexFileError", "normalize", "SIDECAR_NAME"]

SIDECAR_NAME = "vectors.json"
FORMAT = 1


class IndexFileError(Exception):
    """The index files are missing, unreadable or do not fit; the caller rebuilds."""


@dataclass(frozen=True)
class IndexInfo:
    """The sidecar of a saved index."""

    format: int
    file: str
    """Name of the hnswlib file in the same folder."""
    dim: int
    model_id: str
    """The embedding model the vectors came from."""
    count: int
    """Live (not deleted) labels."""
    deleted: int
    """Labels marked deleted but still in the graph."""
    max_label: int
    """Largest label ever added, -1 for an index that never had one."""
    generation: int
    """The database write generation this file reflects."""
    space: str = "ip"
    M: int = 16
    ef_construction: int = 200


def normalize(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, as contiguous float32 (all-zero rows stay zero)."""
    v = np.ascontiguousarray(vectors, dtype=np.float32)
    if v.ndim == 1:
        v = v[None, :]
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return np.ascontiguousarray(v / np.maximum(norms, 1e-12), dtype=np.float32)


def _fsync_dir(folder: Path) -> None:
    if os.name == "nt":  # directories cannot be opened for fsync on Windows; rename is durable there
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


class VectorIndex:
    """A thread-safe hnswlib index with geometric growth, deletes and clamped search."""

    def __init__(self, dim: int, *, model_id: str = "", M: int = 16, ef_construction: int = 200,
                 ef: int = 128, capacity: int = 1024, _index: hnswlib.Index | None = None,
                 _count: int = 0, _deleted: int = 0, _max_label: int = -1) -> None:
        if dim <= 0:
            raise ValueError("dim must be positive")
        self.dim = int(dim)
        self.model_id = model_id
        self.M = M
        self.ef_construction = ef_construction
        self._ef = int(ef)
        self._lock = threading.RLock()
        if _index is None:
            _index = hnswlib.Index(space="ip", dim=self.dim)
            _index.init_index(max_elements=max(1, int(capacity)), ef_construction=ef_construction, M=M)
        self._index = _index
        self._index.set_ef(self._ef)
        self._count = _count
        self._deleted = _deleted
        self._max_label = _max_label

    # ------------------------------------------------------------ properties

    def __len__(self) -> int:
        return self._count

    @property
    def count(self) -> int:
        """Live labels."""
        return self._count

    @property
    def deleted(self) -> int:
        """Labels marked deleted and still occupying the graph."""
        return self._deleted

    @property
    def max_label(self) -> int:
        return self._max_label

    @property
    def capacity(self) -> int:
        return self._index.get_max_elements()

    @property
    def ef(self) -> int:
        return self._ef

    def set_ef(self, ef: int) -> None:
        with self._lock:
            self._ef = int(ef)
            self._index.set_ef(self._ef)

    def labels(self) -> set[int]:
        """Every label in the graph, deleted ones included (hnswlib cannot tell them apart)."""
        with self._lock:
            return {int(x) for x in self._index.get_ids_list()}

    # ------------------------------------------------------------ writes

    def add(self, labels: Iterable[int], vectors: np.ndarray, *, num_threads: int = -1) -> None:
        """Add vectors (normalised here) under new labels. Capacity grows by doubling."""
        ids = np.asarray(list(labels), dtype=np.int64)
        if ids.size == 0:
            return
        v = normalize(vectors)
        if v.shape != (ids.size, self.dim):
            raise ValueError(f"expected vectors of shape ({ids.size}, {self.dim}), got {v.shape}")
        if (ids < 0).any():
            raise ValueError("labels must be non-negative")
        with self._lock:
            needed = self._index.get_current_count() + ids.size
            cap = self._index.get_max_elements()
            if needed > cap:
                self._index.resize_index(max(needed, 2 * cap))
            self._index.add_items(v, ids, num_threads=num_threads)
            self._count += int(ids.size)
            self._max_label = max(self._max_label, int(ids.max()))

    def delete(self, labels: Iterable[int]) -> int:
        """Mark labels deleted; labels that are absent or already deleted are skipped.
        Returns how many were live and are now deleted."""
        n = 0
        with self._lock:
            for label in labels:
                try:
                    self._index.mark_deleted(int(label))
                except RuntimeError:  # not in the graph, or already deleted
                    continue
                n += 1
            self._count -= n
            self._deleted += n
        return n

    # ------------------------------------------------------------ reads

    def search(self, query: np.ndarray, k: int, *,
               filter: Callable[[int], bool] | None = None) -> list[tuple[int, float]]:
        """The ``k`` nearest live labels to ``query`` as ``[(label, cosine)]``, best first.

        ``k`` is clamped to the live count. With ``filter`` fewer than ``k`` may pass; hnswlib
        then refuses the full-width answer, so the search is widened and ``k`` lowered to the
        number it can fill.
        """
        q = normalize(query)
        if q.shape != (1, self.dim):
            raise ValueError(f"expected one query vector of dim {self.dim}, got {np.shape(query)}")
        with self._lock:
            k = min(int(k), self._count)
            if k <= 0:
                return []

            def query(n: int) -> list[tuple[int, float]]:
                labels, dists = self._index.knn_query(q, k=n, num_threads=1, filter=filter)
                return [(int(lb), float(1.0 - d)) for lb, d in zip(labels[0], dists[0])]

            try:
                return query(k)
            except RuntimeError:  # fewer than k results reached (filter, deletes, tiny graph)
                pass
            # A beam as wide as the graph reaches every passing label; then find by bisection
            # the largest k hnswlib can fill.
            self._index.set_ef(max(self._ef, self._index.get_current_count()))
            try:
                try:
                    return query(k)
                except RuntimeError:
                    pass
                best: list[tuple[int, float]] = []
                lo, hi = 0, k
                while hi - lo > 1:
                    mid = (lo + hi) // 2
                    try:
                        best, lo = query(mid), mid
                    except RuntimeError:
                        hi = mid
                return best
            finally:
                self._index.set_ef(self._ef)

    # ------------------------------------------------------------ files

    def save(self, folder: Path | str, *, generation: int) -> IndexInfo:
        """Write the graph under a fresh name, then atomically point the sidecar at it."""
        folder = Path(folder)
        name = f"vectors-{int(generation)}-{secrets.token_hex(4)}.hnsw"
        with self._lock:
            tmp = folder / (name + ".tmp")
            self._index.save_index(str(tmp))
            info = IndexInfo(FORMAT, name, self.dim, self.model_id, self._count, self._deleted,
                             self._max_label, int(generation), "ip", self.M, self.ef_construction)
        _fsync_file(tmp)
        os.replace(tmp, folder / name)
        side_tmp = folder / (SIDECAR_NAME + ".tmp")
        with open(side_tmp, "w", encoding="utf-8") as f:
            json.dump(asdict(info), f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(folder)  # the graph's name is durable before the sidecar names it
        os.replace(side_tmp, folder / SIDECAR_NAME)
        _fsync_dir(folder)
        remove_stale_files(folder, keep=name)
        return info

    @classmethod
    def load(cls, folder: Path | str, *, ef: int = 128) -> tuple["VectorIndex", IndexInfo]:
        """Open the index the sidecar names. Raises IndexFileError when it cannot."""
        folder = Path(folder)
        info = read_info(folder)
        if info is None:
            raise IndexFileError(f"no {SIDECAR_NAME} in {folder}")
        path = folder / info.file
        if not path.is_file():
            raise IndexFileError(f"{path} is missing")
        index = hnswlib.Index(space="ip", dim=info.dim)
        try:
            index.load_index(str(path))
        except (RuntimeError, OSError, ValueError) as e:
            raise IndexFileError(f"{path}: {e}") from e
        if index.get_current_count() != info.count + info.deleted:
            raise IndexFileError(f"{path}: holds {index.get_current_count()} items, "
                                 f"sidecar says {info.count} live + {info.deleted} deleted")
        # hnswlib does not save ef: the constructor sets it again.
        return cls(info.dim, model_id=info.model_id, M=info.M, ef_construction=info.ef_construction,
                   ef=ef, _index=index, _count=info.count, _deleted=info.deleted,
                   _max_label=info.max_label), info

    @classmethod
    def build(cls, dim: int, labels: np.ndarray, vectors: np.ndarray, *, model_id: str = "",
              ef: int = 128, **kw) -> "VectorIndex":
        """A fresh index holding exactly ``labels``."""
        idx = cls(dim, model_id=model_id, ef=ef, capacity=max(1024, len(labels)), **kw)
        idx.add(labels, vectors)
        return idx


def read_info(folder: Path | str) -> IndexInfo | None:
    """The sidecar in ``folder``, or None when it is missing or unreadable."""
    try:
        raw = json.loads((Path(folder) / SIDECAR_NAME).read_text(encoding="utf-8"))
        info = IndexInfo(**raw)
    except (OSError, ValueError, TypeError):
        return None
    return info if info.format == FORMAT else None


def remove_stale_files(folder: Path | str, *, keep: str | None) -> None:
    """Delete graph files and temp files the sidecar does not name (leftovers of a crash)."""
    for p in Path(folder).glob("vectors*"):
        if p.name in (keep, SIDECAR_NAME):
            continue
        if p.suffix in (".hnsw", ".tmp"):
            try:
                p.unlink()
            except OSError:
                pass
