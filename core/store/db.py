"""The knowledge-base database: ``<kb>/sift.db``, its schema, migrations and page-word encoding.

The database is the truth: documents, pages (text, word boxes), chunks (text, provenance and
the float32 embedding) and both FTS5 indexes live in it, so every other index file can be
rebuilt from it alone. Connections use WAL (readers never block the writer), foreign keys
(deleting a document cascades to its pages and chunks, and triggers on ``chunks`` remove the
FTS rows) and ``synchronous=FULL`` (a committed transaction survives power loss, not only a
killed process).

Migrations are decorated functions, applied in order, each in its own transaction together
with the row in ``_migrations`` that records it, so a crash mid-migration leaves the step
undone and it runs again next time. ``PRAGMA user_version`` mirrors the number of applied
steps for tools that look there. To change the schema, append a new step; never edit an
applied one. Token vectors for late interaction are not stored yet: when a late-interaction
model is configured, a new step adds e.g. ``chunk_tokens(chunk_id PRIMARY KEY REFERENCES
chunks ON DELETE CASCADE, model_id, data BLOB fp16)`` or records a file beside the index.

Page words are stored as one BLOB per page (``encode_words`` / ``decode_words``): a short
header, then float32 rectangles and int32 offsets as raw little-endian arrays (24 bytes a
word, decoded with two ``numpy.frombuffer`` calls), then the word texts only when they are
not simply ``page.text[start:end]``.
"""
from __future__ import annotations

import json
import sqlite3
import struct
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import sqlite_utils

from core.errors import StoreError
from core.types import Heading, Word

__all__ = [
    "DB_NAME", "STATES", "BUSY_TIMEOUT_MS", "open_db", "Migration", "Migrations", "MIGRATIONS",
    "migrate", "encode_words", "decode_words", "encode_headings", "decode_headings", "now_iso",
    "get_meta", "set_meta",
]

DB_NAME = "sift.db"
STATES = ("queued", "parsing", "ocr", "embedding", "ready", "failed")
"""Document states, in the order a document normally passes through them."""
BUSY_TIMEOUT_MS = 10_000


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def open_db(folder: Path | str) -> sqlite_utils.Database:
    """Open (creating if needed) ``<folder>/sift.db`` with Sift's connection settings.

    Does not migrate; ``migrate(db)`` does. The connection may be used from any thread, one
    at a time (its owner serialises access).
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(folder / DB_NAME), timeout=BUSY_TIMEOUT_MS / 1000,
                               check_same_thread=False)
    except (OSError, sqlite3.Error) as e:
        raise StoreError(f"cannot open the knowledge base at {folder}: {e}") from e
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StoreError(f"{folder}: the database cannot use WAL mode (got {mode!r})",
                             fix="keep knowledge bases on a local disk, not a network share")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
        db = sqlite_utils.Database(conn)
    except sqlite3.DatabaseError as e:
        conn.close()
        raise StoreError(f"{folder / DB_NAME} is not a readable Sift database: {e}") from e
    except BaseException:
        conn.close()
        raise
    return db


# ---------------------------------------------------------------- migrations


@dataclass(frozen=True)
class Migration:
    """One schema step."""

    name: str
    fn: Callable[[sqlite_utils.Database], None]


class Migrations:
    """An ordered set of named schema steps; each runs once per database.

    Use as a decorator: ``@MIGRATIONS`` appends the function as the next step.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.steps: list[Migration] = []

    def __call__(self, fn: Callable[[sqlite_utils.Database], None]):
        if any(m.name == fn.__name__ for m in self.steps):
            raise ValueError(f"duplicate migration name {fn.__name__!r}")
        self.steps.append(Migration(fn.__name__, fn))
        return fn

    @staticmethod
    def _ensure_table(db: sqlite_utils.Database) -> None:
        db.execute(
            "CREATE TABLE IF NOT EXISTS _migrations ("
            " migration_set TEXT NOT NULL, name TEXT NOT NULL, applied_at TEXT NOT NULL,"
            " PRIMARY KEY (migration_set, name))")

    def applied(self, db: sqlite_utils.Database) -> list[str]:
        """Names of this set's steps recorded in ``db``, in the order they were applied."""
        if "_migrations" not in db.table_names():
            return []
        return [r[0] for r in db.execute(
            "SELECT name FROM _migrations WHERE migration_set = ? ORDER BY rowid", [self.name])]

    def pending(self, db: sqlite_utils.Database) -> list[str]:
        done = set(self.applied(db))
        return [m.name for m in self.steps if m.name not in done]

    def apply(self, db: sqlite_utils.Database, *, set_user_version: bool = False) -> list[str]:
        """Run the steps not yet recorded; return their names."""
        self._ensure_table(db)
        done = set(self.applied(db))
        known = {m.name for m in self.steps}
        newer = [n for n in done if n not in known]
        if newer:
            raise StoreError(f"{_db_path(db)} was written by a newer Sift (schema steps {newer})",
                             fix="update Sift to open this knowledge base")
        ran: list[str] = []
        for m in self.steps:
            if m.name in done:
                continue
            with db.atomic():
                m.fn(db)
                db.execute("INSERT INTO _migrations (migration_set, name, applied_at) VALUES (?, ?, ?)",
                           [self.name, m.name, now_iso()])
                if set_user_version:
                    n = db.execute("SELECT count(*) FROM _migrations WHERE migration_set = ?",
                                   [self.name]).fetchone()[0]
                    db.execute(f"PRAGMA user_version = {int(n)}")
            ran.append(m.name)
        return ran


def _db_path(db: sqlite_utils.Database) -> str:
    row = db.execute("PRAGMA database_list").fetchone()
    return row[2] if row else "database"


MIGRATIONS = Migrations("sift")


def _run(db: sqlite_utils.Database, statements: Sequence[str]) -> None:
    # One execute per statement: executescript() would commit the migration's transaction.
    for sql in statements:
        db.execute(sql)


@MIGRATIONS
def m001_initial(db: sqlite_utils.Database) -> None:
    _run(db, [
        "CREATE TABLE kb_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        # AUTOINCREMENT: ids are never reused, so a document or chunk id (the vector label)
        # never comes back meaning something else after a delete.
        """CREATE TABLE documents (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            path TEXT NOT NULL UNIQUE,
            name TEXT NOT NULL,
            kind TEXT NOT NULL DEFAULT '',
            sha256 TEXT,
            size INTEGER,
            mtime REAL,
            added_at TEXT NOT NULL,
            state TEXT NOT NULL DEFAULT 'queued'
                CHECK (state IN ('queued', 'parsing', 'ocr', 'embedding', 'ready', 'failed')),
            error TEXT,
            n_pages INTEGER NOT NULL DEFAULT 0,
            n_chunks INTEGER NOT NULL DEFAULT 0,
            n_tables INTEGER NOT NULL DEFAULT 0,
            title TEXT NOT NULL DEFAULT '',
            metadata TEXT NOT NULL DEFAULT '{}',
            warnings TEXT NOT NULL DEFAULT '[]'
        )""",
        "CREATE INDEX documents_sha256 ON documents (sha256)",
        """CREATE TABLE pages (
            doc_id INTEGER NOT NULL REFERENCES documents (id) ON DELETE CASCADE,
            number INTEGER NOT NULL,
            width REAL NOT NULL,
            height REAL NOT NULL,
            text TEXT NOT NULL,
            ocr INTEGER NOT NULL DEFAULT 0,
            words BLOB,
            headings TEXT NOT NULL DEFAULT '[]',
            PRIMARY KEY (doc_id, number)
        )""",
        """CREATE TABLE chunks (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            doc_id INTEGER NOT NULL REFERENCES documents (id) ON DELETE CASCADE,
            ord INTEGER NOT NULL,
            kind TEXT NOT NULL DEFAULT 'text',
            text TEXT NOT NULL,
            heading TEXT NOT NULL DEFAULT '',
            spans TEXT NOT NULL DEFAULT '[]',
            page_lo INTEGER,
            page_hi INTEGER,
            table_name TEXT,
            row_ids TEXT NOT NULL DEFAULT '[]',
            n_tokens INTEGER NOT NULL DEFAULT 0,
            cjk INTEGER NOT NULL DEFAULT 0,
            embedding BLOB
        )""",
        "CREATE INDEX chunks_doc ON chunks (doc_id, ord)",
        "CREATE INDEX chunks_cjk ON chunks (cjk) WHERE cjk = 1",
        """CREATE VIRTUAL TABLE chunks_fts USING fts5 (
            text, heading, content = 'chunks', content_rowid = 'id',
            tokenize = 'porter unicode61 remove_diacritics 2')""",
        """CREATE VIRTUAL TABLE chunks_fts_cjk USING fts5 (
            text, heading, tokenize = 'unicode61 remove_diacritics 2')""",
        # Deletes (including cascades from documents) clean both indexes in SQL; inserts are
        # written by core.store.fts.index_chunks because the bigram text comes from Python.
        """CREATE TRIGGER chunks_fts_delete AFTER DELETE ON chunks BEGIN
            INSERT INTO chunks_fts (chunks_fts, rowid, text, heading)
                VALUES ('delete', old.id, old.text, old.heading);
            DELETE FROM chunks_fts_cjk WHERE rowid = old.id;
        END""",
        # The external-content index must see exactly the text it indexed, so chunks are
        # immutable: a changed document gets new chunks.
        """CREATE TRIGGER chunks_immutable BEFORE UPDATE OF id, text, heading ON chunks BEGIN
            SELECT RAISE(ABORT, 'chunks are immutable; delete and insert instead');
        END""",
    ])
    db.execute("INSERT INTO kb_meta (key, value) VALUES ('generation', '0'), ('created_at', ?)", [now_iso()])


@MIGRATIONS
def m002_multilingual_embeddings(db: sqlite_utils.Database) -> None:
    # The second dense index (multilingual-e5-small, see core.models.multilingual) covers only
    # chunks with CJK characters; its vectors live beside the MiniLM ones so that reindex never
    # has to re-embed. NULL: not embedded (yet) by the multilingual model.
    _run(db, ["ALTER TABLE chunks ADD COLUMN embedding_ml BLOB"])


def migrate(db: sqlite_utils.Database) -> list[str]:
    """Bring ``db`` to the current schema; return the names of the steps run now."""
    try:
        return MIGRATIONS.apply(db, set_user_version=True)
    except sqlite3.DatabaseError as e:
        raise StoreError(f"cannot update the schema of {_db_path(db)}: {e}") from e


def get_meta(db: sqlite_utils.Database, key: str, default: str | None = None) -> str | None:
    row = db.execute("SELECT value FROM kb_meta WHERE key = ?", [key]).fetchone()
    return row[0] if row else default


def set_meta(db: sqlite_utils.Database, key: str, value: str) -> None:
    db.execute("INSERT INTO kb_meta (key, value) VALUES (?, ?) "
               "ON CONFLICT (key) DO UPDATE SET value = excluded.value", [key, str(value)])


# ---------------------------------------------------------------- page words

_WORDS_MAGIC = b"SW1"
_HEADER = struct.Struct("<3sBI")  # magic, flags, word count
_FLAG_TEXTS = 1


def encode_words(words: Sequence[Word], page_text: str) -> bytes:
    """Pack a page's words: float32 rects [n,4], int32 offsets [n,2], texts only if needed."""
    n = len(words)
    rects = np.asarray([w.rect for w in words], dtype="<f4").reshape(n, 4)
    offsets = np.asarray([(w.start, w.end) for w in words], dtype="<i4").reshape(n, 2)
    # A word's text is usually the page text at its offsets; store texts only when one differs
    # (ligatures, OCR words without exact offsets).
    texts_needed = any(page_text[w.start:w.end] != w.text for w in words)
    flags = _FLAG_TEXTS if texts_needed else 0
    parts = [_HEADER.pack(_WORDS_MAGIC, flags, n), rects.tobytes(), offsets.tobytes()]
    if texts_needed:
        parts.append(json.dumps([w.text for w in words], ensure_ascii=False).encode("utf-8"))
    return b"".join(parts)


def decode_words(blob: bytes | None, page_text: str) -> tuple[Word, ...]:
    """The inverse of ``encode_words`` (rects come back as float32-rounded floats)."""
    if not blob:
        return ()
    magic, flags, n = _HEADER.unpack_from(blob, 0)
    if magic != _WORDS_MAGIC:
        raise StoreError(f"unknown page-words encoding {magic!r}")
    off = _HEADER.size
    rects = np.frombuffer(blob, dtype="<f4", count=4 * n, offset=off).reshape(n, 4)
    off += 16 * n
    offsets = np.frombuffer(blob, dtype="<i4", count=2 * n, offset=off).reshape(n, 2)
    off += 8 * n
    texts = json.loads(blob[off:].decode("utf-8")) if flags & _FLAG_TEXTS else None
    rl = rects.tolist()
    ol = offsets.tolist()
    return tuple(
        Word(texts[i] if texts is not None else page_text[s:e], tuple(rl[i]), s, e)
        for i, (s, e) in enumerate(ol)
    )


def encode_headings(headings: Sequence[Heading]) -> str:
    return json.dumps([[h.text, h.level, h.start, h.end] for h in headings], ensure_ascii=False)


def decode_headings(text: str | None) -> tuple[Heading, ...]:
    return tuple(Heading(t, int(lv), int(s), int(e)) for t, lv, s, e in json.loads(text or "[]"))
