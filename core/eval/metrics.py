"""Retrieval metrics as trec_eval computes them, through pytrec_eval (terrier's build).

Not our own formulas: ``pytrec_eval`` binds trec_eval's C code, the reference BEIR and the
TREC literature report against. The measures:

``ndcg@10``     trec_eval ``ndcg_cut.10`` (graded gains as judged, log2 discount)
``recall@100``  trec_eval ``recall.100``
``mrr@10``      trec_eval ``recip_rank`` over the run cut to its top 10 (as ir-measures'
                ``RR@10`` does; trec_eval's own ``recip_rank`` has no cutoff)
``hit@k``       trec_eval ``success.k``: 1 when a relevant document is in the top k

trec_eval orders a run by score and breaks ties by document id (descending), not by the
order it was given in. ``evaluate`` therefore replaces the scores with strictly decreasing
values from the ranks, so the figures are those of exactly the ranking Sift returned.
Queries in the qrels that the run has no results for count as 0 (trec_eval would skip them).
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
import pytrec_eval

__all__ = ["METRICS", "evaluate", "per_query", "percentile"]

METRICS = ("ndcg@10", "recall@100", "mrr@10", "hit@1", "hit@5", "hit@10")
_TREC = {"ndcg@10": "ndcg_cut_10", "recall@100": "recall_100", "hit@1": "success_1", "hit@5": "success_5",
         "hit@10": "success_10"}

Run = Mapping[str, Sequence[str]]
"""Query id → corpus ids, best first."""
Qrels = Mapping[str, Mapping[str, int]]
"""Query id → {corpus id: relevance}; relevance <= 0 is not relevant."""


def _scored(ranked: Sequence[str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for i, doc in enumerate(ranked):
        if doc not in out:  # a repeated id keeps its best rank
            out[doc] = float(len(ranked) - i)
    return out


def per_query(qrels: Qrels, run: Run) -> dict[str, dict[str, float]]:
    """Every metric for every query of ``qrels`` (0 where the run returned nothing)."""
    qrels = {q: {d: int(r) for d, r in rel.items()} for q, rel in qrels.items()}
    full = {q: _scored(run.get(q, ())) for q in qrels}
    top10 = {q: _scored(list(dict.fromkeys(run.get(q, ())))[:10]) for q in qrels}
    main = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.100", "success.1,5,10"})
    rr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"})
    a = main.evaluate({q: d for q, d in full.items() if d})
    b = rr.evaluate({q: d for q, d in top10.items() if d})
    out: dict[str, dict[str, float]] = {}
    for q in qrels:
        row = {m: float(a.get(q, {}).get(t, 0.0)) for m, t in _TREC.items()}
        row["mrr@10"] = float(b.get(q, {}).get("recip_rank", 0.0))
        out[q] = {m: row[m] for m in METRICS}
    return out


def evaluate(qrels: Qrels, run: Run) -> dict[str, float]:
    """Mean of each metric over the queries in ``qrels`` (keys in ``METRICS`` order)."""
    rows = per_query(qrels, run)
    n = len(rows)
    return {m: (sum(r[m] for r in rows.values()) / n if n else 0.0) for m in METRICS}


def percentile(values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (0-100), numpy's linear interpolation; nan when empty."""
    return float(np.percentile(np.asarray(values, dtype=float), p)) if len(values) else math.nan
