"""PDF parsing with provenance: words with boxes in reading order, headings, tables, OCR fallback.

Every ``Word`` indexes exactly into its page's text (``text[w.start:w.end] == w.text``) so that a
chunk, an answer span or a citation can be drawn back onto the page. Reading order comes from a
recursive XY-cut over text lines (column gutters before row gaps), which reads multi-column pages
column by column at no model cost: PyMuPDF's own ``sort=True`` reads across columns. Unruled
tables (most tables in filings and reports) are found from how the words stand (``textgrid``:
columns of amounts under titles, ~1 ms a page) and cut into cells by MuPDF's grid analysis;
PyMuPDF's line-based finder runs only where line art outside those tables could form a grid.
PyMuPDF's ML layout model (~0.5 s a page on a laptop CPU; it made table detection ~90 % of
ingestion time on filings) runs only where the words alone cannot tell a table from prose: pages
set in columns (papers) and tables of words between rules; or when asked for (``layout=True``).
Pages without a usable text layer go to ``core.ingest.ocr``.

PyMuPDF must not be driven from several threads at once: call this from one thread (the parse
worker process in ``core.ingest.worker`` does exactly that).
"""
from __future__ import annotations

import contextlib
import re
import statistics
import time
import unicodedata
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence

import pymupdf

from core.errors import Cancelled, DamagedFile, EncryptedFile, ModelNotInstalled
from core.ingest.textgrid import UNITS, count_rows, grid_tables, iou, text_table_regions
from core.jobs import CancelToken, ProgressFn, check, report
from core.types import ExtractedTable, Heading, ParsedDocument, ParsedPage, Rect, Word

if TYPE_CHECKING:
    from core.ingest.ocr import OcrEngine

__all__ = [
    "parse_pdf",
    "limit_layout_threads",
    "LineWord",
    "TextLine",
    "order_lines",
    "assemble_page_text",
    "is_cjk",
]

# Whitespace kept so word breaks are seen; ligatures expanded ("ﬁ" -> "fi") so words are searchable;
# text outside the mediabox is invisible to a reader and left out.
_TEXT_FLAGS = pymupdf.TEXT_PRESERVE_WHITESPACE | pymupdf.TEXT_MEDIABOX_CLIP

_MIN_TEXT_CHARS = 20
"""A page with fewer visible characters than this has no usable text layer (scan → OCR)."""

_BOLD_FONT = re.compile(r"bold|black|heavy|semibold|demi|cmbx|-bd\b|,b$|medi\b", re.IGNORECASE)
_PAGE_LABEL = re.compile(r"^\s*(page|p\.|seite|página)?\s*\d+\s*((of|/|von|de)\s*\d+)?\s*$", re.IGNORECASE)
_JUNK_TITLE = re.compile(
    r"^(untitled|no title|title|document\d*|microsoft (word|powerpoint)|slide \d+)\b"
    r"|\.(docx?|pdf|tex|dvi|rtf|odt|indd)$",
    re.IGNORECASE,
)


# ---------------------------------------------------------------- shared line model (also used by OCR)


@dataclass(frozen=True)
class LineWord:
    """A word on its way into a page: text, box, and whether a space separated it from the previous."""

    text: str
    rect: Rect
    space_before: bool = True
    size: float = 0.0
    bold: bool = False


@dataclass(frozen=True)
class TextLine:
    """One visual line of words (left to right) with the paragraph it belongs to."""

    words: list[LineWord]
    rect: Rect
    block: int | None = None
    """Lines with the same block id are one paragraph ("\\n" between them, "\\n\\n" otherwise).
    None (OCR) means: decide from geometry."""
    size: float = 0.0
    bold: bool = False
    table: bool = False
    rotated: bool = False

    @property
    def n_chars(self) -> int:
        return sum(len(w.text) for w in self.words)


def is_cjk(ch: str) -> bool:
    """True for a Han, kana or Hangul character: such scripts have no spaces, so each is a word."""
    o = ord(ch)
    return (
        0x4E00 <= o <= 0x9FFF or 0x3400 <= o <= 0x4DBF or 0x20000 <= o <= 0x2FA1F
        or 0xF900 <= o <= 0xFAFF or 0x3040 <= o <= 0x30FF or 0xAC00 <= o <= 0xD7AF
        or 0x3000 <= o <= 0x303F or 0xFF00 <= o <= 0xFFEF
    )


def _union(rects: Iterable[Rect]) -> Rect:
    x0 = y0 = float("inf")
    x1 = y1 = float("-inf")
    for r in rects:
        x0, y0, x1, y1 = min(x0, r[0]), min(y0, r[1]), max(x1, r[2]), max(y1, r[3])
    if x0 == float("inf"):
        return (0.0, 0.0, 0.0, 0.0)
    return (x0, y0, x1, y1)


class _Displayed:
    """Maps PyMuPDF's unrotated text coordinates into the page as displayed (``page.rect``, and
    what ``get_pixmap`` renders), so a rotated page's words land where a reader sees them."""

    def __init__(self, page: pymupdf.Page) -> None:
        self.m = page.rotation_matrix if page.rotation % 360 else None

    def rect(self, r: Sequence[float]) -> Rect:
        if self.m is None:
            return (float(r[0]), float(r[1]), float(r[2]), float(r[3]))
        t = pymupdf.Rect(r) * self.m
        t.normalize()
        return (t.x0, t.y0, t.x1, t.y1)

    def direction(self, d: Sequence[float]) -> tuple[float, float]:
        if self.m is None:
            return (float(d[0]), float(d[1]))
        m = self.m
        return (d[0] * m.a + d[1] * m.c, d[0] * m.b + d[1] * m.d)


def _round(r: Sequence[float]) -> Rect:
    return (round(r[0], 2), round(r[1], 2), round(r[2], 2), round(r[3], 2))


# ---------------------------------------------------------------- reading order (recursive XY-cut)


@dataclass(frozen=True)
class _Atom:
    """A unit the XY-cut moves as a whole: one text line, or a whole table's rows."""

    rect: Rect
    lines: list[TextLine]
    words_per_line: float = 0.0
    n_words: int = 0


def _atom(lines: list[TextLine]) -> _Atom:
    n_words = sum(len(ln.words) for ln in lines)
    return _Atom(_union(ln.rect for ln in lines), lines, n_words / max(1, len(lines)), n_words)


def _gaps(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Empty stretches between the union of intervals, as (start, end)."""
    out: list[tuple[float, float]] = []
    intervals = sorted(intervals)
    reach = intervals[0][1]
    for a, b in intervals[1:]:
        if a > reach:
            out.append((reach, a))
        reach = max(reach, b)
    return out


def _is_column(side: list[_Atom]) -> bool:
    """Running text or stacked paragraphs (author blocks), not a column of labels, numbers or
    bullets: those are read row by row."""
    if sum(a.n_words for a in side) >= 6 and statistics.median(a.words_per_line for a in side) >= 3:
        return True
    blocks: dict[int | None, int] = {}
    for a in side:
        for ln in a.lines:
            blocks[ln.block] = blocks.get(ln.block, 0) + 1
    multi = sum(n for b, n in blocks.items() if b is not None and n >= 2)
    total = sum(blocks.values())
    return total >= 2 and multi >= 0.6 * total


def _xy_order(atoms: list[_Atom], out: list[_Atom], min_col_gap: float,
              columns: list[tuple[list[_Atom], list[_Atom]]] | None = None) -> None:
    """Atoms in reading order into ``out``; the two sides of every column gutter cut into ``columns``."""
    stack = [atoms]
    # Depth-first with an explicit stack (pages can have thousands of lines); pieces are pushed in
    # reverse so they pop in reading order.
    while stack:
        group = stack.pop()
        if len(group) <= 1 or len(group) > 5000:
            out.extend(sorted(group, key=lambda a: (a.rect[1], a.rect[0])))
            continue
        # Row gaps use the middle 60% of each box: consecutive line boxes often overlap a little.
        h_gaps = _gaps([(a.rect[1] + 0.2 * (a.rect[3] - a.rect[1]), a.rect[3] - 0.2 * (a.rect[3] - a.rect[1]))
                        for a in group])
        widest_h = max((b - a for a, b in h_gaps), default=0.0)
        v_cut = None
        v_gaps = sorted(_gaps([(a.rect[0], a.rect[2]) for a in group]), key=lambda g: g[0] - g[1])
        for a, b in v_gaps[:4]:
            if b - a < min_col_gap:
                break
            x = (a + b) / 2
            left = [t for t in group if t.rect[2] <= x]
            right = [t for t in group if t.rect[2] > x]
            if _is_column(left) and _is_column(right):
                v_cut = (b - a, left, right)
                break
        if v_cut is not None and columns is not None:
            columns.append((v_cut[1], v_cut[2]))
        if v_cut is not None and v_cut[0] >= widest_h:
            stack.append(v_cut[2])
            stack.append(v_cut[1])
            continue
        if h_gaps:
            # Cut at every gap about as wide as the widest at once: keeps the recursion shallow
            # on long uniform pages, and narrow gaps that line up by chance across columns are
            # left for the sub-groups, where the column gutter wins.
            cut_at = [(a + b) / 2 for a, b in h_gaps if (b - a) >= max(widest_h * 0.8, widest_h - 2.0)]
            bands: list[list[_Atom]] = [[] for _ in range(len(cut_at) + 1)]
            for t in group:
                mid = (t.rect[1] + t.rect[3]) / 2
                k = 0
                while k < len(cut_at) and mid > cut_at[k]:
                    k += 1
                bands[k].append(t)
            stack.extend(reversed([b for b in bands if b]))
            continue
        if v_cut is not None:
            stack.append(v_cut[2])
            stack.append(v_cut[1])
            continue
        out.extend(_row_order(group))


def _row_order(group: list[_Atom]) -> list[_Atom]:
    """Top to bottom, and left to right within a row of boxes that overlap vertically."""
    rows: list[list[_Atom]] = []
    for a in sorted(group, key=lambda a: (a.rect[1], a.rect[0])):
        if rows:
            last = rows[-1]
            top = min(t.rect[1] for t in last)
            bottom = max(t.rect[3] for t in last)
            h = min(a.rect[3] - a.rect[1], bottom - top)
            if min(bottom, a.rect[3]) - max(top, a.rect[1]) > 0.5 * max(h, 0.1):
                last.append(a)
                continue
        rows.append([a])
    return [a for row in rows for a in sorted(row, key=lambda a: a.rect[0])]


def _min_col_gap(lines: Sequence[TextLine]) -> float:
    """The narrowest gap the XY-cut takes for a column gutter: 0.6 of the median line height."""
    heights = [ln.rect[3] - ln.rect[1] for ln in lines if ln.words] or [10.0]
    return max(4.0, 0.6 * statistics.median(heights))


def has_columns(lines: Sequence[TextLine], page_width: float) -> bool:
    """Whether the page sets running text in two or more columns: the XY-cut finds a gutter with
    at least five lines of prose narrower than half the page on each side. (A table's labels
    beside its amounts, or a cover page's blocks, are cut too, but are not prose on both sides.)"""
    atoms = [_atom([ln]) for ln in lines if ln.words]
    if len(atoms) < 2:
        return False
    columns: list[tuple[list[_Atom], list[_Atom]]] = []
    _xy_order(atoms, [], _min_col_gap(lines), columns)

    def prose(side: list[_Atom]) -> int:
        return sum(1 for a in side if a.n_words >= 5 and a.rect[2] - a.rect[0] < 0.55 * page_width)

    return any(prose(left) >= 5 and prose(right) >= 5 for left, right in columns)


def order_lines(lines: list[TextLine], tables: Sequence[list[TextLine]] = ()) -> list[TextLine]:
    """Reading order for a page's horizontal lines; each table (its rows in order) moves as one unit."""
    atoms = [_atom([ln]) for ln in lines if ln.words]
    atoms += [_atom(rows) for rows in tables if rows]
    if not atoms:
        return []
    out: list[_Atom] = []
    _xy_order(atoms, out, _min_col_gap(lines))
    return [ln for a in out for ln in a.lines]


def _same_paragraph(a: TextLine, b: TextLine) -> bool:
    if a.block is not None or b.block is not None:
        return a.block is not None and a.block == b.block
    # OCR lines: the next line just below, overlapping horizontally, continues the paragraph.
    h = min(a.rect[3] - a.rect[1], b.rect[3] - b.rect[1])
    gap = b.rect[1] - a.rect[3]
    overlap = min(a.rect[2], b.rect[2]) - max(a.rect[0], b.rect[0])
    return b.rect[1] > a.rect[1] and gap < 0.8 * h and overlap > 0


def assemble_page_text(lines: Sequence[TextLine]) -> tuple[str, tuple[Word, ...], list[tuple[int, int]]]:
    """Join ordered lines into page text: words by " " (or nothing inside CJK runs), lines by "\\n",
    paragraphs by "\\n\\n". Returns the text, its words, and each line's (start, end)."""
    parts: list[str] = []
    words: list[Word] = []
    spans: list[tuple[int, int]] = []
    pos = 0
    prev: TextLine | None = None
    for ln in lines:
        if prev is not None:
            sep = "\n" if _same_paragraph(prev, ln) else "\n\n"
            parts.append(sep)
            pos += len(sep)
        start = pos
        for i, w in enumerate(ln.words):
            if i and w.space_before:
                parts.append(" ")
                pos += 1
            words.append(Word(w.text, _round(w.rect), pos, pos + len(w.text)))
            parts.append(w.text)
            pos += len(w.text)
        spans.append((start, pos))
        prev = ln
    return "".join(parts), tuple(words), spans


# ---------------------------------------------------------------- text layer


def _is_bold(span: dict) -> bool:
    return bool(span.get("flags", 0) & pymupdf.TEXT_FONT_BOLD) or bool(_BOLD_FONT.search(span.get("font", "")))


def _page_lines(page: pymupdf.Page) -> tuple[list[TextLine], list[TextLine], int, int]:
    """Horizontal lines, other (rotated) lines, visible char count, unreadable char count."""
    raw = page.get_text("rawdict", flags=_TEXT_FLAGS)
    disp = _Displayed(page)
    lines: list[TextLine] = []
    rotated: list[TextLine] = []
    visible = unknown = 0
    for bno, block in enumerate(raw.get("blocks", ())):
        if block.get("type") != 0:
            continue
        for line in block.get("lines", ()):
            words: list[LineWord] = []
            cur: list[tuple[str, Sequence[float]]] = []
            cur_size = 0.0
            cur_bold = False
            gap = False  # whitespace seen since the last word

            def flush() -> None:
                nonlocal cur, gap
                if cur:
                    words.append(LineWord("".join(c for c, _ in cur), _union(b for _, b in cur),
                                          gap or not words, cur_size, cur_bold))
                    gap = False
                cur = []

            for span in line.get("spans", ()):
                size = float(span.get("size", 0.0))
                bold = _is_bold(span)
                for ch in span.get("chars", ()):
                    c = ch.get("c", "")
                    if not c or c.isspace():
                        flush()
                        gap = True
                        continue
                    if unicodedata.category(c) in ("Cc", "Cf", "Co", "Cs"):
                        continue  # control and format characters have no glyph to point at
                    visible += 1
                    if c == "\ufffd":
                        unknown += 1
                    bbox = disp.rect(ch.get("bbox", (0, 0, 0, 0)))
                    if is_cjk(c):
                        flush()
                        cur = [(c, bbox)]
                        cur_size, cur_bold = size, bold
                        flush()
                        continue
                    if not cur:
                        cur_size, cur_bold = size, bold
                    cur.append((c, bbox))
            flush()
            if not words:
                continue
            n = sum(len(w.text) for w in words)
            size = sum(w.size * len(w.text) for w in words) / n
            bold = sum(len(w.text) for w in words if w.bold) >= 0.9 * n
            dx, dy = disp.direction(line.get("dir", (1.0, 0.0)))
            upright = dx > 0.9 and abs(dy) < 0.2
            rect = _union(w.rect for w in words)
            prev = lines[-1] if upright and lines else None
            if prev is not None and prev.block == bno and _same_row(prev.rect, rect):
                # MuPDF breaks a visual line at wide gaps (e.g. after a sentence in justified
                # text): one row of one paragraph is one line of text.
                words[0] = replace(words[0], space_before=True)
                merged = prev.words + words
                m = sum(len(w.text) for w in merged)
                lines[-1] = TextLine(merged, _union((prev.rect, rect)), bno,
                                     (prev.size * prev.n_chars + size * n) / m,
                                     prev.bold and bold)
                continue
            tl = TextLine(words, rect, bno, size, bold, rotated=not upright)
            (lines if upright else rotated).append(tl)
    return lines, rotated, visible, unknown


def _same_row(a: Rect, b: Rect) -> bool:
    """``b`` continues ``a`` on the same visual line: it starts just after ``a`` ends (a gap wider
    than 1.5 line heights may be a column gutter) and shares most of its height."""
    h = min(a[3] - a[1], b[3] - b[1])
    overlap = min(a[3], b[3]) - max(a[1], b[1])
    return h > 0 and overlap >= 0.7 * h and a[2] - 1.0 <= b[0] <= a[2] + 1.5 * h


def _body_size(lines: Sequence[TextLine]) -> float:
    weight: dict[float, int] = {}
    for ln in lines:
        for w in ln.words:
            key = round(w.size * 2) / 2
            weight[key] = weight.get(key, 0) + len(w.text)
    return max(weight, key=lambda k: (weight[k], -k)) if weight else 0.0


def _headings(ordered: Sequence[TextLine], spans: Sequence[tuple[int, int]], text: str,
              body: float = 0.0) -> tuple[Heading, ...]:
    """Blocks set clearly larger (levels 1-3 by size ratio) or bold at body size (level 4).
    ``body`` is the document's body font size; the page's own is used when it is unknown."""
    body_lines = [ln for ln in ordered if not ln.table and not ln.rotated]
    body = body or _body_size(body_lines)
    if body <= 0:
        return ()
    body_chars = sum(ln.n_chars for ln in body_lines)
    bold_chars = sum(len(w.text) for ln in body_lines for w in ln.words if w.bold)
    bold_is_body = bold_chars > 0.5 * body_chars
    by_block: dict[int, list[TextLine]] = {}
    for ln in body_lines:
        if ln.block is not None:
            by_block.setdefault(ln.block, []).append(ln)
    level_of: dict[int, int] = {}
    for bno, blines in by_block.items():
        chars = sum(ln.n_chars for ln in blines)
        letters = sum(c.isalpha() for ln in blines for w in ln.words for c in w.text)
        if len(blines) > 3 or chars > 120 or letters < 2:
            continue
        if _PAGE_LABEL.match(" ".join(w.text for ln in blines for w in ln.words)):
            continue  # "Page 3 of 12" in a bold footer is not a section
        ratio = min(ln.size for ln in blines) / body
        if ratio >= 1.6:
            level = 1
        elif ratio >= 1.35:
            level = 2
        elif ratio >= 1.15:
            level = 3
        elif ratio >= 0.95 and all(ln.bold for ln in blines) and not bold_is_body and chars <= 100:
            level = 4
        else:
            continue
        level_of[bno] = level
    out: list[Heading] = []
    run_block: int | None = None
    run_start = run_end = 0
    for ln, (s, e) in zip(ordered, spans):
        if ln.table or ln.rotated or ln.block not in level_of:
            if run_block is not None:
                out.append(_heading(text, run_start, run_end, level_of[run_block]))
            run_block = None
            continue
        if ln.block == run_block:
            run_end = e
            continue
        if run_block is not None:
            out.append(_heading(text, run_start, run_end, level_of[run_block]))
        run_block, run_start, run_end = ln.block, s, e
    if run_block is not None:
        out.append(_heading(text, run_start, run_end, level_of[run_block]))
    return tuple(out)


def _heading(text: str, start: int, end: int, level: int) -> Heading:
    return Heading(" ".join(text[start:end].split()), level, start, end)


# ---------------------------------------------------------------- tables


def _center_in(r: Rect, box: Sequence[float]) -> bool:
    cx, cy = (r[0] + r[2]) / 2, (r[1] + r[3]) / 2
    return box[0] <= cx <= box[2] and box[1] <= cy <= box[3]


def _cell_text(words: Sequence[LineWord], rect: Sequence[float] | None) -> str:
    if rect is None:
        return ""
    inside = [w for w in words if _center_in(w.rect, rect)]
    inside.sort(key=lambda w: (round(w.rect[1]), w.rect[0]))
    return " ".join(w.text for w in inside)


_NUMERIC = re.compile(r"^[\s$€£¥%()+\-–—.,:/0-9]*[0-9][\s$€£¥%()+\-–—.,:/0-9]*$")
_CURRENCY = {"$", "€", "£", "¥", "US$"}
_YEAR = re.compile(r"^(19|20)\d\d$")
# Words only a table's data rows hold: 1,234  (56)  7.5%  —  $
_AMOUNT = re.compile(r"^\(?[$€£¥]?\d{1,3}(,\d{3})+(\.\d+)?\)?%?$|^\(\d[\d,.]*\)$|^\d+\.\d+%?$|^[$€£¥—–]$")


def _is_numeric(cell: str) -> bool:
    return bool(_NUMERIC.match(cell))


def _union_opt(a: Rect | None, b: Rect | None) -> Rect | None:
    if a is None:
        return b
    if b is None:
        return a
    return _union((a, b))


def _merge_split_columns(grid: list[list[str]], rects: list[list[Rect | None]]) -> None:
    """Merge neighbouring columns that never both hold text in one row, in place.

    Grids often split one logical column in two: a "$" in its own cell left of the amount, a "%"
    in its own cell right of it, or an amount spanning two grid cells in some rows and one in
    others."""
    j = 0
    while grid and j < len(grid[0]) - 1:
        def content(cell: str, left: bool) -> bool:
            return bool(cell) and not (left and cell in _CURRENCY)

        unit = all(r[j + 1] in UNITS for r in grid[1:] if r[j + 1]) and any(r[j + 1] for r in grid[1:])
        if unit or all(not (content(r[j], True) and content(r[j + 1], False)) for r in grid):
            for r, rr in zip(grid, rects):
                r[j] = " ".join(x for x in (r[j], r[j + 1]) if x)
                rr[j] = _union_opt(rr[j], rr[j + 1])
                del r[j + 1], rr[j + 1]
        else:
            j += 1


def _one_phrase(words: Sequence[LineWord], a: Rect | None, b: Rect | None) -> bool:
    """The words in cell ``a`` run on into cell ``b`` on the same line, a word space apart."""
    if a is None or b is None:
        return False
    left = [w for w in words if _center_in(w.rect, a)]
    right = [w for w in words if _center_in(w.rect, b)]
    if not left or not right:
        return False
    last = max(left, key=lambda w: w.rect[2])
    first = min(right, key=lambda w: w.rect[0])
    h = max(1.0, last.rect[3] - last.rect[1])
    return abs(last.rect[1] - first.rect[1]) < 0.3 * h and 0 <= first.rect[0] - last.rect[2] < 0.6 * h


def _merge_title_rows(grid: list[list[str]], rects: list[list[Rect | None]], words: Sequence[LineWord],
                      most: int = 4) -> None:
    """Fold the column-title rows under the header into it, in place.

    Filings print titles on two to four rows ("Three Months Ended" over two columns, then
    "June 25," and "2022" under each): rows right under the header with no amount in any cell and
    nothing in the label column (or only years in the others) are titles, not data. A title over several columns is
    repeated for each column the row below fills, so every column reads its whole title."""
    def titles(row: list[str]) -> bool:
        if not any(row) or any(_AMOUNT.match(w) and any(c.isdigit() for c in w) for c in row for w in c.split()):
            return False
        # Nothing in the label column, or years over every column ("Three Months Ended June 30, | 2023 | 2022").
        return not row[0] or all(_YEAR.match(c) for c in row[1:] if c) and any(row[1:])

    k = 1
    while k < len(grid) and k <= most and titles(grid[k]):
        k += 1
    if k == 1:
        return
    titles = [list(r) for r in grid[:k]]
    for i in range(k):  # one title the grid cut in two ("Nine Months | Ended") is one again
        for j in range(len(titles[i]) - 2, -1, -1):
            if titles[i][j] and titles[i][j + 1] and _one_phrase(words, rects[i][j], rects[i][j + 1]):
                titles[i][j] += " " + titles[i][j + 1]
                titles[i][j + 1] = ""
    for i in range(k - 1):  # spread a spanning title over the empty cells to its right
        for j in range(2, len(titles[i])):  # (the label column's title spans nothing)
            if not titles[i][j] and titles[i][j - 1] and titles[i + 1][j]:
                titles[i][j] = titles[i][j - 1]
    ncols = len(grid[0])
    grid[0] = [" ".join(r[j] for r in titles if r[j]) for j in range(ncols)]
    merged: list[Rect | None] = []
    for j in range(ncols):
        boxes = [r[j] for r in rects[:k] if r[j] is not None]
        merged.append(_union(boxes) if boxes else None)
    rects[0] = merged
    del grid[1:k], rects[1:k]


def _header_above(lines: Sequence[TextLine], bbox: Sequence[float], col_ranges: list[tuple[float, float]]
                  ) -> tuple[list[str], list[Rect | None]]:
    """Column titles printed just above a table whose grid starts with data (common in filings)."""
    n = len(col_ranges)
    width = bbox[2] - bbox[0]
    above = [ln for ln in lines if ln.rect[3] <= bbox[1] + 1 and ln.rect[2] > bbox[0] and ln.rect[0] < bbox[2]]
    above.sort(key=lambda ln: -ln.rect[3])
    picked: list[TextLine] = []
    edge = bbox[1]
    for ln in above:
        h = max(1.0, ln.rect[3] - ln.rect[1])
        if edge - ln.rect[3] > 1.5 * h + 2:
            break
        if len(ln.words) >= 8 or ln.rect[0] < bbox[0] - 10 or ln.rect[2] > bbox[2] + 10 \
                or (ln.rect[2] - ln.rect[0] > 0.8 * width and len(ln.words) >= 4):
            break  # a paragraph or a caption, not column titles
        if any(_AMOUNT.match(w.text) for w in ln.words):
            break  # the last row of a table printed just above
        picked.append(ln)
        edge = min(edge, ln.rect[1])
        if len(picked) >= 12:
            break
    texts: list[list[LineWord]] = [[] for _ in range(n)]
    for ln in picked:
        for w in ln.words:
            cx = (w.rect[0] + w.rect[2]) / 2
            k = min(range(n), key=lambda c: 0.0 if col_ranges[c][0] <= cx <= col_ranges[c][1]
                    else min(abs(cx - col_ranges[c][0]), abs(cx - col_ranges[c][1])))
            texts[k].append(w)
    names, rects = [], []
    for ws in texts:
        ws.sort(key=lambda w: (round(w.rect[1]), w.rect[0]))
        names.append(" ".join(w.text for w in ws))
        rects.append(_union(w.rect for w in ws) if ws else None)
    return names, rects


def _opt(r: Sequence[float] | None) -> Rect | None:
    return None if r is None else (float(r[0]), float(r[1]), float(r[2]), float(r[3]))


def _table(tab: Any, number: int, lines: Sequence[TextLine]) -> ExtractedTable | None:
    # find_tables already reports rotated pages in displayed coordinates, like our words.
    bbox = _opt(tab.bbox)
    rows = [[_opt(c) for c in r.cells] for r in tab.rows]
    ncols = max((len(r) for r in rows), default=0)
    rows = [(r + [None] * ncols)[:ncols] for r in rows]
    # Cell texts come from the words inside the table's box. (PyMuPDF's own ``tab.header`` is not
    # asked: it renders pixmaps and reads every candidate line's characters in Python, ~0.3 s a
    # table on filings; titles printed above the grid are found by _header_above instead.)
    words = [w for ln in lines for w in ln.words if _center_in(w.rect, bbox)]
    head_rects = rows[0] if rows else [None] * ncols
    head_text = [_cell_text(words, r) for r in head_rects]
    body = rows[1:]
    grid = [head_text] + [[_cell_text(words, c) for c in r] for r in body]
    rects: list[list[Rect | None]] = [[tuple(c) if c is not None else None for c in r]  # type: ignore[misc]
                                      for r in [head_rects] + body]
    # Spacer rows and columns (empty everywhere) carry no data and would confuse SQL.
    keep = [0] + [i for i in range(1, len(grid)) if any(grid[i])]
    grid, rects = [grid[i] for i in keep], [rects[i] for i in keep]
    cols = [j for j in range(ncols) if any(r[j] for r in grid)]
    grid = [[r[j] for j in cols] for r in grid]
    rects = [[r[j] for j in cols] for r in rects]
    _merge_split_columns(grid, rects)
    ncols = len(grid[0]) if grid else 0
    head = [c for c in grid[0] if c] if grid else []
    data_first = not head or sum(map(_is_numeric, head)) >= 0.5 * len(head)
    if data_first or (len(head) < 2 and ncols >= 3):
        # The grid's first row is data, or a lone section label ("Assets"): the column titles, if
        # any, are printed above the table.
        col_ranges = []
        for j in range(ncols):
            xs = [r[j] for r in rects if r[j] is not None]
            col_ranges.append((min(x[0] for x in xs), max(x[2] for x in xs)) if xs else (0.0, 0.0))
        names, name_rects = _header_above(lines, bbox, col_ranges)
        if data_first or sum(1 for t in names if t) >= 2:
            grid.insert(0, names)
            rects.insert(0, name_rects)
    _merge_title_rows(grid, rects, words)
    body_rows = [i for i in range(1, len(grid)) if any(grid[i])]
    if ncols < 2 or not body_rows:
        return None  # one column or one row is a box around text, not a table
    cells = [c for i in body_rows for c in grid[i]]
    if sum(1 for c in cells if c) < 0.35 * len(cells):
        return None  # mostly empty: lines of a figure, not a table
    words = [c for c in cells if c]
    single = sum(1 for c in words if " " not in c and not _is_numeric(c))
    if ncols >= 8 and not any(grid[0]) and single >= 0.8 * len(words):
        return None  # a row of single words under no titles: a figure of tokens (attention maps)
    return ExtractedTable(
        name="",
        header=tuple(grid[0]),
        rows=tuple(tuple(grid[i]) for i in body_rows),
        page=number,
        bbox=_round(bbox),
        cell_rects=tuple(tuple(_round(c) if c is not None else None for c in rects[i]) for i in body_rows),
        header_rects=tuple(_round(c) if c is not None else None for c in rects[0]),
    )


def _inside(r: Sequence[float], box: Sequence[float], margin: float = 0.0) -> bool:
    return (box[0] - margin <= r[0] and box[1] - margin <= r[1] and r[2] <= box[2] + margin
            and r[3] <= box[3] + margin)


def _drawings(page: pymupdf.Page) -> list[dict] | None:
    """The page's line art in unrotated coordinates (as the table finder sees it), or None where
    it cannot be read. ``_find_tables`` reads it once for ``_ruled`` and ``_framed_text``."""
    try:
        return page.get_cdrawings()
    except Exception:
        return None


def _column_rule(path: dict) -> bool:
    r = path["rect"]
    if r[2] - r[0] > 2 or r[3] - r[1] < 6:
        return False
    if "s" in (path.get("type") or ""):
        return True
    fill = path.get("fill")
    return fill is not None and max(fill, default=1.0) < 0.6


def _ruled(page: pymupdf.Page, paths: list[dict] | None, explained: Sequence[Rect] = ()) -> bool:
    """Whether the page's line art could make a grid for PyMuPDF's line-based table finder: edges
    (strokes, the sides of boxes and shaded cells) at three or more x positions and two or more
    y positions. Cheap (no text, no rendering); errs on the side of yes. A page that fails it
    holds no ruled table. Line art inside ``explained`` (regions of tables already found, where
    shading and rules under totals are common) is not counted. ``paths``: ``_drawings(page)``."""
    if paths is None:
        return True  # unknown: let the finder decide
    if explained and page.rotation == 0:
        for g in explained:
            inside = [p for p in paths if p.get("rect") is not None and len(p["rect"]) == 4
                      and _inside(p["rect"], g, 6)]
            # Column rules (dark vertical lines) make it a ruled grid, which the line finder reads
            # best; shading (light fills, in thin slivers too) and rules under totals do not.
            if sum(1 for p in inside if _column_rule(p)) < 2:
                drop = {id(p) for p in inside}
                paths = [p for p in paths if id(p) not in drop]
    xs: set[int] = set()
    ys: set[int] = set()

    def box(x0: float, y0: float, x1: float, y1: float) -> None:
        x0, x1 = min(x0, x1), max(x0, x1)
        y0, y1 = min(y0, y1), max(y0, y1)
        if x1 - x0 >= 3:
            if y1 - y0 >= 3:
                xs.update((round(x0), round(x1)))
            ys.update((round(y0), round(y1)))
        elif y1 - y0 >= 3:
            xs.update((round(x0), round(x1)))

    for path in paths:
        r = path.get("rect")
        if r is not None and len(r) == 4:
            box(*r)  # neighbouring paths can join into a box whose sides become edges
        for item in path.get("items", ()):
            kind = item[0]
            try:
                if kind == "l":
                    (ax, ay), (bx, by) = item[1], item[2]
                    box(ax, ay, bx, by)
                elif kind == "re":
                    box(*item[1])
                elif kind == "qu":
                    q = item[1]
                    box(min(pt[0] for pt in q), min(pt[1] for pt in q), max(pt[0] for pt in q),
                        max(pt[1] for pt in q))
            except (TypeError, ValueError, IndexError):
                return True
        if len(xs) >= 3 and len(ys) >= 2:
            return True
    # The finder also joins graphics that (nearly) touch into one box and takes its sides as
    # edges: a rule touching a box or a stroke brings the ends of its span into play.
    rects = [tuple(p["rect"]) for p in paths if p.get("rect") is not None and len(p["rect"]) == 4]
    if len(rects) > 1500:
        return True  # not worth the pairwise check: let the finder decide

    def near(a: Sequence[float], b: Sequence[float], tol: float = 3.0) -> bool:
        return a[0] - tol <= b[2] and b[0] - tol <= a[2] and a[1] - tol <= b[3] and b[1] - tol <= a[3]

    for i, a in enumerate(rects):
        if min(a[2] - a[0], a[3] - a[1]) >= 3:
            continue  # a box: its sides are counted already
        joined = _union([a] + [b for j, b in enumerate(rects) if j != i and near(a, b)])
        # Sides shorter than 3 pt are no edges (the finder's edge_min_length).
        if joined[3] - joined[1] >= 3:
            xs.update((round(joined[0]), round(joined[2])))
        if joined[2] - joined[0] >= 3:
            ys.update((round(joined[1]), round(joined[3])))
        if len(xs) >= 3 and len(ys) >= 2:
            return True
    return False


def _looks_tabular(lines: Sequence[TextLine]) -> bool:
    """Numbers set apart in columns: three or more visual rows that each hold two or more numbers
    after a gap wider than a word space (a column gutter), or four or more rows with a number
    beside such a gap whose right edges line up (a column of amounts, page numbers in a table of
    contents). Prose that merely mentions many numbers does not pass, so the layout model is not
    run on it."""
    rows: list[tuple[float, float, list[LineWord]]] = []
    for ln in sorted((ln for ln in lines if ln.words), key=lambda ln: (ln.rect[1] + ln.rect[3]) / 2):
        top, bottom = ln.rect[1], ln.rect[3]
        if rows:
            t, b, ws = rows[-1]
            mid = (top + bottom) / 2
            if t <= mid <= b:
                ws.extend(ln.words)
                rows[-1] = (min(t, top), max(b, bottom), ws)
                continue
        rows.append((top, bottom, list(ln.words)))
    multi = 0
    column: dict[int, int] = {}  # right edge (3 pt bins) of set-apart numbers -> rows holding one
    for _, _, ws in rows:
        if not any(_is_numeric(w.text) for w in ws):
            continue
        ws.sort(key=lambda w: w.rect[0])
        after_gap = 0
        edges: set[int] = set()
        for k, w in enumerate(ws):
            if not _is_numeric(w.text):
                continue
            gap = 0.8 * max(1.0, w.rect[3] - w.rect[1])
            left = k > 0 and w.rect[0] - ws[k - 1].rect[2] >= gap
            right = k + 1 < len(ws) and ws[k + 1].rect[0] - w.rect[2] >= gap
            after_gap += left
            if left or right:
                edges.add(round(w.rect[2] / 3))
        if after_gap >= 2:
            multi += 1
            if multi >= 3:
                return True
        for e in edges:
            column[e] = column.get(e, 0) + 1
            if column[e] + column.get(e - 1, 0) + column.get(e + 1, 0) >= 4:
                return True
    return False


def _framed_text(page: pymupdf.Page, lines: Sequence[TextLine], paths: list[dict] | None,
                 explained: Sequence[Rect] = ()) -> bool:
    """Whether two or more horizontal rules with the same span (a quarter of the page wide or
    more, outside ``explained``) frame four or more lines of text: the top, middle and bottom
    rules of a table typeset without column rules, as papers and some filings do. ``paths``:
    ``_drawings(page)``."""
    if paths is None or page.rotation != 0:
        return False  # drawings are in unrotated coordinates, lines are not
    width = page.rect.width
    rules: list[Sequence[float]] = []
    for p in paths:
        r = p.get("rect")
        if r is None or len(r) != 4 or r[2] - r[0] < 0.25 * width or r[3] - r[1] > 2.5:
            continue
        if any(_inside(r, g, 6) for g in explained):
            continue
        rules.append(r)
    for a in rules:
        same = [b for b in rules if abs(b[0] - a[0]) < 3 and abs(b[2] - a[2]) < 3]
        if len(same) < 2:
            continue
        top, bottom = min(b[1] for b in same), max(b[3] for b in same)
        framed = sum(1 for ln in lines if ln.rect[1] >= top and ln.rect[3] <= bottom
                     and ln.rect[0] >= a[0] - 3 and ln.rect[2] <= a[2] + 3)
        if framed >= 4:
            return True
    return False


def _find_tables(page: pymupdf.Page, layout: bool | None, lines: Sequence[TextLine]) -> list[Any]:
    """Tables on the page: unruled ones from how the words stand, ruled ones from the line art.

    ``layout=None`` (default): unruled tables are found from the words (``textgrid``: columns
    of amounts, ~1 ms a page) and cut into cells by MuPDF's grid analysis; on pages whose line
    art could form a grid (``_ruled``, not counting the shading and rules under totals inside
    word-found tables) PyMuPDF's line-based finder runs too. A ruled table over a word-found one
    replaces it only where it gives every row of text its own grid row; other ruled tables that
    overlap one are dropped (on filings the line grid cuts tables into one-row pieces or runs
    titles into data). Pages set in columns (``has_columns``) and pages with rules framing text
    outside those tables (``_framed_text``: tables of words, typeset without column rules) go
    the ``layout=True`` way when the model is installed: ~6 % of filing pages, most pages of
    two-column papers.

    ``layout=True``: PyMuPDF's finder with its ML layout model (~0.5 s a page on a CPU) on pages
    that may hold a table (``_ruled`` or ``_looks_tabular``). ``layout=False``: the line-based
    finder alone, on ruled pages."""
    regions = text_table_regions(lines, page.rect.width) if layout is None else []
    paths = _drawings(page)
    if layout is None and (has_columns(lines, page.rect.width) or _framed_text(page, lines, paths, regions)):
        # Papers set in columns: a table row and the prose beside it share a line height, and
        # the words alone cannot tell them apart. Tables of words between rules (no amounts to
        # find them by). The layout model sees both (where it is installed).
        layout = bool(pymupdf._get_layout)
    if layout:
        if not pymupdf._get_layout or not (_ruled(page, paths) or _looks_tabular(lines)):
            return []
        with _layout_regions_only(True):
            finder = page.find_tables(use_layout=True)
        return list(finder.tables) if finder is not None else []
    ruled: list[Any] = []
    if _ruled(page, paths, regions):
        finder = page.find_tables(use_layout=False)
        ruled = list(finder.tables) if finder is not None else []
    found: list[Any] = []
    for reg in regions:
        # A ruled grid over the same words, with a grid row for every row of text, is exact.
        same = [t for t in ruled if iou(t.bbox, reg) >= 0.6 and len(t.rows) >= count_rows(lines, t.bbox)]
        found += same[:1] or grid_tables(page, [reg])
    return found + [t for t in ruled if not any(iou(t.bbox, r) > 0 for r in regions)]


def _layout_model() -> Any:
    """The model object behind ``pymupdf._get_layout`` (pymupdf.layout's hook), or None."""
    for cell in getattr(pymupdf._get_layout, "__closure__", None) or ():
        try:
            model = getattr(cell.cell_contents, "_model", None)
        except ValueError:  # an empty cell
            continue
        if model is not None and hasattr(model, "table_grid_extractor"):
            return model
    return None


def limit_layout_threads(threads: int = 1) -> bool:
    """Run PyMuPDF's layout model on ``threads`` CPU threads, without spin-waiting.

    ONNX Runtime's default (a thread per core, spinning between operators) suits a process that
    has the machine to itself. The parse worker shares it with the embedder: one thread there
    costs about a quarter less CPU per page and leaves the other cores to embedding. Rebuilds the
    model's sessions once per process; returns False (nothing changed) where the model is absent
    or not built as expected."""
    model = _layout_model()
    if model is None:
        return False
    try:
        import onnxruntime as ort

        def session(path: str, old: Any) -> Any:
            so = ort.SessionOptions()
            so.enable_cpu_mem_arena = False  # as pymupdf.layout builds them: RSS stays flat
            so.intra_op_num_threads = threads
            so.inter_op_num_threads = 1
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
            return ort.InferenceSession(path, sess_options=so, providers=old.get_providers())

        # The graph network, and the image-feature network it feeds on (the table-grid one is
        # switched off while tables are found, see _layout_regions_only).
        sessions = [(model, "session", model.model_path)]
        extractor = getattr(model, "feature_extractor", None)
        if extractor is not None and hasattr(extractor, "_session"):
            sessions.append((extractor, "_session", model.imf_model_path))
        fresh = [(owner, name, session(path, getattr(owner, name))) for owner, name, path in sessions]
    except Exception:
        return False
    for owner, name, sess in fresh:
        setattr(owner, name, sess)
    return True


@contextlib.contextmanager
def _layout_regions_only(active: bool) -> Iterator[None]:
    """While ``find_tables`` runs: the layout model without its table-grid network, about a fifth
    of its time. ``find_tables`` only reads the table regions from the layout, never the grids,
    so its result is the same. The model is restored afterwards (this module runs in one thread)."""
    model = _layout_model() if active else None
    saved = getattr(model, "table_grid_extractor", None)
    if saved is None:
        yield
        return
    model.table_grid_extractor = None
    try:
        yield
    finally:
        model.table_grid_extractor = saved


def _tables(page: pymupdf.Page, number: int, lines: Sequence[TextLine], layout: bool | None,
            warnings: list[str]) -> tuple[list[ExtractedTable], list[Rect]]:
    """Tables on the page (cell texts from the page's own words) and the regions they cover."""
    try:
        found = _find_tables(page, layout, lines)
    except Exception as e:  # table detection is a bonus: a failure must not lose the page's text
        warnings.append(f"page {number}: table detection failed ({type(e).__name__}: {e})")
        return [], []
    tables: list[ExtractedTable] = []
    regions: list[Rect] = []
    for tab in found:
        try:
            table = _table(tab, number, lines)
        except Exception as e:
            warnings.append(f"page {number}: a table could not be read ({type(e).__name__}: {e})")
            continue
        if table is None:
            continue
        tables.append(replace(table, name=f"p{number}-t{len(tables) + 1}"))
        regions.append(table.bbox)  # type: ignore[arg-type]
    return tables, regions


def _table_rows(lines: list[TextLine], block: int) -> list[TextLine]:
    """The words inside a table region, re-cut into one text line per visual row."""
    words = [w for ln in lines for w in ln.words]
    words.sort(key=lambda w: ((w.rect[1] + w.rect[3]) / 2, w.rect[0]))
    rows: list[list[LineWord]] = []
    for w in words:
        if rows:
            last = rows[-1]
            top = min(x.rect[1] for x in last)
            bottom = max(x.rect[3] for x in last)
            mid = (w.rect[1] + w.rect[3]) / 2
            if top <= mid <= bottom:
                last.append(w)
                continue
        rows.append([w])
    out = []
    for r in rows:
        r.sort(key=lambda w: w.rect[0])
        r = [LineWord(w.text, w.rect, True if i else w.space_before, w.size, w.bold) for i, w in enumerate(r)]
        out.append(TextLine(r, _union(w.rect for w in r), block, table=True))
    return out


# ---------------------------------------------------------------- pages


@dataclass
class _Options:
    ocr: bool
    ocr_engine: Any
    layout: bool | None
    tables: bool
    ocr_dpi: int
    body_size: float = 0.0
    warnings: list[str] = field(default_factory=list)
    no_text_pages: list[int] = field(default_factory=list)


def _overlaps(a: Rect, b: Rect) -> bool:
    """More than half of the smaller box lies inside the other."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return False
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return w * h > 0.5 * smaller


def _needs_ocr(page: pymupdf.Page, visible: int, unknown: int) -> bool:
    if visible >= _MIN_TEXT_CHARS and unknown < 0.3 * visible:
        return False
    # Only worth rendering when something is drawn: an image (a scan) or vector shapes
    # (text converted to outlines). A blank page stays blank.
    if page.get_images(full=False):
        return True
    paths = _drawings(page)
    return paths is not None and len(paths) >= 20


def _parse_page(page: pymupdf.Page, number: int, opts: _Options) -> ParsedPage:
    rect = page.rect
    lines, rotated, visible, unknown = _page_lines(page)
    if _needs_ocr(page, visible, unknown):
        if opts.ocr:
            try:
                from core.ingest.ocr import ocr_page_lines

                ocr_lines = ocr_page_lines(page, engine=opts.ocr_engine, dpi=opts.ocr_dpi)
            except Cancelled:
                raise
            except ModelNotInstalled as e:  # say it once, not once per page
                opts.warnings.append(f"no OCR for pages without a text layer: {e.args[0] if e.args else e}")
                opts.ocr = False
                opts.no_text_pages.append(number)
            except Exception as e:  # keep whatever text layer there is
                opts.warnings.append(f"page {number}: OCR failed ({type(e).__name__}: {e})")
            else:
                # Keep the few real text-layer lines (a page label over a scan); OCR fills the rest.
                known = lines + rotated
                extra = [ln for ln in ocr_lines if not any(_overlaps(ln.rect, k.rect) for k in known)]
                ordered = order_lines(lines + extra) + rotated
                text, words, _ = assemble_page_text(ordered)
                return ParsedPage(number, rect.width, rect.height, text, words, ocr=bool(extra))
        else:
            opts.no_text_pages.append(number)

    tables: list[ExtractedTable] = []
    table_groups: list[list[TextLine]] = []
    if opts.tables and (lines or rotated):
        tables, regions = _tables(page, number, lines + rotated, opts.layout, opts.warnings)
        if regions:
            next_block = 1 + max((ln.block or 0) for ln in lines + rotated)
            inside: list[list[TextLine]] = [[] for _ in regions]

            def claim(ln: TextLine) -> bool:
                for k, reg in enumerate(regions):
                    if _center_in(ln.rect, reg):
                        inside[k].append(ln)
                        return True
                return False

            lines = [ln for ln in lines if not claim(ln)]
            rotated = [ln for ln in rotated if not claim(ln)]
            table_groups = [_table_rows(grp, next_block + k) for k, grp in enumerate(inside)]

    ordered = order_lines(lines, table_groups)
    # Rotated text (margin stamps, axis labels) would block every cut of the XY-cut: it goes last.
    ordered += sorted(rotated, key=lambda ln: (ln.rect[0], ln.rect[1]))
    text, words, spans = assemble_page_text(ordered)
    headings = _headings(ordered, spans, text, opts.body_size)
    return ParsedPage(number, rect.width, rect.height, text, words, headings, False, tuple(tables))


# ---------------------------------------------------------------- documents


def _open(path: str) -> pymupdf.Document:
    p = Path(path)
    if not p.exists():
        raise DamagedFile(path, "cannot be read: the file does not exist")
    if p.is_dir():
        raise DamagedFile(path, "cannot be read: it is a folder")
    try:
        doc = pymupdf.open(path, filetype="pdf")
    except PermissionError:
        raise DamagedFile(path, "cannot be read: permission denied") from None
    except Exception as e:
        detail = str(e).strip()
        # MuPDF's "Failed to open file '<path>' as type pdf." only repeats what the message says.
        reason = "is not a readable PDF" if (not detail or path in detail) else f"is not a readable PDF ({detail})"
        raise DamagedFile(path, reason) from None
    try:
        if doc.needs_pass and not doc.authenticate(""):
            doc.close()
            raise EncryptedFile(path, "is encrypted and needs a password",
                                fix="remove the password (e.g. print to PDF) and add the copy")
        if doc.page_count == 0:
            doc.close()
            raise DamagedFile(path, "has no pages")
    except (EncryptedFile, DamagedFile):
        raise
    except Exception as e:
        raise DamagedFile(path, f"is not a readable PDF ({str(e).strip() or type(e).__name__})") from None
    return doc


def _doc_body_size(doc: pymupdf.Document, limit: int) -> float:
    """The most common font size (by characters) over up to 8 pages spread through the document:
    a title page alone would make its abstract or footnotes look like the body."""
    if limit <= 0:
        return 0.0
    picks = sorted({int(i * limit / 8) for i in range(8)}) if limit > 8 else range(limit)
    weight: dict[float, int] = {}
    for i in picks:
        try:
            blocks = doc.load_page(i).get_text("dict", flags=_TEXT_FLAGS).get("blocks", ())
        except Exception:
            continue
        for b in blocks:
            for ln in b.get("lines", ()):
                for sp in ln.get("spans", ()):
                    n = len(sp.get("text", "").strip())
                    if n:
                        key = round(float(sp.get("size", 0.0)) * 2) / 2
                        weight[key] = weight.get(key, 0) + n
    return max(weight, key=lambda k: (weight[k], -k)) if weight else 0.0


def _title(doc: pymupdf.Document, pages: Sequence[ParsedPage]) -> str:
    meta = (doc.metadata or {}).get("title") or ""
    meta = " ".join(str(meta).split())
    if sum(c.isalpha() for c in meta) >= 3 and not _JUNK_TITLE.search(meta):
        return meta
    for page in pages[:2]:
        if page.headings:
            best = min(page.headings, key=lambda h: (h.level, h.start))
            if best.level <= 3:
                return best.text
    return ""


def parse_pdf(path: str | Path, *, ocr: bool = True, ocr_engine: OcrEngine | None = None,
              layout: bool | None = None, tables: bool = True, max_pages: int | None = None,
              ocr_dpi: int = 200, progress: ProgressFn | None = None,
              cancel: CancelToken | None = None) -> ParsedDocument:
    """Parse a PDF into pages of words (reading order, exact offsets), headings and tables.

    ``ocr``: run OCR on pages without a usable text layer (``ocr_engine`` defaults to the bundled
    RapidOCR engine, loaded once per process). ``layout``: whether PyMuPDF's layout model helps
    find tables (~0.5 s per page on a CPU): True on every page, False never (fastest: ruled
    tables only), None (default) only on pages that may hold a table (line art that could form a
    grid, or numbers standing in columns). ``tables=False`` skips table detection altogether.
    ``max_pages``: read at most this many pages. Raises EncryptedFile or DamagedFile; a page that
    fails becomes a warning instead.
    """
    path = str(path)
    started = time.monotonic()
    doc = _open(path)
    try:
        total = doc.page_count
        limit = total if max_pages is None else max(0, min(total, max_pages))
        opts = _Options(ocr, ocr_engine, layout, tables, ocr_dpi, _doc_body_size(doc, limit))
        if doc.is_repaired:
            opts.warnings.append("the file was damaged and has been repaired; some content may be missing")
        pages: list[ParsedPage] = []
        failed = 0
        first_error = ""
        name = Path(path).name
        for i in range(limit):
            check(cancel)
            try:
                page = doc.load_page(i)
                pages.append(_parse_page(page, i + 1, opts))
            except Cancelled:
                raise
            except Exception as e:  # one bad page must not cost the whole file
                failed += 1
                reason = f"{type(e).__name__}: {str(e).strip()}"
                first_error = first_error or reason
                opts.warnings.append(f"page {i + 1}: could not be read ({reason})")
                w = h = 0.0
                try:
                    w, h = doc.page_cropbox(i).width, doc.page_cropbox(i).height
                except Exception:
                    pass
                pages.append(ParsedPage(i + 1, w, h, "", ()))
            ocr_note = " (OCR)" if pages and pages[-1].ocr else ""
            report(progress, "parse", i + 1, limit, unit="pages",
                   message=f"{name}: page {i + 1} of {limit}{ocr_note}", started=started)
        if limit and failed == limit:
            raise DamagedFile(path, f"no page could be read ({first_error})")
        if opts.no_text_pages:
            n = len(opts.no_text_pages)
            opts.warnings.append(f"{n} page{'s' if n > 1 else ''} without a text layer "
                                 f"(first: page {opts.no_text_pages[0]}) were not OCR'd")
        if limit < total:
            opts.warnings.append(f"only the first {limit} of {total} pages were read")
        metadata = {k: str(v) for k, v in (doc.metadata or {}).items() if v}
        metadata["page_count"] = total
        return ParsedDocument(
            path=path,
            kind="pdf",
            pages=tuple(pages),
            title=_title(doc, pages),
            metadata=metadata,
            warnings=tuple(opts.warnings),
        )
    finally:
        doc.close()
