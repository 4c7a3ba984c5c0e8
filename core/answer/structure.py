"""Reading a question before searching: search filters it names, and which route it needs.

Filters: a document named in the question ("in ntsb_accidents.csv", "the Tallahassee
report" when a file is called that), a page range ("on page 4", "pages 2-5", "p. 7") and
dates ("added after 2026-01-31", "added since yesterday") narrow the search. Routing:
whole-document questions ("summarise …", "what is this report about") go to per-document
summaries; counting, ranking and aggregate questions over a knowledge base with tables go
to SQL; everything else goes to passage search.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Sequence

__all__ = ["Structured", "structure_question", "wants_summary", "looks_tabular"]

_PAGES = re.compile(r"\b(?:on\s+|in\s+|from\s+)?(?:pages?|pp?\.)\s*(\d{1,5})(?:\s*(?:-|–|to|through|and)\s*(\d{1,5}))?",
                    re.IGNORECASE)
_DATE = r"(\d{4}-\d{2}-\d{2}|today|yesterday)"
_ADDED = re.compile(r"\b(?:added|uploaded|imported|ingested)\s+(after|since|before|on)\s+" + _DATE, re.IGNORECASE)
_SUMMARY = re.compile(
    r"^\s*(?:please\s+)?(?:summari[sz]e|give\s+(?:me\s+)?(?:a\s+)?(?:summary|overview)|sum\s+up|tl;?dr)\b"
    r"|\b(?:summary|overview|gist|main\s+points|key\s+points|key\s+findings|main\s+findings)\s+of\b"
    r"|\bwhat\s+(?:is|are)\s+(?:this|the|these)\s+(?:\w+\s+){0,2}(?:document|report|paper|file|pdf|article|filing|book)s?"
    r"(?:\s+\S+){0,2}?\s+about\b"
    r"|\bwhat\s+(?:does|do)\s+(?:this|the)\s+(?:\w+\s+){0,2}(?:document|report|paper|file|pdf|article|filing)\s+(?:say|cover|discuss)\b",
    re.IGNORECASE)
_TABULAR = re.compile(
    r"\b(?:how\s+many|how\s+much|number\s+of|count|total|sum|average|mean|median|maximum|minimum|max|min|"
    r"highest|lowest|largest|smallest|most|least|top\s+\d+|rank(?:ed)?|list\s+(?:all|every|the)|which\s+\w+\s+(?:had|has|have)|"
    r"per\s+\w+|in\s+which\s+year|what\s+year|greater\s+than|less\s+than|more\s+than|fewer\s+than|between\s+\d)\b",
    re.IGNORECASE)


@dataclass(frozen=True)
class Structured:
    """What the question says about where to look."""

    documents: tuple[int, ...] = ()
    """Ids of documents the question names."""
    page_from: int | None = None
    page_to: int | None = None
    added_after: date | None = None
    added_before: date | None = None

    @property
    def empty(self) -> bool:
        return not self.documents and self.page_from is None and self.page_to is None \
            and self.added_after is None and self.added_before is None

    def merge_into(self, filters):
        """``filters`` (a ``SearchFilters`` or None) narrowed by what the question says; explicit filters win."""
        from core.search.hybrid import SearchFilters

        f = filters or SearchFilters()
        changes = {}
        if self.documents and f.documents is None:
            changes["documents"] = self.documents
        if self.page_from is not None and f.page_from is None and f.page_to is None:
            changes["page_from"], changes["page_to"] = self.page_from, self.page_to
        if self.added_after is not None and f.added_after is None:
            changes["added_after"] = self.added_after
        if self.added_before is not None and f.added_before is None:
            changes["added_before"] = self.added_before
        return replace(f, **changes) if changes else filters


def _day(word: str, today: date) -> date:
    w = word.lower()
    if w == "today":
        return today
    if w == "yesterday":
        return today - timedelta(days=1)
    return date.fromisoformat(w)


def _names(path: str) -> set[str]:
    p = Path(path)
    stem = p.stem.lower()
    out = {p.name.lower(), stem, re.sub(r"[_\-.]+", " ", stem).strip()}
    return {n for n in out if len(n) >= 4}


def structure_question(question: str, documents: Sequence = (), *, today: date | None = None) -> Structured:
    """Filters named in ``question``; ``documents`` are the stored ``DocumentRecord`` values."""
    today = today or datetime.now(timezone.utc).date()
    q = question.lower()
    docs: list[int] = []
    for d in documents:
        for name in sorted(_names(d.path), key=len, reverse=True):
            if re.search(r"(?<![\w])" + re.escape(name) + r"(?![\w])", q):
                docs.append(int(d.id))
                break
    lo = hi = None
    m = _PAGES.search(question)
    if m:
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) else lo
        if hi < lo:
            lo, hi = hi, lo
    after = before = None
    for m in _ADDED.finditer(question):
        how, day = m.group(1).lower(), _day(m.group(2), today)
        if how in ("after", "since"):
            after = day
        elif how == "before":
            before = day
        else:
            after = before = day
    return Structured(tuple(docs), lo, hi, after, before)


def wants_summary(question: str) -> bool:
    """True for questions about a whole document rather than a fact in it."""
    return bool(_SUMMARY.search(question))


def looks_tabular(question: str) -> bool:
    """True for counting, ranking and aggregate questions, the kind SQL answers better than passages."""
    return bool(_TABULAR.search(question))
