"""One place that creates onnxruntime sessions and says which device it chose.

CUDA (fp16) when onnxruntime-gpu finds a GPU and the user allows it; CPU otherwise, in int8
where that was measured to keep the model's retrieval quality (``core.models.quantize``) and
fp32 elsewhere. The fp16 and int8 variants are made once beside the fp32 file and reused.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from core.errors import ModelError

__all__ = ["SessionInfo", "create_session", "fp16_variant", "padded_feeds", "PRECISIONS"]

PRECISIONS = ("auto", "fp32", "int8")
"""``auto``: fp16 on CUDA; on CPU int8 when the caller says the model is verified, else fp32.
``fp32`` forces fp32 on any device. ``int8`` asks for int8 on CPU (CUDA still runs fp16)."""

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SessionInfo:
    """Which provider a session runs on, and why."""

    provider: str
    """The first execution provider in use, e.g. ``CUDAExecutionProvider``."""
    device: str
    """``cuda`` or ``cpu``."""
    precision: str
    """``fp16``, ``fp32`` or ``int8``."""
    model_path: str
    reason: str
    """A short line saying why this device was chosen."""


def fp16_variant(model: Path, model_type: str | None = None) -> Path:
    """Optimised fp16 copy of ``model`` (inputs and outputs stay fp32), made once."""
    out = model.with_name(model.stem + ".fp16.onnx")
    if out.exists():
        return out
    from onnxruntime.transformers.optimizer import optimize_model

    kind = model_type if model_type in ("bert", "bart", "gpt2", "t5") else "bert"
    opt = optimize_model(str(model), model_type=kind, num_heads=0, hidden_size=0, use_gpu=True)
    opt.convert_float_to_float16(keep_io_types=True)
    tmp = out.with_name(out.name + f".{os.getpid()}.tmp")
    opt.save_model_to_file(str(tmp))
    os.replace(tmp, out)
    return out


def _threads() -> int:
    env = os.environ.get("SIFT_THREADS")
    if env:
        return max(1, int(env))
    return max(1, os.cpu_count() or 1)


def create_session(model: Path, *, device: str = "auto", model_type: str | None = None,
                   precision: str = "auto", int8_verified: bool = False):
    """Return ``(InferenceSession, SessionInfo)`` for ``model`` on the best allowed device.

    ``precision`` is one of ``PRECISIONS``; ``int8_verified`` says the int8 copy of this model
    kept its retrieval quality, which is what lets ``auto`` pick int8 on CPU.
    """
    import onnxruntime as ort

    model = Path(model)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if not model.exists():
        raise ModelError(f"{model}: ONNX model file not found", fix="run ./scripts/run --setup-only")
    available = ort.get_available_providers()
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    if device != "cpu" and "CUDAExecutionProvider" in available:
        path, prec = model, "fp32"
        if precision != "fp32":
            try:
                path, prec = fp16_variant(model, model_type), "fp16"
            except Exception as e:  # an fp16 conversion failure costs speed, not correctness
                log.warning("fp16 conversion of %s failed (%s); running fp32 on CUDA", model, e)
        try:
            sess = ort.InferenceSession(str(path), opts, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
            if sess.get_providers()[0] == "CUDAExecutionProvider":
                return sess, SessionInfo("CUDAExecutionProvider", "cuda", prec, str(path),
                                         "onnxruntime-gpu found a CUDA device")
            reason = "CUDAExecutionProvider was listed but did not start (see onnxruntime's log)"
        except Exception as e:
            reason = f"CUDA session failed to start: {e}"
        if device == "gpu":
            raise ModelError(f"{model}: GPU requested but {reason}", fix="set device to auto or cpu")
    elif device == "gpu":
        raise ModelError("GPU requested but onnxruntime has no CUDAExecutionProvider "
                         f"(available: {', '.join(available)})",
                         fix="on a machine with an NVIDIA GPU, run ./scripts/run --setup-only to install onnxruntime-gpu")
    else:
        reason = "device set to cpu" if device == "cpu" else "no CUDAExecutionProvider in this onnxruntime"
    opts.intra_op_num_threads = _threads()
    # Idle pool threads sleep rather than spin: while a folder is added, the parse worker needs
    # those cores. On 2 cores this made ingest ~10% faster and embedding no slower (bench/ingest.py).
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    path, prec = model, "fp32"
    if precision == "int8" or (precision == "auto" and int8_verified):
        from core.models.quantize import int8_variant

        try:
            path, prec = int8_variant(model, model_type), "int8"
            reason += "; int8 " + ("as asked" if precision == "int8" else "(its retrieval quality was checked)")
        except Exception as e:  # like fp16 above: a failed quantization costs speed, not correctness
            log.warning("int8 quantization of %s failed (%s); running fp32 on CPU", model, e)
            reason += f"; fp32 because int8 quantization failed ({type(e).__name__})"
    elif precision == "fp32":
        reason += "; fp32 as asked"
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return sess, SessionInfo("CPUExecutionProvider", "cpu", prec, str(path), reason)


def padded_feeds(encodings, pad_id: int, input_names) -> dict:
    """ONNX inputs for a batch of ``tokenizers`` encodings, padded to the longest member (not to
    the model maximum); ``token_type_ids`` only when the model takes them."""
    import numpy as np

    n = len(encodings)
    width = max(len(e.ids) for e in encodings)
    ids = np.full((n, width), pad_id, dtype=np.int64)
    mask = np.zeros((n, width), dtype=np.int64)
    types = np.zeros((n, width), dtype=np.int64)
    for i, e in enumerate(encodings):
        L = len(e.ids)
        ids[i, :L] = e.ids
        mask[i, :L] = 1
        types[i, :L] = e.type_ids
    feeds = {"input_ids": ids, "attention_mask": mask}
    if "token_type_ids" in input_names:
        feeds["token_type_ids"] = types
    return feeds
