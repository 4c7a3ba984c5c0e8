"""Unruled tables found from how the words stand on the page: columns of numbers under titles.

Financial filings, reports and papers print most tables without rules: a label on the left,
amounts in columns set apart by wide gaps, section labels ("Net sales:") between groups of
rows, column titles ("Three Months Ended", "June 25, 2022") above. PyMuPDF finds such tables
only with its ML layout model (a page image through a CNN, then a graph network: ~0.45 s a
page on one CPU core), which made table detection ~90 % of ingestion time on filings.

Here the *regions* are found from the words alone (visual rows, the gaps between words, the
right edges of numbers standing in columns: ~1 ms a page), and MuPDF's own grid analysis
(``fz_find_table_within_bounds``, the same C routine PyMuPDF applies to each layout-model box)
cuts each region into cells. A region needs at least two rows whose numbers stand apart and
line up; prose (one run of words per line, however many numbers it mentions) never qualifies.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from statistics import median
from typing import Any, Sequence

import pymupdf

from core.types import Rect

__all__ = ["UNITS", "GridTable", "count_rows", "grid_tables", "iou", "text_table_regions"]

_NUMBER = re.compile(r"^[(\-–—$€£¥]*\s*[$€£¥]?\s*\d[\d,.]*\s*%?\)?%?$|^[—–-]$")
_MARKER = re.compile(r"^\(\d{1,2}\)$")
_SENTENCE_END = re.compile(r"[a-z]{2,}[.;]$")


@dataclass
class _Row:
    top: float
    bottom: float
    words: list[Any]  # LineWord, sorted by x
    segments: list[tuple[float, float, str]]  # x0, x1, text: runs of words without a wide gap

    @property
    def height(self) -> float:
        return self.bottom - self.top

    @property
    def x0(self) -> float:
        return self.segments[0][0]

    @property
    def x1(self) -> float:
        return max(s[1] for s in self.segments)

    def numeric_edges(self) -> list[float]:
        """Right edges of the segments that are amounts (markers such as "(1)" alone are none)."""
        found = [s for s in self.segments if _is_amount(s[2])]
        if len(self.segments) > 1 and found and all(_MARKER.match(s[2]) for s in found):
            return []  # "(2)" after an equation, "(1)" before a footnote
        return [s[1] for s in found]


UNITS = frozenset({"%", ")", "%)", "pts", "bps"})
"""Printed apart from their number, one gap to its right."""


_ENUMERATOR = re.compile(r"^\d{1,2}[.)]$")  # "1." "2)": a list, not an amount ("(3)" may be either)


def _is_amount(text: str) -> bool:
    if _ENUMERATOR.match(text):
        return False
    parts = text.replace("$ ", "$").split()
    return bool(parts) and bool(_NUMBER.match(parts[0])) and all(_NUMBER.match(p) or p in UNITS for p in parts)


def _rows(lines: Sequence[Any]) -> list[_Row]:
    """Visual rows: lines whose vertical centres fall inside each other's extent, merged."""
    ordered = sorted((ln for ln in lines if not getattr(ln, "rotated", False)), key=lambda ln: (ln.rect[1], ln.rect[0]))
    groups: list[list[Any]] = []
    spans: list[tuple[float, float]] = []
    for ln in ordered:
        t, b = ln.rect[1], ln.rect[3]
        mid = (t + b) / 2
        if groups:
            pt, pb = spans[-1]
            if pt <= mid <= pb or t <= (pt + pb) / 2 <= b:
                groups[-1].append(ln)
                spans[-1] = (min(pt, t), max(pb, b))
                continue
        groups.append([ln])
        spans.append((t, b))
    rows: list[_Row] = []
    for grp, (t, b) in zip(groups, spans):
        words = sorted((w for ln in grp for w in ln.words), key=lambda w: w.rect[0])
        if not words:
            continue
        h = median(w.rect[3] - w.rect[1] for w in words) or 1.0
        segs: list[list[Any]] = [[words[0]]]
        for w in words[1:]:
            if w.rect[0] - segs[-1][-1].rect[2] >= 0.8 * h:
                segs.append([w])
            else:
                segs[-1].append(w)
        segments = [(s[0].rect[0], max(w.rect[2] for w in s), " ".join(w.text for w in s)) for s in segs]
        # "$" printed apart from its amount belongs to it.
        merged: list[tuple[float, float, str]] = []
        for seg in segments:
            if merged and merged[-1][2] in ("$", "€", "£", "¥", "US$"):
                merged[-1] = (merged[-1][0], seg[1], merged[-1][2] + " " + seg[2])
            else:
                merged.append(seg)
        rows.append(_Row(t, b, words, merged))
    return rows


def _kind(row: _Row) -> str:
    """num: amounts set apart from a label or from each other; head: several short runs of words
    (column titles); label: one short run (a section label, a spanning title); prose: anything else."""
    n = len(row.segments)
    words = sum(len(s[2].split()) for s in row.segments)
    if row.numeric_edges() and (n >= 2 or _is_amount(row.segments[0][2])):
        if n >= 2 or len(row.segments[0][2].split()) >= 2:
            return "num"
    if n >= 2 and all(len(s[2].split()) <= 10 for s in row.segments) and words <= 8 * n:
        return "head"
    if n == 1 and len(row.segments[0][2].split()) <= 10 and not _SENTENCE_END.search(row.segments[0][2]):
        return "label"
    return "prose"


def _amounts_left(row: _Row) -> float:
    """Where the row's amounts begin: the left edge of its first amount after the label."""
    for k, seg in enumerate(row.segments):
        if (k > 0 or len(row.segments) == 1) and _is_amount(seg[2]):
            return seg[0]
    if _is_amount(row.segments[0][2]):  # amounts first, their labels to the right
        return row.segments[0][0]
    return row.x1


def _aligned(rows: Sequence[_Row], tol: float = 3.0) -> bool:
    """Two or more rows hold an amount whose right edge lines up with one in another row."""
    edges = [(i, e) for i, r in enumerate(rows) for e in r.numeric_edges()]
    for i, e in edges:
        if any(j != i and abs(f - e) <= tol for j, f in edges):
            return True
    return False


def text_table_regions(lines: Sequence[Any], page_width: float) -> list[Rect]:
    """Boxes around the unruled tables on a page, found from its text lines alone.

    A table is a run of rows, each close below the previous (at most two line heights apart),
    made of rows with amounts set apart, rows of column titles, and section labels that stay in
    the label column, with at least two amount rows whose numbers line up (or one under a row of
    three or more titles). Titles directly above join the table; labels at its end do not. A run
    holding two tables printed close together (data, then a caption and a new row of years or
    titles) is cut in two."""
    rows = _rows(lines)
    if not rows:
        return []
    kinds = [_kind(r) for r in rows]
    regions: list[Rect] = []
    i = 0
    n = len(rows)
    while i < n:
        if kinds[i] not in ("num", "head"):
            i += 1
            continue
        j = i
        amounts_at = _amounts_left(rows[i]) if kinds[i] == "num" else None
        while j + 1 < n:
            nxt = rows[j + 1]
            if kinds[j + 1] not in ("num", "head", "label") and not (
                    amounts_at is not None and len(nxt.segments) == 1 and nxt.x1 < amounts_at):
                break  # prose; but a long row label wrapped over lines stays in the label column
            gap = nxt.top - rows[j].bottom
            if gap > 2.0 * max(rows[j].height, nxt.height, 1.0):
                break
            j += 1
            if kinds[j] == "num":
                left = _amounts_left(rows[j])
                amounts_at = left if amounts_at is None else min(amounts_at, left)
        for block in _split(list(range(i, j + 1)), rows, kinds):
            region = _region(block, rows, kinds)
            if region is not None:
                regions.append(region)
        i = j + 1
    return regions


def _split(block: list[int], rows: Sequence[_Row], kinds: Sequence[str]) -> list[list[int]]:
    """Cut a run of rows where a second table starts: after data rows, a row that is not data
    (a caption, a heading) followed by titles or a row of years."""
    parts: list[list[int]] = [[]]
    seen_data = False
    for pos, k in enumerate(block):
        if kinds[k] == "num" and not _titles_only(rows[k]):
            seen_data = True
        starts = (seen_data and pos > 0 and kinds[block[pos - 1]] not in ("num", "head")
                  and (kinds[k] == "head" or (kinds[k] == "num" and _titles_only(rows[k]))))
        if starts:
            parts.append([])
            seen_data = False
        parts[-1].append(k)
    return [p for p in parts if p]


_YEAR = re.compile(r"^(19|20)\d\d$")


def _titles_only(row: _Row) -> bool:
    """A row whose "amounts" are all years: column titles such as "2023 | 2022"."""
    amounts = [s[2] for s in row.segments if _is_amount(s[2])]
    return bool(amounts) and all(_YEAR.match(a) for a in amounts)


def _region(block: list[int], rows: Sequence[_Row], kinds: Sequence[str]) -> Rect | None:
    """The box of one run of rows, if it holds a table (see ``text_table_regions``)."""
    while block and kinds[block[-1]] != "num":
        block = block[:-1]  # trailing titles or labels belong to what follows
    while block and kinds[block[0]] not in ("num", "head"):
        block = block[1:]  # a caption left at the top by _split
    nums = [k for k in block if kinds[k] == "num"]
    one_row = len(nums) == 1 and len(rows[nums[0]].segments) >= 3 and any(
        kinds[k] == "head" and len(rows[k].segments) >= 3 for k in block if k < nums[0])
    if not ((len(nums) >= 2 and _aligned([rows[k] for k in nums])) or one_row):
        return None
    first = block[0]
    # Titles above: rows of several titles, or one title standing over the amount columns.
    amounts_left = min(_amounts_left(rows[k]) for k in nums)
    while first > 0 and kinds[first - 1] in ("label", "head"):
        above, below = rows[first - 1], rows[first]
        if below.top - above.bottom > 1.6 * max(above.height, 1.0):
            break
        if kinds[first - 1] == "label" and above.x0 < amounts_left - 20:
            break  # a caption or a paragraph's last line, starting at the margin
        first -= 1
    picked = [rows[k] for k in range(first, block[-1] + 1)]
    return (min(r.x0 for r in picked), picked[0].top, max(r.x1 for r in picked), picked[-1].bottom)


def count_rows(lines: Sequence[Any], box: Sequence[float]) -> int:
    """How many visual rows of text stand inside ``box``."""
    inside = [ln for ln in lines if box[0] <= (ln.rect[0] + ln.rect[2]) / 2 <= box[2]
              and box[1] <= (ln.rect[1] + ln.rect[3]) / 2 <= box[3]]
    return len(_rows(inside))


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two rectangles."""
    x0, y0, x1, y1 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


@dataclass(frozen=True)
class _GridRow:
    cells: list[Rect | None]


@dataclass(frozen=True)
class GridTable:
    """A table from ``grid_tables``: the shape ``pdf._table`` reads from PyMuPDF's ``Table``."""

    bbox: Rect
    rows: list[_GridRow]


def grid_tables(page: pymupdf.Page, regions: Sequence[Rect]) -> list[GridTable]:
    """Cut each region into a grid of cells with MuPDF's table-structure analysis."""
    if not regions:
        return []
    from pymupdf import table as ptable

    tp = page.get_textpage(flags=ptable.TABLE_DETECTOR_FLAGS)
    word_rects = [pymupdf.Rect(w[:4]) for w in tp.extractWORDS()]
    out: list[GridTable] = []
    for region in regions:
        r = pymupdf.Rect(region) + (-1, -1, 1, 1)
        cells = ptable.make_table_from_bbox(tp, word_rects, r)
        if not cells:
            continue
        out.append(_to_grid(cells))
    return out


def _to_grid(cells: Sequence[Rect]) -> GridTable:
    """Cells (one rectangle each, rows may have fewer cells where one spans columns) as rows
    over the table's column positions; a spanning cell sits in its first column."""
    xs = sorted({round(c[0], 1) for c in cells})
    by_row: dict[float, list[Rect]] = {}
    for c in cells:
        by_row.setdefault(round(c[1], 1), []).append(tuple(c))  # type: ignore[arg-type]
    rows: list[_GridRow] = []
    for y in sorted(by_row):
        row: list[Rect | None] = [None] * len(xs)
        for c in by_row[y]:
            row[xs.index(round(c[0], 1))] = c
        rows.append(_GridRow(row))
    bbox = (min(c[0] for c in cells), min(c[1] for c in cells), max(c[2] for c in cells), max(c[3] for c in cells))
    return GridTable(bbox, rows)
