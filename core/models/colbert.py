"""ColBERT late-interaction encoders, loaded from a local checkpoint folder and run with onnxruntime.

Two on-disk formats are read, as their own libraries define them:

PyLate (``modules.json`` naming a Transformer and one or more ``Dense`` modules)
    The encoder lies at the root; each ``N_Dense/`` holds ``config.json`` (``in_features``,
    ``out_features``, ``bias``, identity activation) and its ``linear.weight`` (``linear.bias``).
    ``config_sentence_transformers.json`` gives ``query_prefix`` / ``document_prefix`` (default
    ``"[Q] "`` / ``"[D] "``, tokens PyLate added to the tokenizer), ``query_length`` (32),
    ``document_length`` (180), ``attend_to_expansion_tokens`` (false), ``do_query_expansion``
    (true) and ``skiplist_words`` (``string.punctuation``).
colbert-ai / Stanford (``config.json`` with architecture ``HF_ColBERT``)
    BERT weights under ``bert.*`` and the projection as ``linear.weight`` in the same file;
    ``artifact.metadata`` gives ``query_token_id`` / ``doc_token_id`` (``[unused0]`` /
    ``[unused1]``), ``query_maxlen``, ``doc_maxlen`` and ``attend_to_mask_tokens``.

Encoding follows both libraries (they agree): the marker token goes right after ``[CLS]``;
a query is truncated to ``query_length`` tokens and, with query expansion, padded to exactly that
length with ``[MASK]`` tokens, which the real tokens do not attend to unless
``attend_to_expansion_tokens`` is set but which are all kept as query vectors; a document is
truncated to ``document_length`` and its punctuation tokens (the skiplist) are dropped after
encoding. Every kept vector is the projection of the last hidden state, L2-normalised.

``export_colbert`` exports the encoder with optimum (``core.models.export``, content-hash keyed)
and appends the projection to the ONNX graph as one MatMul (plus bias), so one session yields the
projected token vectors (``token_embeddings``). No ColBERT weights can be had where Sift is built;
the tests build a small randomly initialised checkpoint in PyLate format and check this encoder
against a PyTorch reference.
"""
from __future__ import annotations

import json
import shutil
import string
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from core.errors import UnsupportedModel
from core.jobs import CancelToken, ProgressFn, check, report
from core.models.embedder import TokenVectors
from core.models.onnx_runtime import SessionInfo, create_session

__all__ = ["ColbertConfig", "ColBERT", "read_colbert_config", "export_colbert", "is_colbert_folder",
           "COLBERT_EXPORT_FORMAT", "MAX_DIM"]

COLBERT_EXPORT_FORMAT = 1
MAX_DIM = 128
"""Token vectors wider than this are refused: the compressed store budgets for at most 128."""
OUTPUT = "token_embeddings"
_META = "sift-colbert.json"


@dataclass(frozen=True)
class ColbertConfig:
    """How a checkpoint wants queries and documents tokenized."""

    format: str
    """``pylate`` or ``colbert-ai``."""
    query_prefix: str
    """Marker token put after ``[CLS]`` in queries (empty: none)."""
    document_prefix: str
    query_length: int
    """Query length in tokens, marker included; queries are padded to it with [MASK] (expansion)."""
    document_length: int
    attend_to_expansion_tokens: bool
    do_query_expansion: bool
    skiplist_words: tuple[str, ...]
    """Tokens dropped from documents after encoding (punctuation)."""
    dim: int
    """Width of the projected token vectors."""
    dense: tuple[str, ...] = field(default=())
    """Where the projection weights lie (relative paths), in order."""


def is_colbert_folder(folder: Path) -> bool:
    """Whether ``folder`` looks like a PyLate or colbert-ai checkpoint (or a Sift ColBERT export)."""
    folder = Path(folder)
    if (folder / _META).exists():
        return True
    try:
        return _format(folder) is not None
    except (OSError, ValueError):
        return False


def _format(folder: Path) -> str | None:
    mods = folder / "modules.json"
    if mods.exists():
        entries = json.loads(mods.read_text())
        if any("Dense" in str(e.get("type", "")) for e in entries):
            return "pylate"
    cfg = folder / "config.json"
    if cfg.exists():
        arch = json.loads(cfg.read_text()).get("architectures") or []
        if "HF_ColBERT" in arch:
            return "colbert-ai"
    return None


def _load_tensors(path: Path) -> dict[str, np.ndarray]:
    if path.suffix == ".safetensors":
        from safetensors.numpy import load_file

        return load_file(str(path))
    import torch  # only when exporting a checkpoint saved as pytorch_model.bin

    state = torch.load(str(path), map_location="cpu", weights_only=True)
    return {k: v.float().numpy() for k, v in state.items()}


def _weights_file(folder: Path) -> Path:
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).exists():
            return folder / name
    raise UnsupportedModel(f"{folder}: no weights (model.safetensors or pytorch_model.bin)")


def read_colbert_config(folder: Path) -> tuple[ColbertConfig, list[tuple[np.ndarray, np.ndarray | None]]]:
    """The checkpoint's encoding settings and its projection layers ``[(weight [out, in], bias)]``."""
    folder = Path(folder)
    fmt = _format(folder)
    if fmt is None:
        raise UnsupportedModel(f"{folder}: not a ColBERT checkpoint (expected a PyLate folder with modules.json "
                               "and a Dense module, or a colbert-ai folder whose config.json names HF_ColBERT)")
    layers: list[tuple[np.ndarray, np.ndarray | None]] = []
    if fmt == "pylate":
        st = folder / "config_sentence_transformers.json"
        c = json.loads(st.read_text()) if st.exists() else {}
        dense_paths = []
        for e in sorted(json.loads((folder / "modules.json").read_text()), key=lambda e: int(e.get("idx", 0))):
            if "Dense" not in str(e.get("type", "")):
                continue
            d = folder / e["path"]
            dcfg = json.loads((d / "config.json").read_text())
            act = str(dcfg.get("activation_function", "torch.nn.modules.linear.Identity"))
            if not act.endswith("Identity"):
                raise UnsupportedModel(f"{d}: projection activation {act} is not supported (only Identity)")
            t = _load_tensors(_weights_file(d))
            w = t.get("linear.weight")
            if w is None:
                raise UnsupportedModel(f"{d}: no linear.weight in its weights")
            layers.append((w.astype(np.float32), t.get("linear.bias")))
            dense_paths.append(e["path"])
        cfg = ColbertConfig(
            format=fmt,
            query_prefix=c.get("query_prefix", "[Q] ") if c.get("query_prefix") is not None else "[Q] ",
            document_prefix=c.get("document_prefix", "[D] ") if c.get("document_prefix") is not None else "[D] ",
            query_length=int(c.get("query_length") or 32), document_length=int(c.get("document_length") or 180),
            attend_to_expansion_tokens=bool(c.get("attend_to_expansion_tokens") or False),
            do_query_expansion=bool(c.get("do_query_expansion", True)),
            skiplist_words=tuple(c.get("skiplist_words") or list(string.punctuation)),
            dim=int(layers[-1][0].shape[0]), dense=tuple(dense_paths))
    else:
        meta_path = folder / "artifact.metadata"
        m = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        t = _load_tensors(_weights_file(folder))
        w = t.get("linear.weight")
        if w is None:
            raise UnsupportedModel(f"{folder}: HF_ColBERT weights without linear.weight")
        layers.append((w.astype(np.float32), t.get("linear.bias")))
        cfg = ColbertConfig(
            format=fmt, query_prefix=m.get("query_token_id") or "[unused0]",
            document_prefix=m.get("doc_token_id") or "[unused1]",
            query_length=int(m.get("query_maxlen") or 32), document_length=int(m.get("doc_maxlen") or 180),
            attend_to_expansion_tokens=bool(m.get("attend_to_mask_tokens") or False),
            do_query_expansion=True,
            skiplist_words=tuple(string.punctuation) if m.get("mask_punctuation", True) else (),
            dim=int(w.shape[0]), dense=(_weights_file(folder).name,))
    for (w, b), (w2, _) in zip(layers, layers[1:]):
        if w2.shape[1] != w.shape[0]:
            raise UnsupportedModel(f"{folder}: projection layers do not chain ({w.shape} then {w2.shape})")
    if cfg.dim > MAX_DIM:
        raise UnsupportedModel(f"{folder}: token vectors of {cfg.dim} dimensions; Sift stores at most {MAX_DIM}")
    return cfg, layers


def _append_projection(src: Path, dst: Path, layers: list[tuple[np.ndarray, np.ndarray | None]]) -> None:
    """Copy of the encoder graph whose output is the projected last hidden state."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(src))
    g = model.graph
    cur = "last_hidden_state"
    if cur not in {o.name for o in g.output}:
        raise UnsupportedModel(f"{src}: the exported encoder has no last_hidden_state output")
    for i, (w, b) in enumerate(layers):
        wname = f"colbert_linear_{i}_weight"
        g.initializer.append(numpy_helper.from_array(np.ascontiguousarray(w.T, dtype=np.float32), wname))
        out = OUTPUT if i == len(layers) - 1 and b is None else f"colbert_linear_{i}_mm"
        g.node.append(helper.make_node("MatMul", [cur, wname], [out], name=f"colbert_linear_{i}"))
        cur = out
        if b is not None:
            bname = f"colbert_linear_{i}_bias"
            g.initializer.append(numpy_helper.from_array(np.asarray(b, dtype=np.float32), bname))
            out = OUTPUT if i == len(layers) - 1 else f"colbert_linear_{i}_out"
            g.node.append(helper.make_node("Add", [cur, bname], [out], name=f"colbert_linear_{i}_add"))
            cur = out
    del g.output[:]
    g.output.append(helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT,
                                                  ["batch_size", "sequence_length", int(layers[-1][0].shape[0])]))
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))


def export_colbert(folder: Path | str, *, progress: ProgressFn | None = None,
                   cancel: CancelToken | None = None) -> Path:
    """Export a ColBERT checkpoint once (cached by content hash) and return the export folder:
    ``model.onnx`` (output ``token_embeddings``), ``tokenizer.json`` and ``sift-colbert.json``."""
    from core.models.export import _cache_root, export_onnx, folder_sha256, staged_folder

    folder = Path(folder).expanduser().resolve()
    if (folder / _META).exists() and (folder / "model.onnx").exists():
        return folder
    cfg, layers = read_colbert_config(folder)
    digest = folder_sha256(folder)
    target = _cache_root() / f"{digest[:20]}-colbert"
    meta_path = target / _META
    if meta_path.exists() and json.loads(meta_path.read_text()).get("format_version") == COLBERT_EXPORT_FORMAT:
        return target
    t0 = time.monotonic()
    encoder = export_onnx(folder, "feature-extraction", progress=progress, cancel=cancel)
    check(cancel)
    report(progress, "export", 0, 1, message=f"adding the ColBERT projection of {folder.name}", started=t0)
    with staged_folder(target) as tmp:
        _append_projection(encoder / "model.onnx", tmp / "model.onnx", layers)
        for name in ("tokenizer.json", "config.json", "tokenizer_config.json", "special_tokens_map.json"):
            if (encoder / name).exists():
                shutil.copy2(encoder / name, tmp / name)
        enc_meta = json.loads((encoder / "sift-export.json").read_text())
        meta = {"format_version": COLBERT_EXPORT_FORMAT, "source": str(folder), "source_sha256": digest,
                "model_type": enc_meta.get("model_type"), "config": asdict(cfg)}
        (tmp / _META).write_text(json.dumps(meta, indent=2))
    report(progress, "export", 1, 1, message=f"exported {folder.name}", started=t0)
    return target


class ColBERT:
    """A ColBERT encoder: per-token vectors for queries and documents."""

    def __init__(self, folder: Path | str, *, device: str = "auto", precision: str = "auto",
                 progress: ProgressFn | None = None, cancel: CancelToken | None = None) -> None:
        from tokenizers import Tokenizer

        exported = export_colbert(folder, progress=progress, cancel=cancel)
        meta = json.loads((exported / _META).read_text())
        c = dict(meta["config"])
        c["skiplist_words"] = tuple(c["skiplist_words"])
        c["dense"] = tuple(c.get("dense") or ())
        self.config = ColbertConfig(**c)
        self.folder = exported
        self.source_sha256: str = meta["source_sha256"]
        self.model_id = f"colbert:{self.source_sha256[:20]}"
        """Names the weights; stored token vectors are only valid for the model that made them."""
        self.dim = self.config.dim
        self.session, self.info = create_session(exported / "model.onnx", device=device,
                                                 model_type=meta.get("model_type"), precision=precision)
        self.session_info: SessionInfo = self.info
        self._input_names = {i.name for i in self.session.get_inputs()}
        tok = Tokenizer.from_file(str(exported / "tokenizer.json"))
        tok.no_padding()
        tok.no_truncation()
        self.tokenizer = tok
        self.mask_id = self._id("[MASK]")
        pad = tok.token_to_id("[PAD]")
        self.pad_id = 0 if pad is None else pad
        self.query_prefix_id = self._id(self.config.query_prefix) if self.config.query_prefix else None
        self.document_prefix_id = self._id(self.config.document_prefix) if self.config.document_prefix else None
        skip = set()
        for w in self.config.skiplist_words:
            i = tok.token_to_id(w)
            if i is None:
                ids = tok.encode(w, add_special_tokens=False).ids
                i = ids[0] if ids else None
            if i is not None:
                skip.add(int(i))
        self.skiplist = frozenset(skip)
        self._lock = threading.Lock()

    def _id(self, token: str) -> int:
        i = self.tokenizer.token_to_id(token)
        if i is None:
            i = self.tokenizer.token_to_id(token.strip())
        if i is None:
            raise UnsupportedModel(f"{self.folder}: token {token!r} is not in the tokenizer's vocabulary")
        return int(i)

    # ----------------------------------------------------------------- tokenization

    def _tokenize(self, texts: Sequence[str], *, is_query: bool):
        """Per text: ids, attention mask, keep mask and char offsets, as PyLate/colbert-ai build them."""
        length = self.config.query_length if is_query else self.config.document_length
        prefix = self.query_prefix_id if is_query else self.document_prefix_id
        budget = length - 1 if prefix is not None else length
        self.tokenizer.enable_truncation(budget)
        try:
            encs = self.tokenizer.encode_batch(list(texts))
        finally:
            self.tokenizer.no_truncation()
        out = []
        for e in encs:
            ids = list(e.ids)
            offsets = [tuple(o) for o in e.offsets]
            special = list(e.special_tokens_mask)
            attn = [1] * len(ids)
            if prefix is not None:
                ids.insert(1, prefix)
                offsets.insert(1, (0, 0))
                special.insert(1, 1)
                attn.insert(1, 1)
            if is_query and self.config.do_query_expansion and len(ids) < length:
                n = length - len(ids)
                ids += [self.mask_id] * n
                offsets += [(0, 0)] * n
                special += [1] * n
                attn += [1 if self.config.attend_to_expansion_tokens else 0] * n
            if is_query:
                keep = [True] * len(ids)
            else:
                keep = [i not in self.skiplist for i in ids]
            out.append((ids, attn, keep, offsets, special))
        return out

    def _run(self, batch) -> list[np.ndarray]:
        n = len(batch)
        width = max(len(b[0]) for b in batch)
        ids = np.full((n, width), self.pad_id, dtype=np.int64)
        mask = np.zeros((n, width), dtype=np.int64)
        for i, (tid, attn, *_rest) in enumerate(batch):
            ids[i, :len(tid)] = tid
            mask[i, :len(tid)] = attn
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._input_names:
            feeds["token_type_ids"] = np.zeros_like(ids)
        with self._lock:
            (vecs,) = self.session.run([OUTPUT], feeds)
        return [vecs[i, :len(b[0])] for i, b in enumerate(batch)]

    def _encode(self, texts: Sequence[str], *, is_query: bool, batch_size: int,
                progress: ProgressFn | None, cancel: CancelToken | None) -> list[TokenVectors]:
        texts = list(texts)
        toks = self._tokenize(texts, is_query=is_query)
        order = sorted(range(len(texts)), key=lambda i: len(toks[i][0]))
        out: list[TokenVectors | None] = [None] * len(texts)
        t0 = time.monotonic()
        for start in range(0, len(order), batch_size):
            check(cancel)
            idx = order[start:start + batch_size]
            vecs = self._run([toks[i] for i in idx])
            for i, v in zip(idx, vecs):
                ids, _attn, keep, offsets, _special = toks[i]
                k = np.asarray(keep, dtype=bool)
                v = v[k].astype(np.float32)
                v /= np.clip(np.linalg.norm(v, axis=1, keepdims=True), 1e-12, None)
                out[i] = TokenVectors(v, np.asarray(ids, dtype=np.int64)[k],
                                      np.asarray(offsets, dtype=np.int32).reshape(-1, 2)[k])
            if not is_query:
                report(progress, "late-interaction", min(start + batch_size, len(order)), len(order),
                       unit="texts", started=t0)
        return out  # type: ignore[return-value]

    def encode_queries(self, queries: Sequence[str], *, batch_size: int = 32,
                       cancel: CancelToken | None = None) -> list[TokenVectors]:
        """Query token vectors: ``query_length`` of them with expansion (marker and [MASK]s included)."""
        return self._encode(queries, is_query=True, batch_size=batch_size, progress=None, cancel=cancel)

    def encode_documents(self, docs: Sequence[str], *, batch_size: int = 16, progress: ProgressFn | None = None,
                         cancel: CancelToken | None = None) -> list[TokenVectors]:
        """Document token vectors, punctuation dropped; offsets are char spans ((0, 0) for markers)."""
        return self._encode(docs, is_query=False, batch_size=batch_size, progress=progress, cancel=cancel)
