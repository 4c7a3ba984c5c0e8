"""Training Sift's own reranker and late-interaction model (issue 6). Qt-free; the only part of
``core`` that imports torch, and only when a trainer module is imported.

* ``core.training.data``: examples from ``../shared/train``; negatives mined with the hybrid.
* ``core.training.reranker``: ``train_reranker`` (cross-encoder, listwise + margin-MSE).
* ``core.training.late_interaction``: ``train_late_interaction`` (ColBERT-style, PyLate folder).
* ``core.training.dev_eval``: SciFact dev (train split) check of a late-interaction model re-scoring the hybrid.
"""
from __future__ import annotations

from core.training.common import TINY, TrainConfig, TrainingError, TrainResult

__all__ = ["TrainConfig", "TrainResult", "TrainingError", "TINY"]
