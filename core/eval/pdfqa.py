"""``sift eval pdfqa``: questions about PDFs, scored on evidence and on the answer.

A questions file is JSON lines::

    {"question": ..., "answer": ..., "doc": "<file name>", "page": <1-based, optional>,
     "evidence": "<text, optional>"}

with two optional extensions that ``bench/pdfqa_convert.py`` writes: ``"answers"`` (every
acceptable answer, e.g. the three annotators of a QASPER question; ``answer`` is the first)
and ``"docs"`` (every gold document, for a question about several filings; ``doc`` is the
first). A question whose documents are not in ``--docs`` is skipped and counted.

Scoring (``score_evidence``, ``answer_correct``, ``answer_f1``):

evidence hit@k   one of the first ``k`` pieces of evidence Sift returned — the citations of
                 the answer in their order, or with ``--retrieval-only`` the top search hits —
                 is from a gold document and lies on the gold page or contains the gold
                 evidence text (both normalised by ``normalize_text``: NFKC, case, hyphenated
                 line breaks joined, punctuation as spaces). A cited sentence of 8+ words that
                 lies inside a longer gold evidence passage counts too. Only questions with a
                 page or evidence are scored (``n_evidence``).
document hit@k   the same with the document alone, for every question.
answer accuracy  SQuAD's answer normalisation (lower case, no punctuation or articles, single
                 spaces), then containment: some gold answer of at most ``SHORT_ANSWER_WORDS``
                 words appears as a run of whole words in the answer (a yes/no gold answer
                 must be the answer's first word). Scored over questions with a short gold
                 answer (``n_short``); a declined answer is wrong.
answer F1        SQuAD's token F1 against the best gold answer, over every question (the
                 long, free-form answers of the SEC set get partial credit here).

Latency is the wall time of ``KnowledgeBase.ask`` (or ``search``) per question.
"""
from __future__ import annotations

import collections
import json
import re
import string
import time
import unicodedata
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

from core.errors import KnownError
from core.jobs import CancelToken, ProgressFn, check, report

__all__ = ["PdfQaError", "PdfQuestion", "EvidenceItem", "QuestionResult", "PdfQaReport", "SHORT_ANSWER_WORDS",
           "load_questions", "normalize_text", "normalize_answer", "contains_text", "evidence_matches",
           "score_evidence", "doc_matches", "answer_correct", "answer_f1", "is_short", "items_from_hits",
           "items_from_answer", "evaluate_pdfqa"]

SHORT_ANSWER_WORDS = 8
"""A gold answer of at most this many normalised words is short enough for containment."""
MIN_REVERSE_WORDS = 8
"""A cited text this long that lies inside the gold evidence counts as a hit."""
K = 5
_PUNCT = frozenset(string.punctuation)


class PdfQaError(KnownError):
    """A questions file that cannot be read."""


@dataclass(frozen=True)
class PdfQuestion:
    """One question about one or more documents."""

    question: str
    answer: str
    doc: str
    """File name of the (first) gold document."""
    page: int | None = None
    """1-based gold page, when known."""
    evidence: str | None = None
    """Gold evidence text, when known."""
    answers: tuple[str, ...] = ()
    """Every acceptable answer (``answer`` first)."""
    docs: tuple[str, ...] = ()
    """Every gold document (``doc`` first)."""
    id: str = ""

    @property
    def gold_answers(self) -> tuple[str, ...]:
        return tuple(a for a in dict.fromkeys((self.answer, *self.answers)) if a and a.strip())

    @property
    def gold_docs(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((self.doc, *self.docs)))

    @property
    def has_evidence(self) -> bool:
        return self.page is not None or bool(self.evidence and self.evidence.strip())


@dataclass(frozen=True)
class EvidenceItem:
    """One piece of evidence Sift returned, best first."""

    document: str
    """The document's file name."""
    pages: tuple[int, ...]
    """The pages it lies on (empty for a spreadsheet table)."""
    text: str


@dataclass(frozen=True)
class QuestionResult:
    """How one question went."""

    question: PdfQuestion
    evidence_hit: dict[int, bool | None]
    """k → hit within the first k (None: the question has no page or evidence)."""
    doc_hit: dict[int, bool]
    answer: str | None = None
    """Sift's answer (None with ``--retrieval-only``)."""
    correct: bool | None = None
    """Answer accuracy (None: no short gold answer, or retrieval only)."""
    f1: float | None = None
    declined: bool = False
    ms: float = 0.0
    trace: dict | None = None
    """What the answer path saw and decided (``core.answer.ask.ask(trace=)``), answer runs only."""

    def to_json(self) -> dict:
        """One line of ``--out``: the question, the gold, Sift's answer, the scores and the trace,
        with ``gold_in_sources`` (a short gold answer occurs in a source the model was shown) and
        ``evidence_in_sources`` (a source the model was shown is gold evidence; None without any)."""
        q = self.question
        d = {"id": q.id, "question": q.question, "gold": list(q.gold_answers), "docs": list(q.gold_docs),
             "page": q.page, "answer": self.answer, "declined": self.declined, "correct": self.correct,
             "f1": None if self.f1 is None else round(self.f1, 4),
             "evidence_hit": {str(k): v for k, v in self.evidence_hit.items()},
             "doc_hit": {str(k): v for k, v in self.doc_hit.items()}, "ms": round(self.ms, 1)}
        if self.trace is not None:
            srcs = self.trace.get("sources") or []
            items = [EvidenceItem(s["document"], tuple(s["pages"]), s["text"]) for s in srcs]
            short = [g for g in q.gold_answers if is_short(g)]
            d["gold_in_sources"] = [s["n"] for s in srcs if any(contains_text(s["text"], g) for g in short)]
            d["evidence_in_sources"] = ([s["n"] for s, i in zip(srcs, items) if evidence_matches(i, q)]
                                        if q.has_evidence else None)
            d["trace"] = self.trace
        return d


@dataclass(frozen=True)
class PdfQaReport:
    """What ``evaluate_pdfqa`` measured."""

    dataset: str
    mode: str
    """``answer`` (kb.ask) or ``retrieval`` (kb.search)."""
    results: tuple[QuestionResult, ...]
    skipped: int
    """Questions whose documents are not in the folder."""
    added: int = 0
    """Documents stored by this run."""
    ks: tuple[int, ...] = (1, 5)
    p50_ms: float = 0.0
    failures: tuple[str, ...] = field(default=())
    """Files of the folder that could not be added, with the reason."""

    def _mean(self, values: Sequence[float | bool | None]) -> tuple[float | None, int]:
        vals = [float(v) for v in values if v is not None]
        return (sum(vals) / len(vals) if vals else None), len(vals)

    def to_json(self) -> dict:
        out: dict = {"dataset": self.dataset, "mode": self.mode, "n": len(self.results), "skipped": self.skipped}
        n_ev = 0
        for k in self.ks:
            v, n_ev = self._mean([r.evidence_hit[k] for r in self.results])
            out[f"evidence_hit@{k}"] = None if v is None else round(v, 4)
        out["n_evidence"] = n_ev
        for k in self.ks:
            v, _ = self._mean([r.doc_hit[k] for r in self.results])
            out[f"doc_hit@{k}"] = None if v is None else round(v, 4)
        if self.mode == "answer":
            acc, n_short = self._mean([r.correct for r in self.results])
            f1, _ = self._mean([r.f1 for r in self.results])
            dec, _ = self._mean([r.declined for r in self.results])
            out.update({"answer_accuracy": None if acc is None else round(acc, 4), "n_short": n_short,
                        "answer_f1": None if f1 is None else round(f1, 4),
                        "declined": None if dec is None else round(dec, 4)})
        out["p50_ms"] = round(self.p50_ms, 1)
        out["failed"] = list(self.failures)
        return out


# ---------------------------------------------------------------------- loading

def load_questions(path: str | Path) -> list[PdfQuestion]:
    """Read a questions JSONL file (see the module docstring); raises PdfQaError naming the line."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise PdfQaError(f"{path}: no such file")
    out: list[PdfQuestion] = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
            except json.JSONDecodeError as e:
                raise PdfQaError(f"{path}:{n}: not JSON ({e.msg})") from None
            if not isinstance(d, dict):
                raise PdfQaError(f"{path}:{n}: expected an object")
            missing = [k for k in ("question", "answer", "doc") if not isinstance(d.get(k), str) or not d[k].strip()]
            if missing:
                raise PdfQaError(f"{path}:{n}: missing {', '.join(missing)}",
                                 fix='each line needs "question", "answer" and "doc" (a file name)')
            page = d.get("page")
            if page is not None and (not isinstance(page, int) or isinstance(page, bool) or page < 1):
                raise PdfQaError(f"{path}:{n}: page must be a 1-based number, not {page!r}")
            answers = d.get("answers") or []
            docs = d.get("docs") or []
            if not isinstance(answers, list) or not isinstance(docs, list):
                raise PdfQaError(f"{path}:{n}: answers and docs must be lists")
            out.append(PdfQuestion(d["question"].strip(), d["answer"], d["doc"], page, d.get("evidence") or None,
                                   tuple(str(a) for a in answers), tuple(str(x) for x in docs),
                                   str(d.get("id") or n)))
    return out


# ---------------------------------------------------------------------- normalisation and scoring

def normalize_text(s: str) -> str:
    """For matching evidence: NFKC, lower case, hyphenated line breaks joined, every run of
    non-alphanumeric characters one space."""
    s = unicodedata.normalize("NFKC", s or "")
    s = re.sub(r"(\w)-\s*\n\s*(\w)", r"\1\2", s)
    s = s.lower()
    return " ".join(re.findall(r"[^\W_]+", s))


def contains_text(text: str, needle: str) -> bool:
    """Whether ``needle`` occurs in ``text`` as a run of whole words, both normalised."""
    t, n = normalize_text(text), normalize_text(needle)
    return bool(n) and f" {n} " in f" {t} "


def normalize_answer(s: str) -> str:
    """SQuAD's normalisation: lower case, punctuation and articles removed, single spaces."""
    s = unicodedata.normalize("NFKC", s or "").lower()
    s = "".join(ch for ch in s if ch not in _PUNCT and unicodedata.category(ch)[0] != "P")
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def _strip_markers(answer: str) -> str:
    return re.sub(r"\[\d+(?:\s*[,;]\s*\d+)*\]", " ", answer or "")


def is_short(answer: str) -> bool:
    words = normalize_answer(answer).split()
    return 0 < len(words) <= SHORT_ANSWER_WORDS


def answer_correct(prediction: str, golds: Sequence[str]) -> bool | None:
    """Normalised containment of a short gold answer (None: no short gold answer to check)."""
    short = [normalize_answer(g) for g in golds if is_short(g)]
    if not short:
        return None
    pred = normalize_answer(_strip_markers(prediction))
    words = pred.split()
    for g in short:
        if g in ("yes", "no"):
            if words and words[0] == g:
                return True
        elif f" {g} " in f" {pred} ":
            return True
    return False


def answer_f1(prediction: str, golds: Sequence[str]) -> float:
    """SQuAD's token F1 against the best-matching gold answer."""
    pred = normalize_answer(_strip_markers(prediction)).split()
    best = 0.0
    for g in golds:
        gold = normalize_answer(g).split()
        if not pred or not gold:
            best = max(best, float(pred == gold))
            continue
        common = sum((collections.Counter(pred) & collections.Counter(gold)).values())
        if common:
            p, r = common / len(pred), common / len(gold)
            best = max(best, 2 * p * r / (p + r))
    return best


def _name_key(name: str) -> str:
    return Path(name).name.casefold()


def doc_matches(item: EvidenceItem, q: PdfQuestion) -> bool:
    """Whether the item is from a gold document (by file name; a gold name without a suffix
    also matches the file's stem)."""
    from core.kb import SUPPORTED_SUFFIXES

    have = _name_key(item.document)
    stem = Path(have).stem
    for g in q.gold_docs:
        g = _name_key(g)
        if have == g or (Path(g).suffix not in SUPPORTED_SUFFIXES and stem == g):
            return True
    return False


def evidence_matches(item: EvidenceItem, q: PdfQuestion) -> bool:
    """Whether the item is gold evidence for ``q`` (see the module docstring)."""
    if not doc_matches(item, q):
        return False
    if q.page is not None and q.page in item.pages:
        return True
    if q.evidence:
        if contains_text(item.text, q.evidence):
            return True
        if len(normalize_text(item.text).split()) >= MIN_REVERSE_WORDS and contains_text(q.evidence, item.text):
            return True
    return False


def score_evidence(items: Sequence[EvidenceItem], q: PdfQuestion, ks: Sequence[int] = (1, 5)
                   ) -> tuple[dict[int, bool | None], dict[int, bool]]:
    """(evidence hit@k, document hit@k) for each k; evidence hit is None without gold evidence."""
    ev = {k: (any(evidence_matches(i, q) for i in items[:k]) if q.has_evidence else None) for k in ks}
    doc = {k: any(doc_matches(i, q) for i in items[:k]) for k in ks}
    return ev, doc


def items_from_hits(hits) -> list[EvidenceItem]:
    """Search hits (``core.search.hybrid.Hit``) as evidence, best first."""
    return [EvidenceItem(h.name, tuple(sorted({s.page for s in h.spans})) or ((h.page,) if h.page else ()), h.text)
            for h in hits]


def items_from_answer(answer) -> list[EvidenceItem]:
    """An ``Answer``'s citations as evidence, in the order they are numbered."""
    return [EvidenceItem(c.document, (c.page,) if c.page is not None else (), c.text)
            for c in sorted(answer.citations, key=lambda c: c.n)]


# ---------------------------------------------------------------------- the run

def _files(folder: Path) -> list[Path]:
    from core.kb import expand_paths

    files, _ = expand_paths([folder])
    return files


def evaluate_pdfqa(kb, questions: Sequence[PdfQuestion], docs: str | Path, *, limit: int | None = None,
                   retrieval_only: bool = False, dataset: str = "pdfqa", ks: Sequence[int] = (1, K),
                   options=None, progress: ProgressFn | None = None,
                   cancel: CancelToken | None = None, out: str | Path | None = None) -> PdfQaReport:
    """Store the documents of ``docs`` in ``kb`` (a ``core.kb.KnowledgeBase``; unchanged files are
    skipped), then ask every question whose document is there (the first ``limit``) and score it.
    Only files of the kinds the gold documents are (``.pdf``) are stored, and search and answers
    are restricted to the folder's documents.

    ``retrieval_only`` scores ``kb.search`` hits instead of ``kb.ask`` citations; ``options`` is an
    ``AskOptions`` for ``kb.ask``. ``out`` names a JSON-lines file that gets one line per question
    as it is scored (``QuestionResult.to_json``; answer runs include the answer path's trace).
    """
    from core.eval.metrics import percentile

    folder = Path(docs).expanduser()
    files = _files(folder)
    present = {f.name.casefold() for f in files} | {f.stem.casefold() for f in files}
    usable = [q for q in questions if any(_name_key(d) in present for d in q.gold_docs)]
    skipped = len(questions) - len(usable)
    usable = usable[: limit if limit else None]
    if not usable:
        raise PdfQaError(f"none of the {len(questions)} questions is about a document in {folder}",
                         fix='"doc" must be the file name of a PDF in --docs')
    # Only files of the kinds the questions are about: a benchmark folder often holds its own
    # questions and answers (UDA's CSVs beside the papers), which must not become evidence.
    gold = {_name_key(d) for q in questions for d in q.gold_docs}
    kinds = {f.suffix.lower() for f in files if f.name.casefold() in gold or f.stem.casefold() in gold}
    corpus = [f for f in files if f.suffix.lower() in kinds]
    rep = kb.add(corpus, progress=progress, cancel=cancel)
    check(cancel)
    if rep.cancelled:
        from core.errors import Cancelled

        raise Cancelled("cancelled")
    failures = tuple(f"{f.path}: {f.reason}" for f in rep.failed)
    # Search only these documents, whatever else the knowledge base holds.
    from core.search.hybrid import SearchFilters

    ids = tuple(sorted({int(f.doc_id) for f in rep.files if f.doc_id is not None and f.status != "failed"}))
    if not ids:
        raise PdfQaError(f"no document of {folder} could be stored: " + "; ".join(failures[:3])
                         + (f" (and {len(failures) - 3} more)" if len(failures) > 3 else ""),
                         fix="see the reasons; a slow machine may need a longer --parse-timeout")
    filters = SearchFilters(documents=ids)
    if not retrieval_only:
        from core.answer.types import AskOptions

        options = AskOptions(filters=filters) if options is None else (
            options if options.filters is not None else replace(options, filters=filters))
    ks = tuple(sorted(set(ks)))
    depth = max(ks)
    mode = "retrieval" if retrieval_only else "answer"
    kb.embedder.encode(["warm-up"])  # keep the first ONNX allocation out of the latency
    results: list[QuestionResult] = []
    times: list[float] = []
    cache = None
    if not retrieval_only:
        from core.answer.rewrite import RewriteCache

        cache = RewriteCache(Path(kb.folder) / "rewrites.json")  # the file kb.ask keeps its rewrites in
    sink = None
    if out is not None:
        out = Path(out).expanduser()
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            sink = open(out, "w", encoding="utf-8")
        except OSError as e:
            raise PdfQaError(f"{out}: cannot write the per-question results ({e.strerror or e})") from None
    t0 = time.monotonic()
    try:
        for i, q in enumerate(usable):
            check(cancel)
            results.append(_one(kb, q, filters, options, retrieval_only, ks, depth, cancel, cache))
            times.append(results[-1].ms)
            if sink is not None:
                sink.write(json.dumps(results[-1].to_json(), ensure_ascii=False) + "\n")
                sink.flush()
            report(progress, "pdfqa", i + 1, len(usable), unit="questions", started=t0,
                   message=f"{sum(bool(r.evidence_hit.get(depth)) for r in results)} evidence hits")
    finally:
        if sink is not None:
            sink.close()
    return PdfQaReport(dataset, mode, tuple(results), skipped, len(rep.by_status("added")), ks,
                       percentile(times, 50), failures)


def _one(kb, q: PdfQuestion, filters, options, retrieval_only: bool, ks, depth: int, cancel,
         cache) -> QuestionResult:
    """Ask (or search) one question and score it."""
    t = time.perf_counter()
    trace: dict | None = None
    if retrieval_only:
        items = items_from_hits(kb.search(q.question, k=depth, filters=filters, cancel=cancel))
        answer = None
    else:
        from core.answer.ask import ask

        # what kb.ask runs, with the answer path's trace
        trace = {}
        answer = ask(kb, q.question, options=options, cancel=cancel, rewrite_cache=cache, trace=trace)
        items = items_from_answer(answer)
    ms = (time.perf_counter() - t) * 1000.0
    ev, doc = score_evidence(items, q, ks)
    if answer is None:
        return QuestionResult(q, ev, doc, ms=ms)
    declined = bool(answer.declined)
    text = "" if declined else answer.text
    return QuestionResult(q, ev, doc, answer.text, answer_correct(text, q.gold_answers),
                          answer_f1(text, q.gold_answers), declined, ms, trace)
