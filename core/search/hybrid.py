"""Hybrid search: BM25 (FTS5) and dense (HNSW) candidates, fused, within metadata filters.

``search(store, embedder, query)`` takes the top ``candidates`` chunks from each stage,
fuses them (``core.search.fusion``) and returns the best ``k`` as ``Hit`` values that carry
everything a caller shows or cites: the chunk text and provenance, the document's path and
name, the first page, and the rank and score each stage gave it (``--explain``).

Filters are translated into a ``ChunkFilter`` that both stages apply *inside* their search
(SQL on the FTS join; an exact scan or a filtered HNSW query on the dense side), so the
``k`` hits are the best ``k`` that pass, never a top-``k`` with the misses thrown away.

The default fusion and its weights were chosen on the SciFact train split (the dev set);
see ``DEFAULT_FUSION`` and the figures in ``core.eval.retrieval``.

After fusion two optional stages re-score the head of the list, each with its own switch,
its own ``StageScore`` on the hits and its own entry in ``timings``:

``late``    MaxSim over token vectors (``core.search.late_interaction.LateInteraction``) of the
            fused top ``late_top``, blended with the fused score (``late_weight``);
``rerank``  a cross-encoder or the local LLM (``core.search.rerank``) on the top ``rerank_top``
            (stage ``rerank-ce`` / ``rerank-llm``), blended the same way (``rerank_weight``).

Both are off unless the caller passes them: no late-interaction model or reranker has been
shown to help on the dev set yet (see bench/RESULTS.md), so ``KnowledgeBase.search`` only
switches them on when the settings say so.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from core.jobs import CancelToken, check
from core.search.fusion import RRF_K, minmax, rrf
from core.store.fts import ChunkFilter, has_cjk
from core.types import ChunkId, ChunkSpan, DocId

__all__ = ["Hit", "StageScore", "SearchFilters", "STAGES", "FUSIONS", "DEFAULT_STAGES", "DEFAULT_FUSION",
           "DEFAULT_WEIGHTS", "DEFAULT_CANDIDATES", "MAX_K", "search", "resolve_filters", "resolve_documents",
           "stage_results", "fuse", "hydrate", "DEFAULT_RERANK_WEIGHT"]

STAGES = ("bm25", "dense")
FUSIONS = ("rrf", "minmax")
DEFAULT_STAGES = ("bm25", "dense")
DEFAULT_FUSION = "minmax"
DEFAULT_WEIGHTS: Mapping[str, float] = {"bm25": 0.5, "dense": 0.5}
"""Min-max weights per stage: equal, from the 0.5–0.6 BM25 plateau on the SciFact train split
(nDCG@10 0.734 against 0.721 for RRF; see core.eval.retrieval)."""
DEFAULT_CANDIDATES = 100
DEFAULT_RERANK_WEIGHT = 1.0
"""A reranker's share when blended with the fused score: 1.0 lets it order the head alone."""
MAX_K = 1000
FILE_TYPE_ALIASES = {"xlsx": ("xlsx", "xlsm"), "excel": ("xlsx", "xlsm"), "xls": ("xlsx", "xlsm"),
                     "csv": ("csv",), "tsv": ("tsv",), "pdf": ("pdf",)}


@dataclass(frozen=True)
class StageScore:
    """Where one stage put a hit."""

    stage: str
    rank: int
    """1-based rank in that stage's candidates."""
    score: float
    """The stage's own score: ``-bm25()`` (or RRF of the two FTS indexes), cosine for dense,
    MaxSim for ``late``, the reranker's logit (yes-vs-no log-odds for ``rerank-llm``)."""


@dataclass(frozen=True)
class Hit:
    """One search result: a chunk with its provenance and how each stage ranked it."""

    chunk_id: ChunkId
    doc_id: DocId
    score: float
    """The fused score (the single stage's score when only one ran); orders the hits. After a
    late or rerank stage: 1 + the blended score for the re-scored head, the fused score rescaled
    into [0, 1) for the rest."""
    text: str
    heading: str
    kind: str
    """``text`` or ``table``."""
    spans: tuple[ChunkSpan, ...]
    table: str | None
    row_ids: tuple[int, ...]
    path: str
    """The document's path as stored."""
    name: str
    """The document's file name."""
    page: int | None
    """First page the chunk covers (1-based), None for chunks without pages (spreadsheet rows)."""
    stages: tuple[StageScore, ...] = ()
    """Each stage that returned this chunk, with its rank and score."""
    rank: int = 0
    """1-based position in the results."""

    def stage(self, name: str) -> StageScore | None:
        return next((s for s in self.stages if s.stage == name), None)


@dataclass(frozen=True)
class SearchFilters:
    """What a search may return. Every field narrows; None means no limit."""

    documents: tuple[str | int, ...] | None = None
    """Document ids, paths or file names."""
    file_types: tuple[str, ...] | None = None
    """File types (``pdf``, ``csv``, ``tsv``, ``xlsx``; a leading dot is ignored)."""
    page_from: int | None = None
    """Only chunks on this page or later (1-based)."""
    page_to: int | None = None
    """Only chunks on this page or earlier."""
    added_after: date | datetime | str | None = None
    """Only documents added on or after this day (a date) or instant (a datetime, UTC if naive)."""
    added_before: date | datetime | str | None = None
    """Only documents added on or before this day (a date) or instant (a datetime)."""
    kinds: tuple[str, ...] | None = None
    """Only chunks of these kinds (``text``, ``table``)."""

    @property
    def empty(self) -> bool:
        return all(getattr(self, f) is None for f in self.__dataclass_fields__)


def _as_bound(value: date | datetime | str, *, end: bool) -> datetime:
    """A filter bound as an aware datetime; a bare date covers its whole (UTC) day."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value) if "T" in value or ":" in value else date.fromisoformat(value)
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    t = datetime(value.year, value.month, value.day, tzinfo=timezone.utc)
    return t.replace(hour=23, minute=59, second=59, microsecond=999999) if end else t


def _file_types(types: Sequence[str]) -> set[str]:
    out: set[str] = set()
    for t in types:
        t = str(t).lower().lstrip(".")
        out.update(FILE_TYPE_ALIASES.get(t, (t,)))
    return out


def resolve_documents(docs: Sequence, refs: Sequence[str | int]) -> tuple[set[int], list[str]]:
    """The ids of ``docs`` (``DocumentRecord``s) that ``refs`` name, and the refs that named none.

    A ref matches a document by id, by its stored path, by the resolved path of a file, or by
    its file name (every document of that name).
    """
    ids: set[int] = set()
    unknown: list[str] = []
    by_id = {int(d.id): d for d in docs}
    for ref in refs:
        found = False
        s = str(ref)
        if isinstance(ref, int) or s.isdigit():
            if int(s) in by_id:
                ids.add(int(s))
                found = True
        if not found:
            try:
                resolved = str(Path(s).expanduser().resolve())
            except (OSError, RuntimeError):
                resolved = s
            hits = [int(d.id) for d in docs if d.path in (s, resolved) or d.name == s]
            ids.update(hits)
            found = bool(hits)
        if not found:
            unknown.append(s)
    return ids, unknown


def resolve_filters(store, filters: SearchFilters | None) -> ChunkFilter | None:
    """``filters`` as the store's ``ChunkFilter`` (None when nothing is filtered).

    Document-level conditions (names, types, dates) become a set of document ids; page range
    and kinds pass through. A document ref that names nothing matches nothing.
    """
    if filters is None or filters.empty:
        return None
    doc_ids: set[int] | None = None
    if filters.documents is not None or filters.file_types is not None or filters.added_after is not None \
            or filters.added_before is not None:
        docs = store.list_documents(state="ready")
        if filters.documents is not None:
            named, _ = resolve_documents(docs, filters.documents)
            docs = [d for d in docs if int(d.id) in named]
        if filters.file_types is not None:
            types = _file_types(filters.file_types)
            docs = [d for d in docs if (d.kind or Path(d.path).suffix.lstrip(".")).lower() in types]
        if filters.added_after is not None or filters.added_before is not None:
            lo = _as_bound(filters.added_after, end=False) if filters.added_after is not None else None
            hi = _as_bound(filters.added_before, end=True) if filters.added_before is not None else None

            def inside(d) -> bool:
                t = _as_bound(d.added_at, end=False)
                return (lo is None or t >= lo) and (hi is None or t <= hi)

            docs = [d for d in docs if inside(d)]
        doc_ids = {int(d.id) for d in docs}
    return ChunkFilter(
        doc_ids=tuple(sorted(doc_ids)) if doc_ids is not None else None,
        page_from=filters.page_from, page_to=filters.page_to,
        kinds=tuple(filters.kinds) if filters.kinds is not None else None,
    )


def stage_results(store, embedder, query: str, *, stages: Sequence[str] = DEFAULT_STAGES,
                  candidates: int = DEFAULT_CANDIDATES, where: ChunkFilter | None = None,
                  query_vector: np.ndarray | None = None, ml_embedder=None,
                  timings: dict | None = None) -> dict[str, list[tuple[ChunkId, float]]]:
    """Each stage's top ``candidates`` as ``{stage: [(chunk_id, score)]}``, best first.

    With ``ml_embedder`` the ``dense`` stage searches the store's multilingual graph with that
    model's query vector instead (``query_vector`` is then ignored). ``timings`` (when given)
    gets each stage's wall time in ms; ``dense`` includes the query embedding.
    """
    import time

    out: dict[str, list[tuple[ChunkId, float]]] = {}
    for stage in stages:
        t = time.perf_counter()
        if stage == "bm25":
            out[stage] = store.search_bm25(query, candidates, where=where)
        elif stage == "dense" and ml_embedder is not None:
            out[stage] = store.search_dense_ml(ml_embedder.encode_queries([query])[0], candidates, where=where)
        elif stage == "dense":
            vec = query_vector if query_vector is not None else embedder.encode([query]).pooled[0]
            out[stage] = store.search_dense(vec, candidates, where=where)
        else:
            raise ValueError(f"unknown search stage {stage!r}; expected one of {STAGES}")
        if timings is not None:
            timings[stage] = (time.perf_counter() - t) * 1000.0
    return out


def fuse(results: Mapping[str, Sequence[tuple[int, float]]], *, fusion: str = DEFAULT_FUSION,
         weights: Mapping[str, float] | None = None, limit: int | None = None) -> list[tuple[int, float]]:
    """Fuse stage results; a single stage is returned as it is (its own scores)."""
    names = list(results)
    if len(names) == 1:
        lst = list(results[names[0]])
        return lst if limit is None else lst[:limit]
    if fusion == "rrf":
        ws = [float((weights or {}).get(n, 1.0)) for n in names]
        return rrf([results[n] for n in names], k=RRF_K, weights=ws, limit=limit)
    if fusion == "minmax":
        w = DEFAULT_WEIGHTS if weights is None else weights
        ws = [float(w.get(n, 1.0)) for n in names]
        return minmax([results[n] for n in names], weights=ws, limit=limit)
    raise ValueError(f"unknown fusion {fusion!r}; expected one of {FUSIONS}")


def search(store, embedder, query: str, *, k: int = 10, filters: SearchFilters | None = None,
           stages: Sequence[str] = DEFAULT_STAGES, fusion: str = DEFAULT_FUSION,
           weights: Mapping[str, float] | None = None, candidates: int = DEFAULT_CANDIDATES,
           query_vector: np.ndarray | None = None, late=None, late_top: int | None = None,
           late_weight: float | None = None, reranker=None, rerank_top: int | None = None,
           rerank_weight: float | None = None, timings: dict | None = None,
           ml_embedder=None, cancel: CancelToken | None = None) -> list[Hit]:
    """The best ``k`` chunks for ``query`` within ``filters``, best first.

    ``store`` is a ``core.store.store.Store``; ``embedder`` has ``encode`` (only used when the
    dense stage runs and no ``query_vector`` is given). ``k`` is clamped to [0, ``MAX_K``] and
    each stage fetches ``max(candidates, k)``. An empty or blank query, an empty knowledge
    base, or a filter that nothing passes gives ``[]``. A query with CJK characters is searched
    densely with ``ml_embedder`` (``core.models.multilingual``) over the store's multilingual
    graph when both exist; otherwise it skips the dense stage (when another stage runs) unless
    ``embedder.multilingual`` is true.

    ``late`` (a ``LateInteraction``) re-scores the fused top ``late_top`` by MaxSim; ``reranker``
    (see ``core.search.rerank``) then re-scores the top ``rerank_top``. ``timings``, when given,
    is filled with wall times in ms: each first stage, ``fusion``, ``late``, the reranker's
    stage name, ``hydrate`` and ``total``.
    """
    import time

    t_start = time.perf_counter()
    k = max(0, min(int(k), MAX_K))
    stages = tuple(dict.fromkeys(stages))  # drop repeats, keep order
    if k == 0 or not query or not query.strip() or not stages:
        return []
    for s in stages:
        if s not in STAGES:
            raise ValueError(f"unknown search stage {s!r}; expected one of {STAGES}")
    if fusion not in FUSIONS:
        raise ValueError(f"unknown fusion {fusion!r}; expected one of {FUSIONS}")
    cjk = has_cjk(query)
    if not (cjk and ml_embedder is not None and store.has_multilingual):
        ml_embedder = None
    if (len(stages) > 1 and "dense" in stages and cjk and ml_embedder is None
            and not getattr(embedder, "multilingual", False)):
        # An English-only embedder ranks Chinese text almost at random (CMRC 2018: MiniLM
        # nDCG@10 0.27 against 0.95 for the bigram BM25), and fusing it in drags BM25 down.
        stages = tuple(s for s in stages if s != "dense")
    where = resolve_filters(store, filters)
    if where is not None and where.doc_ids is not None and not where.doc_ids:
        return []
    from core.search.late_interaction import DEFAULT_LATE_TOP, DEFAULT_LATE_WEIGHT
    from core.search.rerank import DEFAULT_RERANK_TOP, blend

    late_top = int(late_top if late_top is not None else DEFAULT_LATE_TOP)
    rerank_top = int(rerank_top if rerank_top is not None else DEFAULT_RERANK_TOP)
    head = max(k, late_top if late is not None else 0, rerank_top if reranker is not None else 0)
    results = stage_results(store, embedder, query, stages=stages, candidates=max(int(candidates), head),
                            where=where, query_vector=query_vector, ml_embedder=ml_embedder, timings=timings)
    t = time.perf_counter()
    fused = fuse(results, fusion=fusion, weights=weights, limit=head)
    if timings is not None:
        timings["fusion"] = (time.perf_counter() - t) * 1000.0
    extra: dict[str, list[tuple[int, float]]] = {}
    if (late is not None or reranker is not None) and fused:
        texts = {int(c.id): c.text for c in store.get_chunks([int(cid) for cid, _ in fused])}
        for stage, top, weight in ((late, late_top, late_weight if late_weight is not None else DEFAULT_LATE_WEIGHT),
                                   (reranker, rerank_top,
                                    rerank_weight if rerank_weight is not None else DEFAULT_RERANK_WEIGHT)):
            if stage is None:
                continue
            check(cancel)
            t = time.perf_counter()
            ids = [int(cid) for cid, _ in fused[:top] if int(cid) in texts]
            if stage is late:
                scores = late.score(query, ids, texts, cancel=cancel)
            else:
                raw = reranker.score(query, [texts[c] for c in ids], cancel=cancel) if ids else []
                scores = {c: float(v) for c, v in zip(ids, raw)}
            fused = blend(fused, scores, weight=float(weight), top_n=top).ranked
            extra[stage.name] = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))
            if timings is not None:
                timings[stage.name] = (time.perf_counter() - t) * 1000.0
    t = time.perf_counter()
    hits = hydrate(store, fused[:k], {**results, **extra})
    if timings is not None:
        timings["hydrate"] = (time.perf_counter() - t) * 1000.0
        timings["total"] = (time.perf_counter() - t_start) * 1000.0
    return hits


def hydrate(store, fused: Sequence[tuple[int, float]], results: Mapping[str, Sequence[tuple[int, float]]]) -> list[Hit]:
    """``Hit`` values for fused ``(chunk_id, score)`` pairs, with each stage's rank and score."""
    per_stage: dict[int, list[StageScore]] = {}
    for name, lst in results.items():
        for rank, (cid, score) in enumerate(lst, 1):
            per_stage.setdefault(int(cid), [])
            if not any(s.stage == name for s in per_stage[int(cid)]):
                per_stage[int(cid)].append(StageScore(name, rank, float(score)))
    chunks = {int(c.id): c for c in store.get_chunks([int(cid) for cid, _ in fused])}
    docs: dict[int, object] = {}
    hits: list[Hit] = []
    for cid, score in fused:
        c = chunks.get(int(cid))
        if c is None:  # removed between the stage query and now
            continue
        d = docs.get(int(c.doc_id))
        if d is None:
            d = docs[int(c.doc_id)] = store.get_document(c.doc_id)
        if d is None:
            continue
        pages = [s.page for s in c.spans]
        hits.append(Hit(chunk_id=c.id, doc_id=c.doc_id, score=float(score), text=c.text, heading=c.heading,
                        kind=c.kind, spans=c.spans, table=c.table, row_ids=c.row_ids, path=d.path, name=d.name,
                        page=min(pages) if pages else None, stages=tuple(per_stage.get(int(cid), ())),
                        rank=len(hits) + 1))
    return hits
