"""Late interaction: MaxSim re-scoring of candidates, and token-level evidence for the GUI.

MaxSim (ColBERT): a passage scores ``Σ_q max_d <q, d>`` over the query's token vectors ``q``
and the passage's ``d`` (all L2-normalised), so every query token looks for its best match in
the passage.

Token vectors come from a ``TokenEncoder``:

``ColbertTokens``   a real ColBERT checkpoint (``core.models.colbert``): projected vectors, query
                    markers and [MASK] expansion. Its document vectors are stored compressed at
                    ingest (``core.store.token_vectors``) so a query only encodes itself.
``EmbedderTokens``  the dense embedder's own per-token outputs (MiniLM), special tokens dropped,
                    computed on the fly for the candidates. This is what exists until a trained
                    late-interaction model is configured; measured on SciFact it does not beat
                    plain hybrid search, so the late stage is off by default.

``LateInteraction.score`` re-scores chunk ids (stored vectors first, the rest encoded from their
text); ``token_evidence`` says, for one query and one passage, how well each passage token is
matched and by which query token, with char offsets into the passage for highlighting.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Protocol, Sequence

import numpy as np

from core.jobs import CancelToken, ProgressFn, check
from core.models.embedder import TokenVectors

__all__ = ["TokenEncoder", "ColbertTokens", "EmbedderTokens", "LateInteraction", "TokenMatch", "maxsim",
           "token_evidence", "DEFAULT_LATE_TOP", "DEFAULT_LATE_WEIGHT"]

DEFAULT_LATE_TOP = 100
"""Fused candidates the late stage re-scores."""
DEFAULT_LATE_WEIGHT = 0.5
"""Share of the MaxSim score when blended with the fused score (both min-max normalised)."""


class TokenEncoder(Protocol):
    model_id: str
    """Names the weights; stored vectors are valid only for the encoder that made them."""
    dim: int

    def query_tokens(self, query: str) -> TokenVectors: ...

    def document_tokens(self, texts: Sequence[str], *, progress: ProgressFn | None = None,
                        cancel: CancelToken | None = None) -> list[TokenVectors]: ...


class ColbertTokens:
    """A ``core.models.colbert.ColBERT`` as a token encoder."""

    def __init__(self, model) -> None:
        self.model = model
        self.model_id: str = model.model_id
        self.dim: int = model.dim

    def query_tokens(self, query: str) -> TokenVectors:
        return self.model.encode_queries([query])[0]

    def document_tokens(self, texts: Sequence[str], *, progress: ProgressFn | None = None,
                        cancel: CancelToken | None = None) -> list[TokenVectors]:
        return self.model.encode_documents(texts, progress=progress, cancel=cancel)


class EmbedderTokens:
    """The dense embedder's per-token vectors (``core.models.embedder.Embedder``, ``tokens=True``)."""

    def __init__(self, embedder) -> None:
        self.embedder = embedder
        self.model_id = f"tokens:{getattr(embedder, 'folder', 'embedder')}"
        self.dim: int = embedder.dim

    def query_tokens(self, query: str) -> TokenVectors:
        return self.embedder.encode([query], tokens=True).tokens[0]

    def document_tokens(self, texts: Sequence[str], *, progress: ProgressFn | None = None,
                        cancel: CancelToken | None = None) -> list[TokenVectors]:
        return self.embedder.encode(list(texts), tokens=True, progress=progress, cancel=cancel).tokens


def maxsim(q: np.ndarray, d: np.ndarray) -> float:
    """``Σ_i max_j q_i · d_j`` (0 for an empty passage)."""
    if len(q) == 0 or len(d) == 0:
        return 0.0
    return float((np.asarray(q, np.float32) @ np.asarray(d, np.float32).T).max(axis=1).sum())


class LateInteraction:
    """The ``late`` search stage: MaxSim over stored (or freshly encoded) token vectors."""

    name = "late"

    def __init__(self, encoder: TokenEncoder, store=None) -> None:
        """``store`` is a ``core.store.token_vectors.TokenVectorStore`` made by ``encoder`` (or None)."""
        self.encoder = encoder
        self.store = store
        if store is not None and store.model_id != encoder.model_id:
            raise ValueError(f"token vectors were made by {store.model_id}, not {encoder.model_id}")

    def score(self, query: str, chunk_ids: Sequence[int], texts: Mapping[int, str], *,
              cancel: CancelToken | None = None) -> dict[int, float]:
        """MaxSim of ``query`` against each chunk; chunks without stored vectors are encoded
        from ``texts`` (a chunk in neither is left out)."""
        q = self.encoder.query_tokens(query).vectors
        ids = [int(c) for c in chunk_ids]
        out: dict[int, float] = {}
        if self.store is not None:
            found, counts, vecs = self.store.get_concat(ids)
            nonempty = counts > 0
            if len(vecs):
                # one matmul for every candidate, then the max per query token within each chunk
                sims = np.asarray(q, np.float32) @ vecs.T  # [n_query, total tokens]
                starts = np.concatenate([[0], np.cumsum(counts)[:-1]])[nonempty]
                best = np.maximum.reduceat(sims, starts, axis=1).sum(axis=0)
                out.update({c: float(b) for c, b in zip(np.asarray(found)[nonempty].tolist(), best)})
            out.update({c: 0.0 for c, n in zip(found, counts) if n == 0})
        stored: dict[int, np.ndarray] = {}
        missing = [c for c in ids if c not in out and c in texts]
        if missing:
            check(cancel)
            for c, tv in zip(missing, self.encoder.document_tokens([texts[c] for c in missing], cancel=cancel)):
                stored[c] = tv.vectors
        out.update({c: maxsim(q, v) for c, v in stored.items()})
        return {c: out[c] for c in ids if c in out}


@dataclass(frozen=True)
class TokenMatch:
    """How well one passage token is matched by the query."""

    start: int
    """Char offset of the token in the passage text."""
    end: int
    score: float
    """Its best cosine similarity to any query token."""
    query_token: int
    """Index (in ``TokenEvidence.query_spans``) of the query token that matched it best."""


@dataclass(frozen=True)
class TokenEvidence:
    """Token-level MaxSim between a query and one passage."""

    matches: tuple[TokenMatch, ...]
    """Each passage token with a char span, in passage order."""
    query_spans: tuple[tuple[int, int], ...]
    """Char span of each query token in the query ((0, 0) for markers and [MASK] expansion)."""
    query_best: tuple[float, ...]
    """Per query token, its best similarity over the passage (the terms MaxSim sums)."""

    @property
    def score(self) -> float:
        return float(sum(self.query_best))


def token_evidence(encoder: TokenEncoder, query: str, text: str) -> TokenEvidence:
    """Per-passage-token max similarity to the query, with char offsets into ``text``.

    Works with any token encoder (``EmbedderTokens`` over MiniLM as well as ColBERT). Tokens
    without a char span (markers, [CLS]/[SEP]) are left out of ``matches`` but count in
    ``query_best`` exactly as they do in MaxSim.
    """
    q = encoder.query_tokens(query)
    d = encoder.document_tokens([text])[0]
    if len(q.vectors) == 0 or len(d.vectors) == 0:
        return TokenEvidence((), tuple(tuple(map(int, o)) for o in q.offsets), tuple(0.0 for _ in q.offsets))
    sim = q.vectors @ d.vectors.T  # [n_query, n_passage]
    best_q = sim.argmax(axis=0)
    matches = tuple(TokenMatch(int(s), int(e), float(sim[best_q[j], j]), int(best_q[j]))
                    for j, (s, e) in enumerate(d.offsets) if e > s)
    return TokenEvidence(matches, tuple((int(s), int(e)) for s, e in q.offsets),
                         tuple(float(x) for x in sim.max(axis=1)))
