"""Evidence alignment: which span of which source supports each sentence of an answer.

The model's own ``[n]`` markers are a hint, not the truth: a 0.5B model cites the wrong
source or none at all often enough that trusting it would put highlights on text that
says something else. So every answer sentence is scored against every sentence of the
sources (and every row of a cited table chunk) with two signals:

* lexical: the share of the answer sentence's content words (numbers count double) that
  the candidate contains, after light stemming; CJK text is compared by character bigrams;
* semantic: MiniLM token vectors of the answer sentence, each matched to its most similar
  token of the candidate (MaxSim, ColBERT-style), averaged. The vectors of the sources are
  computed once per answer from the chunk texts; they are not stored, since storing
  MiniLM's token vectors does not pay (see issue notes in ``core.search.hybrid``).

A sentence is supported when the best candidate passes ``SUPPORT_THRESHOLD``; its citation
is that candidate's page span with the rectangles of its words, or the table row. A
second candidate from another place is added when it covers content words the first
missed (answers that join two facts).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from core.answer.types import AnswerSentence, Citation
from core.ingest.chunking import locate, span_rects, split_sentences
from core.types import ChunkSpan, Rect

__all__ = ["Source", "Candidate", "Alignment", "SUPPORT_THRESHOLD", "claim_words", "content_words", "split_answer",
           "strip_markers", "with_markers", "candidates_of", "align_answer", "lexical_support"]

SUPPORT_THRESHOLD = 0.5
"""Combined score a candidate needs to support a sentence (see ``_combine``). On hand-labelled
pairs from the demo reports, supported paraphrases scored 0.46–0.72 and unsupported claims
that share a word with a source 0–0.49 (a contradiction that keeps the words, "commercial"
for "private" certificate, still scores high: that needs an entailment model)."""
LEXICAL_ONLY_THRESHOLD = 0.6
"""Without token vectors (CJK text with an English embedder) words alone must agree more."""
LEXICAL_WEIGHT = 0.6
MARKER = re.compile(r"\s*\[(\d{1,3}(?:\s*[,;]\s*\d{1,3})*)\]")
_WORD = re.compile(r"[^\W_]+(?:[.,'’][^\W_]+)*", re.UNICODE)
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af]")
STOPWORDS = frozenset("""
a about above after again against all also am an and any are as at be because been before being below
between both but by can could did do does doing down during each few for from further had has have having
he her here hers herself him himself his how i if in into is it its itself just me more most my myself no
nor not now of off on once only or other our ours ourselves out over own same she should so some such than
that the their theirs them themselves then there these they this those through to too under until up very
was we were what when where which while who whom why will with would you your yours yourself yourselves
according document documents source sources page answer question say says said per
""".split())


META_WORDS = frozenset("""
text texts section sections titled mention mentions mentioned state states stated specifically specific
provide provides provided present presents presented describe describes described list lists listed given
information context passage passages excerpt excerpts first second third fourth fifth
""".split())
"""Words an answer uses to talk about its sources ("the text mentions", "presented in the section
titled …"), not about the question: they are not claims to find in a source, so they are left out
of an answer sentence's words (a source's words keep them). The ordinals are there for "described in
the first source"."""


@dataclass(frozen=True)
class Source:
    """One numbered source given to the model: a search hit or a chosen chunk."""

    n: int
    chunk_id: int
    doc_id: int
    document: str
    path: str
    text: str
    kind: str = "text"
    spans: tuple[ChunkSpan, ...] = ()
    table: str | None = None
    row_ids: tuple[int, ...] = ()
    page: int | None = None
    heading: str = ""

    @classmethod
    def from_hit(cls, n: int, hit) -> "Source":
        return cls(n=n, chunk_id=int(hit.chunk_id), doc_id=int(hit.doc_id), document=hit.name, path=hit.path,
                   text=hit.text, kind=hit.kind, spans=tuple(hit.spans), table=hit.table,
                   row_ids=tuple(hit.row_ids), page=hit.page, heading=hit.heading)


@dataclass(frozen=True)
class Candidate:
    """A sentence of a source (or one row of a table chunk) that may support an answer sentence."""

    source: Source
    start: int
    """Offset in ``source.text``."""
    end: int
    text: str
    row_id: int | None = None


@dataclass
class Alignment:
    """The result of aligning an answer to its sources."""

    text: str
    """The answer with its markers renumbered to ``citations``."""
    sentences: list[AnswerSentence] = field(default_factory=list)
    citations: list[Citation] = field(default_factory=list)
    best: list[float] = field(default_factory=list)
    """Per sentence, the score of its best candidate (0 for a made-up number or no candidate)."""


# --------------------------------------------------------------------------- words


def _stem(w: str) -> str:
    if w.isdigit() or len(w) <= 3:
        return w
    for suf, keep in (("ies", "y"), ("sses", "ss"), ("ing", ""), ("edly", ""), ("ed", ""), ("es", ""), ("s", "")):
        if w.endswith(suf) and len(w) - len(suf) >= 3:
            if suf == "s" and w.endswith("ss"):
                return w
            return w[: len(w) - len(suf)] + keep
    return w


def content_words(text: str) -> dict[str, float]:
    """Content words of ``text`` (stemmed, lower case) with weights: numbers 2, words 1, CJK bigrams 1."""
    out: dict[str, float] = {}
    for m in _WORD.finditer(text.lower()):
        w = m.group(0).replace(",", "") if re.fullmatch(r"[\d.,]+", m.group(0)) else m.group(0)
        if _CJK.search(w):
            chars = [c for c in w if _CJK.match(c)]
            for a, b in zip(chars, chars[1:]):
                out[a + b] = 1.0
            if len(chars) == 1:
                out[chars[0]] = 0.5
            continue
        if w in STOPWORDS or (len(w) < 2 and not w.isdigit()):
            continue
        is_num = bool(re.fullmatch(r"\d[\d.]*", w))
        out[w if is_num else _stem(w)] = 2.0 if is_num else 1.0
    return out


_HYPHEN_BREAK = re.compile(r"(\w)-[ \t]*\n[ \t]*(\w)")
"""A word hyphenated across a line break in PDF text ("ap-\nproaches"), joined for word matching."""
_META_STEMS = frozenset(_stem(w) for w in META_WORDS)


HINT_BONUS = 0.05
"""What the model's own ``[n]`` marker adds to a candidate's score, and to its tightness when
candidates are tied."""
NEAR_TIE = 0.05
"""Candidates scoring within this of the best are tied; ``_precision`` decides between them."""


def _precision(claim: dict[str, float], evidence: dict[str, float]) -> float:
    """Weighted share of ``evidence``'s words that the claim uses (how tight the span is)."""
    total = sum(evidence.values())
    return sum(w for t, w in evidence.items() if t in claim) / total if total > 0 else 0.0


QUESTION_WORD_WEIGHT = 0.1
"""Weight of a word the answer repeats from the question ("The probable cause of the accident near
Tallahassee was …"): it says which question is answered, not what supports the answer, and
without the discount a table row naming Tallahassee outranked the report's sentence giving the
cause."""


def claim_words(text: str) -> dict[str, float]:
    """``content_words`` of an answer sentence without the words that refer to the sources."""
    return {t: w for t, w in content_words(text).items() if t not in _META_STEMS}


def lexical_support(claim: dict[str, float], evidence: dict[str, float]) -> float:
    """Weighted share of ``claim``'s words found in ``evidence`` (0 when the claim has none)."""
    total = sum(claim.values())
    if total <= 0:
        return 0.0
    return sum(w for t, w in claim.items() if t in evidence) / total


# --------------------------------------------------------------------------- answer text


def strip_markers(text: str) -> tuple[str, list[int]]:
    """``text`` without ``[n]`` markers, and the numbers they named (in order, unique)."""
    nums: list[int] = []
    for m in MARKER.finditer(text):
        for part in re.split(r"[,;]", m.group(1)):
            n = int(part)
            if n not in nums:
                nums.append(n)
    return MARKER.sub("", text).strip(), nums


def with_markers(sentence: str, nums: Sequence[int]) -> str:
    """``sentence`` with ``[n]`` markers placed before its closing punctuation."""
    if not nums:
        return sentence
    marks = "".join(f"[{n}]" for n in nums)
    m = re.search(r"[.!?。！？]+[\"'”’)]*$", sentence)
    if m:
        return f"{sentence[:m.start()].rstrip()} {marks}{sentence[m.start():]}"
    return f"{sentence} {marks}"


def split_answer(text: str) -> list[tuple[int, int]]:
    """Sentence spans of an answer; a trailing ``[n]`` after the full stop stays with its sentence."""
    out: list[tuple[int, int]] = []
    lead = re.compile(r"(?:\s*\[\d{1,3}(?:\s*[,;]\s*\d{1,3})*\])+")
    for a, b in split_sentences(text):
        m = lead.match(text, a, b)
        if out and m:  # "... end. [2] Next" → the marker belongs to the sentence before
            out[-1] = (out[-1][0], m.end())
            a = m.end()
            while a < b and text[a].isspace():
                a += 1
        if a < b:
            out.append((a, b))
    return out


# --------------------------------------------------------------------------- candidates


def candidates_of(source: Source) -> list[Candidate]:
    """Sentences of a text source that lie on its pages; rows of a table source."""
    out: list[Candidate] = []
    if source.kind == "table":
        pos = 0
        lines = source.text.split("\n")
        for j, line in enumerate(lines):
            if j >= 1 and j - 1 < len(source.row_ids) and line.strip():
                out.append(Candidate(source, pos, pos + len(line), line, row_id=source.row_ids[j - 1]))
            pos += len(line) + 1
        return out
    for a, b in split_sentences(source.text):
        if source.spans and not locate(_as_chunk(source), a, b):
            continue  # the prefixed heading: not on the page as such
        out.append(Candidate(source, a, b, source.text[a:b]))
    if not out and source.text.strip():
        out.append(Candidate(source, 0, len(source.text), source.text))
    return out


def _as_chunk(source: Source):
    from core.types import Chunk

    return Chunk(source.text, source.spans, source.heading, source.kind, source.table, source.row_ids)


# --------------------------------------------------------------------------- scoring


TokenEncoder = Callable[[Sequence[str]], list]
"""``texts -> [TokenVectors]`` (``Embedder.encode(texts, tokens=True).tokens``)."""


def _maxsim(q: np.ndarray, d: np.ndarray) -> float:
    if len(q) == 0 or len(d) == 0:
        return 0.0
    return float((q @ d.T).max(axis=1).mean())


def _combine(lex: float, sem: float | None) -> float:
    # MiniLM token MaxSim sits near 0.35 for unrelated English text and near 0.9 for a
    # paraphrase; rescale that range to 0..1 before mixing it with the lexical share.
    if sem is None:
        return lex
    sem01 = min(1.0, max(0.0, (sem - 0.35) / 0.5))
    return LEXICAL_WEIGHT * lex + (1 - LEXICAL_WEIGHT) * sem01


def align_answer(answer: str, sources: Sequence[Source], *, encode_tokens: TokenEncoder | None = None,
                 page_of: Callable[[int, int], object] | None = None,
                 threshold: float | None = None, question: str = "") -> Alignment:
    """Align each sentence of ``answer`` to the best supporting candidate of ``sources``.

    ``encode_tokens`` gives token vectors (omit it to align on words only); ``page_of(doc_id,
    page)`` returns a stored ``ParsedPage`` for the rectangles (omit it: no rectangles).
    Words an answer sentence repeats from ``question`` weigh ``QUESTION_WORD_WEIGHT`` in the
    lexical score: the span to cite is the one that holds what the answer adds.
    Citations are numbered in order of first use; the returned text carries those numbers.
    """
    if threshold is None:
        threshold = SUPPORT_THRESHOLD if encode_tokens is not None else LEXICAL_ONLY_THRESHOLD
    cands = [c for s in sources for c in candidates_of(s)]
    cand_words = [content_words(_HYPHEN_BREAK.sub(r"\1\2", c.text)) for c in cands]
    all_words = set().union(*cand_words) if cand_words else set()
    sent_spans = split_answer(answer)
    claims = [strip_markers(answer[a:b]) for a, b in sent_spans]

    sem_scores: np.ndarray | None = None
    if encode_tokens is not None and cands and claims:
        sem_scores = _semantic(encode_tokens, [c for c, _ in claims], sources, cands)

    citations: list[Citation] = []
    key_to_n: dict[tuple, int] = {}
    pages: dict[tuple[int, int], object] = {}
    out = Alignment(text="")
    parts: list[str] = []
    asked = set(content_words(question)) if question else set()
    for i, (claim, hinted) in enumerate(claims):
        words = {t: w * (QUESTION_WORD_WEIGHT if t in asked else 1.0) for t, w in claim_words(claim).items()}
        if not words:  # "Yes." or a bare marker: nothing to check, nothing to cite
            parts.append(claim)
            out.sentences.append(AnswerSentence(claim, 0, 0, (), True))
            out.best.append(0.0)
            continue
        # A number no source contains is made up, however well the rest of the sentence matches.
        invented = any(w >= 2.0 and t not in all_words for t, w in words.items())
        scored = []
        for j, c in enumerate(cands):
            if invented:
                break
            lex = lexical_support(words, cand_words[j])
            sem = None if sem_scores is None else float(sem_scores[i, j])
            raw = _combine(lex, sem)
            # the model's own marker lifts a near-miss (and breaks ties below)
            scored.append((raw + (HINT_BONUS if c.source.n in hinted else 0.0), lex, j, raw))
        scored.sort(key=lambda t: (-t[0], t[2]))
        best_raw = max((t[3] for t in scored), default=0.0)
        if len(scored) > 1 and sum(t[3] >= best_raw - NEAR_TIE for t in scored) > 1:
            # Near-ties go to the tighter span: the one whose own words the claim uses most (a
            # report's sentence rather than a table row that also lists date, registration, ...);
            # the model's own marker counts a little.
            near = [t for t in scored if t[3] >= best_raw - NEAR_TIE]

            def tight(t):
                return _precision(words, cand_words[t[2]]) + (HINT_BONUS if cands[t[2]].source.n in hinted else 0.0)

            top = max(near, key=lambda t: (tight(t), t[3], -t[2]))
            scored.remove(top)
            scored.insert(0, top)
        out.best.append(scored[0][0] if scored else 0.0)
        chosen: list[tuple[float, int]] = []
        if scored and scored[0][0] >= threshold:
            best_s, _, bj, _ = scored[0]
            chosen.append((best_s, bj))
            covered = {t for t in words if t in cand_words[bj]}
            missing = {t: w for t, w in words.items() if t not in covered}
            if missing and sum(missing.values()) / sum(words.values()) >= 0.3:
                for s, _, j, _ in scored[1:6]:
                    if j == bj or s < threshold * 0.8:
                        continue
                    gain = lexical_support(missing, cand_words[j])
                    if gain >= 0.5:
                        chosen.append((s, j))
                        break
        nums: list[int] = []
        for s, j in chosen:
            c = cands[j]
            key = (c.source.chunk_id, c.start, c.end)
            if key not in key_to_n:
                key_to_n[key] = len(citations) + 1
                citations.append(_citation(key_to_n[key], c, min(1.0, s), page_of, pages))
            if key_to_n[key] not in nums:
                nums.append(key_to_n[key])
        text = with_markers(claim, nums)
        parts.append(text)
        out.sentences.append(AnswerSentence(claim, 0, 0, tuple(nums), bool(nums)))
    # offsets into the rebuilt text
    pos, sentences = 0, []
    full: list[str] = []
    for text, s in zip(parts, out.sentences):
        if full:
            full.append(" ")
            pos += 1
        sentences.append(AnswerSentence(s.text, pos, pos + len(text), s.citations, s.supported))
        full.append(text)
        pos += len(text)
    out.text = "".join(full)
    out.sentences = sentences
    out.citations = citations
    return out


def _semantic(encode_tokens: TokenEncoder, claims: Sequence[str], sources: Sequence[Source],
              cands: Sequence[Candidate]) -> np.ndarray:
    """[n_claims, n_candidates] MaxSim of each claim's tokens over each candidate's tokens."""
    src_index = {s.chunk_id: k for k, s in enumerate(sources)}
    toks = encode_tokens([*claims, *(s.text for s in sources)])
    q_toks, d_toks = toks[: len(claims)], toks[len(claims):]
    out = np.zeros((len(claims), len(cands)), dtype=np.float32)
    for j, c in enumerate(cands):
        tv = d_toks[src_index[c.source.chunk_id]]
        if tv is None or len(tv.vectors) == 0:
            continue
        offs = tv.offsets
        inside = (offs[:, 0] >= c.start) & (offs[:, 1] <= c.end)
        d = tv.vectors[inside]
        for i, q in enumerate(q_toks):
            if q is not None:
                out[i, j] = _maxsim(q.vectors, d)
    return out


def _citation(n: int, c: Candidate, score: float, page_of, pages: dict) -> Citation:
    s = c.source
    if s.kind == "table":
        return Citation(n=n, kind="table", document=s.document, path=s.path, doc_id=s.doc_id, text=c.text,
                        table=s.table, rows=(c.row_id,) if c.row_id is not None else (), chunk_id=s.chunk_id,
                        score=score)
    spans = locate(_as_chunk(s), c.start, c.end) if s.spans else ()
    page = spans[0].page if spans else s.page
    rects: list[Rect] = []
    start = end = None
    if spans:
        first = [sp for sp in spans if sp.page == page]
        start, end = min(sp.start for sp in first), max(sp.end for sp in first)
        if page_of is not None:
            key = (s.doc_id, page)
            if key not in pages:
                pages[key] = page_of(s.doc_id, page)
            p = pages[key]
            if p is not None:
                rects = span_rects(p, start, end)
    return Citation(n=n, kind="text", document=s.document, path=s.path, doc_id=s.doc_id, text=c.text, page=page,
                    start=start, end=end, rects=tuple(rects), chunk_id=s.chunk_id, score=score)
