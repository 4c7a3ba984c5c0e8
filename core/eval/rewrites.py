"""``sift eval rewrites``: what query rewriting does to retrieval, measured on a BEIR split.

Each configuration searches every judged query through ``core.answer.ask.retrieve`` — the
same path ``KnowledgeBase.ask`` takes — with one rewrite kind switched on (or none, the
baseline), and is scored like ``sift eval retrieval`` (nDCG@10, Recall@100, MRR@10, Hit@k
with pytrec_eval), with the per-query latency including the model's rewriting. Rewrites
come from the knowledge base's chat model and are cached, so a second run costs only the
searches.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

from core.answer.rewrite import KINDS, RewriteCache
from core.answer.types import AskOptions
from core.eval.beir import BeirDataset
from core.eval.metrics import evaluate, percentile
from core.eval.retrieval import doc_ranking
from core.jobs import CancelToken, ProgressFn, check, report

__all__ = ["CONFIGS", "RewriteRun", "evaluate_rewrites"]

CONFIGS = ("none", "multi_query", "step_back", "hyde")
"""Decomposition is left out: it changes what is answered, not one ranking."""


@dataclass(frozen=True)
class RewriteRun:
    """Scores of one configuration."""

    name: str
    metrics: dict
    p50_ms: float
    p95_ms: float
    rewritten: int
    """Queries for which the model gave at least one usable rewrite."""

    def to_json(self) -> dict:
        return {**{k: round(v, 4) for k, v in self.metrics.items()}, "p50_ms": round(self.p50_ms, 1),
                "p95_ms": round(self.p95_ms, 1), "rewritten": self.rewritten}


def evaluate_rewrites(kb, ds: BeirDataset, *, configs: Sequence[str] = CONFIGS, limit: int | None = None,
                      depth: int = 100, progress: ProgressFn | None = None,
                      cancel: CancelToken | None = None) -> dict[str, RewriteRun]:
    """Score each configuration in ``configs`` over the first ``limit`` judged queries of ``ds``."""
    from core.answer.ask import retrieve

    for c in configs:
        if c != "none" and c not in KINDS:
            raise ValueError(f"unknown rewrite configuration {c!r}; expected none or one of {KINDS}")
    qids = list(ds.queries)[: limit if limit else None]
    qrels = {q: ds.qrels[q] for q in qids}
    cache = RewriteCache(kb.folder / "rewrites.json")
    kb.embedder.encode(["warm-up"])
    out: dict[str, RewriteRun] = {}
    total, t0 = len(configs) * len(qids), time.monotonic()
    for i, name in enumerate(configs):
        opts = AskOptions(k=depth, **({name: True} if name != "none" else {}))
        run, times, rewritten = {}, [], 0
        for j, q in enumerate(qids):
            check(cancel)
            t = time.perf_counter()
            hits, rw = retrieve(kb, ds.queries[q], opts, None, cache=cache)
            times.append((time.perf_counter() - t) * 1000.0)
            rewritten += any(rw.values())
            run[q] = doc_ranking(hits, ds.name, depth)
            report(progress, "eval", i * len(qids) + j + 1, total, unit="queries", started=t0,
                   message=f"{name}: {j + 1}/{len(qids)}")
        out[name] = RewriteRun(name, evaluate(qrels, run), percentile(times, 50), percentile(times, 95), rewritten)
    return out
