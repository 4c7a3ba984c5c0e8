"""Per-document summaries: which excerpts a summary is written from, and the cache of summaries.

A summary is written once per document version (sha256) and chat model, from excerpts
that fit the model's context: the opening chunks (title, abstract, introduction) and then
the chunks closest to the document's mean embedding (its central topics), in document
order. It is cached in ``summaries.json`` in the knowledge-base folder with the ids of the
excerpts, so the citations of a cached summary point at the same text as the first time.
"""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Callable

import numpy as np

__all__ = ["SummaryCache", "pick_excerpts", "LEAD_CHUNKS"]

LEAD_CHUNKS = 2


class SummaryCache:
    """Summaries by (document sha256, model), in a JSON file written atomically."""

    _lock = threading.Lock()

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def _load(self) -> dict:
        try:
            return json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    def get(self, sha256: str, model: str) -> dict | None:
        with self._lock:
            v = self._load().get(f"{sha256}:{model}")
        return v if isinstance(v, dict) and "text" in v and "chunk_ids" in v else None

    def put(self, sha256: str, model: str, text: str, chunk_ids) -> None:
        with self._lock:
            data = self._load()
            data[f"{sha256}:{model}"] = {"text": text, "chunk_ids": [int(i) for i in chunk_ids]}
            tmp = self.path.with_suffix(".tmp")
            try:
                tmp.write_text(json.dumps(data), encoding="utf-8")
                os.replace(tmp, self.path)
            except OSError:
                pass  # a read-only folder costs a re-summary next time, nothing else


def pick_excerpts(store, doc_id: int, *, budget: int, count_tokens: Callable[[str], int]) -> list:
    """Stored chunks of a document to summarise from, within ``budget`` tokens, in document order."""
    chunks = [c for c in store.document_chunks(doc_id) if c.text.strip()]
    if not chunks:
        return []
    text_chunks = [c for c in chunks if c.kind == "text"] or chunks
    order = list(range(min(LEAD_CHUNKS, len(text_chunks))))
    if len(text_chunks) > len(order):
        vecs = store.get_embeddings([int(c.id) for c in text_chunks])
        centre = vecs.mean(axis=0)
        centre /= max(float(np.linalg.norm(centre)), 1e-9)
        sims = vecs @ centre
        for j in np.argsort(-sims, kind="stable"):
            if int(j) not in order:
                order.append(int(j))
    picked, used = [], 0
    for j in order:
        cost = count_tokens(text_chunks[j].text) + 20
        if used + cost > budget:
            if picked:
                continue
        picked.append(j)
        used += cost
    return [text_chunks[j] for j in sorted(picked)]
