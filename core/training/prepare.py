"""The examples a run trains on: read (or a mined file), mined with the hybrid, scored by a teacher."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from core.jobs import CancelToken, ProgressFn
from core.training.common import TrainConfig, TrainingError
from core.training.data import Example, load_examples, mine_with_hybrid, read_examples, with_teacher

__all__ = ["prepare_examples", "TEACHERS"]

TEACHERS = ("none", "hybrid")
"""Named teachers; any other value is a cross-encoder folder (e.g. one ``sift train reranker`` wrote)."""


def prepare_examples(cfg: TrainConfig, *, progress: ProgressFn | None = None,
                     cancel: CancelToken | None = None) -> list[Example]:
    """Training examples for ``cfg``.

    From ``cfg.examples`` (a file ``sift train mine`` wrote) when set; else from the data
    folder with its BM25 negatives, or the hybrid's (``mine`` or ``teacher=hybrid``). Teacher
    scores stay only when ``cfg.teacher`` is not ``none``; a cross-encoder folder as teacher
    scores every (query, passage) pair here.
    """
    if cfg.examples:
        examples = read_examples(cfg.examples)
        if len(examples[0].negatives) < cfg.negatives:
            raise TrainingError(f"{cfg.examples} has {len(examples[0].negatives)} negatives a query, "
                                f"fewer than --negatives {cfg.negatives}")
        if cfg.teacher == "hybrid" and examples[0].teacher is None:
            raise TrainingError(f"{cfg.examples} holds no teacher scores", fix="mine it with sift train mine")
    else:
        examples = load_examples(cfg.data or None, langs=cfg.langs, negatives=cfg.negatives, limit=cfg.limit,
                                 squad_cap=cfg.squad_cap, oversample=cfg.oversample, seed=cfg.seed,
                                 progress=progress, cancel=cancel)
        if cfg.mine or cfg.teacher == "hybrid":
            from core.kb import KnowledgeBase

            folder = Path(cfg.kb).expanduser() if cfg.kb else Path(cfg.out) / "mining-kb"
            with KnowledgeBase(folder) as kb:
                examples = mine_with_hybrid(examples, kb, negatives=cfg.negatives, progress=progress, cancel=cancel)
    if cfg.teacher == "none":
        return [replace(e, teacher=None) for e in examples]
    if cfg.teacher == "hybrid":
        return examples
    folder = Path(cfg.teacher).expanduser()
    if not (folder / "config.json").is_file():
        raise TrainingError(f"teacher {cfg.teacher!r} is neither none, hybrid nor a model folder",
                            fix="use --teacher hybrid, --teacher none, or a folder sift train reranker wrote")
    from core.training.reranker import CrossEncoderScorer

    scorer = CrossEncoderScorer(folder, device=cfg.device if cfg.device != "auto" else None)
    n = 1 + cfg.negatives
    scores = {i: scorer.score(e.query, [e.positive, *e.negatives[:cfg.negatives]], cancel=cancel)[:n]
              for i, e in enumerate(examples)}
    return with_teacher(examples, scores)
