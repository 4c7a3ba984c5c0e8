"""Cross-encoder reranking: any Hugging Face sequence-classification model, run with onnxruntime.

A cross-encoder reads the query and one passage together (``[CLS] query [SEP] passage [SEP]``)
and returns one relevance logit. ``CrossEncoder(folder)`` accepts either a Hugging Face folder
(``config.json`` with a ``*ForSequenceClassification`` architecture, weights, tokenizer), which
is exported once with optimum (task ``text-classification``) into the model cache, keyed by the
folder's content hash (``core.models.export``), or an already exported folder with
``model.onnx`` and ``tokenizer.json``.

It runs where ``core.models.onnx_runtime.create_session`` puts it: fp16 on CUDA, fp32 on CPU, or
int8 on CPU when asked (``precision="int8"``) or when this model's int8 copy was verified
(``core.models.quantize.INT8_VERIFIED``). Pairs are sorted by length and batched, each batch
padded to its longest member, and the scores come back in the caller's order.

No cross-encoder weights can be had on the machines Sift is built on; the tests exercise this
runner with a small randomly initialised ``BertForSequenceClassification`` they build and export
themselves. Its scores mean nothing, but they must equal PyTorch's for the same weights.
"""
from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from core.errors import UnsupportedModel
from core.jobs import CancelToken, ProgressFn, check
from core.models.onnx_runtime import SessionInfo, create_session, padded_feeds

__all__ = ["CrossEncoder", "RankedPassage", "TASK"]

TASK = "text-classification"


@dataclass(frozen=True)
class RankedPassage:
    """One passage of ``CrossEncoder.rank``."""

    index: int
    """Position of the passage in the input."""
    score: float
    text: str


class CrossEncoder:
    """A sequence-classification model that scores (query, passage) pairs."""

    def __init__(self, folder: Path | str, *, device: str = "auto", precision: str = "auto",
                 max_length: int | None = None, progress: ProgressFn | None = None,
                 cancel: CancelToken | None = None) -> None:
        """``precision``: ``auto`` (fp16 on CUDA; on CPU int8 only for a verified model, else
        fp32), ``fp32`` or ``int8``. ``max_length`` caps the pair length in tokens (default:
        the model's position limit, at most 512)."""
        from tokenizers import Tokenizer

        from core.models.export import export_onnx
        from core.models.quantize import int8_verified

        folder = Path(folder).expanduser()
        if (folder / "model.onnx").exists() and (folder / "tokenizer.json").exists():
            exported = folder
        else:
            exported = export_onnx(folder, TASK, progress=progress, cancel=cancel)
        meta_path = exported / "sift-export.json"
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        cfg_path = exported / "config.json"
        cfg = json.loads(cfg_path.read_text()) if cfg_path.exists() else {}
        self.folder = exported
        self.session, self.info = create_session(exported / "model.onnx", device=device,
                                                 model_type=meta.get("model_type") or cfg.get("model_type"),
                                                 precision=precision,
                                                 int8_verified=int8_verified(meta.get("source_sha256")))
        self.session_info: SessionInfo = self.info
        outputs = [o.name for o in self.session.get_outputs()]
        if "logits" not in outputs:
            raise UnsupportedModel(f"{folder}: not a sequence-classification model (ONNX outputs: {outputs})")
        self._input_names = {i.name for i in self.session.get_inputs()}
        n_labels = self.session.get_outputs()[0].shape[-1]
        if not isinstance(n_labels, int):
            n_labels = len(cfg.get("id2label") or {0: 0})
        if n_labels not in (1, 2):
            raise UnsupportedModel(f"{folder}: a reranker needs 1 or 2 output labels, this model has {n_labels}")
        self.num_labels = int(n_labels)
        limit = int(cfg.get("max_position_embeddings") or 512)
        self.max_length = int(max_length or min(512, limit))
        self.tokenizer = Tokenizer.from_file(str(exported / "tokenizer.json"))
        self.tokenizer.enable_truncation(self.max_length)  # longest_first: the passage gives way first
        self.tokenizer.no_padding()
        pad = self.tokenizer.token_to_id("[PAD]")
        self.pad_id = 0 if pad is None else pad
        self._lock = threading.Lock()

    def _logits(self, encodings) -> np.ndarray:
        feeds = padded_feeds(encodings, self.pad_id, self._input_names)
        with self._lock:
            (logits,) = self.session.run(["logits"], feeds)
        return logits.astype(np.float32, copy=False)

    def score(self, query: str, passages: Sequence[str], *, batch_size: int = 16,
              cancel: CancelToken | None = None) -> np.ndarray:
        """One relevance score per passage (float32, higher is better), in input order.

        With one output label the score is that logit; with two it is ``logit[1] - logit[0]``,
        the log-odds of the positive label.
        """
        passages = list(passages)
        out = np.zeros(len(passages), dtype=np.float32)
        if not passages:
            return out
        encodings = self.tokenizer.encode_batch([(query, p) for p in passages])
        order = sorted(range(len(passages)), key=lambda i: len(encodings[i].ids))
        for start in range(0, len(order), batch_size):
            check(cancel)
            idx = order[start:start + batch_size]
            logits = self._logits([encodings[i] for i in idx])
            out[idx] = logits[:, 0] if self.num_labels == 1 else logits[:, 1] - logits[:, 0]
        return out

    def rank(self, query: str, passages: Sequence[str], *, top_k: int | None = None,
             **kw) -> list[RankedPassage]:
        """Passages sorted by score, best first (ties keep input order), at most ``top_k``."""
        scores = self.score(query, passages, **kw)
        order = np.argsort(-scores, kind="stable")[: top_k if top_k is not None else None]
        return [RankedPassage(int(i), float(scores[i]), passages[i]) for i in order]
