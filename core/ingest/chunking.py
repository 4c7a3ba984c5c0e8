"""Page text into retrieval chunks that know exactly where every character came from.

``chunk_pages`` splits the pages' text into sentences (a regex splitter that knows
abbreviations, initials, decimals and CJK full stops), packs whole sentences into chunks
of at most ``max_tokens`` word pieces *including the embedding model's special tokens*,
starts a new chunk at every heading, repeats the last sentence(s) of the previous chunk
as a short overlap, and lets a chunk run on across a page break.

Provenance invariant, for every text chunk::

    chunk_body(c) == SEP.join(page(s.page).text[s.start:s.end] for s in c.spans)

and ``c.text`` is that body, preceded by ``c.heading + HEADING_SEP`` when the chunk does
not itself start at its heading. The heading is prefixed because the embedder sees only
``c.text``: a chunk from the middle of "4.2 Engine failure" should still match a question
about the engine failure. It counts against the token limit. ``locate`` maps any range of
``c.text`` back to page spans, and ``span_rects`` maps a page span to rectangles.

Token counts are taken once per sentence and summed (``count_tokens`` is the embedder's
tokenizer, so this is the hot path of ingestion); each finished chunk is counted once more
as a whole, so a tokenizer that is not additive over sentences can never push a chunk over
the limit.
"""
from __future__ import annotations

import bisect
import re
from typing import Callable, Sequence

from core.types import Chunk, ChunkSpan, ParsedPage, Rect

__all__ = [
    "SEP", "HEADING_SEP", "split_sentences", "chunk_pages", "chunk_body", "locate", "span_rects",
]

SEP = "\n"
"""Joins the pieces of a chunk body that come from consecutive pages."""
HEADING_SEP = "\n"
"""Between a prefixed heading and the chunk body."""

CountTokens = Callable[[str], int]

# --------------------------------------------------------------------------- sentences

_CLOSERS = "\"')]}»”’」』）"
_BOUNDARY = re.compile(
    r"""(?P<latin>[.!?…]+[\"')\]}»”’]*)(?=\s)               # . ! ? … (then closing quotes), then a space
      | (?P<cjk>[。！？]+[」』”’）)\]]*)                        # CJK full stops need no space after them
      | (?P<para>\n[ \t\r\f\v]*\n)                            # a blank line ends a paragraph
      | (?P<item>\n(?=[ \t]*(?:[•●▪◦‣∙·*–-]|\(?(?:\d{1,2}|[a-z])[.)])[ \t]))  # a list item begins
    """,
    re.X,
)
# Words that end with a full stop without ending the sentence (compared lower-case, without the dot).
_ABBREVIATIONS = frozenset("""
fig figs eq eqs no nos vol vols pp p ch chap sec sect art para ref refs tab tabs approx ca cf vs v al
dr mr mrs ms prof st jr sr mt ft lt col gen gov sgt capt cpt rev hon inc ltd co corp bros dept univ
jan feb mar apr jun jul aug sep sept oct nov dec est min max avg ed eds trans op cit ibid viz resp
incl excl appx no nr
""".split())
_ACRONYM = re.compile(r"(?:[A-Za-z]\.)+[A-Za-z]")  # e.g / i.e / U.S / a.m
_LEAD_PUNCT = "([{\"'“‘«"


def _sentence_cuts(text: str, start: int = 0, end: int | None = None) -> list[int]:
    """Offsets in ``text[start:end]`` where a new sentence may begin."""
    end = len(text) if end is None else end
    cuts: list[int] = []
    for m in _BOUNDARY.finditer(text, start, end):
        kind = m.lastgroup
        if kind == "latin":
            k = m.end()
            while k < end and text[k].isspace():
                k += 1
            if k < end and text[k].islower():
                continue  # "approx. five", "Yahoo! is": lower case goes on with the sentence
            term = m.group("latin").rstrip(_CLOSERS)
            if term == ".":
                before = text[max(start, m.start() - 40):m.start()].split()
                word = before[-1].lstrip(_LEAD_PUNCT) if before else ""
                if (word.lower() in _ABBREVIATIONS or _ACRONYM.fullmatch(word)
                        or (len(word) == 1 and word.isalpha())):
                    continue  # "Fig. 3", "e.g. this", "U.S. Army", "J. Smith"
                w0 = m.start() - len(word)
                if word.isdigit() and len(word) <= 3 and (w0 <= start or text[w0 - 1] == "\n"):
                    continue  # "2. Related Work": a numbered heading or list item, not a sentence
        cuts.append(m.end())
    return cuts


def split_sentences(text: str) -> list[tuple[int, int]]:
    """Sentence spans ``(start, end)`` in ``text``, trimmed of surrounding whitespace."""
    return _segments(text, _sentence_cuts(text), 0, len(text))


def _segments(text: str, cuts: Sequence[int], start: int, end: int) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    prev = start
    for c in [*cuts, end]:
        a, b = prev, c
        while a < b and text[a].isspace():
            a += 1
        while b > a and text[b - 1].isspace():
            b -= 1
        if a < b:
            out.append((a, b))
        prev = c
    return out


# --------------------------------------------------------------------------- chunks


class _Stream:
    """All pages' trimmed texts joined by SEP, so sentences and chunks may cross page breaks."""

    def __init__(self, pages: Sequence[ParsedPage]) -> None:
        parts: list[str] = []
        self.pages: list[ParsedPage] = []
        self.offsets: list[int] = []  # where each page's piece starts in the stream
        self.firsts: list[int] = []   # page.text index of that piece's first character
        self.ends: list[int] = []     # where each page's piece ends in the stream
        pos = 0
        for page in pages:
            t = page.text
            a = len(t) - len(t.lstrip())
            b = len(t.rstrip())
            if a >= b:
                continue  # a blank page contributes nothing
            if parts:
                pos += len(SEP)
            self.pages.append(page)
            self.offsets.append(pos)
            self.firsts.append(a)
            parts.append(t[a:b])
            pos += b - a
            self.ends.append(pos)
        self.text = SEP.join(parts)

    def page_index(self, pos: int) -> int:
        return bisect.bisect_right(self.offsets, pos) - 1

    def spans(self, s: int, e: int) -> tuple[ChunkSpan, ...]:
        """Page spans of ``self.text[s:e]``; joined by SEP they give back exactly that text."""
        out = []
        i = self.page_index(s)
        while s < e:
            page, off, first, piece_end = self.pages[i], self.offsets[i], self.firsts[i], self.ends[i]
            stop = min(e, piece_end)
            out.append(ChunkSpan(page.number, first + s - off, first + stop - off))
            if e <= piece_end:
                break
            i += 1
            s = self.offsets[i]
        return tuple(out)


def chunk_pages(pages: Sequence[ParsedPage], *, count_tokens: CountTokens, max_tokens: int = 256,
                overlap_tokens: int = 32) -> list[Chunk]:
    """Chunks of whole sentences, each at most ``max_tokens`` as ``count_tokens`` counts them.

    ``count_tokens(text)`` must count like the embedder does, special tokens included
    (``count_tokens("")`` is taken as the special-token overhead). A new chunk starts at each
    heading; otherwise a chunk begins with up to ``overlap_tokens`` of the previous chunk's
    last sentences. A sentence longer than a chunk is cut at word boundaries (at characters
    in text without spaces, such as Chinese).
    """
    overhead = count_tokens("")
    budget = max_tokens - overhead
    if budget < 8:
        raise ValueError(f"max_tokens={max_tokens} leaves no room for text after {overhead} special tokens")
    stream = _Stream(pages)
    text = stream.text
    if not text:
        return []

    # Headings in stream coordinates, clipped to the trimmed page pieces.
    headings: list[tuple[int, int, str]] = []
    for page, off, first, piece_end in zip(stream.pages, stream.offsets, stream.firsts, stream.ends):
        n = piece_end - off
        for h in page.headings:
            a, b = max(h.start - first, 0), min(h.end - first, n)
            if a < b:
                headings.append((off + a, off + b, " ".join(h.text.split()) or " ".join(text[off + a:off + b].split())))
    headings.sort()
    prefix_cap = budget // 8 if headings else 0
    unit_limit = budget - prefix_cap

    # Sentence units; heading edges are cuts too, so a heading is always a unit of its own.
    cuts = sorted(set(_sentence_cuts(text)).union(*((a, b) for a, b, _ in headings)))
    S: list[int] = []
    E: list[int] = []
    H: list[int] = []  # index into headings for heading units, else -1
    T: list[int] = []  # tokens without the special ones
    hi = 0
    for a, b in _segments(text, cuts, 0, len(text)):
        while hi < len(headings) and headings[hi][1] <= a:
            hi += 1
        h = hi if hi < len(headings) and headings[hi][0] <= a and b <= headings[hi][1] else -1
        n = count_tokens(text[a:b]) - overhead
        if n <= unit_limit:
            S.append(a), E.append(b), H.append(h), T.append(n)
        else:
            for a2, b2, n2 in _split_long(text, a, b, unit_limit, count_tokens, overhead, n):
                S.append(a2), E.append(b2), H.append(h), T.append(n2)

    prefix_costs: dict[str, int] = {}

    def prefix_for(k: int, current: str) -> tuple[str, int]:
        if H[k] >= 0 or not current:
            return "", 0
        if current not in prefix_costs:
            c = count_tokens(current + HEADING_SEP) - overhead
            prefix_costs[current] = c if c <= prefix_cap else -1
        c = prefix_costs[current]
        return (current, c) if c >= 0 else ("", 0)

    chunks: list[Chunk] = []
    current = ""          # the heading in effect before unit ``pos``
    pos = 0
    prev_first = -1
    while pos < len(S):
        first = pos
        if prev_first >= 0 and H[pos] < 0:
            acc, k = 0, pos
            while k - 1 >= prev_first and H[k - 1] < 0 and acc + T[k - 1] <= overlap_tokens:
                k -= 1
                acc += T[k]
            first = k
        prefix, pcost = prefix_for(first, current)
        room = budget - pcost
        total = sum(T[first:pos])
        while first < pos and total + T[pos] > room:  # the overlap must leave room for new text
            total -= T[first]
            first += 1
        body_seen = first < pos
        j = pos
        while j < len(S):
            if H[j] >= 0 and body_seen:
                break  # a heading starts a new chunk
            if j > pos and total + T[j] > room:
                break
            total += T[j]
            body_seen = body_seen or H[j] < 0
            j += 1

        # Count the finished chunk once; give back sentences if the tokenizer is not additive.
        while True:
            body = text[S[first]:E[j - 1]]
            chunk_text = f"{prefix}{HEADING_SEP}{body}" if prefix else body
            n = count_tokens(chunk_text)
            if n <= max_tokens:
                break
            if j - pos > 1:
                j -= 1
            elif first < pos:
                first += 1
            elif prefix:
                prefix = ""
            else:  # one sentence, counted alone within the limit, is over it here: cut it
                parts = _split_long(text, S[pos], E[pos], budget - max(1, n - max_tokens) - 1,
                                    count_tokens, overhead, T[pos])
                S[pos:pos + 1] = [p[0] for p in parts]
                E[pos:pos + 1] = [p[1] for p in parts]
                T[pos:pos + 1] = [p[2] for p in parts]
                H[pos:pos + 1] = [H[pos]] * len(parts)
                j = pos + 1
        # A chunk that opens with headings is under the innermost of them; others are under
        # the heading in effect where they start.
        heading = current if H[first] < 0 else _leading_heading(H, headings, first, j)
        chunks.append(Chunk(text=chunk_text, spans=stream.spans(S[first], E[j - 1]), heading=heading,
                            kind="text", n_tokens=n))
        for k in range(pos, j):
            if H[k] >= 0:
                current = headings[H[k]][2]
        prev_first = first
        pos = j
    return chunks


def _leading_heading(H: Sequence[int], headings: Sequence[tuple[int, int, str]], first: int, j: int) -> str:
    """For a chunk that opens with heading units: the innermost of them (the last before the body)."""
    name = ""
    for k in range(first, j):
        if H[k] < 0:
            break
        name = headings[H[k]][2]
    return name


def _split_long(text: str, s: int, e: int, limit: int, count_tokens: CountTokens, overhead: int,
                n_total: int) -> list[tuple[int, int, int]]:
    """Cut ``text[s:e]`` (``n_total`` tokens) into pieces of at most ``limit`` tokens.

    Cuts fall at word ends, or between characters where there are none (CJK, a long URL).
    Each cut is searched outward from where the text's average characters-per-token puts
    it, so a page of unpunctuated text costs a few times its length in tokenizer work,
    not its square.
    """
    out: list[tuple[int, int, int]] = []
    per_token = (e - s) / max(n_total, 1)
    a = s
    while a < e:

        def fits(b: int) -> bool:
            return count_tokens(text[a:b]) - overhead <= limit

        reach = int(limit * per_token * 1.5) + 16
        while True:
            hi = min(e, a + reach)
            # word ends inside the window; one cut off by the window's edge is not a word end
            ends = [m.end() for m in _WORD.finditer(text, a, hi)]
            if ends and ends[-1] == hi < e and not text[hi].isspace():
                ends.pop()
            guess = a + limit * per_token
            b = _last_fitting(ends, fits, bisect.bisect_right(ends, guess) - 1) if ends else None
            if b is None:  # the first word alone is too long: cut between characters
                stop = ends[0] if ends else hi
                chars = range(a + 1, stop + 1)
                b = _last_fitting(chars, fits, int(guess) - a - 1) or a + 1
                break
            if b == ends[-1] and hi < e:
                reach *= 4  # everything in the window fits: look further
                continue
            nl = text.rfind("\n", a + (b - a) * 3 // 4, b)  # prefer a line end close to the cut
            if nl > a:
                b = len(text[a:nl].rstrip()) + a
            break
        out.append((a, b, count_tokens(text[a:b]) - overhead))
        a = b
        while a < e and text[a].isspace():
            a += 1
    return out


_WORD = re.compile(r"\S+")


def _last_fitting(cuts: Sequence[int], ok: Callable[[int], bool], guess: int) -> int | None:
    """The last cut where ``ok`` holds (true up to some cut, then false), searched outward from ``guess``."""
    n = len(cuts)
    if n == 0:
        return None
    guess = min(max(guess, 0), n - 1)
    if ok(cuts[guess]):  # gallop forward: lo is known good, hi known bad (or past the end)
        lo, hi, step = guess, n, 1
        while lo + step < n:
            if not ok(cuts[lo + step]):
                hi = lo + step
                break
            lo, step = lo + step, step * 2
    else:  # gallop backward
        lo, hi, step = -1, guess, 1
        while hi - step >= 0:
            if ok(cuts[hi - step]):
                lo = hi - step
                break
            hi, step = hi - step, step * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ok(cuts[mid]):
            lo = mid
        else:
            hi = mid
    return cuts[lo] if lo >= 0 else None


# --------------------------------------------------------------------------- provenance


def chunk_body(chunk: Chunk) -> str:
    """The part of ``chunk.text`` that comes from the pages (without a prefixed heading)."""
    if not chunk.spans:
        return chunk.text
    n = sum(s.end - s.start for s in chunk.spans) + len(SEP) * (len(chunk.spans) - 1)
    return chunk.text[len(chunk.text) - n:]


def locate(chunk: Chunk, start: int, end: int) -> tuple[ChunkSpan, ...]:
    """Page spans for ``chunk.text[start:end]``; a prefixed heading and separators map to nothing."""
    body_len = sum(s.end - s.start for s in chunk.spans) + len(SEP) * max(0, len(chunk.spans) - 1)
    pos = len(chunk.text) - body_len  # where the body starts in chunk.text
    out = []
    for span in chunk.spans:
        n = span.end - span.start
        a, b = max(start, pos), min(end, pos + n)
        if a < b:
            out.append(ChunkSpan(span.page, span.start + a - pos, span.start + b - pos))
        pos += n + len(SEP)
    return tuple(out)


def span_rects(page: ParsedPage, start: int, end: int) -> list[Rect]:
    """Rectangles of the words overlapping ``page.text[start:end]``, one per run of a line.

    Consecutive words on the same line merge into one rectangle; a line break, a jump back
    to the left or a gap wider than two line heights (a table column) starts a new one.
    """
    rects: list[Rect] = []
    cur: list[float] | None = None
    for w in page.words:
        if w.end <= start or w.start >= end:
            continue
        x0, y0, x1, y1 = w.rect
        if cur is not None:
            h = max(min(cur[3] - cur[1], y1 - y0), 1e-6)
            overlap = min(cur[3], y1) - max(cur[1], y0)
            if overlap >= 0.5 * h and -0.5 * h <= x0 - cur[2] <= 2.0 * h:
                cur = [min(cur[0], x0), min(cur[1], y0), max(cur[2], x1), max(cur[3], y1)]
                continue
            rects.append((cur[0], cur[1], cur[2], cur[3]))
        cur = [x0, y0, x1, y1]
    if cur is not None:
        rects.append((cur[0], cur[1], cur[2], cur[3]))
    return rects
