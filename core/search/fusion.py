"""Fusing ranked lists: reciprocal rank fusion and min-max normalised weighted scores.

Both take lists of ``(id, score)`` pairs, each best first, and return one list of
``(id, fused score)``, best first. Ties are broken the same way every time: by the best
(smallest) rank the id reached in any list, then by the id itself, so equal inputs always
give equal outputs whatever the order of dict iteration or the input lists.

RRF (Cormack et al., 2009) uses only ranks: ``score(d) = Σ w_i / (k + rank_i(d))`` with
1-based ranks and ``k = 60``. Min-max fusion rescales each list's scores to [0, 1] (its
best hit 1, its worst 0) and sums them with a weight per list; an id missing from a list
gets 0 from it. It keeps how much better the top hit is than the next, which RRF discards,
and that is why it wins when one list is clearly more reliable than the other (a weight
then says by how much).
"""
from __future__ import annotations

from typing import Hashable, Sequence, TypeVar

__all__ = ["RRF_K", "Ranked", "rrf", "minmax", "minmax_normalize"]

RRF_K = 60
K = TypeVar("K", bound=Hashable)
Ranked = Sequence[tuple[K, float]]
"""A ranked list: ``(id, score)`` pairs, best first."""


def _weights(n: int, weights: Sequence[float] | None) -> list[float]:
    if weights is None:
        return [1.0] * n
    if len(weights) != n:
        raise ValueError(f"{len(weights)} weights for {n} lists")
    return [float(w) for w in weights]


def _finish(scores: dict, best_rank: dict, limit: int | None) -> list:
    out = sorted(scores.items(), key=lambda kv: (-kv[1], best_rank[kv[0]], kv[0]))
    return out if limit is None else out[:max(0, limit)]


def rrf(lists: Sequence[Ranked], *, k: int = RRF_K, weights: Sequence[float] | None = None,
        limit: int | None = None) -> list[tuple[K, float]]:
    """Reciprocal rank fusion of ranked lists (scores are ignored, only order counts).

    An id that appears twice in one list counts at its first (best) place.
    """
    if k < 0:
        raise ValueError("k must be >= 0")
    ws = _weights(len(lists), weights)
    scores: dict = {}
    best_rank: dict = {}
    for lst, w in zip(lists, ws):
        seen: set = set()
        for rank, (key, _) in enumerate(lst, 1):
            if key in seen:
                continue
            seen.add(key)
            scores[key] = scores.get(key, 0.0) + w / (k + rank)
            best_rank[key] = min(best_rank.get(key, rank), rank)
    return _finish(scores, best_rank, limit)


def minmax_normalize(lst: Ranked) -> list[tuple[K, float]]:
    """Scores rescaled to [0, 1]: the best 1, the worst 0; all 1 when they are all equal."""
    if not lst:
        return []
    vals = [float(s) for _, s in lst]
    lo, hi = min(vals), max(vals)
    if hi - lo <= 1e-12:
        return [(key, 1.0) for key, _ in lst]
    return [(key, (float(s) - lo) / (hi - lo)) for key, s in lst]


def minmax(lists: Sequence[Ranked], *, weights: Sequence[float] | None = None,
           limit: int | None = None) -> list[tuple[K, float]]:
    """Weighted sum of min-max normalised scores (an id missing from a list gets 0 there)."""
    ws = _weights(len(lists), weights)
    scores: dict = {}
    best_rank: dict = {}
    for lst, w in zip(lists, ws):
        seen: set = set()
        for rank, (key, s) in enumerate(minmax_normalize(lst), 1):
            if key in seen:
                continue
            seen.add(key)
            scores[key] = scores.get(key, 0.0) + w * s
            best_rank[key] = min(best_rank.get(key, rank), rank)
    return _finish(scores, best_rank, limit)
