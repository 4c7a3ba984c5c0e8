"""Values that travel between Sift's parts. Frozen dataclasses; ids are NewTypes.

Coordinates are PDF points in PyMuPDF's page space (origin top-left, y down), the
same space the evidence view draws in. Character offsets index into ``ParsedPage.text``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import NewType

__all__ = [
    "DocId", "ChunkId", "Rect", "Word", "Heading", "ExtractedTable", "ParsedPage", "ParsedDocument",
    "ChunkSpan", "Chunk",
]

DocId = NewType("DocId", int)
ChunkId = NewType("ChunkId", int)
Rect = tuple[float, float, float, float]
"""(x0, y0, x1, y1) in PDF points."""


@dataclass(frozen=True)
class Word:
    """One word on a page, in reading order."""

    text: str
    rect: Rect
    start: int
    """Offset of the word's first character in the page text."""
    end: int
    """Offset just past the word's last character in the page text."""


@dataclass(frozen=True)
class Heading:
    """A heading found on a page (by font size / weight), with its place in the page text."""

    text: str
    level: int
    """1 = largest."""
    start: int
    end: int


@dataclass(frozen=True)
class ExtractedTable:
    """A table from a spreadsheet sheet, a CSV file, or a PDF page."""

    name: str
    """Human name: file stem, sheet name, or ``p3-t1`` for the first table on page 3."""
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    """Cell texts as found, row by row; every row has ``len(header)`` cells."""
    page: int | None = None
    """1-based page for tables from PDFs."""
    bbox: Rect | None = None
    cell_rects: tuple[tuple[Rect | None, ...], ...] | None = None
    """For PDF tables: the rectangle of each body cell, same shape as ``rows``."""
    header_rects: tuple[Rect | None, ...] | None = None
    sheet: str | None = None


@dataclass(frozen=True)
class ParsedPage:
    """One page: its text in reading order and the boxes of its words."""

    number: int
    """1-based."""
    width: float
    height: float
    text: str
    words: tuple[Word, ...]
    headings: tuple[Heading, ...] = ()
    ocr: bool = False
    """True when any of the text came from OCR of the rendered page (a small real text layer is kept beside it)."""
    tables: tuple[ExtractedTable, ...] = ()


@dataclass(frozen=True)
class ParsedDocument:
    """What a parser returns for one file."""

    path: str
    kind: str
    """``pdf``, ``csv``, ``tsv`` or ``xlsx``."""
    pages: tuple[ParsedPage, ...] = ()
    tables: tuple[ExtractedTable, ...] = ()
    """Spreadsheet sheets / CSV bodies; PDF tables stay on their pages."""
    title: str = ""
    metadata: dict = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    """Per-page problems that did not stop the file (e.g. a page whose OCR failed)."""


@dataclass(frozen=True)
class ChunkSpan:
    """The part of one page's text that a chunk covers."""

    page: int
    start: int
    end: int


@dataclass(frozen=True)
class Chunk:
    """A unit of retrieval with exact provenance."""

    text: str
    spans: tuple[ChunkSpan, ...]
    """Pages and char ranges this chunk's text came from (empty for table chunks)."""
    heading: str = ""
    kind: str = "text"
    """``text`` or ``table``."""
    table: str | None = None
    """For table chunks: the SQLite table name."""
    row_ids: tuple[int, ...] = ()
    """For table chunks: the rowids of the rows it renders."""
    n_tokens: int = 0
