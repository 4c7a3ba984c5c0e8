"""``sift train reranker``: MiniLM with a one-logit classification head, trained as a cross-encoder.

The loss is listwise softmax cross-entropy over one positive and ``negatives`` negatives per
query (the positive is class 0), plus, when teacher scores are present, margin-MSE: the
student's margins ``s(pos) - s(neg)`` regress onto the teacher's (scaled) margins.

The result is a standard Hugging Face ``BertForSequenceClassification`` folder (``num_labels=1``)
with its tokenizer, so ``transformers``, ``sentence_transformers.CrossEncoder`` and Sift's ONNX
export all load it as they load any cross-encoder.
"""
from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from core.jobs import CancelToken, ProgressFn, check
from core.training.common import (TINY, RunLog, TrainConfig, TrainResult, TrainingError, autocast, base_model_dir,
                                  lr_at, pick_device, seed_everything)
from core.training.data import Example

__all__ = ["train_reranker", "CrossEncoderScorer", "listwise_loss", "margin_mse_loss"]


def listwise_loss(scores: torch.Tensor) -> torch.Tensor:
    """Softmax cross-entropy with the positive in column 0. ``scores``: (queries, 1 + negatives)."""
    target = torch.zeros(scores.shape[0], dtype=torch.long, device=scores.device)
    return F.cross_entropy(scores.float(), target)


def margin_mse_loss(scores: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Margin-MSE (Hofstätter et al.): the positive-minus-negative margins match the teacher's."""
    s = scores.float()
    return F.mse_loss(s[:, :1] - s[:, 1:], teacher[:, :1] - teacher[:, 1:])


def _batches(examples: Sequence[Example], batch: int, seed: int):
    """Endless batches, reshuffled every pass over the examples."""
    rng = random.Random(seed)
    order = list(range(len(examples)))
    while True:
        rng.shuffle(order)
        for i in range(0, len(order) - batch + 1 if len(order) >= batch else 1, batch):
            yield [examples[j] for j in order[i:i + batch]]


def _param_groups(model: torch.nn.Module, head_prefixes: tuple[str, ...], lr: float, mult: float, decay: float):
    groups = {(h, d): [] for h in (False, True) for d in (False, True)}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        head = name.startswith(head_prefixes)
        no_decay = name.endswith("bias") or "LayerNorm" in name or "layer_norm" in name
        groups[(head, not no_decay)].append(p)
    return [{"params": ps, "lr": lr * (mult if head else 1.0), "weight_decay": decay if d else 0.0,
             "base_lr": lr * (mult if head else 1.0)} for (head, d), ps in groups.items() if ps]


def _effective(cfg: TrainConfig) -> TrainConfig:
    from dataclasses import replace

    return replace(cfg, **TINY) if cfg.tiny else cfg


def train_reranker(cfg: TrainConfig, *, examples: Sequence[Example] | None = None,
                   progress: ProgressFn | None = None, cancel: CancelToken | None = None) -> TrainResult:
    """Train a cross-encoder from ``cfg.base`` (default: the bundled MiniLM) and save it in ``cfg.out``.

    ``examples`` (already prepared) skip reading the data; otherwise they come from
    ``core.training.prepare.prepare_examples``.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    cfg = _effective(cfg)
    out = Path(cfg.out).expanduser()
    device = pick_device(cfg.device)
    seed_everything(cfg.seed)
    if examples is None:
        from core.training.prepare import prepare_examples

        examples = prepare_examples(cfg, progress=progress, cancel=cancel)
    if not examples:
        raise TrainingError("no training examples")
    base = base_model_dir(cfg.base)
    tok = AutoTokenizer.from_pretrained(str(base))
    model = AutoModelForSequenceClassification.from_pretrained(str(base), num_labels=1)
    model.config.architectures = ["BertForSequenceClassification"]
    model.to(device)
    model.train()
    opt = torch.optim.AdamW(_param_groups(model, ("classifier",), cfg.lr, cfg.head_lr_mult, cfg.weight_decay),
                            lr=cfg.lr, foreach=True)
    n = 1 + cfg.negatives
    log = RunLog(out, cfg.steps, cfg.log_every, progress, "train reranker")
    (out / "training_args.json").write_text(json.dumps({"kind": "reranker", **cfg.to_json(),
                                                         "examples": len(examples)}, indent=2), encoding="utf-8")
    t0 = time.monotonic()
    batches = _batches(examples, min(cfg.batch, len(examples)), cfg.seed)
    for step in range(cfg.steps):
        check(cancel)
        mult = lr_at(step, cfg.steps, cfg.warmup)
        for g in opt.param_groups:
            g["lr"] = g["base_lr"] * mult
        batch = next(batches)
        queries = [e.query for e in batch for _ in range(n)]
        docs = [d for e in batch for d in (e.positive, *e.negatives[:cfg.negatives])]
        enc = tok(queries, docs, truncation="longest_first", max_length=cfg.query_length + cfg.doc_length,
                  padding=True, return_tensors="pt").to(device)
        with autocast(device):
            logits = model(**enc).logits.view(len(batch), n)
        loss_ce = listwise_loss(logits)
        loss = loss_ce
        parts = {"listwise": loss_ce.item()}
        if cfg.teacher != "none" and all(e.teacher is not None for e in batch):
            teacher = torch.tensor([list(e.teacher[:n]) for e in batch], dtype=torch.float32, device=device)
            loss_d = margin_mse_loss(logits, teacher * cfg.teacher_scale)
            loss = loss + cfg.distill_weight * loss_d
            parts["margin_mse"] = loss_d.item()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        log.step(step, loss.item(), opt.param_groups[0]["lr"], **parts)
        if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps:
            _save(model, tok, out / f"checkpoint-{step + 1}", cfg, step + 1)
    _save(model, tok, out, cfg, cfg.steps)
    return TrainResult(out, cfg.steps, len(examples), log.first, log.last, time.monotonic() - t0, device,
                       tuple(log.losses))


def _save(model, tok, folder: Path, cfg: TrainConfig, step: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    was = next(model.parameters()).device
    model.to("cpu")
    model.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    model.to(was)
    (folder / "sift_training.json").write_text(json.dumps({"kind": "reranker", "step": step, **cfg.to_json()},
                                                           indent=2), encoding="utf-8")


class CrossEncoderScorer:
    """Scores (query, passage) pairs with a cross-encoder folder (a teacher, or for checks)."""

    def __init__(self, folder: str | Path, *, device: str | None = None, max_length: int = 320,
                 batch: int = 32) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.device = pick_device(device or "auto")
        self.tok = AutoTokenizer.from_pretrained(str(folder))
        self.model = AutoModelForSequenceClassification.from_pretrained(str(folder)).to(self.device).eval()
        self.max_length, self.batch = max_length, batch

    @torch.no_grad()
    def score(self, query: str, passages: Sequence[str], *, cancel: CancelToken | None = None) -> list[float]:
        out: list[float] = []
        for i in range(0, len(passages), self.batch):
            check(cancel)
            chunk = list(passages[i:i + self.batch])
            enc = self.tok([query] * len(chunk), chunk, truncation="longest_first", max_length=self.max_length,
                           padding=True, return_tensors="pt").to(self.device)
            with autocast(self.device):
                out.extend(self.model(**enc).logits[:, 0].float().cpu().tolist())
        return out
