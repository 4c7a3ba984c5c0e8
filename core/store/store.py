"""One knowledge base on disk, and its one writer.

A knowledge base is a folder:

``sift.db``       SQLite (WAL): documents, pages, chunks with their embeddings, both FTS5
                  indexes. The truth; see ``core.store.db`` for the schema.
``vectors.json``  sidecar of the dense index, and the hnswlib graph file it names
                  (see ``core.store.vectors``).
``sift.lock``     held (``flock``) by the process that writes the folder.
``ml/``           only with the multilingual model attached (``attach_multilingual``): the
                  second dense index, over the chunks with CJK characters, embedded with
                  multilingual-e5-small (``core.models.multilingual``); its vectors are stored in
                  ``chunks.embedding_ml`` and the graph is checked against them on attach.
``token_vectors.json`` and ``tokvec-*.seg``  only with a late-interaction model configured: its
                  compressed per-token vectors (``core.store.token_vectors``), attached by the owner
                  as ``Store.token_vectors``; deletes reach them in ``_after_commit`` and they are
                  saved with the graph.

Crash safety. Every change to a document (its row, pages, chunks, FTS rows, and a bump of
the ``generation`` counter in ``kb_meta``) is one SQLite transaction, committed with
``synchronous=FULL``. Only after the commit is the in-memory HNSW index updated and saved,
and saving writes a new graph file and then atomically replaces the sidecar. So at any
instant of a kill -9 the folder holds a committed database plus a complete index pair that
reflects the same or an *older* generation, never a newer or half-written one. On open,
``check_consistency`` compares the sidecar (generation, live count) with the database; when they differ it repairs the graph from the embeddings stored in ``chunks``:
labels that have no chunk are marked deleted (so no orphan vector survives), chunks without
a vector are added. When the graph is unreadable, was built for another model, or holds more
deleted than live slots, it is rebuilt from the stored embeddings instead (no re-embedding).
Chunk and document ids are AUTOINCREMENT, never reused, which is what makes the label diff
exact. The FTS indexes are inside the database and change in the same transaction as the
chunks, so they cannot drift; their row counts are checked on open anyway.

Bulk ingest can wrap many writes in ``with store.bulk():`` so the graph is saved once at the
end instead of after every document; a crash inside the block costs a repair on next open,
never data.

Threads: the Store serialises its own calls with a lock, so the app may call it from a worker
thread; only one process may write a folder (a second ``Store.open`` raises StoreError).
"""
from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np
import sqlite_utils

from core.errors import StoreError
from core.jobs import CancelToken, ProgressFn, check, report
from core.store import fts as fts_mod
from core.store.db import (STATES, decode_headings, decode_words, encode_headings, encode_words, get_meta,
                           migrate, now_iso, open_db, set_meta)
from core.store.fts import ChunkFilter, FtsRow, bm25_search, has_cjk
from core.store.vectors import IndexFileError, VectorIndex, normalize, read_info, remove_stale_files
from core.types import Chunk, ChunkId, ChunkSpan, DocId, ParsedDocument, ParsedPage

__all__ = ["Store", "DocumentRecord", "StoredChunk", "StoreCounts", "ConsistencyReport", "ChunkFilter",
           "LOCK_NAME", "InTransaction"]

LOCK_NAME = "sift.lock"
ML_FOLDER = "ml"
EXACT_SEARCH_LIMIT = 4096
"""A filtered dense search over at most this many chunks is computed exactly from stored
embeddings: hnswlib's filtered search wastes work (and may miss) when few labels pass."""
COMPACT_MIN_DELETED = 1024
"""Rebuild the graph when it holds more deleted slots than this and than live ones."""

InTransaction = Callable[[sqlite_utils.Database, DocId], "Mapping[str, str] | None"]
"""A callback run inside a Store write transaction, e.g. to write or drop a document's SQL
tables. In ``add_document``/``replace_document`` it runs after the document row is written and
before the chunks are; it may return a mapping that renames ``Chunk.table`` values, because a
table's final SQLite name (``t_<doc_id>_...``) is only known once the document has its id."""


@dataclass(frozen=True)
class DocumentRecord:
    """One row of ``documents``."""

    id: DocId
    path: str
    name: str
    kind: str
    sha256: str | None
    size: int | None
    mtime: float | None
    added_at: str
    state: str
    """One of ``core.store.db.STATES``: the state of the latest attempt. The chunks are those of
    the last version that reached ``ready``."""
    error: str | None
    n_pages: int
    n_chunks: int
    n_tables: int
    title: str
    metadata: dict
    warnings: tuple[str, ...]


@dataclass(frozen=True)
class StoredChunk:
    """A chunk as stored, with its ids."""

    id: ChunkId
    doc_id: DocId
    ord: int
    """Position of the chunk in its document."""
    text: str
    heading: str
    kind: str
    spans: tuple[ChunkSpan, ...]
    table: str | None
    row_ids: tuple[int, ...]
    n_tokens: int

    def as_chunk(self) -> Chunk:
        return Chunk(self.text, self.spans, self.heading, self.kind, self.table, self.row_ids, self.n_tokens)


@dataclass(frozen=True)
class StoreCounts:
    """How many chunks each index holds. ``consistent`` is what the tests assert."""

    documents: int
    chunks: int
    cjk_chunks: int
    """Chunks that contain CJK characters (the ones the bigram index should hold)."""
    fts: int
    fts_cjk: int
    vectors: int
    """Live labels in the HNSW graph."""
    vectors_deleted: int
    ml_chunks: int = 0
    """Chunks with a stored multilingual embedding (``embedding_ml``)."""
    ml_vectors: int | None = None
    """Live labels in the multilingual graph; None when no multilingual model is attached."""

    @property
    def consistent(self) -> bool:
        ml_ok = self.ml_vectors is None or self.ml_vectors == self.ml_chunks
        return self.chunks == self.fts == self.vectors and self.cjk_chunks == self.fts_cjk and ml_ok


@dataclass(frozen=True)
class ConsistencyReport:
    """What ``check_consistency`` found and did."""

    fts_rebuilt: bool
    vectors: str
    """``ok``, ``created`` (a new, empty knowledge base), ``repaired`` (labels added / marked
    deleted) or ``rebuilt`` (from stored embeddings)."""
    added: int = 0
    removed: int = 0
    reason: str = ""


# ------------------------------------------------------------------ folder lock


class _FolderLock:
    """An exclusive advisory lock on ``<kb>/sift.lock``; the OS drops it when the process dies."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise StoreError(f"cannot open the knowledge base {self.path.parent} for writing: {e}",
                             fix="check the folder exists and is writable") from e
        try:
            if os.name == "nt":
                import msvcrt
                msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            else:
                import fcntl
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            raise StoreError(f"the knowledge base {self.path.parent} is in use by another Sift process",
                             fix="close the other Sift window or command, then try again") from e
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            if os.name == "nt":
                import msvcrt
                os.lseek(self._fd, 0, os.SEEK_SET)
                msvcrt.locking(self._fd, msvcrt.LK_UNLCK, 1)
            else:
                import fcntl
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            os.close(self._fd)
            self._fd = None


# ------------------------------------------------------------------ helpers


def _doc_record(row: sqlite3.Row | tuple, cols: Sequence[str]) -> DocumentRecord:
    d = dict(zip(cols, row))
    return DocumentRecord(
        id=DocId(d["id"]), path=d["path"], name=d["name"], kind=d["kind"], sha256=d["sha256"], size=d["size"],
        mtime=d["mtime"], added_at=d["added_at"], state=d["state"], error=d["error"], n_pages=d["n_pages"],
        n_chunks=d["n_chunks"], n_tables=d["n_tables"], title=d["title"], metadata=json.loads(d["metadata"]),
        warnings=tuple(json.loads(d["warnings"])),
    )


_DOC_COLS = ("id", "path", "name", "kind", "sha256", "size", "mtime", "added_at", "state", "error", "n_pages",
             "n_chunks", "n_tables", "title", "metadata", "warnings")
_DOC_SELECT = "SELECT " + ", ".join(_DOC_COLS) + " FROM documents"
_CHUNK_COLS = ("id", "doc_id", "ord", "text", "heading", "kind", "spans", "table_name", "row_ids", "n_tokens")


def _stored_chunk(row: tuple) -> StoredChunk:
    cid, doc, ord_, text, heading, kind, spans, table, row_ids, n_tokens = row
    return StoredChunk(ChunkId(cid), DocId(doc), ord_, text, heading, kind,
                       tuple(ChunkSpan(int(p), int(s), int(e)) for p, s, e in json.loads(spans)),
                       table, tuple(json.loads(row_ids)), n_tokens)


def _vec_blob(v: np.ndarray) -> bytes:
    return np.ascontiguousarray(v, dtype="<f4").tobytes()


# ------------------------------------------------------------------ the store


class Store:
    """The one writer of a knowledge-base folder. Use ``Store.open`` (and ``close`` or ``with``)."""

    def __init__(self, folder: Path, db: sqlite_utils.Database, lock: _FolderLock, *, dim: int,
                 model_id: str, ef: int) -> None:
        self.folder = folder
        self.db = db
        self.dim = dim
        self.model_id = model_id
        self.ef = ef
        self._lock = threading.RLock()
        self._folder_lock = lock
        self._index = VectorIndex(dim, model_id=model_id, ef=ef)
        self._dirty = False  # the in-memory graph has changes not yet saved
        self._bulk = 0
        self._closed = False
        self.last_check: ConsistencyReport | None = None
        self.token_vectors = None
        """A ``core.store.token_vectors.TokenVectorStore`` the owner attaches when a late-interaction
        model is configured: deletes reach it here, and it is saved with the graph."""
        self._ml: VectorIndex | None = None  # the multilingual graph, once attached
        self.ml_model_id: str | None = None
        self.ml_dim = 0
        self._ml_dirty = False

    # -------------------------------------------------------------- open / close

    @classmethod
    def open(cls, folder: Path | str, *, dim: int, model_id: str, ef: int = 128) -> "Store":
        """Open (creating if needed) the knowledge base in ``folder`` for writing.

        Takes the folder lock, migrates the schema, checks the embedding model matches the
        stored vectors, and repairs the indexes if a crash left them behind the database.
        """
        folder = Path(folder)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"cannot create the knowledge base folder {folder}: {e}") from e
        lock = _FolderLock(folder)
        lock.acquire()
        db = None
        try:
            db = open_db(folder)
            migrate(db)
            store = cls(folder, db, lock, dim=int(dim), model_id=model_id, ef=ef)
            store._check_model()
            store.last_check = store.check_consistency()
            return store
        except BaseException:
            if db is not None:
                db.close()
            lock.release()
            raise

    def close(self) -> None:
        """Save the graph if it changed, close the database and release the folder."""
        with self._lock:
            if self._closed:
                return
            try:
                if (self._dirty or self._ml_dirty
                        or (self.token_vectors is not None and self.token_vectors.dirty)):
                    self.save_index()
            finally:
                self._closed = True
                self.db.close()
                self._folder_lock.release()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _check_model(self) -> None:
        stored_model = get_meta(self.db, "embed_model")
        stored_dim = get_meta(self.db, "embed_dim")
        if stored_model == self.model_id and stored_dim == str(self.dim):
            return
        has_vectors = self.db.execute("SELECT 1 FROM chunks LIMIT 1").fetchone() is not None
        if stored_model is not None and has_vectors:
            raise StoreError(
                f"the knowledge base {self.folder} was embedded with {stored_model} (dim {stored_dim}), "
                f"not {self.model_id} (dim {self.dim})",
                fix=f"open it with {stored_model}, or create a new knowledge base for the new model")
        with self.db.atomic():
            set_meta(self.db, "embed_model", self.model_id)
            set_meta(self.db, "embed_dim", str(self.dim))

    # -------------------------------------------------------------- write plumbing

    @contextlib.contextmanager
    def _write(self, *, chunks_change: bool = False) -> Iterator[sqlite3.Connection]:
        """One write transaction. When it changes the set of chunks it also bumps the
        generation counter, which the graph's sidecar is compared with on open."""
        if self._closed:
            raise StoreError(f"the knowledge base {self.folder} is closed")
        try:
            with self.db.atomic():
                yield self.db.conn
                if chunks_change:
                    self.db.conn.execute(
                        "UPDATE kb_meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'")
        except sqlite3.OperationalError as e:
            raise StoreError(f"cannot write the knowledge base {self.folder}: {e}",
                             fix="check the disk has free space and the folder is writable") from e

    def _generation(self) -> int:
        return int(get_meta(self.db, "generation", "0") or 0)

    def _ml_generation(self) -> int:
        """What the multilingual graph's sidecar is compared with: it changes with every write
        that changes the chunks (``generation``) or only their multilingual vectors."""
        return self._generation() + int(get_meta(self.db, "ml_generation", "0") or 0)

    def _bump_ml_generation(self) -> None:
        set_meta(self.db, "ml_generation", str(int(get_meta(self.db, "ml_generation", "0") or 0) + 1))

    def _after_commit(self, removed: Sequence[int], added: Sequence[int], vectors: np.ndarray | None,
                      ml_added: Sequence[int] = (), ml_vectors: np.ndarray | None = None) -> None:
        """Bring the graphs up to the committed database, then save them unless in bulk mode."""
        if removed and self.token_vectors is not None:
            self.token_vectors.delete(removed)
        if self._ml is not None and (removed or len(ml_added)):
            try:
                if removed:
                    self._ml.delete(removed)
                if len(ml_added):
                    self._ml.add(ml_added, ml_vectors)
            except Exception:
                self._ml = self._build_index(column="embedding_ml")
            self._ml_dirty = True
        try:
            if removed:
                self._index.delete(removed)
            if added:
                self._index.add(added, vectors)
        except Exception:
            # The database already holds the truth; a fresh graph from it is always right.
            self._rebuild_index()
        self._dirty = True
        if self._index.deleted > max(COMPACT_MIN_DELETED, self._index.count):
            self._rebuild_index()
        if not self._bulk:
            self.save_index()

    def save_index(self) -> None:
        """Save the graph (new file, then the sidecar atomically)."""
        with self._lock:
            try:
                self._index.save(self.folder, generation=self._generation())
            except OSError as e:
                raise StoreError(f"cannot save the vector index in {self.folder}: {e}",
                                 fix="check the disk has free space; the index is repaired on next open") from e
            self._dirty = False
            self._save_token_vectors()
            self._save_ml()

    def _save_ml(self) -> None:
        if self._ml is None or not self._ml_dirty:
            return
        try:
            (self.folder / ML_FOLDER).mkdir(exist_ok=True)
            self._ml.save(self.folder / ML_FOLDER, generation=self._ml_generation())
        except OSError as e:
            raise StoreError(f"cannot save the multilingual vector index in {self.folder}: {e}",
                             fix="check the disk has free space; the index is repaired on next open") from e
        self._ml_dirty = False

    # -------------------------------------------------------------- token vectors (late interaction)

    def _save_token_vectors(self) -> None:
        if self.token_vectors is None or not self.token_vectors.dirty:
            return
        try:
            self.token_vectors.save(self._generation())
        except OSError as e:
            raise StoreError(f"cannot save the token vectors in {self.folder}: {e}",
                             fix="check the disk has free space; they are re-encoded on next open") from e

    def token_vectors_changed(self) -> None:
        """Save the attached token vectors now, or at the end of the current ``bulk`` block."""
        with self._lock:
            if self._bulk:
                self._dirty = True
            else:
                self._save_token_vectors()

    def chunk_ids(self) -> set[int]:
        """Every stored chunk id."""
        with self._lock:
            return {r[0] for r in self._read().execute("SELECT id FROM chunks")}

    @contextlib.contextmanager
    def bulk(self) -> Iterator["Store"]:
        """Defer graph saves to the end of the block (for adding many documents)."""
        with self._lock:
            self._bulk += 1
        try:
            yield self
        finally:
            with self._lock:
                self._bulk -= 1
                if not self._bulk and (self._dirty or self._ml_dirty) and not self._closed:
                    self.save_index()

    # -------------------------------------------------------------- documents

    def register(self, path: str, *, kind: str = "", sha256: str | None = None, size: int | None = None,
                 mtime: float | None = None, state: str = "queued") -> DocId:
        """Record a file before its content is stored (queued, or failed with ``set_state``).

        When ``path`` is already known its id is returned and only its state changes: the
        stored content of an earlier version stays searchable until it is replaced.
        """
        _check_state(state)
        with self._lock, self._write() as conn:
            row = conn.execute("SELECT id FROM documents WHERE path = ?", (path,)).fetchone()
            if row:
                conn.execute("UPDATE documents SET state = ?, error = NULL WHERE id = ?", (state, row[0]))
                return DocId(row[0])
            cur = conn.execute(
                "INSERT INTO documents (path, name, kind, sha256, size, mtime, added_at, state) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (path, Path(path).name, kind, sha256, size, mtime, now_iso(), state))
            return DocId(cur.lastrowid)

    def set_state(self, doc_id: DocId, state: str, error: str | None = None) -> None:
        """Set a document's state (and its error message, cleared when None)."""
        _check_state(state)
        with self._lock, self._write() as conn:
            cur = conn.execute("UPDATE documents SET state = ?, error = ? WHERE id = ?", (state, error, doc_id))
            if cur.rowcount == 0:
                raise StoreError(f"no document {doc_id} in {self.folder}")

    def add_document(self, parsed: ParsedDocument, chunks: Sequence[Chunk], embeddings: np.ndarray, *,
                     path: str, sha256: str, size: int, mtime: float,
                     in_transaction: InTransaction | None = None,
                     ml_embeddings: Mapping[int, np.ndarray] | None = None) -> DocId:
        """Store a parsed document, its chunks and their embeddings; return its id.

        Document, pages, chunks and FTS rows are written in one transaction (with
        ``in_transaction(db, doc_id)`` if given, see ``InTransaction``); then the graph is
        updated and saved. A
        queued/failed record at ``path`` (from ``register``) becomes this document and keeps
        its id; a ready document at ``path`` must go through ``replace_document``.
        ``ml_embeddings`` maps a chunk's position in ``chunks`` to its multilingual vector.
        """
        vecs = self._check_embeddings(chunks, embeddings)
        ml = self._check_ml(chunks, ml_embeddings)
        with self._lock:
            with self._write(chunks_change=True) as conn:
                row = conn.execute("SELECT id, state FROM documents WHERE path = ?", (path,)).fetchone()
                reuse: int | None = None
                if row:
                    if row[1] == "ready":
                        raise StoreError(f"{path} is already in the knowledge base (document {row[0]})",
                                         fix="use replace_document for a changed file")
                    reuse = row[0]
                    old = self._chunk_ids(conn, reuse)  # a placeholder has none; be exact anyway
                    conn.execute("DELETE FROM documents WHERE id = ?", (reuse,))
                else:
                    old = []
                doc_id, ids = self._insert(conn, parsed, chunks, vecs, path=path, sha256=sha256, size=size,
                                           mtime=mtime, doc_id=reuse, in_transaction=in_transaction, ml=ml)
            self._after_commit(old, ids, vecs, *self._ml_added(ids, ml))
            return doc_id

    def replace_document(self, old_doc_id: DocId, parsed: ParsedDocument, chunks: Sequence[Chunk],
                         embeddings: np.ndarray, *, path: str, sha256: str, size: int, mtime: float,
                         in_transaction: InTransaction | None = None,
                         ml_embeddings: Mapping[int, np.ndarray] | None = None) -> DocId:
        """Swap a document for its new version in one transaction; return the new id.

        The old version leaves every index (rows, FTS, then the graph) in the same
        transaction that adds the new one, so a search never sees both or neither.
        """
        vecs = self._check_embeddings(chunks, embeddings)
        ml = self._check_ml(chunks, ml_embeddings)
        with self._lock:
            with self._write(chunks_change=True) as conn:
                if conn.execute("SELECT 1 FROM documents WHERE id = ?", (old_doc_id,)).fetchone() is None:
                    raise StoreError(f"no document {old_doc_id} in {self.folder}")
                old = self._chunk_ids(conn, old_doc_id)
                conn.execute("DELETE FROM documents WHERE id = ?", (old_doc_id,))
                other = conn.execute("SELECT id, state FROM documents WHERE path = ?", (path,)).fetchone()
                if other:  # the new path held another record: only a placeholder may be overwritten
                    if other[1] == "ready":
                        raise StoreError(f"{path} is already in the knowledge base (document {other[0]})")
                    old += self._chunk_ids(conn, other[0])
                    conn.execute("DELETE FROM documents WHERE id = ?", (other[0],))
                doc_id, ids = self._insert(conn, parsed, chunks, vecs, path=path, sha256=sha256, size=size,
                                           mtime=mtime, doc_id=None, in_transaction=in_transaction, ml=ml)
            self._after_commit(old, ids, vecs, *self._ml_added(ids, ml))
            return doc_id

    def remove_document(self, doc_id: DocId, *, in_transaction: InTransaction | None = None) -> bool:
        """Remove a document from every index; False when it was not there."""
        with self._lock:
            with self._write(chunks_change=True) as conn:
                if conn.execute("SELECT 1 FROM documents WHERE id = ?", (doc_id,)).fetchone() is None:
                    return False
                old = self._chunk_ids(conn, doc_id)
                if in_transaction is not None:
                    in_transaction(self.db, doc_id)
                conn.execute("DELETE FROM documents WHERE id = ?", (doc_id,))
            self._after_commit(old, [], None)
            return True

    def _check_embeddings(self, chunks: Sequence[Chunk], embeddings: np.ndarray) -> np.ndarray:
        e = np.asarray(embeddings, dtype=np.float32)
        if len(chunks) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        if e.ndim != 2 or e.shape != (len(chunks), self.dim):
            raise ValueError(f"embeddings must have shape ({len(chunks)}, {self.dim}), got {e.shape}")
        if not np.isfinite(e).all():
            raise ValueError("embeddings contain NaN or infinity")
        return normalize(e)

    def _check_ml(self, chunks: Sequence[Chunk], ml: Mapping[int, np.ndarray] | None) -> dict[int, np.ndarray]:
        out: dict[int, np.ndarray] = {}
        for pos, v in (ml or {}).items():
            if not 0 <= int(pos) < len(chunks):
                raise ValueError(f"multilingual embedding for chunk {pos}, but there are {len(chunks)} chunks")
            e = np.asarray(v, dtype=np.float32).reshape(-1)
            if self.ml_dim and e.shape[0] != self.ml_dim:
                raise ValueError(f"multilingual embeddings must have dim {self.ml_dim}, got {e.shape[0]}")
            if not np.isfinite(e).all():
                raise ValueError("multilingual embeddings contain NaN or infinity")
            out[int(pos)] = normalize(e)[0]
        return out

    def _ml_added(self, ids: Sequence[int], ml: Mapping[int, np.ndarray]) -> tuple[list[int], np.ndarray | None]:
        if not ml:
            return [], None
        pos = sorted(ml)
        return [ids[p] for p in pos], np.stack([ml[p] for p in pos])

    @staticmethod
    def _chunk_ids(conn: sqlite3.Connection, doc_id: int) -> list[int]:
        return [r[0] for r in conn.execute("SELECT id FROM chunks WHERE doc_id = ?", (doc_id,))]

    def _insert(self, conn: sqlite3.Connection, parsed: ParsedDocument, chunks: Sequence[Chunk], vecs: np.ndarray,
                *, path: str, sha256: str, size: int, mtime: float, doc_id: int | None,
                in_transaction: InTransaction | None,
                ml: Mapping[int, np.ndarray] | None = None) -> tuple[DocId, list[int]]:
        n_tables = len(parsed.tables) + sum(len(p.tables) for p in parsed.pages)
        cur = conn.execute(
            "INSERT INTO documents (id, path, name, kind, sha256, size, mtime, added_at, state, error, n_pages, "
            "n_chunks, n_tables, title, metadata, warnings) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'ready', NULL, ?, ?, ?, ?, ?, ?)",
            (doc_id, path, Path(path).name, parsed.kind, sha256, size, mtime, now_iso(), len(parsed.pages),
             len(chunks), n_tables, parsed.title or "",
             json.dumps(parsed.metadata, ensure_ascii=False, default=str),
             json.dumps(list(parsed.warnings), ensure_ascii=False)))
        new_id = DocId(cur.lastrowid)
        rename: Mapping[str, str] = {}
        if in_transaction is not None:
            rename = in_transaction(self.db, new_id) or {}
        conn.executemany(
            "INSERT INTO pages (doc_id, number, width, height, text, ocr, words, headings) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [(new_id, p.number, p.width, p.height, p.text, int(p.ocr), encode_words(p.words, p.text),
              encode_headings(p.headings)) for p in parsed.pages])
        ids: list[int] = []
        fts_rows: list[FtsRow] = []
        for i, (c, v) in enumerate(zip(chunks, vecs)):
            pages = [s.page for s in c.spans]
            cur = conn.execute(
                "INSERT INTO chunks (doc_id, ord, kind, text, heading, spans, page_lo, page_hi, table_name, "
                "row_ids, n_tokens, cjk, embedding, embedding_ml) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (new_id, i, c.kind, c.text, c.heading or "", json.dumps([[s.page, s.start, s.end] for s in c.spans]),
                 min(pages) if pages else None, max(pages) if pages else None, rename.get(c.table, c.table),
                 json.dumps([int(r) for r in c.row_ids]), int(c.n_tokens),
                 int(has_cjk(c.text) or has_cjk(c.heading or "")), _vec_blob(v),
                 _vec_blob(ml[i]) if ml and i in ml else None))
            ids.append(int(cur.lastrowid))
            fts_rows.append(FtsRow(ids[-1], c.text, c.heading or ""))
        fts_mod.index_chunks(conn, fts_rows)
        return new_id, ids

    # -------------------------------------------------------------- reads

    def _read(self):
        if self._closed:
            raise StoreError(f"the knowledge base {self.folder} is closed")
        return self.db.conn

    def get_document(self, doc_id: DocId) -> DocumentRecord | None:
        with self._lock:
            row = self._read().execute(_DOC_SELECT + " WHERE id = ?", (doc_id,)).fetchone()
            return _doc_record(row, _DOC_COLS) if row else None

    def find_by_path(self, path: str) -> DocumentRecord | None:
        """The document recorded at ``path`` (paths are unique), or None."""
        with self._lock:
            row = self._read().execute(_DOC_SELECT + " WHERE path = ?", (path,)).fetchone()
            return _doc_record(row, _DOC_COLS) if row else None

    def find_by_sha(self, sha256: str) -> list[DocumentRecord]:
        """Documents whose bytes hash to ``sha256`` (the same file may sit at several paths)."""
        with self._lock:
            rows = self._read().execute(_DOC_SELECT + " WHERE sha256 = ? ORDER BY id", (sha256,)).fetchall()
            return [_doc_record(r, _DOC_COLS) for r in rows]

    def list_documents(self, *, state: str | None = None) -> list[DocumentRecord]:
        """Every document (or those in ``state``), oldest first."""
        with self._lock:
            if state is None:
                rows = self._read().execute(_DOC_SELECT + " ORDER BY id").fetchall()
            else:
                rows = self._read().execute(_DOC_SELECT + " WHERE state = ? ORDER BY id", (state,)).fetchall()
            return [_doc_record(r, _DOC_COLS) for r in rows]

    def get_chunks(self, ids: Sequence[int]) -> list[StoredChunk]:
        """The chunks with these ids, in the order asked (unknown ids are skipped)."""
        if not ids:
            return []
        with self._lock:
            rows = self._read().execute(
                "SELECT " + ", ".join(_CHUNK_COLS) + " FROM chunks WHERE id IN (SELECT value FROM json_each(?))",
                (json.dumps([int(i) for i in ids]),)).fetchall()
        by_id = {r[0]: _stored_chunk(r) for r in rows}
        return [by_id[int(i)] for i in ids if int(i) in by_id]

    def document_chunks(self, doc_id: DocId) -> list[StoredChunk]:
        """A document's chunks in order."""
        with self._lock:
            rows = self._read().execute(
                "SELECT " + ", ".join(_CHUNK_COLS) + " FROM chunks WHERE doc_id = ? ORDER BY ord",
                (doc_id,)).fetchall()
        return [_stored_chunk(r) for r in rows]

    def get_embeddings(self, ids: Sequence[int], *, column: str = "embedding") -> np.ndarray:
        """The stored (normalised) embeddings of these chunks, in the order asked; float32 [n, dim].
        ``column="embedding_ml"`` reads the multilingual ones. Raises KeyError for an unknown id
        (or, for the multilingual column, a chunk without one)."""
        if column not in ("embedding", "embedding_ml"):
            raise ValueError(f"unknown embedding column {column!r}")
        dim = self.dim if column == "embedding" else self.ml_dim
        with self._lock:
            rows = self._read().execute(
                f"SELECT id, {column} FROM chunks WHERE {column} IS NOT NULL AND id IN (SELECT value FROM json_each(?))",
                (json.dumps([int(i) for i in ids]),)).fetchall()
        by_id = {r[0]: r[1] for r in rows}
        out = np.zeros((len(ids), dim), dtype=np.float32)
        for j, i in enumerate(ids):
            out[j] = np.frombuffer(by_id[int(i)], dtype="<f4")
        return out

    def get_page(self, doc_id: DocId, number: int) -> ParsedPage | None:
        """A stored page with its text, decoded word boxes and headings (tables are not stored here)."""
        with self._lock:
            row = self._read().execute(
                "SELECT number, width, height, text, ocr, words, headings FROM pages WHERE doc_id = ? AND number = ?",
                (doc_id, number)).fetchone()
        if row is None:
            return None
        num, w, h, text, ocr, words, headings = row
        return ParsedPage(num, w, h, text, decode_words(words, text), decode_headings(headings), bool(ocr))

    # -------------------------------------------------------------- search

    def search_bm25(self, query: str, k: int, doc_ids: Sequence[int] | None = None, *,
                    where: ChunkFilter | None = None) -> list[tuple[ChunkId, float]]:
        """BM25 over both FTS indexes (see ``core.store.fts.bm25_search``)."""
        flt = _merge_filter(doc_ids, where)
        with self._lock:
            return [(ChunkId(c), s) for c, s in bm25_search(self._read(), query, k, doc_filter=flt)]

    def search_dense(self, query_vec: np.ndarray, k: int, doc_ids: Sequence[int] | None = None, *,
                     where: ChunkFilter | None = None) -> list[tuple[ChunkId, float]]:
        """The ``k`` chunks nearest to ``query_vec`` by cosine, best first, within the filter."""
        return self._search_graph(self._index, "embedding", query_vec, k, _merge_filter(doc_ids, where))

    @property
    def has_multilingual(self) -> bool:
        """True when a multilingual model is attached and its graph holds at least one chunk."""
        return self._ml is not None and self._ml.count > 0

    def search_dense_ml(self, query_vec: np.ndarray, k: int, *,
                        where: ChunkFilter | None = None) -> list[tuple[ChunkId, float]]:
        """As ``search_dense``, over the multilingual graph (chunks with CJK characters only)."""
        if self._ml is None:
            return []
        return self._search_graph(self._ml, "embedding_ml", query_vec, k, where or ChunkFilter())

    def _search_graph(self, index: VectorIndex, column: str, query_vec: np.ndarray, k: int,
                      flt: ChunkFilter) -> list[tuple[ChunkId, float]]:
        with self._lock:
            conn = self._read()
            if flt.empty:
                return [(ChunkId(c), s) for c, s in index.search(query_vec, k)]
            cond, params = flt.sql("c")
            allowed = [r[0] for r in conn.execute(
                f"SELECT c.id FROM chunks AS c WHERE {cond} AND c.{column} IS NOT NULL", params)]
            if not allowed or k <= 0:
                return []
            if len(allowed) > EXACT_SEARCH_LIMIT:
                ok = set(allowed)
                return [(ChunkId(c), s) for c, s in
                        index.search(query_vec, min(k, len(ok)), filter=ok.__contains__)]
            mat = self.get_embeddings(allowed, column=column)
        q = normalize(query_vec)[0]
        sims = mat @ q
        order = np.argsort(-sims, kind="stable")[:k]
        return [(ChunkId(allowed[i]), float(sims[i])) for i in order]

    # -------------------------------------------------------------- consistency

    def counts(self) -> StoreCounts:
        """Rows in ``chunks``, in each FTS index and live labels in the graph."""
        with self._lock:
            conn = self._read()
            docs = conn.execute("SELECT count(*) FROM documents").fetchone()[0]
            chunks = conn.execute("SELECT count(*) FROM chunks").fetchone()[0]
            cjk = conn.execute("SELECT count(*) FROM chunks WHERE cjk = 1").fetchone()[0]
            latin, fts_cjk = fts_mod.fts_counts(conn)
            ml = conn.execute("SELECT count(*) FROM chunks WHERE embedding_ml IS NOT NULL").fetchone()[0]
            return StoreCounts(docs, chunks, cjk, latin, fts_cjk, self._index.count, self._index.deleted,
                               ml, self._ml.count if self._ml is not None else None)

    def check_consistency(self) -> ConsistencyReport:
        """Make the FTS indexes and the graph agree with the database; say what was done.

        Cheap when nothing is wrong (counts and the sidecar's generation are compared). Run by
        ``open``; safe to run again.
        """
        with self._lock:
            conn = self._read()
            fts_rebuilt = False
            n_chunks = conn.execute("SELECT count(*) FROM chunks").fetchone()[0]
            n_cjk = conn.execute("SELECT count(*) FROM chunks WHERE cjk = 1").fetchone()[0]
            if fts_mod.fts_counts(conn) != (n_chunks, n_cjk):
                with self._write():
                    fts_mod.rebuild_fts(conn)
                fts_rebuilt = True
            gen = self._generation()
            try:
                index, info = VectorIndex.load(self.folder, ef=self.ef)
            except IndexFileError as e:
                fresh = n_chunks == 0 and read_info(self.folder) is None
                self._rebuild_index()
                self.save_index()
                return ConsistencyReport(fts_rebuilt, "created" if fresh else "rebuilt", reason=str(e))
            if info.dim != self.dim or info.model_id != self.model_id:
                self._rebuild_index()
                self.save_index()
                return ConsistencyReport(fts_rebuilt, "rebuilt",
                                         reason=f"index built for {info.model_id} (dim {info.dim})")
            self._index = index
            # Every write that changes the chunks bumps the generation in its own transaction,
            # and the graph is saved only after it has applied that write: an equal generation
            # (and count, as a second check) means the graph is current.
            if (info.generation, info.count) == (gen, n_chunks):
                remove_stale_files(self.folder, keep=info.file)
                return ConsistencyReport(fts_rebuilt, "ok")
            removed, added, n_db = self._repair_labels(index, "embedding")
            reason = (f"index at generation {info.generation} with {info.count} vectors; "
                      f"database at {gen} with {n_chunks} chunks")
            if index.count != n_db or index.deleted > max(COMPACT_MIN_DELETED, index.count):
                self._rebuild_index()
                self.save_index()
                return ConsistencyReport(fts_rebuilt, "rebuilt", reason=reason)
            self._dirty = True
            self.save_index()
            return ConsistencyReport(fts_rebuilt, "repaired", added=added, removed=removed, reason=reason)

    def _build_index(self, *, column: str = "embedding", progress: ProgressFn | None = None,
                     cancel: CancelToken | None = None, batch: int = 4096) -> VectorIndex:
        """A fresh graph of every vector stored in ``column`` (``embedding`` or ``embedding_ml``)."""
        dim, model_id = (self.dim, self.model_id) if column == "embedding" else (self.ml_dim, self.ml_model_id or "")
        conn = self._read()
        total = conn.execute(f"SELECT count(*) FROM chunks WHERE {column} IS NOT NULL").fetchone()[0]
        index = VectorIndex(dim, model_id=model_id, ef=self.ef, capacity=max(1024, total))
        started = time.monotonic()
        done, last = 0, -1
        while True:
            check(cancel)
            rows = conn.execute(f"SELECT id, {column} FROM chunks WHERE {column} IS NOT NULL AND id > ? "
                                "ORDER BY id LIMIT ?", (last, batch)).fetchall()
            if not rows:
                break
            last = rows[-1][0]
            mat = np.frombuffer(b"".join(r[1] for r in rows), dtype="<f4").reshape(len(rows), dim)
            index.add([r[0] for r in rows], mat)
            done += len(rows)
            report(progress, "vectors", done, total, unit="chunks", started=started)
        return index

    def _repair_labels(self, index: VectorIndex, column: str) -> tuple[int, int, int]:
        """Bring a graph that is behind (or, after a lost write, ahead of) the database up to it by
        diffing labels: (removed, added, chunks with a vector in ``column``). The label list
        includes deleted ones, and marking one deleted again is a no-op."""
        db_ids = {r[0] for r in self._read().execute(f"SELECT id FROM chunks WHERE {column} IS NOT NULL")}
        labels = index.labels()
        removed = index.delete(labels - db_ids)
        missing = sorted(db_ids - labels)
        for start in range(0, len(missing), 2048):
            part = missing[start:start + 2048]
            index.add(part, self.get_embeddings(part, column=column))
        return removed, len(missing), len(db_ids)

    def _rebuild_index(self) -> None:
        self._index = self._build_index()
        self._dirty = True

    # -------------------------------------------------------------- the multilingual graph

    def attach_multilingual(self, *, dim: int, model_id: str) -> ConsistencyReport:
        """Open (or build) the multilingual graph in ``ml/`` and make it agree with
        ``chunks.embedding_ml``. Vectors stored by another model are dropped (the owner then
        re-embeds the CJK chunks, see ``chunks_missing_ml``)."""
        with self._lock:
            self.ml_dim, self.ml_model_id = int(dim), model_id
            if get_meta(self.db, "ml_model") != model_id or get_meta(self.db, "ml_dim") != str(dim):
                with self._write() as conn:
                    conn.execute("UPDATE chunks SET embedding_ml = NULL WHERE embedding_ml IS NOT NULL")
                    set_meta(self.db, "ml_model", model_id)
                    set_meta(self.db, "ml_dim", str(dim))
                    self._bump_ml_generation()
            folder = self.folder / ML_FOLDER
            try:
                index, info = VectorIndex.load(folder, ef=self.ef)
                if info.dim != self.ml_dim or info.model_id != model_id:
                    raise IndexFileError(f"index built for {info.model_id} (dim {info.dim})")
            except IndexFileError as e:
                self._ml = self._build_index(column="embedding_ml")
                self._ml_dirty = True
                self._save_ml()
                return ConsistencyReport(False, "rebuilt" if read_info(folder) else "created", reason=str(e))
            n_db = self._read().execute("SELECT count(*) FROM chunks WHERE embedding_ml IS NOT NULL").fetchone()[0]
            if (info.generation, info.count) == (self._ml_generation(), n_db):
                self._ml = index
                remove_stale_files(folder, keep=info.file)
                return ConsistencyReport(False, "ok")
            removed, added, n_db = self._repair_labels(index, "embedding_ml")
            self._ml, self._ml_dirty = index, True
            if index.count != n_db or index.deleted > max(COMPACT_MIN_DELETED, index.count):
                self._ml = self._build_index(column="embedding_ml")
            self._save_ml()
            return ConsistencyReport(False, "repaired", added=added, removed=removed,
                                     reason=f"multilingual graph at {info.count} chunks, database at {n_db}")

    def has_cjk_chunks(self) -> bool:
        """Whether any chunk has CJK characters (one indexed lookup, unlike ``counts``)."""
        with self._lock:
            return self._read().execute("SELECT 1 FROM chunks WHERE cjk = 1 LIMIT 1").fetchone() is not None

    def chunks_missing_ml(self, *, limit: int = 256) -> list[StoredChunk]:
        """Up to ``limit`` chunks with CJK characters that have no multilingual vector yet."""
        with self._lock:
            rows = self._read().execute(
                "SELECT " + ", ".join(_CHUNK_COLS) + " FROM chunks WHERE cjk = 1 AND embedding_ml IS NULL "
                "ORDER BY id LIMIT ?", (int(limit),)).fetchall()
        return [_stored_chunk(r) for r in rows]

    def set_ml_embeddings(self, ids: Sequence[int], vectors: np.ndarray) -> int:
        """Store multilingual vectors for existing chunks that have none (gone ones and ones
        already embedded are skipped); returns how many were stored. Needs
        ``attach_multilingual`` first."""
        if self._ml is None:
            raise StoreError(f"no multilingual model is attached to {self.folder}")
        vecs = normalize(np.asarray(vectors, dtype=np.float32).reshape(len(ids), self.ml_dim))
        with self._lock:
            with self._write() as conn:
                done: list[int] = []
                keep: list[int] = []
                for i, (cid, v) in enumerate(zip(ids, vecs)):
                    cur = conn.execute("UPDATE chunks SET embedding_ml = ? WHERE id = ? AND embedding_ml IS NULL",
                                       (_vec_blob(v), int(cid)))
                    if cur.rowcount:
                        done.append(int(cid))
                        keep.append(i)
                if done:
                    self._bump_ml_generation()
            if done:
                self._ml.add(done, vecs[keep])
                self._ml_dirty = True
                if not self._bulk:
                    self._save_ml()
            return len(done)

    def reindex(self, *, progress: ProgressFn | None = None, cancel: CancelToken | None = None) -> StoreCounts:
        """Rebuild both FTS indexes and the graph from the database alone.

        Cancelling keeps whatever was complete: the FTS rebuild is one transaction, and the new
        graph replaces the old one only when finished.
        """
        with self._lock:
            check(cancel)
            report(progress, "fts", 0, 1, unit="steps")
            with self._write() as conn:
                fts_mod.rebuild_fts(conn)
            report(progress, "fts", 1, 1, unit="steps")
            self._index = self._build_index(progress=progress, cancel=cancel)
            self._dirty = True
            if self._ml is not None:
                self._ml = self._build_index(column="embedding_ml", cancel=cancel)
                self._ml_dirty = True
            self.save_index()
            return self.counts()


def _check_state(state: str) -> None:
    if state not in STATES:
        raise ValueError(f"unknown document state {state!r}; expected one of {STATES}")


def _merge_filter(doc_ids: Sequence[int] | None, where: ChunkFilter | None) -> ChunkFilter:
    flt = where or ChunkFilter()
    if doc_ids is None:
        return flt
    ids = tuple(int(d) for d in doc_ids)
    if flt.doc_ids is not None:
        ids = tuple(d for d in ids if d in set(flt.doc_ids))
    return ChunkFilter(ids, flt.page_from, flt.page_to, flt.kinds)
