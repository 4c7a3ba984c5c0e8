"""``sift eval own``: does a search setting help on *my* files?

There are no judged queries for a user's own documents, so the local chat model writes them,
the way AIR-Bench builds its test data with LLMs: chunks are sampled, the model writes one
question per chunk that the chunk answers, and each search configuration is scored on how
well it finds that source chunk again (Hit@1/5/10 and MRR@10 as trec_eval defines them,
through ``core.eval.metrics``), with the p50 latency of ``KnowledgeBase.search``.

Sampling (``sample_chunks``) takes text chunks with enough prose (``MIN_WORDS`` words, mostly
letters, so a table of numbers or a table of contents is not asked about) and spreads them over
the documents: each document's chunks are shuffled with the seed and the documents are visited
in turn, so a 300-page report and a 2-page memo both contribute until one runs out.

Questions (``generate_questions``): the model sees one worked example (a passage it cannot
confuse with the user's, and a question that names its subject and paraphrases) and then the
chunk, cut to ``PASSAGE_WORDS`` words so the prompt stays short on a CPU. A reply is rejected
as degenerate (``question_problem``) when it is not one question of 4–40 words, talks about
"the passage" instead of its subject, copies a run of ``COPY_WORDS`` words from the chunk,
shares no content word with the chunk (it is about the example, or about nothing), or repeats
a question already asked; a rejected chunk gets one sampled retry and is then left out.
Every reply is cached in ``<kb>/eval/own_questions.json`` under the chunk id, a hash of its
text, the model file and ``PROMPT_VERSION``, so a re-run (another setting to compare) costs
no generation at all.

A configuration is a name and the keyword options ``KnowledgeBase.search`` takes
(``{"stages": ("bm25",)}``, ``{"fusion": "rrf"}``, ``{}`` for Sift's default …), so a new
search stage is measured by naming its options; the built-in ones come from
``core.eval.retrieval.RUNS``.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import re
import time
import unicodedata
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

from core.errors import KnownError
from core.jobs import CancelToken, ProgressFn, check, report
from core.types import ChunkId, DocId

__all__ = ["SearchConfig", "SampledChunk", "GeneratedQuestion", "ConfigResult", "OwnReport", "OwnEvalError",
           "PROMPT_VERSION", "MIN_WORDS", "K", "default_configs", "parse_configs", "sample_chunks",
           "question_problem", "clean_reply", "generate_questions", "evaluate_own", "QuestionCache"]

PROMPT_VERSION = "own-q2"
"""Changes whenever the prompt or the checks change, so cached questions are not reused."""
MIN_WORDS = 40
"""A chunk needs at least this many words to be asked about."""
MIN_LETTER_SHARE = 0.6
"""…and at least this share of its non-space characters must be letters."""
PASSAGE_WORDS = 120
"""Words of the chunk shown to the model."""
COPY_WORDS = 7
"""A question that repeats this many consecutive words of its chunk copies it."""
K = 10
"""Hits fetched per question; Hit@10 and MRR@10 need 10."""
METRICS = ("hit@1", "hit@5", "hit@10", "mrr@10")
CACHE_NAME = "own_questions.json"

_SYSTEM = "You write questions for testing a search engine. Reply with one question and nothing else."
_EXAMPLE_PASSAGE = ("The Cologne Cathedral was completed in 1880, more than six centuries after its foundation "
                    "stone was laid in 1248. Its twin spires are 157 metres tall, and for four years it was the "
                    "tallest building in the world.")
_EXAMPLE_QUESTION = "In what year was the construction of Cologne Cathedral finally finished?"
_INSTRUCTION = ("Write one question that is answered by a fact in the passage below. Mention the specific people, "
                "organisations, places or things it is about, so that it makes sense on its own. Use your own "
                "words, not a sentence copied from the passage. Reply with the question only.")

_STOP = frozenset("""a an and are as at be been but by can could did do does for from had has have how if in into
is it its may might must no not of on or our shall should so such than that the their them then there these they
this those to was we were what when where which while who whom whose why will with would you your about after
before between during over under also any all each other more most some per via""".split())
_META = re.compile(r"\b(passage|the text|this text|the document|this document|the excerpt|the article|"
                   r"this section|the section above|the author)\b", re.I)


class OwnEvalError(KnownError):
    """The knowledge base cannot be evaluated this way (too little text, no chat model…)."""


@dataclass(frozen=True)
class SearchConfig:
    """One search setting to measure."""

    name: str
    options: Mapping[str, object] = field(default_factory=dict)
    """Keyword options for ``KnowledgeBase.search`` (stages, fusion, weights, rerank …); empty = Sift's default."""


@dataclass(frozen=True)
class SampledChunk:
    """A chunk picked to be asked about."""

    chunk_id: ChunkId
    doc_id: DocId
    document: str
    """The document's file name."""
    page: int | None
    text: str


@dataclass(frozen=True)
class GeneratedQuestion:
    """The model's question for one chunk, or why there is none."""

    chunk_id: ChunkId
    document: str
    question: str
    """Empty when rejected."""
    rejected: str = ""
    """Why the last reply was rejected (empty when accepted)."""
    cached: bool = False


@dataclass(frozen=True)
class ConfigResult:
    """The figures of one configuration."""

    name: str
    options: Mapping[str, object]
    metrics: dict[str, float]
    """``hit@1``, ``hit@5``, ``hit@10``, ``mrr@10`` (means over the questions)."""
    p50_ms: float
    p95_ms: float
    ranks: dict[str, int | None] = field(repr=False, default_factory=dict)
    """Question id → 1-based rank of the source chunk in the top ``K`` (None: not found)."""

    def to_json(self) -> dict:
        return {**{m: round(self.metrics[m], 4) for m in METRICS}, "p50_ms": round(self.p50_ms, 2),
                "p95_ms": round(self.p95_ms, 2)}


@dataclass(frozen=True)
class OwnReport:
    """What ``evaluate_own`` measured."""

    kb_folder: str
    model: str
    seed: int
    n_sampled: int
    questions: tuple[GeneratedQuestion, ...]
    """Every sampled chunk's outcome, accepted or not."""
    results: dict[str, ConfigResult]
    generated: int
    """Questions the model wrote in this run (the rest came from the cache)."""
    seconds: float

    @property
    def accepted(self) -> list[GeneratedQuestion]:
        return [q for q in self.questions if q.question]

    @property
    def best(self) -> str | None:
        """The configuration with the highest MRR@10 (ties: Hit@1, then the first listed)."""
        if not self.results:
            return None
        return max(self.results.values(), key=lambda r: (r.metrics["mrr@10"], r.metrics["hit@1"])).name

    def to_json(self) -> dict:
        rejected: dict[str, int] = {}
        for q in self.questions:
            if not q.question:
                rejected[q.rejected] = rejected.get(q.rejected, 0) + 1
        return {"kb": self.kb_folder, "model": self.model, "seed": self.seed, "n_sampled": self.n_sampled,
                "n_questions": len(self.accepted), "rejected": rejected, "generated": self.generated,
                "configs": {n: r.to_json() for n, r in self.results.items()}, "best": self.best,
                "questions": [{"chunk_id": int(q.chunk_id), "document": q.document, "question": q.question}
                              for q in self.accepted]}


# ---------------------------------------------------------------------- configurations

def _run_options(run) -> dict:
    """A ``core.eval.retrieval.RunConfig`` as ``KnowledgeBase.search`` options. A stage switch left
    at None (``late``, ``rerank``) is passed as False: off, not "as the settings say"."""
    d = asdict(run) if is_dataclass(run) else dict(run)
    d.pop("name", None)
    out = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if v is not None}
    for switch in ("late", "rerank"):
        if switch in d and not d[switch]:
            out[switch] = False
    return out


def default_configs(names: Sequence[str] | None = None) -> list[SearchConfig]:
    """Runs of ``sift eval retrieval`` as search configurations: ``names`` (None: its first-stage
    runs bm25, dense, hybrid, hybrid-minmax; late interaction and rerankers are asked for by name)."""
    from core.eval import retrieval

    base = getattr(retrieval, "BASE_RUNS", tuple(retrieval.RUNS))
    return [SearchConfig(n, _run_options(retrieval.RUNS[n])) for n in (names or base)]


def parse_configs(specs: Sequence[str] | None) -> list[SearchConfig]:
    """Configurations from CLI text: known names (comma-separated) or ``NAME=JSON`` option dicts,
    e.g. ``bm25,hybrid`` or ``'mine={"stages": ["bm25", "dense"], "fusion": "rrf"}'``. None: the defaults."""
    from core.eval.retrieval import RUNS

    if not specs:
        return default_configs()
    known = {c.name: c for c in default_configs(list(RUNS))}
    out: dict[str, SearchConfig] = {}
    for spec in specs:
        spec = spec.strip()
        if "=" in spec and spec.split("=", 1)[1].lstrip().startswith("{"):
            name, raw = (s.strip() for s in spec.split("=", 1))
            try:
                opts = json.loads(raw)
            except json.JSONDecodeError as e:
                raise ValueError(f"configuration {name!r}: options are not JSON ({e.msg})") from None
            if not name or not isinstance(opts, dict):
                raise ValueError(f"configuration {spec!r}: expected NAME={{...options...}}")
            out[name] = SearchConfig(name, {k: (tuple(v) if isinstance(v, list) else v) for k, v in opts.items()})
            continue
        for name in (p.strip() for p in spec.split(",")):
            if not name:
                continue
            if name not in known:
                raise ValueError(f"unknown configuration {name!r}; expected one of {', '.join(known)} "
                                 "or NAME={...search options as JSON...}")
            out[name] = known[name]
    return list(out.values())


# ---------------------------------------------------------------------- sampling

def _words(text: str) -> list[str]:
    return re.findall(r"\w+", unicodedata.normalize("NFKC", text).lower())


def _prose_enough(text: str) -> bool:
    if len(text.split()) < MIN_WORDS:
        return False
    chars = [ch for ch in text if not ch.isspace()]
    return bool(chars) and sum(ch.isalpha() for ch in chars) / len(chars) >= MIN_LETTER_SHARE


def sample_chunks(store, n: int, *, seed: int = 0) -> list[SampledChunk]:
    """Up to ``n`` text chunks with enough prose, spread evenly over the ready documents."""
    rng = random.Random(seed)
    pools: list[list[SampledChunk]] = []
    for d in sorted(store.list_documents(state="ready"), key=lambda d: int(d.id)):
        pool = []
        for c in store.document_chunks(d.id):
            if c.kind == "text" and _prose_enough(c.text):
                pages = [s.page for s in c.spans]
                pool.append(SampledChunk(c.id, d.id, d.name, min(pages) if pages else None, c.text))
        if pool:
            rng.shuffle(pool)
            pools.append(pool)
    rng.shuffle(pools)
    out: list[SampledChunk] = []
    depth = 0
    while len(out) < n and any(depth < len(p) for p in pools):
        for p in pools:
            if depth < len(p) and len(out) < n:
                out.append(p[depth])
        depth += 1
    return out


# ---------------------------------------------------------------------- questions

def clean_reply(reply: str) -> str:
    """The question in a model reply: first non-empty line, without labels, quotes or numbering."""
    for line in reply.strip().splitlines():
        line = line.strip()
        if not line:
            continue
        line = re.sub(r"^(\d+[.)]\s*|[-*•]\s*|(question|q)\s*\d*\s*[:.]\s*)", "", line, flags=re.I).strip()
        line = line.strip("\"'“”‘’`* ").strip()
        if "?" in line:
            line = line[: line.index("?") + 1]
        return line
    return ""


def _content(words: Sequence[str]) -> set[str]:
    return {w for w in words if w not in _STOP and len(w) > 2 and not w.isdigit()}


def question_problem(question: str, passage: str, *, seen: Sequence[str] = ()) -> str:
    """Why ``question`` is not a usable test question for ``passage`` ('' when it is)."""
    q = question.strip()
    if not q:
        return "empty"
    if not q.endswith("?"):
        return "not a question"
    qw = _words(q)
    if len(qw) < 4:
        return "too short"
    if len(qw) > 40:
        return "too long"
    if _META.search(q):
        return "refers to the passage"
    pw = _words(passage)
    grams = {tuple(pw[i:i + COPY_WORDS]) for i in range(len(pw) - COPY_WORDS + 1)}
    if any(tuple(qw[i:i + COPY_WORDS]) in grams for i in range(len(qw) - COPY_WORDS + 1)):
        return "copies the passage"
    if not _content(qw) & _content(pw):
        return "not about the passage"
    if " ".join(qw) in {" ".join(_words(s)) for s in seen}:
        return "duplicate"
    return ""


def _messages(passage: str):
    from core.models.llm import ChatMessage

    text = " ".join(passage.split()[:PASSAGE_WORDS])

    def user(p: str) -> str:  # the passage last: llama.cpp reuses the evaluated prefix of the previous call
        return f"{_INSTRUCTION}\n\nPassage:\n<<<\n{p}\n>>>"

    return [ChatMessage("system", _SYSTEM), ChatMessage("user", user(_EXAMPLE_PASSAGE)),
            ChatMessage("assistant", _EXAMPLE_QUESTION), ChatMessage("user", user(text))]


def model_id(llm) -> str:
    """What identifies the chat model in the cache: its file name (else its name)."""
    path = getattr(llm, "path", None)
    return Path(path).name if path else str(getattr(llm, "name", "model"))


class QuestionCache:
    """Model replies by chunk, text, model and prompt version, in one JSON file."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.data: dict[str, dict] = {}
        self.dirty = False
        if path is not None and path.is_file():
            try:
                self.data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                self.data = {}  # a damaged cache only costs regeneration

    @staticmethod
    def key(chunk: SampledChunk, model: str) -> str:
        digest = hashlib.sha256(chunk.text.encode("utf-8")).hexdigest()[:16]
        return f"{int(chunk.chunk_id)}:{digest}:{model}:{PROMPT_VERSION}"

    def get(self, key: str) -> dict | None:
        return self.data.get(key)

    def put(self, key: str, value: dict) -> None:
        self.data[key] = value
        self.dirty = True

    def save(self) -> None:
        if self.path is None or not self.dirty:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.data, ensure_ascii=False, indent=0), encoding="utf-8")
        os.replace(tmp, self.path)
        self.dirty = False


def generate_questions(llm, chunks: Sequence[SampledChunk], *, cache: QuestionCache | None = None,
                       retries: int = 1, progress: ProgressFn | None = None,
                       cancel: CancelToken | None = None) -> tuple[list[GeneratedQuestion], int]:
    """One question per chunk (rejected ones have ``question == ''``) and how many the model wrote now.

    ``llm`` has ``chat(messages, max_tokens=, temperature=)`` (``core.models.llm.LocalLLM``). The
    first try is greedy; a rejected reply is retried ``retries`` times with sampling. The cache
    is saved every few questions and when cancelled, so an interrupted run resumes.
    """
    model = model_id(llm)
    out: list[GeneratedQuestion] = []
    seen: list[str] = []
    generated = saved_at = 0
    t0 = time.monotonic()
    try:
        for i, ch in enumerate(chunks):
            check(cancel)
            key = QuestionCache.key(ch, model)
            hit = cache.get(key) if cache is not None else None
            replies: list[str] = list(hit["replies"]) if hit else []
            cached = bool(hit)
            question, problem = "", "empty"
            for attempt in range(retries + 1):
                if attempt >= len(replies):
                    check(cancel)
                    reply = llm.chat(_messages(ch.text), max_tokens=40, temperature=0.0 if attempt == 0 else 0.8,
                                     cancel=cancel)
                    check(cancel)  # a reply cut short by a cancel is not cached
                    replies.append(reply)
                    generated += 1
                    cached = False
                    if cache is not None:
                        cache.put(key, {"replies": replies})
                q = clean_reply(replies[attempt])
                problem = question_problem(q, ch.text, seen=seen)
                if not problem:
                    question = q
                    break
            if question:
                seen.append(question)
            out.append(GeneratedQuestion(ch.chunk_id, ch.document, question, "" if question else problem, cached))
            if cache is not None and generated - saved_at >= 5:
                cache.save()
                saved_at = generated
            report(progress, "questions", i + 1, len(chunks), unit="chunks", started=t0,
                   message=f"{sum(bool(q.question) for q in out)} questions, {generated} written now")
    finally:
        if cache is not None:
            cache.save()
    return out, generated


# ---------------------------------------------------------------------- evaluation

def _score(questions: Sequence[GeneratedQuestion], search: Callable[[str], list], name: str,
           options: Mapping[str, object], *, progress, cancel, started: float, offset: int, total: int) -> ConfigResult:
    from core.eval.metrics import evaluate, percentile

    qrels: dict[str, dict[str, int]] = {}
    run: dict[str, list[str]] = {}
    ranks: dict[str, int | None] = {}
    times: list[float] = []
    for j, q in enumerate(questions):
        check(cancel)
        qid = str(j)
        t = time.perf_counter()
        hits = search(q.question)
        times.append((time.perf_counter() - t) * 1000.0)
        ids = [str(int(h.chunk_id)) for h in hits][:K]
        qrels[qid] = {str(int(q.chunk_id)): 1}
        run[qid] = ids
        src = str(int(q.chunk_id))
        ranks[qid] = ids.index(src) + 1 if src in ids else None
        report(progress, "eval", offset + j + 1, total, unit="queries", started=started,
               message=f"{name}: {j + 1}/{len(questions)}")
    m = evaluate(qrels, run)
    return ConfigResult(name, dict(options), {k: m[k] for k in METRICS}, percentile(times, 50), percentile(times, 95),
                        ranks)


def evaluate_own(kb, *, n: int = 200, seed: int = 0, configs: Sequence[SearchConfig] | None = None, llm=None,
                 use_cache: bool = True, progress: ProgressFn | None = None,
                 cancel: CancelToken | None = None) -> OwnReport:
    """Sample ``n`` chunks of ``kb`` (a ``core.kb.KnowledgeBase``), have the chat model (``kb.llm``
    unless ``llm`` is given) write a question for each, and score every configuration."""
    t0 = time.monotonic()
    configs = list(configs) if configs else default_configs()
    names = [c.name for c in configs]
    if len(set(names)) != len(names):
        raise ValueError("configuration names must differ")
    chunks = sample_chunks(kb.store, n, seed=seed)
    if not chunks:
        raise OwnEvalError(f"{kb.folder}: no text chunks of {MIN_WORDS}+ words to ask about",
                           fix="add documents with running text (PDFs) first: sift add FILES")
    llm = llm if llm is not None else kb.llm
    cache = QuestionCache(Path(kb.folder) / "eval" / CACHE_NAME) if use_cache else None
    questions, generated = generate_questions(llm, chunks, cache=cache, progress=progress, cancel=cancel)
    usable = [q for q in questions if q.question]
    if not usable:
        raise OwnEvalError(f"{kb.folder}: the chat model wrote no usable question for {len(chunks)} chunks",
                           fix="try a larger chat model (settings: llm_tier quality)")
    kb.embedder.encode(["warm-up"])  # the first ONNX run allocates; keep it out of the latency
    results: dict[str, ConfigResult] = {}
    started = time.monotonic()
    total = len(configs) * len(usable)
    for i, cfg in enumerate(configs):
        opts = dict(cfg.options)

        def search(text: str, opts=opts) -> list:
            return kb.search(text, k=K, cancel=cancel, **opts)

        results[cfg.name] = _score(usable, search, cfg.name, opts, progress=progress, cancel=cancel,
                                   started=started, offset=i * len(usable), total=total)
    return OwnReport(str(kb.folder), model_id(llm), seed, len(chunks), tuple(questions), results, generated,
                     time.monotonic() - t0)
