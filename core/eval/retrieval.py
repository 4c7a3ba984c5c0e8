"""``sift eval retrieval``: every judged query of a BEIR split through each search configuration.

A run is one configuration of ``core.search.hybrid.search`` (its stages and fusion). Each
query is searched exactly as the app searches (query embedding included), the chunk hits
are turned into a document ranking (a document scores as its best chunk, so it ranks where
its first chunk does), cut to ``depth`` documents and scored with ``core.eval.metrics``.
Latency is the wall time of each ``search`` call, query embedding and hit hydration
included, LLM excluded.

Measured on SciFact train (809 claims, the dev set; 5,183 abstracts stored as 9,861 chunks
of at most 256 MiniLM tokens, a chunk after the first prefixed with the title; CPU, 2 shared
cores; latency with 300 hits hydrated per query):

=============  =======  ==========  ======  =====  =====  ======  ======  ======
run            nDCG@10  Recall@100  MRR@10  Hit@1  Hit@5  Hit@10  p50 ms  p95 ms
=============  =======  ==========  ======  =====  =====  ======  ======  ======
bm25           0.6973   0.9295      0.6693  0.5946 0.7602 0.8232  34.7    70.9
dense          0.6741   0.9293      0.6397  0.5538 0.7553 0.8084  70.3    96.7
hybrid (RRF)   0.7208   0.9528      0.6862  0.5958 0.8072 0.8628  123.4   165.5
hybrid-minmax  0.7343   0.9541      0.7032  0.6143 0.8171 0.8690  116.6   164.6
=============  =======  ==========  ======  =====  =====  ======  ======  ======

Min-max weights swept on the same split (BM25 weight 0.2 … 0.7): 0.5 to 0.6 form a plateau
(nDCG@10 0.733–0.738 at 100 or 300 candidates); equal weights were kept.

The default configuration (``DEFAULT_RUN``) is the best of these on that dev set.

Runs with a second stage (``hybrid+late``, ``hybrid+rerank-llm``, ``hybrid+rerank-ce`` and their
combination) take the default hybrid search and re-score its head; they are only measured when
asked for (``--stages``), since the LLM reranker costs seconds per query on a CPU. Their figures
are in bench/RESULTS.md ("Late interaction and reranking").
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from core.eval.beir import BeirDataset, IngestReport, corpus_id_of
from core.eval.metrics import METRICS, evaluate, percentile
from core.jobs import CancelToken, ProgressFn, check, report
from core.search.hybrid import DEFAULT_FUSION, DEFAULT_STAGES, DEFAULT_WEIGHTS, search

__all__ = ["RunConfig", "RUNS", "BASE_RUNS", "DEFAULT_RUN", "RunResult", "RetrievalReport", "EVAL_CANDIDATES", "DOC_DEPTH",
           "run_names", "evaluate_retrieval", "doc_ranking"]

DOC_DEPTH = 100
"""Documents per query that are scored (Recall@100 needs 100)."""
EVAL_CANDIDATES = 300
"""Chunks fetched per stage and kept after fusion: enough chunks for 100 distinct documents."""


@dataclass(frozen=True)
class RunConfig:
    """One search configuration to evaluate."""

    name: str
    stages: tuple[str, ...]
    fusion: str = "rrf"
    weights: Mapping[str, float] | None = None
    late: bool = False
    """Re-score the fused head by MaxSim (``KnowledgeBase.late_stage``)."""
    rerank: str | None = None
    """``llm`` or ``cross-encoder`` (``KnowledgeBase.reranker``), or None."""


RUNS: dict[str, RunConfig] = {
    "bm25": RunConfig("bm25", ("bm25",)),
    "dense": RunConfig("dense", ("dense",)),
    "hybrid": RunConfig("hybrid", ("bm25", "dense"), "rrf"),
    "hybrid-minmax": RunConfig("hybrid-minmax", ("bm25", "dense"), "minmax", dict(DEFAULT_WEIGHTS)),
    "hybrid+late": RunConfig("hybrid+late", ("bm25", "dense"), "minmax", dict(DEFAULT_WEIGHTS), late=True),
    "hybrid+rerank-llm": RunConfig("hybrid+rerank-llm", ("bm25", "dense"), "minmax", dict(DEFAULT_WEIGHTS),
                                   rerank="llm"),
    "hybrid+rerank-ce": RunConfig("hybrid+rerank-ce", ("bm25", "dense"), "minmax", dict(DEFAULT_WEIGHTS),
                                  rerank="cross-encoder"),
    "hybrid+late+rerank-llm": RunConfig("hybrid+late+rerank-llm", ("bm25", "dense"), "minmax",
                                        dict(DEFAULT_WEIGHTS), late=True, rerank="llm"),
}
BASE_RUNS = ("bm25", "dense", "hybrid", "hybrid-minmax")
"""What ``sift eval retrieval`` measures when no ``--stages`` are given: the first-stage runs."""
DEFAULT_RUN = next(n for n, r in RUNS.items() if r.stages == tuple(DEFAULT_STAGES) and r.fusion == DEFAULT_FUSION)
"""The run that is Sift's default search."""


def run_names(spec: Sequence[str] | str | None) -> list[str]:
    """Run names from ``["bm25,dense", "hybrid"]``-style input (None: ``BASE_RUNS``), checked."""
    if spec is None:
        return list(BASE_RUNS)
    parts = [spec] if isinstance(spec, str) else list(spec)
    names = [p.strip() for part in parts for p in part.split(",") if p.strip()]
    bad = [n for n in names if n not in RUNS]
    if bad:
        raise ValueError(f"unknown run {', '.join(bad)}; expected one of {', '.join(RUNS)}")
    return list(dict.fromkeys(names))


@dataclass(frozen=True)
class RunResult:
    """The figures of one run."""

    name: str
    metrics: dict[str, float]
    p50_ms: float
    p95_ms: float
    run: dict[str, list[str]] = field(repr=False)
    """Query id → corpus ids, best first (what was scored)."""
    stage_ms: dict[str, tuple[float, float]] = field(default_factory=dict, repr=False)
    """Per stage of the search (``core.search.hybrid.search`` timings): (p50, p95) in ms."""

    def to_json(self) -> dict:
        return {**{m: round(self.metrics[m], 4) for m in METRICS}, "p50_ms": round(self.p50_ms, 2),
                "p95_ms": round(self.p95_ms, 2)}


@dataclass(frozen=True)
class RetrievalReport:
    """Everything ``sift eval retrieval`` prints."""

    dataset: str
    split: str
    n_queries: int
    runs: dict[str, RunResult]
    best: str
    """The run that is Sift's default configuration."""
    kb_folder: str = ""
    ingest: IngestReport | None = None

    def to_json(self) -> dict:
        return {"dataset": self.dataset, "split": self.split, "n_queries": self.n_queries,
                "runs": {n: r.to_json() for n, r in self.runs.items()}, "best": self.best}


def doc_ranking(hits, dataset: str, depth: int = DOC_DEPTH) -> list[str]:
    """Corpus ids ranked by their best chunk (hits are best first), at most ``depth``."""
    out: dict[str, None] = {}
    for h in hits:
        cid = corpus_id_of(h.path, dataset)
        if cid is not None and cid not in out:
            out[cid] = None
            if len(out) >= depth:
                break
    return list(out)


def evaluate_retrieval(kb, ds: BeirDataset, *, runs: Sequence[str] | None = None, limit: int | None = None,
                       candidates: int = EVAL_CANDIDATES, depth: int = DOC_DEPTH, late_top: int | None = None,
                       rerank_top: int | None = None, late_weight: float | None = None,
                       rerank_weight: float | None = None,
                       progress: ProgressFn | None = None, cancel: CancelToken | None = None) -> RetrievalReport:
    """Search every judged query (the first ``limit`` when given) with each run and score it.

    ``kb`` is a ``core.kb.KnowledgeBase`` that already holds the corpus (``ingest_corpus``).
    """
    names = run_names(runs)
    qids = list(ds.queries)[: limit if limit else None]
    qrels = {q: ds.qrels[q] for q in qids}
    store, emb = kb.store, kb.embedder
    emb.encode(["warm-up"])  # the first ONNX run allocates; keep it out of the latency
    results: dict[str, RunResult] = {}
    total = len(names) * len(qids)
    t0 = time.monotonic()
    for i, name in enumerate(names):
        cfg = RUNS[name]
        run: dict[str, list[str]] = {}
        times: list[float] = []
        per_stage: dict[str, list[float]] = {}
        extra = {}
        if cfg.late:
            extra.update(late=kb.late_stage(), late_top=late_top, late_weight=late_weight)
        if cfg.rerank:
            extra.update(reranker=kb.reranker(cfg.rerank), rerank_top=rerank_top, rerank_weight=rerank_weight)
        for j, q in enumerate(qids):
            check(cancel)
            timings: dict[str, float] = {}
            t = time.perf_counter()
            hits = search(store, emb, ds.queries[q], k=candidates, stages=cfg.stages, fusion=cfg.fusion,
                          weights=cfg.weights, candidates=candidates, timings=timings, cancel=cancel,
                          ml_embedder=kb.ml_embedder_for(ds.queries[q]), **extra)
            times.append((time.perf_counter() - t) * 1000.0)
            for stage, ms in timings.items():
                per_stage.setdefault(stage, []).append(ms)
            run[q] = doc_ranking(hits, ds.name, depth)
            if j % 20 == 0 or j + 1 == len(qids):
                report(progress, "eval", i * len(qids) + j + 1, total, unit="queries", started=t0,
                       message=f"{name}: {j + 1}/{len(qids)}")
        results[name] = RunResult(name, evaluate(qrels, run), percentile(times, 50), percentile(times, 95), run,
                                  {s: (percentile(v, 50), percentile(v, 95)) for s, v in per_stage.items()})
    return RetrievalReport(ds.name, ds.split, len(qids), results, DEFAULT_RUN, kb_folder=str(Path(kb.folder)))
