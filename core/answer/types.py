"""What ``KnowledgeBase.ask`` returns: an answer, its sentences, and the evidence for each.

A ``Citation`` is either a span of a PDF page (page, char offsets into the stored page
text, and the rectangles of its words, in PDF points) or cells of a SQLite table (table,
row ids, column names). Numbers ``n`` are the ``[n]`` shown in the answer text.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

from core.types import Rect

__all__ = ["ROUTES", "Citation", "AnswerSentence", "Answer", "AskOptions", "TokenFn", "StatusFn"]

ROUTES = ("passages", "table", "summary")

TokenFn = Callable[[str], None]
"""Receives each piece of the answer text as the model writes it."""
StatusFn = Callable[[str], None]
"""Receives a short line about the stage being run (``searching``, ``writing SQL`` …)."""


@dataclass(frozen=True)
class Citation:
    """One piece of evidence, numbered as in the answer text."""

    n: int
    kind: str
    """``text`` (a span of a page or a passage) or ``table`` (rows and cells)."""
    document: str
    """The document's file name."""
    path: str
    doc_id: int
    text: str
    """The cited text: the supporting sentence(s), or the cited rows rendered as text."""
    page: int | None = None
    """1-based page of the span; None for spreadsheet tables."""
    start: int | None = None
    """Char offset of the span in the stored page text."""
    end: int | None = None
    rects: tuple[Rect, ...] = ()
    """Rectangles (PDF points, top-left origin) covering the cited words on ``page``."""
    table: str | None = None
    """SQLite table name for table evidence."""
    rows: tuple[int, ...] = ()
    """Row ids of the cited rows."""
    columns: tuple[str, ...] = ()
    """Names of the cited columns (empty: whole rows)."""
    chunk_id: int | None = None
    score: float = 0.0
    """How strongly the evidence supports the sentence(s) that cite it (0..1)."""

    def to_json(self) -> dict:
        if self.kind == "table":
            d = {"n": self.n, "table": self.table, "rows": list(self.rows), "columns": list(self.columns),
                 "document": self.document, "text": self.text}
            if self.page is not None:
                d.update(page=self.page, rects=[list(r) for r in self.rects])
            return d
        return {"n": self.n, "document": self.document, "page": self.page, "text": self.text,
                "start": self.start, "end": self.end, "rects": [list(r) for r in self.rects]}


@dataclass(frozen=True)
class AnswerSentence:
    """One sentence of the answer and the citations that support it."""

    text: str
    start: int
    """Offset in ``Answer.text``."""
    end: int
    citations: tuple[int, ...] = ()
    """Numbers of the supporting citations."""
    supported: bool = True
    """False when no retrieved span supports the sentence (shown marked)."""


@dataclass(frozen=True)
class Answer:
    """A finished answer."""

    question: str
    text: str
    """The answer with ``[n]`` markers, as shown."""
    citations: tuple[Citation, ...] = ()
    sentences: tuple[AnswerSentence, ...] = ()
    route: str = "passages"
    """``passages``, ``table`` or ``summary``."""
    declined: bool = False
    """True when the documents do not contain the answer and Sift said so."""
    sql: str | None = None
    """The SELECT that the table route ran."""
    rewrites: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Query rewrites used, by kind (``multi_query``, ``step_back``, ``hyde``, ``decompose``)."""
    timings: Mapping[str, float] = field(default_factory=dict)
    """Seconds per stage (``search``, ``generate``, ``align`` …) and ``total``."""
    model: str = ""
    cancelled: bool = False

    @property
    def unsupported(self) -> tuple[str, ...]:
        return tuple(s.text for s in self.sentences if not s.supported)

    def citation(self, n: int) -> Citation | None:
        return next((c for c in self.citations if c.n == n), None)

    def to_json(self) -> dict:
        return {"question": self.question, "answer": self.text, "citations": [c.to_json() for c in self.citations],
                "route": self.route, "unsupported": list(self.unsupported), "declined": self.declined,
                "sql": self.sql, "rewrites": {k: list(v) for k, v in self.rewrites.items()},
                "timings": {k: round(v, 4) for k, v in self.timings.items()}, "model": self.model}


@dataclass(frozen=True)
class AskOptions:
    """Switches of the question path; the defaults are what Sift uses."""

    route: str = "auto"
    """``auto`` (decided from the question and the knowledge base) or one of ``ROUTES``."""
    k: int = 5
    """Passages given to the model."""
    multi_query: bool = False
    step_back: bool = False
    hyde: bool = False
    decompose: bool = False
    filters: object | None = None
    """A ``core.search.hybrid.SearchFilters``; names, dates and pages found in the question are added."""
    max_tokens: int = 384
    search_options: Mapping[str, object] = field(default_factory=dict)
    """Passed to ``KnowledgeBase.search`` (stages, fusion, rerank …)."""
