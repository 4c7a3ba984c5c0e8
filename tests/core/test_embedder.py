"""The ONNX embedder against the reference implementation, on the real bundled model."""
from __future__ import annotations

import numpy as np
import pytest

from core.models import registry
from core.models.embedder import Embedder

SENTENCES = [
    "The cat sits on the mat.",
    "A feline is resting on a rug.",
    "Quarterly revenue rose 12% on strong iPhone sales.",
    "The pilot failed to maintain directional control during the landing roll.",
    "Transformers rely entirely on attention, dispensing with recurrence and convolutions.",
    "短文本也应该得到一个向量。",
    "x",
]


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder.default(device="cpu", precision="fp32")  # the exact model; int8 is checked in test_quantize


def test_matches_sentence_transformers(embedder):
    st = pytest.importorskip("sentence_transformers")
    (folder,) = registry.source_paths(registry.get("minilm-l6"))
    ref = st.SentenceTransformer(str(folder), device="cpu").encode(SENTENCES, normalize_embeddings=True)
    ours = embedder.encode(SENTENCES).pooled
    cos = (ours * ref).sum(axis=1)
    assert cos.min() >= 0.9999, cos


def test_pooled_vectors_are_unit_length_and_order_is_kept(embedder):
    enc = embedder.encode(SENTENCES, batch_size=2)
    assert enc.pooled.shape == (len(SENTENCES), 384)
    np.testing.assert_allclose(np.linalg.norm(enc.pooled, axis=1), 1.0, atol=1e-5)
    # batching sorted by length must not change which vector belongs to which text
    one_by_one = np.stack([embedder.encode([s]).pooled[0] for s in SENTENCES])
    np.testing.assert_allclose(enc.pooled, one_by_one, atol=1e-5)


def test_related_sentences_score_higher_than_unrelated(embedder):
    v = embedder.encode(SENTENCES[:3]).pooled
    related, unrelated = float(v[0] @ v[1]), float(v[0] @ v[2])
    assert related > unrelated + 0.2


def test_token_vectors_come_from_the_same_pass(embedder):
    text = "Attention is all you need."
    enc = embedder.encode([text], tokens=True)
    tv = enc.tokens[0]
    assert tv.vectors.shape[1] == 384 and len(tv.vectors) == len(tv.ids) == len(tv.offsets)
    np.testing.assert_allclose(np.linalg.norm(tv.vectors, axis=1), 1.0, atol=1e-5)
    # special tokens are dropped and offsets point into the text
    assert [text[s:e] for s, e in tv.offsets][:2] == ["attention", "is"] or \
        [text[s:e].lower() for s, e in tv.offsets][:2] == ["attention", "is"]
    # mean of the (unnormalised) token outputs is not what we compare; the pooled vector must match encode()
    np.testing.assert_allclose(enc.pooled[0], embedder.encode([text]).pooled[0], atol=1e-6)


def test_long_text_is_truncated_to_the_model_window(embedder):
    long = "word " * 2000
    enc = embedder.encode([long], tokens=True)
    assert len(enc.tokens[0].ids) == embedder.max_length - 2 == 254
    assert embedder.count_tokens(long) > 2000


def test_empty_input(embedder):
    enc = embedder.encode([])
    assert enc.pooled.shape == (0, 384)


def test_session_says_which_device_it_chose(embedder):
    assert embedder.info.device == "cpu"
    assert embedder.info.provider == "CPUExecutionProvider"
    assert embedder.info.reason
