"""Dense embeddings and per-token vectors from one ONNX forward pass.

``Embedder.encode`` returns L2-normalised pooled vectors (for HNSW search) together with
the L2-normalised vectors of each real token and its character span (for late
interaction and token-level highlighting). Inputs are sorted by length and batched, each
batch padded only to its longest member, then returned in the caller's order.

On CPU the model runs int8 where that kept its retrieval quality (see ``core.models.quantize``);
``precision="fp32"`` asks for the exact model.
"""
from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from core.errors import UnsupportedModel
from core.jobs import CancelToken, ProgressFn, check, report
from core.models.onnx_runtime import SessionInfo, create_session, padded_feeds

__all__ = ["Encoded", "TokenVectors", "Embedder"]


@dataclass(frozen=True)
class TokenVectors:
    """Per-token output for one text (special tokens and padding dropped)."""

    vectors: np.ndarray
    """float32 [n_tokens, dim], each row L2-normalised."""
    ids: np.ndarray
    """int64 [n_tokens] vocabulary ids."""
    offsets: np.ndarray
    """int32 [n_tokens, 2] character span of each token in the input text."""


@dataclass(frozen=True)
class Encoded:
    """The result of one ``encode`` call, in input order."""

    pooled: np.ndarray
    """float32 [n_texts, dim], L2-normalised."""
    tokens: list[TokenVectors] | None
    """Per-text token vectors, or None when not asked for."""


class Embedder:
    """An ONNX feature-extraction model with its tokenizer and pooling."""

    def __init__(self, folder: Path, *, device: str = "auto", max_length: int | None = None,
                 precision: str = "auto") -> None:
        """``precision``: ``auto`` (fp16 on CUDA; int8 on CPU for a verified model, else fp32),
        ``fp32`` or ``int8`` (CPU only)."""
        from tokenizers import Tokenizer

        from core.models.quantize import int8_verified

        folder = Path(folder)
        onnx = folder / "model.onnx"
        tok = folder / "tokenizer.json"
        if not onnx.exists() or not tok.exists():
            raise UnsupportedModel(f"{folder}: not an exported embedding model (needs model.onnx and tokenizer.json)")
        meta_path = folder / "sift-export.json"
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        pooling = meta.get("pooling", {"mode": "mean", "normalize": True, "max_length": 512})
        self.folder = folder
        self.pooling_mode: str = pooling.get("mode", "mean")
        self.max_length: int = int(max_length or pooling.get("max_length", 512))
        self.session, self.info = create_session(onnx, device=device, model_type=meta.get("model_type"),
                                                 precision=precision,
                                                 int8_verified=int8_verified(meta.get("source_sha256")))
        self.session_info: SessionInfo = self.info
        self._input_names = {i.name for i in self.session.get_inputs()}
        self.tokenizer = Tokenizer.from_file(str(tok))
        self.tokenizer.enable_truncation(self.max_length)
        self.tokenizer.no_padding()
        pad_id = self.tokenizer.token_to_id("[PAD]")
        self.pad_id = 0 if pad_id is None else pad_id
        self._lock = threading.Lock()  # one run at a time per session keeps memory predictable
        self.dim = int(self.session.get_outputs()[0].shape[-1] or meta.get("hidden_size") or 0)

    @classmethod
    def default(cls, *, device: str = "auto", precision: str = "auto") -> "Embedder":
        """The bundled MiniLM model, prepared if needed."""
        from core.models import registry

        return cls(registry.prepare(registry.get("minilm-l6")), device=device, precision=precision)

    def count_tokens(self, text: str) -> int:
        """Word pieces of ``text`` including special tokens, without truncation."""
        self.tokenizer.no_truncation()
        try:
            return len(self.tokenizer.encode(text).ids)
        finally:
            self.tokenizer.enable_truncation(self.max_length)

    def _run(self, encodings) -> np.ndarray:
        feeds = padded_feeds(encodings, self.pad_id, self._input_names)
        mask = feeds["attention_mask"]
        with self._lock:
            (hidden,) = self.session.run(["last_hidden_state"], feeds)
        return hidden.astype(np.float32, copy=False), mask

    def _pool(self, hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
        m = mask[..., None].astype(np.float32)
        if self.pooling_mode == "cls":
            pooled = hidden[:, 0]
        elif self.pooling_mode == "max":
            pooled = np.where(m > 0, hidden, -1e9).max(axis=1)
        else:
            pooled = (hidden * m).sum(axis=1) / np.clip(m.sum(axis=1), 1e-9, None)
        return _normalize(pooled)

    def encode(self, texts: Sequence[str], *, batch_size: int = 32, tokens: bool = False,
               progress: ProgressFn | None = None, cancel: CancelToken | None = None) -> Encoded:
        """Embed ``texts``; with ``tokens=True`` also return per-token vectors."""
        import time

        texts = list(texts)
        if not texts:
            return Encoded(np.zeros((0, self.dim), dtype=np.float32), [] if tokens else None)
        encodings = self.tokenizer.encode_batch(texts)
        order = sorted(range(len(texts)), key=lambda i: len(encodings[i].ids))
        pooled = np.zeros((len(texts), self.dim), dtype=np.float32)
        token_out: list[TokenVectors | None] = [None] * len(texts) if tokens else []
        t0 = time.monotonic()
        for start in range(0, len(order), batch_size):
            check(cancel)
            idx = order[start:start + batch_size]
            batch = [encodings[i] for i in idx]
            hidden, mask = self._run(batch)
            pooled[idx] = self._pool(hidden, mask)
            if tokens:
                for row, i in enumerate(idx):
                    e = encodings[i]
                    keep = np.array([s == 0 for s in e.special_tokens_mask], dtype=bool)
                    vecs = _normalize(hidden[row, : len(e.ids)][keep])
                    token_out[i] = TokenVectors(vecs, np.asarray(e.ids, dtype=np.int64)[keep],
                                                np.asarray(e.offsets, dtype=np.int32).reshape(-1, 2)[keep])
            report(progress, "embed", min(start + batch_size, len(order)), len(order), unit="texts", started=t0)
        return Encoded(pooled, token_out if tokens else None)  # type: ignore[arg-type]

    def encode_queries(self, queries: Sequence[str], **kw) -> Encoded:
        return self.encode(queries, **kw)

    def encode_documents(self, docs: Sequence[str], **kw) -> Encoded:
        return self.encode(docs, **kw)


def _normalize(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.clip(n, 1e-12, None)).astype(np.float32)
