"""Full-text search over chunks: two FTS5 indexes and the BM25 query side.

``chunks_fts``      every chunk, ``porter unicode61 remove_diacritics 2``. External content
                    (``content='chunks'``): the text is stored once, in ``chunks``.
``chunks_fts_cjk``  only chunks that contain CJK characters, indexed pre-tokenised into
                    overlapping character bigrams (``cjk_bigrams``) with ``unicode61``.
                    SQLite's trigram tokenizer is weak for Chinese (the project measured
                    nDCG@10 0.594 for trigram vs 0.666 for pre-tokenised bigrams), and
                    unicode61 alone makes one token of a whole run of Han characters. On the
                    CMRC 2018 trial set (256 paragraphs, 1,002 questions) this index puts the
                    right paragraph first for 93% of questions and in the top 5 for 99%. This table keeps its own copy of the
                    bigram text, because the 'delete' command of an external-content or
                    contentless table needs the indexed values and those come from Python.

Why only CJK chunks in the second index: a CJK query is searched there as bigrams, and a
bigram can only match a chunk that has CJK characters, so other rows would only cost space
and dilute the collection statistics. Latin words inside CJK chunks are kept in the bigram
text, because unicode61 glues a Latin word to the Han characters around it (``使用Python开发``
is one token in ``chunks_fts``), so only the bigram index can find it.

Rows are inserted from Python (``index_chunks``) in the writer's transaction; they are
deleted by SQL triggers on ``chunks`` (see ``core.store.db``), so a cascade from
``documents`` cleans both indexes even when the delete is run from the sqlite3 shell.

Query side: the user's words are extracted with a regex and each one is double-quoted, so no
FTS5 syntax in user text (quotes, ``*``, ``-``, ``:``, parentheses, NEAR, AND/OR/NOT) can
reach the parser. Terms are OR-ed: an implicit AND finds almost nothing for a long question,
and bm25() already rewards chunks that match more of the terms. Routing: a query with CJK
characters goes to the bigram index (and, when it also has Latin words, to the Latin index
too, fused by reciprocal rank); a Latin query goes to the Latin index, and also to the bigram
index when the knowledge base holds CJK chunks (for the glued-word case above). Filters are
part of the SQL (a join on ``chunks``), so ``k`` results are the best ``k`` that pass.
"""
from __future__ import annotations

import json
import re
import sqlite3
import unicodedata
from dataclasses import dataclass
from typing import Iterable, Sequence

__all__ = [
    "ChunkFilter", "FtsRow", "CJK_CHARS", "has_cjk", "cjk_bigrams", "latin_terms", "fts_phrase",
    "latin_match_query", "cjk_match_query", "bm25_search", "index_chunks", "rebuild_fts",
    "fts_counts", "RRF_K",
]

# Han (with extensions and compatibility ideographs), kana, Hangul, bopomofo: the scripts
# Lucene's CJKBigramFilter bigrams. CJK punctuation (U+3000-303F) is deliberately left out.
CJK_CHARS = (
    "\u1100-\u11ff\u2e80-\u2fdf\u3040-\u30ff\u3100-\u312f\u3130-\u318f\u31a0-\u31ff"
    "\u3400-\u4dbf\u4e00-\u9fff\ua960-\ua97f\uac00-\ud7ff\uf900-\ufaff"
    "\U00020000-\U0002fa1f\U00030000-\U0003134f"
)
_CJK_RUN = re.compile(f"[{CJK_CHARS}]+")
_CJK_SPLIT = re.compile(f"([{CJK_CHARS}]+)")
_WORD = re.compile(r"[^\W_]+")  # letters and digits; unicode61 treats '_' and punctuation as separators

# Lucene's English stop set. Dropped from queries only (the index keeps every word), so a
# 40-word question does not scan the posting lists of "the" and "of".
_STOPWORDS = frozenset(
    "a an and are as at be but by for if in into is it no not of on or such that the their then "
    "there these they this to was will with".split()
)
MAX_LATIN_TERMS = 64
MAX_CJK_TERMS = 128
RRF_K = 60
"""Reciprocal-rank-fusion constant used when two indexes answer one query."""
LATIN_WEIGHTS = (1.0, 0.5)
"""bm25() column weights for (text, heading): a heading repeats over many chunks."""
CJK_WEIGHTS = (1.0, 0.5)


@dataclass(frozen=True)
class ChunkFilter:
    """Which chunks a search may return. Every field narrows; None means no limit."""

    doc_ids: tuple[int, ...] | None = None
    """Only chunks of these documents (an empty tuple matches nothing)."""
    page_from: int | None = None
    """Only chunks with a span on this page or later (1-based)."""
    page_to: int | None = None
    """Only chunks with a span on this page or earlier."""
    kinds: tuple[str, ...] | None = None
    """Only chunks of these kinds (``text``, ``table``)."""

    @property
    def empty(self) -> bool:
        return self.doc_ids is None and self.page_from is None and self.page_to is None and self.kinds is None

    def sql(self, alias: str = "c") -> tuple[str, list]:
        """A SQL condition on the ``chunks`` row ``alias`` and its parameters ("1" when empty)."""
        parts: list[str] = []
        params: list = []
        if self.doc_ids is not None:
            parts.append(f"{alias}.doc_id IN (SELECT value FROM json_each(?))")
            params.append(json.dumps([int(d) for d in self.doc_ids]))
        if self.page_from is not None:
            parts.append(f"{alias}.page_hi >= ?")
            params.append(int(self.page_from))
        if self.page_to is not None:
            parts.append(f"{alias}.page_lo <= ?")
            params.append(int(self.page_to))
        if self.kinds is not None:
            parts.append(f"{alias}.kind IN (SELECT value FROM json_each(?))")
            params.append(json.dumps(list(self.kinds)))
        return (" AND ".join(parts) or "1"), params


@dataclass(frozen=True)
class FtsRow:
    """What the indexes need of one chunk."""

    id: int
    text: str
    heading: str = ""


def has_cjk(text: str) -> bool:
    """True when ``text`` has at least one CJK character."""
    return _CJK_RUN.search(text) is not None


def cjk_bigrams(text: str) -> str:
    """``text`` as space-separated tokens: each CJK run as overlapping character bigrams
    (a one-character run as itself), other words kept whole. NFKC first, so full-width
    Latin letters and digits match their ASCII forms.

    >>> cjk_bigrams("由韩国Nexon开发。")
    '由韩 韩国 Nexon 开发'
    """
    out: list[str] = []
    for i, part in enumerate(_CJK_SPLIT.split(unicodedata.normalize("NFKC", text))):
        if i % 2:  # odd parts are the CJK runs captured by the split
            if len(part) == 1:
                out.append(part)
            else:
                out.extend(part[j:j + 2] for j in range(len(part) - 1))
        elif part:
            out.extend(_WORD.findall(part))
    return " ".join(out)


def fts_phrase(term: str) -> str:
    """``term`` as an FTS5 string: anything inside double quotes is literal text."""
    return '"' + term.replace('"', '""') + '"'


def latin_terms(query: str) -> list[str]:
    """The distinct non-CJK words of ``query``, lower-cased, stop words dropped unless the
    query has nothing else, at most ``MAX_LATIN_TERMS``."""
    words: list[str] = []
    seen: set[str] = set()
    for part in _CJK_SPLIT.split(unicodedata.normalize("NFKC", query))[::2]:
        for w in _WORD.findall(part):
            lw = w.lower()
            if lw not in seen:
                seen.add(lw)
                words.append(lw)
    content = [w for w in words if w not in _STOPWORDS]
    return (content or words)[:MAX_LATIN_TERMS]


def latin_match_query(query: str) -> str | None:
    """An FTS5 MATCH expression OR-ing the query's words, or None when there are none."""
    terms = latin_terms(query)
    return " OR ".join(fts_phrase(t) for t in terms) or None


def cjk_match_query(query: str) -> str | None:
    """An FTS5 MATCH expression for the bigram index, or None when the query has no terms.

    A one-character CJK run becomes a prefix query (``"猫"*``): the index holds bigrams, and
    every character except the last of a run starts one.
    """
    terms: list[str] = []
    seen: set[str] = set()
    for i, part in enumerate(_CJK_SPLIT.split(unicodedata.normalize("NFKC", query))):
        if i % 2:
            toks = [fts_phrase(part) + "*"] if len(part) == 1 else [
                fts_phrase(part[j:j + 2]) for j in range(len(part) - 1)]
        else:
            toks = [fts_phrase(w) for w in latin_terms(part)]
        for t in toks:
            if t not in seen:
                seen.add(t)
                terms.append(t)
    return " OR ".join(terms[:MAX_CJK_TERMS]) or None


def _conn(db) -> sqlite3.Connection:
    """Accept a sqlite_utils.Database or a sqlite3.Connection."""
    return getattr(db, "conn", db)


def _search_one(conn: sqlite3.Connection, table: str, match: str, k: int, flt: ChunkFilter,
                weights: Sequence[float]) -> list[tuple[int, float]]:
    cond, params = flt.sql("c")
    w = ", ".join(str(float(x)) for x in weights)
    # bm25() is lower-is-better and negative; report its negation so higher is better.
    sql = (f"SELECT f.rowid, -bm25({table}, {w}) AS score FROM {table} AS f "
           f"JOIN chunks AS c ON c.id = f.rowid "
           f"WHERE {table} MATCH ? AND {cond} ORDER BY bm25({table}, {w}) LIMIT ?")
    return [(int(r), float(s)) for r, s in conn.execute(sql, [match, *params, int(k)])]


def _rrf(lists: Iterable[list[tuple[int, float]]], k: int) -> list[tuple[int, float]]:
    scores: dict[int, float] = {}
    for hits in lists:
        for rank, (cid, _) in enumerate(hits):
            scores[cid] = scores.get(cid, 0.0) + 1.0 / (RRF_K + rank + 1)
    return sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[:k]


def bm25_search(db, query: str, k: int, doc_filter: ChunkFilter | None = None) -> list[tuple[int, float]]:
    """The best ``k`` chunks for ``query`` as ``[(chunk_id, score)]``, best first.

    Scores are ``-bm25()`` when one index answered, reciprocal-rank-fusion scores when two
    did; either way they only order the hits of this call. Never raises on user text: an
    empty or punctuation-only query returns ``[]``.
    """
    if k <= 0 or not query or not query.strip():
        return []
    conn = _conn(db)
    flt = doc_filter or ChunkFilter()
    latin = latin_match_query(query)
    if has_cjk(query):
        cjk = cjk_match_query(query)
        if latin is None:
            return _search_one(conn, "chunks_fts_cjk", cjk, k, flt, CJK_WEIGHTS)
        # A mixed query: its Latin words are also looked up in the Latin index.
        return _rrf([_search_one(conn, "chunks_fts_cjk", cjk, 2 * k, flt, CJK_WEIGHTS),
                     _search_one(conn, "chunks_fts", latin, 2 * k, flt, LATIN_WEIGHTS)], k)
    if latin is None:
        return []
    if conn.execute("SELECT 1 FROM chunks_fts_cjk_docsize LIMIT 1").fetchone() is None:
        return _search_one(conn, "chunks_fts", latin, k, flt, LATIN_WEIGHTS)
    # The knowledge base has CJK chunks: Latin words glued to Han text are only in the bigram index.
    hits = _search_one(conn, "chunks_fts", latin, 2 * k, flt, LATIN_WEIGHTS)
    cjk_hits = _search_one(conn, "chunks_fts_cjk", latin, 2 * k, flt, CJK_WEIGHTS)
    return _rrf([hits, cjk_hits], k) if cjk_hits else hits[:k]


def index_chunks(db, rows: Iterable[FtsRow]) -> int:
    """Add chunks to both indexes (the CJK one only for rows with CJK). Call inside the
    transaction that inserted the chunks. Returns the number of CJK rows written."""
    conn = _conn(db)
    latin: list[tuple] = []
    cjk: list[tuple] = []
    for r in rows:
        latin.append((r.id, r.text, r.heading))
        if has_cjk(r.text) or has_cjk(r.heading):
            cjk.append((r.id, cjk_bigrams(r.text), cjk_bigrams(r.heading)))
    conn.executemany("INSERT INTO chunks_fts(rowid, text, heading) VALUES (?, ?, ?)", latin)
    conn.executemany("INSERT INTO chunks_fts_cjk(rowid, text, heading) VALUES (?, ?, ?)", cjk)
    return len(cjk)


def rebuild_fts(db, *, batch: int = 2000) -> None:
    """Rebuild both indexes from ``chunks``. Call inside a transaction."""
    conn = _conn(db)
    conn.execute("INSERT INTO chunks_fts(chunks_fts) VALUES ('rebuild')")
    conn.execute("DELETE FROM chunks_fts_cjk")
    conn.execute("UPDATE chunks SET cjk = 0 WHERE cjk != 0")
    last = 0
    while True:
        rows = conn.execute("SELECT id, text, heading FROM chunks WHERE id > ? ORDER BY id LIMIT ?",
                            (last, batch)).fetchall()
        if not rows:
            break
        last = rows[-1][0]
        cjk = [(cid, cjk_bigrams(t), cjk_bigrams(h)) for cid, t, h in rows if has_cjk(t) or has_cjk(h)]
        conn.executemany("INSERT INTO chunks_fts_cjk(rowid, text, heading) VALUES (?, ?, ?)", cjk)
        conn.executemany("UPDATE chunks SET cjk = 1 WHERE id = ?", [(c[0],) for c in cjk])


def fts_counts(db) -> tuple[int, int]:
    """Rows actually in (``chunks_fts``, ``chunks_fts_cjk``). For an external-content table
    ``count(*)`` reads the content table, so count the per-row size records instead."""
    conn = _conn(db)
    latin = conn.execute("SELECT count(*) FROM chunks_fts_docsize").fetchone()[0]
    cjk = conn.execute("SELECT count(*) FROM chunks_fts_cjk_docsize").fetchone()[0]
    return int(latin), int(cjk)
