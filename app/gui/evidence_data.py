"""What the evidence panel shows, prepared off the GUI thread. No Qt here.

An ``EvidenceItem`` is one citation or one search hit. ``load_evidence`` (run in a job) reads the
stored page, computes the highlight rectangles from the stored word boxes, renders the page with
PyMuPDF and, when asked, scores each word's relevance to the question (late interaction: each
passage token's best cosine against the query tokens, as in ColBERT's highlights).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from core.ingest.chunking import span_rects
from core.types import ChunkSpan, ParsedPage, Rect

__all__ = ["EvidenceItem", "PageEvidence", "TableEvidence", "from_citation", "from_hit", "load_evidence",
           "token_relevance", "render_page", "find_rects", "RENDER_LOCK"]

RENDER_LOCK = threading.Lock()
"""PyMuPDF must not be driven from several threads at once: every render holds this."""


@dataclass(frozen=True)
class EvidenceItem:
    """One piece of evidence to show: a citation of an answer or a search hit."""

    n: int
    """The citation number (or the hit's rank)."""
    kind: str
    """``text`` or ``table``."""
    document: str
    path: str
    doc_id: int
    text: str
    query: str = ""
    """The question or search query (for token relevance)."""
    page: int | None = None
    rects: tuple[Rect, ...] = ()
    """Rectangles to highlight on ``page``; computed from ``spans`` when empty."""
    spans: tuple[ChunkSpan, ...] = ()
    """Page spans of the cited text (or of the whole hit)."""
    table: str | None = None
    rows: tuple[int, ...] = ()
    columns: tuple[str, ...] = ()
    chunk_id: int | None = None


def from_citation(c, query: str = "") -> EvidenceItem:
    """An item for a ``core.answer.types.Citation``."""
    spans = (ChunkSpan(c.page, c.start, c.end),) if c.page is not None and c.start is not None \
        and c.end is not None else ()
    return EvidenceItem(n=c.n, kind=c.kind, document=c.document, path=c.path, doc_id=int(c.doc_id), text=c.text,
                        query=query, page=c.page, rects=tuple(c.rects), spans=spans, table=c.table,
                        rows=tuple(c.rows), columns=tuple(c.columns), chunk_id=c.chunk_id)


def from_hit(h, query: str = "") -> EvidenceItem:
    """An item for a ``core.search.hybrid.Hit``: the whole chunk on its first page."""
    return EvidenceItem(n=h.rank, kind=h.kind, document=h.name, path=h.path, doc_id=int(h.doc_id), text=h.text,
                        query=query, page=h.page, spans=tuple(h.spans), table=h.table, rows=tuple(h.row_ids),
                        chunk_id=int(h.chunk_id))


@dataclass(frozen=True)
class PageEvidence:
    """A rendered page with what to draw on it."""

    item: EvidenceItem
    page: ParsedPage
    zoom: float
    """Pixels per PDF point of the rendered image."""
    image: bytes
    """RGB888 samples of the rendered page."""
    width: int
    height: int
    stride: int
    rects: tuple[Rect, ...]
    """Highlight rectangles in PDF points."""
    relevance: tuple[tuple[Rect, float], ...] = ()
    """Word rectangles with their relevance to the query (0..1), when asked."""
    page_count: int = 0


@dataclass(frozen=True)
class TableEvidence:
    """A stored table with the cited rows and cells."""

    item: EvidenceItem
    title: str
    header: tuple[str, ...]
    rows: tuple[tuple[int, tuple[str, ...]], ...]
    """(row id, cells) of every shown row."""
    cited_rows: frozenset[int] = field(default_factory=frozenset)
    cited_columns: frozenset[int] = field(default_factory=frozenset)
    """Indexes into ``header`` of the cited columns (empty: whole rows)."""
    truncated: int = 0
    """Rows not shown (tables longer than the limit)."""


def render_page(path: str, number: int, zoom: float) -> tuple[bytes, int, int, int, int]:
    """RGB samples, width, height, stride of page ``number`` (1-based) at ``zoom``; and the page count."""
    import pymupdf

    with RENDER_LOCK:
        with pymupdf.open(path) as doc:
            page = doc[number - 1]
            pix = page.get_pixmap(matrix=pymupdf.Matrix(zoom, zoom), alpha=False)
            return bytes(pix.samples), pix.width, pix.height, pix.stride, doc.page_count


def _rects_for(item: EvidenceItem, page: ParsedPage) -> tuple[Rect, ...]:
    if item.rects:
        return tuple(item.rects)
    out: list[Rect] = []
    for s in item.spans:
        if s.page == page.number:
            out += span_rects(page, s.start, s.end)
    return tuple(out)


def _token_encoder(kb):
    """The late-interaction model when one is configured, else the embedder's own token vectors."""
    from core.search.late_interaction import ColbertTokens, EmbedderTokens

    colbert = getattr(kb, "colbert", None)
    return ColbertTokens(colbert) if colbert is not None else EmbedderTokens(kb.embedder)


def _token_scores(kb, query: str, texts: Sequence[str]) -> list[list[tuple[int, int, float]]]:
    """(start, end, score) of each token of each text: its best similarity to a query token."""
    try:
        from core.search.late_interaction import token_evidence
    except ImportError:  # an older core: the embedder's token vectors directly
        enc = kb.embedder.encode([query, *texts], tokens=True)
        q = enc.tokens[0].vectors
        out = []
        for tv in enc.tokens[1:]:
            if not len(tv.vectors) or not len(q):
                out.append([])
                continue
            best = (tv.vectors @ q.T).max(axis=1)
            out.append([(int(o[0]), int(o[1]), float(b)) for o, b in zip(tv.offsets, best) if o[1] > o[0]])
        return out
    encoder = _token_encoder(kb)
    return [[(m.start, m.end, m.score) for m in token_evidence(encoder, query, t).matches] for t in texts]


def token_relevance(kb, query: str, page: ParsedPage, spans: Sequence[ChunkSpan]) -> tuple[tuple[Rect, float], ...]:
    """Each word of ``spans`` on ``page`` with its relevance to ``query`` in 0..1.

    A passage token's score is its best similarity to any of the query's tokens (the terms of
    late interaction's MaxSim, per passage token: ColBERT's highlights), from
    ``core.search.late_interaction.token_evidence``; a word takes its best token; scores are
    stretched to 0..1 over the passage so the strongest words stand out.
    """
    pieces = [(s.start, s.end) for s in spans if s.page == page.number and s.end > s.start]
    if not query.strip() or not pieces:
        return ()
    raw: list[tuple[int, int, float]] = []
    for (a, _), toks in zip(pieces, _token_scores(kb, query, [page.text[a:b] for a, b in pieces])):
        raw += [(a + s, a + e, sc) for s, e, sc in toks]
    if not raw:
        return ()
    raw.sort()
    scores = np.array([r[2] for r in raw])
    lo, hi = float(scores.min()), float(scores.max())
    span = hi - lo if hi > lo else 1.0
    starts = np.array([r[0] for r in raw])
    out: list[tuple[Rect, float]] = []
    for w in page.words:
        if not any(a <= w.start < b for a, b in pieces):
            continue
        i = int(np.searchsorted(starts, w.end, side="left"))
        best = [r[2] for r in raw[max(0, i - 32):i] if r[0] < w.end and r[1] > w.start]
        if best:
            out.append((w.rect, (max(best) - lo) / span))
    return tuple(out)


def find_rects(page: ParsedPage, needle: str) -> list[tuple[Rect, ...]]:
    """Rectangles of each case-insensitive occurrence of ``needle`` in the page text."""
    needle = needle.strip().casefold()
    if not needle:
        return []
    hay = page.text.casefold()
    out = []
    i = hay.find(needle)
    while i >= 0:
        rects = tuple(span_rects(page, i, i + len(needle)))
        if rects:
            out.append(rects)
        i = hay.find(needle, i + len(needle))
    return out


TABLE_ROW_LIMIT = 2000
FIT_MIN, FIT_MAX = 0.9, 2.5
"""Bounds of the fit-to-width zoom: smaller text is hard to read, larger wastes the panel."""


def load_table(kb, item: EvidenceItem) -> TableEvidence:
    from core.store.sqltables import list_sql_tables, raw_rows

    db = kb.store.db
    tables = [t for t in list_sql_tables(db, item.doc_id) if t.name == item.table] or \
        [t for t in list_sql_tables(db) if t.name == item.table]
    if not tables:
        from core.errors import StoreError
        raise StoreError(f"the table {item.table} of {item.document} is no longer stored",
                         fix="re-ask the question or re-add the document")
    t = tables[0]
    ids = list(t.row_ids)
    cited = [r for r in item.rows if r in set(ids)]
    truncated = 0
    if len(ids) > TABLE_ROW_LIMIT:  # keep the cited rows and their neighbourhood
        first = ids.index(cited[0]) if cited else 0
        lo = max(0, first - TABLE_ROW_LIMIT // 2)
        shown = ids[lo:lo + TABLE_ROW_LIMIT]
        truncated = len(ids) - len(shown)
        ids = sorted(set(shown) | set(cited))
    cells = raw_rows(db, t.name, ids)
    cols = {c.casefold(): i for i, c in enumerate(t.columns)}
    cols.update({h.casefold(): i for i, h in enumerate(t.header)})
    cited_cols = frozenset(cols[c.casefold()] for c in item.columns if c.casefold() in cols)
    return TableEvidence(item, t.title, tuple(t.header), tuple((i, cells[i]) for i in ids if i in cells),
                         frozenset(cited), cited_cols, truncated)


def load_evidence(kb, item: EvidenceItem, *, zoom: float | None = None, fit_width: int = 0, scale: float = 1.0,
                  relevance: bool = False):
    """``PageEvidence`` for an item with a page of a PDF, else ``TableEvidence`` (run off the GUI thread).

    ``zoom`` is pixels per point on screen; None fits the page to ``fit_width`` pixels (between
    ``FIT_MIN`` and ``FIT_MAX``). ``scale`` is the screen's device pixel ratio.
    """
    if item.page is None or not item.path.lower().endswith(".pdf"):
        if item.table:
            return load_table(kb, item)
        from core.errors import StoreError
        raise StoreError(f"{item.document}: nothing to show for this evidence (no page and no table)")
    page = kb.store.get_page(item.doc_id, item.page)
    if page is None:
        from core.errors import StoreError
        raise StoreError(f"{item.document}: page {item.page} is no longer stored",
                         fix="the document was removed or re-added; ask again")
    if not Path(item.path).is_file():
        from core.errors import StoreError
        raise StoreError(f"{item.path}: the file is gone, so its page cannot be shown",
                         fix="put the file back or remove it from the knowledge base")
    if zoom is None:
        zoom = max(FIT_MIN, min(FIT_MAX, fit_width / page.width)) if fit_width and page.width else 1.5
    image, w, h, stride, count = render_page(item.path, item.page, zoom * scale)
    rel: tuple = ()
    if relevance:
        spans = item.spans
        if item.chunk_id is not None:  # score the whole retrieved passage, not only the cited sentence
            chunks = kb.store.get_chunks([item.chunk_id])
            spans = chunks[0].spans if chunks and chunks[0].spans else spans
        rel = token_relevance(kb, item.query, page, spans)
    return PageEvidence(item, page, zoom * scale, image, w, h, stride, _rects_for(item, page), rel, count)
