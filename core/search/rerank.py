"""Reranking stages: re-score the fused top-N with a stronger (slower) model.

Two rerankers share one interface (``name``, ``score(query, passages) -> np.ndarray``):

``CrossEncoderReranker``  a sequence-classification model run with onnxruntime
                          (``core.models.cross_encoder``); stage name ``rerank-ce``.
``LLMReranker``           pointwise relevance from the local GGUF chat model: for each passage
                          the model is asked whether it answers or supports the query, and the
                          score is ``logit(yes) - logit(no)`` at the first reply position
                          (``LocalLLM.next_token_logits``); stage name ``rerank-llm``. It costs
                          one prompt evaluation per passage (the shared beginning, system text
                          and query, is evaluated once), so it is for machines where that is fast
                          enough; see bench/RESULTS.md for what it does on SciFact.

``apply_rerank`` re-orders the top ``top_n`` of a ranked list by blending the reranker's score
with the first-stage score (both min-max normalised over the top-N; ``weight`` is the
reranker's share, 1.0 = the reranker alone) and leaves the rest in their first-stage order
behind them. ``blend`` is the same arithmetic for any second score (late interaction uses it).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Protocol, Sequence

import numpy as np

from core.jobs import CancelToken
from core.search.fusion import minmax_normalize

__all__ = ["Reranker", "LLMReranker", "CrossEncoderReranker", "RerankOutcome", "apply_rerank", "blend",
           "RERANKERS", "DEFAULT_RERANK_TOP", "LLM_SYSTEM", "llm_prompt"]

DEFAULT_RERANK_TOP = 50
RERANKERS = ("cross-encoder", "llm")
"""Reranker kinds a configuration may name (stage names ``rerank-ce`` and ``rerank-llm``)."""

LLM_SYSTEM = ("You judge search results. Given a query and a passage, answer only yes or no: "
              "does the passage answer the query or support or refute the claim it makes?")


class Reranker(Protocol):
    name: str
    """The stage name it reports (``rerank-ce``, ``rerank-llm``)."""

    def score(self, query: str, passages: Sequence[str], *, cancel: CancelToken | None = None) -> np.ndarray:
        """One score per passage, higher is more relevant."""
        ...


def llm_prompt(query: str, passage: str) -> tuple[str, str]:
    """(system, user) texts of the pointwise relevance prompt. The query comes first so that
    consecutive prompts for one query share their beginning (evaluated once)."""
    user = (f"Query: {query.strip()}\n\nPassage: {' '.join(passage.split())}\n\n"
            "Does the passage answer the query or support or refute its claim? Answer yes or no.")
    return LLM_SYSTEM, user


class LLMReranker:
    """Pointwise yes/no reranking with a ``core.models.llm.LocalLLM``."""

    name = "rerank-llm"

    def __init__(self, llm, *, max_passage_tokens: int = 320) -> None:
        """``max_passage_tokens`` bounds each prompt (system, query and question included) so the
        cost per passage is capped; longer passages lose their end."""
        from core.errors import ModelError

        self.llm = llm
        self.max_prompt_tokens = int(max_passage_tokens) + 160
        yes = [t for t in (llm.token_id("yes"), llm.token_id("Yes")) if t is not None]
        no = [t for t in (llm.token_id("no"), llm.token_id("No")) if t is not None]
        if not yes or not no:
            raise ModelError(f"{llm.path}: 'yes' and 'no' are not single tokens of this model; "
                             "it cannot be used as a reranker")
        self._yes, self._no = yes, no

    def prompts(self, query: str, passages: Sequence[str]) -> list[str]:
        from core.models.llm import ChatMessage

        out = []
        for p in passages:
            system, user = llm_prompt(query, p)
            out.append(self.llm.format_chat([ChatMessage("system", system), ChatMessage("user", user)]))
        return out

    def score(self, query: str, passages: Sequence[str], *, cancel: CancelToken | None = None) -> np.ndarray:
        """``logsumexp(logits of yes/Yes) - logsumexp(logits of no/No)`` for each passage."""
        passages = list(passages)
        if not passages:
            return np.zeros(0, dtype=np.float32)
        logits = self.llm.next_token_logits(self.prompts(query, passages), self._yes + self._no,
                                            max_prompt_tokens=self.max_prompt_tokens, cancel=cancel)
        ny = len(self._yes)
        return (_logsumexp(logits[:, :ny]) - _logsumexp(logits[:, ny:])).astype(np.float32)


class CrossEncoderReranker:
    """A ``core.models.cross_encoder.CrossEncoder`` as a rerank stage."""

    name = "rerank-ce"

    def __init__(self, model) -> None:
        self.model = model

    def score(self, query: str, passages: Sequence[str], *, cancel: CancelToken | None = None) -> np.ndarray:
        return self.model.score(query, passages, cancel=cancel)


def _logsumexp(x: np.ndarray) -> np.ndarray:
    m = x.max(axis=1, keepdims=True)
    return (m + np.log(np.exp(x - m).sum(axis=1, keepdims=True)))[:, 0]


@dataclass(frozen=True)
class RerankOutcome:
    """What a second-stage re-scoring did to a ranked list."""

    ranked: list[tuple[int, float]]
    """The whole list, best first: the re-scored top-N (blended score in [0, 1] plus 1, so they
    stay above the rest) then the others with their first-stage scores rescaled into [0, 1)."""
    stage_scores: dict[int, float]
    """The stage's own raw score for each re-scored id."""


def blend(first: Sequence[tuple[int, float]], second: Mapping[int, float], *, weight: float,
          top_n: int) -> RerankOutcome:
    """Re-order the top ``top_n`` of ``first`` by ``weight * second + (1 - weight) * first``
    (each min-max normalised over those ``top_n``); ids without a second score get 0 from it.

    Ties keep the first-stage order. The tail keeps its order behind the re-scored head.
    """
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"weight must be in [0, 1], not {weight}")
    head = list(first[:max(0, top_n)])
    tail = list(first[max(0, top_n):])
    if not head:
        return RerankOutcome(list(first), {})
    f_norm = dict(minmax_normalize(head))
    present = [(cid, second[cid]) for cid, _ in head if cid in second]
    s_norm = dict(minmax_normalize(sorted(present, key=lambda kv: -kv[1])))
    scored = [(cid, weight * s_norm.get(cid, 0.0) + (1.0 - weight) * f_norm[cid], pos)
              for pos, (cid, _) in enumerate(head)]
    scored.sort(key=lambda t: (-t[1], t[2]))
    ranked = [(cid, 1.0 + s) for cid, s, _ in scored]
    if tail:
        t_norm = minmax_normalize(tail)
        ranked += [(cid, 0.999 * s) for cid, s in t_norm]
    return RerankOutcome(ranked, {cid: float(second[cid]) for cid, _ in head if cid in second})


def apply_rerank(first: Sequence[tuple[int, float]], texts: Mapping[int, str], query: str, reranker: Reranker, *,
                 top_n: int = DEFAULT_RERANK_TOP, weight: float = 1.0,
                 cancel: CancelToken | None = None) -> RerankOutcome:
    """Score the top ``top_n`` ids of ``first`` with ``reranker`` (their texts from ``texts``)
    and blend (see ``blend``)."""
    head = [cid for cid, _ in first[:max(0, top_n)] if cid in texts]
    scores = reranker.score(query, [texts[cid] for cid in head], cancel=cancel) if head else []
    return blend(first, {cid: float(s) for cid, s in zip(head, scores)}, weight=weight, top_n=top_n)
