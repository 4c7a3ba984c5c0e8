"""``sift train late-interaction``: MiniLM + a linear projection to 128 dims, scored ColBERT-style.

Encoding follows ColBERT and PyLate: a marker token goes right after ``[CLS]`` (``[unused0]``
for queries, ``[unused1]`` for passages, as colbert-ai does, so the vocabulary is unchanged);
queries are padded to ``query_length`` with ``[MASK]`` (query augmentation: the mask tokens
are not attended to, but their output vectors take part in scoring); passages are cut to
``doc_length`` and their punctuation is skipped when scoring. Token vectors are projected
to 128 dims and L2-normalised; a query scores a passage by MaxSim (the sum over query
tokens of the best cosine with any passage token).

The loss is softmax cross-entropy over in-batch passages plus each query's hard negatives
and, when teacher scores are present, a KL term that pulls the student's distribution over
(positive, negatives) towards the teacher's (softmax of the scaled teacher scores): the
hybrid's own fused scores (direction (a) of issue 6: start from MiniLM, low learning rate,
so the model keeps what it knows), or a cross-encoder's.

The saved folder is a PyLate model: the BERT weights and tokenizer at the root (a
sentence-transformers ``Transformer`` module), ``1_Dense`` with the projection
(``linear.weight``, no bias, identity activation), and ``config_sentence_transformers.json``
with PyLate's keys (``query_prefix``, ``document_prefix``, ``query_length``,
``document_length``, ``do_query_expansion``, ``attend_to_expansion_tokens``,
``skiplist_words``), so PyLate, sentence-transformers and Sift's ColBERT runner load it.
"""
from __future__ import annotations

import json
import string
import time
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from core.jobs import CancelToken, ProgressFn, check
from core.training.common import (TINY, RunLog, TrainConfig, TrainResult, TrainingError, autocast, base_model_dir,
                                  lr_at, pick_device, seed_everything)
from core.training.data import Example
from core.training.reranker import _batches, _param_groups, listwise_loss

__all__ = ["LateInteractionModel", "train_late_interaction", "maxsim", "distill_kl_loss", "contrastive_scores",
           "EMBEDDING_DIM", "QUERY_PREFIX", "DOCUMENT_PREFIX"]

EMBEDDING_DIM = 128
QUERY_PREFIX = "[unused0]"
DOCUMENT_PREFIX = "[unused1]"
SKIPLIST_WORDS = list(string.punctuation)


def maxsim(q: torch.Tensor, d: torch.Tensor, d_mask: torch.Tensor) -> torch.Tensor:
    """MaxSim of every query against every passage.

    ``q``: (B, Lq, dim); ``d``: (M, Ld, dim); ``d_mask``: (M, Ld), true for tokens that count.
    Returns (B, M).
    """
    sim = torch.einsum("bqh,mth->bmqt", q, d)
    sim = sim.masked_fill(~d_mask[None, :, None, :], -1e4)
    return sim.amax(dim=-1).sum(dim=-1)


def contrastive_scores(q: torch.Tensor, d: torch.Tensor, d_mask: torch.Tensor,
                       group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(all scores (B, B*group), each query's own group (B, group)); passages come grouped per query."""
    scores = maxsim(q, d, d_mask)
    b = q.shape[0]
    own = scores.view(b, b, group)[torch.arange(b, device=q.device), torch.arange(b, device=q.device)]
    return scores, own


def distill_kl_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) over each query's (positive, negatives), both as softmax distributions."""
    return F.kl_div(F.log_softmax(student.float(), dim=-1), F.softmax(teacher.float(), dim=-1), reduction="batchmean")


class LateInteractionModel(torch.nn.Module):
    """BERT encoder + bias-free projection, with ColBERT tokenisation; loads and saves PyLate folders."""

    def __init__(self, bert, tokenizer, linear: torch.nn.Linear, *, query_length: int = 32, doc_length: int = 256,
                 query_prefix: str = QUERY_PREFIX, document_prefix: str = DOCUMENT_PREFIX,
                 skiplist_words: Sequence[str] = SKIPLIST_WORDS, do_query_expansion: bool = True,
                 attend_to_expansion_tokens: bool = False) -> None:
        super().__init__()
        self.bert, self.tok, self.linear = bert, tokenizer, linear
        self.query_length, self.doc_length = query_length, doc_length
        self.query_prefix, self.document_prefix = query_prefix, document_prefix
        self.skiplist_words = list(skiplist_words)
        self.do_query_expansion, self.attend_to_expansion_tokens = do_query_expansion, attend_to_expansion_tokens
        self.q_id = tokenizer.convert_tokens_to_ids(query_prefix)
        self.d_id = tokenizer.convert_tokens_to_ids(document_prefix)
        if self.q_id == tokenizer.unk_token_id or self.d_id == tokenizer.unk_token_id:
            raise TrainingError(f"the tokenizer has no {query_prefix} / {document_prefix} tokens")
        self.mask_id = tokenizer.mask_token_id
        self.pad_id = tokenizer.pad_token_id or 0
        self.skip_ids = sorted({i for i in (tokenizer.convert_tokens_to_ids(w) for w in self.skiplist_words)
                                if i != tokenizer.unk_token_id})

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_base(cls, base: str | Path, *, dim: int = EMBEDDING_DIM, query_length: int = 32,
                  doc_length: int = 256) -> "LateInteractionModel":
        """MiniLM (or any BERT folder) with a fresh projection to ``dim``."""
        from transformers import AutoModel, AutoTokenizer

        bert = AutoModel.from_pretrained(str(base))
        tok = AutoTokenizer.from_pretrained(str(base))
        linear = torch.nn.Linear(bert.config.hidden_size, dim, bias=False)
        return cls(bert, tok, linear, query_length=query_length, doc_length=doc_length)

    @classmethod
    def load(cls, folder: str | Path) -> "LateInteractionModel":
        """A PyLate folder (as ``save`` writes it, or PyLate's own)."""
        from safetensors.torch import load_file
        from transformers import AutoModel, AutoTokenizer

        folder = Path(folder)
        cfg_path = folder / "config_sentence_transformers.json"
        dense = folder / "1_Dense"
        if not cfg_path.is_file() or not (dense / "model.safetensors").is_file():
            raise TrainingError(f"{folder} is not a PyLate late-interaction folder "
                                "(config_sentence_transformers.json and 1_Dense/model.safetensors needed)")
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        bert = AutoModel.from_pretrained(str(folder))
        tok = AutoTokenizer.from_pretrained(str(folder))
        weight = load_file(str(dense / "model.safetensors"))["linear.weight"]
        linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        with torch.no_grad():
            linear.weight.copy_(weight)
        return cls(bert, tok, linear, query_length=int(cfg.get("query_length", 32)),
                   doc_length=int(cfg.get("document_length", 256)),
                   query_prefix=cfg.get("query_prefix", QUERY_PREFIX),
                   document_prefix=cfg.get("document_prefix", DOCUMENT_PREFIX),
                   skiplist_words=cfg.get("skiplist_words", SKIPLIST_WORDS),
                   do_query_expansion=bool(cfg.get("do_query_expansion", True)),
                   attend_to_expansion_tokens=bool(cfg.get("attend_to_expansion_tokens", False)))

    def save(self, folder: str | Path, *, extra: dict | None = None) -> Path:
        """Write the PyLate folder (weights on the CPU, fp32)."""
        from safetensors.torch import save_file

        folder = Path(folder)
        (folder / "1_Dense").mkdir(parents=True, exist_ok=True)
        was = self.linear.weight.device
        self.to("cpu")
        self.bert.save_pretrained(str(folder))
        self.tok.save_pretrained(str(folder))
        save_file({"linear.weight": self.linear.weight.detach().float().contiguous()},
                  str(folder / "1_Dense" / "model.safetensors"))
        self.to(was)
        (folder / "1_Dense" / "config.json").write_text(json.dumps({
            "in_features": self.linear.in_features, "out_features": self.linear.out_features, "bias": False,
            "activation_function": "torch.nn.modules.linear.Identity", "module_input_name": "token_embeddings"},
            indent=2), encoding="utf-8")
        (folder / "modules.json").write_text(json.dumps([
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Dense", "type": "sentence_transformers.models.Dense"}], indent=2),
            encoding="utf-8")
        (folder / "sentence_bert_config.json").write_text(json.dumps(
            {"max_seq_length": self.doc_length, "do_lower_case": False}, indent=2), encoding="utf-8")
        (folder / "config_sentence_transformers.json").write_text(json.dumps({
            "prompts": {}, "default_prompt_name": None,
            "query_prefix": self.query_prefix, "document_prefix": self.document_prefix,
            "query_length": self.query_length, "document_length": self.doc_length,
            "attend_to_expansion_tokens": self.attend_to_expansion_tokens, "skiplist_words": self.skiplist_words,
            "do_query_expansion": self.do_query_expansion}, indent=2), encoding="utf-8")
        if extra is not None:
            (folder / "sift_training.json").write_text(json.dumps(extra, indent=2), encoding="utf-8")
        return folder

    # ------------------------------------------------------------------ encoding

    def _ids(self, texts: Sequence[str], length: int, prefix_id: int) -> list[list[int]]:
        enc = self.tok(list(texts), add_special_tokens=True, truncation=True, max_length=length - 1)["input_ids"]
        return [ids[:1] + [prefix_id] + ids[1:] for ids in enc]

    def tokenize_queries(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Query ids padded to ``query_length`` with [MASK]; attention only on the real tokens."""
        rows = self._ids(texts, self.query_length, self.q_id)
        width = self.query_length if self.do_query_expansion else max(len(r) for r in rows)
        pad = self.mask_id if self.do_query_expansion else self.pad_id
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        attn = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = torch.tensor(r)
            attn[i, :len(r)] = 1
        score_mask = torch.ones_like(attn, dtype=torch.bool) if self.do_query_expansion else attn.bool()
        if self.attend_to_expansion_tokens:
            attn.fill_(1)
        return {"input_ids": ids, "attention_mask": attn, "score_mask": score_mask}

    def tokenize_docs(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Passage ids cut to ``doc_length``; the score mask drops padding and punctuation."""
        rows = self._ids(texts, self.doc_length, self.d_id)
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        attn = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = torch.tensor(r)
            attn[i, :len(r)] = 1
        keep = attn.bool()
        if self.skip_ids:
            keep &= ~torch.isin(ids, torch.tensor(self.skip_ids))
        return {"input_ids": ids, "attention_mask": attn, "score_mask": keep}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Normalised token vectors (B, L, dim)."""
        h = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                      token_type_ids=torch.zeros_like(input_ids)).last_hidden_state
        return F.normalize(self.linear(h).float(), p=2, dim=-1)

    def encode(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        dev = self.linear.weight.device
        vecs = self(batch["input_ids"].to(dev), batch["attention_mask"].to(dev))
        return vecs, batch["score_mask"].to(dev)

    @torch.no_grad()
    def score(self, query: str, passages: Sequence[str], *, batch: int = 32) -> list[float]:
        """MaxSim of ``query`` against each passage."""
        was = self.training
        self.eval()
        q, qm = self.encode(self.tokenize_queries([query]))
        q = q * qm[..., None]
        out: list[float] = []
        for i in range(0, len(passages), batch):
            d, dm = self.encode(self.tokenize_docs(passages[i:i + batch]))
            out.extend(maxsim(q, d, dm)[0].cpu().tolist())
        self.train(was)
        return out


def train_late_interaction(cfg: TrainConfig, *, examples: Sequence[Example] | None = None,
                           progress: ProgressFn | None = None, cancel: CancelToken | None = None) -> TrainResult:
    """Train the late-interaction model from ``cfg.base`` (default: the bundled MiniLM); save a PyLate folder."""
    if cfg.tiny:
        cfg = replace(cfg, **TINY)
    out = Path(cfg.out).expanduser()
    device = pick_device(cfg.device)
    seed_everything(cfg.seed)
    if examples is None:
        from core.training.prepare import prepare_examples

        examples = prepare_examples(cfg, progress=progress, cancel=cancel)
    if not examples:
        raise TrainingError("no training examples")
    model = LateInteractionModel.from_base(base_model_dir(cfg.base), query_length=cfg.query_length,
                                           doc_length=cfg.doc_length).to(device)
    model.train()
    opt = torch.optim.AdamW(_param_groups(model, ("linear",), cfg.lr, cfg.head_lr_mult, cfg.weight_decay), lr=cfg.lr,
                            foreach=True)
    n = 1 + cfg.negatives
    log = RunLog(out, cfg.steps, cfg.log_every, progress, "train late-interaction")
    meta = {"kind": "late-interaction", **cfg.to_json(), "examples": len(examples)}
    (out / "training_args.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    t0 = time.monotonic()
    batches = _batches(examples, min(cfg.batch, len(examples)), cfg.seed)
    for step in range(cfg.steps):
        check(cancel)
        mult = lr_at(step, cfg.steps, cfg.warmup)
        for g in opt.param_groups:
            g["lr"] = g["base_lr"] * mult
        batch = next(batches)
        qb = model.tokenize_queries([e.query for e in batch])
        db = model.tokenize_docs([d for e in batch for d in (e.positive, *e.negatives[:cfg.negatives])])
        with autocast(device):
            q, qm = model.encode(qb)
            d, dm = model.encode(db)
        q = q * qm[..., None]
        scores, own = contrastive_scores(q, d, dm, n)
        target = torch.arange(len(batch), device=scores.device) * n
        loss_c = F.cross_entropy(scores, target)
        loss = loss_c
        parts = {"contrastive": loss_c.item(), "listwise": listwise_loss(own.detach()).item()}
        if cfg.teacher != "none" and all(e.teacher is not None for e in batch):
            teacher = torch.tensor([list(e.teacher[:n]) for e in batch], dtype=torch.float32, device=scores.device)
            loss_d = distill_kl_loss(own, teacher * cfg.teacher_scale)
            loss = loss + cfg.distill_weight * loss_d
            parts["distill_kl"] = loss_d.item()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        log.step(step, loss.item(), opt.param_groups[0]["lr"], **parts)
        if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps:
            model.save(out / f"checkpoint-{step + 1}", extra={**meta, "step": step + 1})
    model.save(out, extra={**meta, "step": cfg.steps})
    return TrainResult(out, cfg.steps, len(examples), log.first, log.last, time.monotonic() - t0, device,
                       tuple(log.losses))
