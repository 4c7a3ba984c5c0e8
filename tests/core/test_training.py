"""Training the reranker and the late-interaction model: tiny CPU runs on the real data and weights."""
from __future__ import annotations

import argparse
import json
import math

import pytest

torch = pytest.importorskip("torch")

from core.training import TINY, TrainConfig  # noqa: E402
from core.training.data import (TrainingDataError, is_research_only, load_examples, mine_with_hybrid,  # noqa: E402
                                read_examples, save_examples)
from core.training.late_interaction import LateInteractionModel, train_late_interaction  # noqa: E402
from core.training.reranker import train_reranker  # noqa: E402


@pytest.fixture(scope="module")
def train_dir(shared_dir):
    return shared_dir / "train"


@pytest.fixture(scope="module")
def examples(train_dir):
    return load_examples(train_dir, limit=2, negatives=2, seed=1)


@pytest.fixture(scope="module")
def mined(examples, tmp_path_factory):
    """The same examples with negatives and teacher scores from Sift's hybrid search."""
    from core.kb import KnowledgeBase

    with KnowledgeBase(tmp_path_factory.mktemp("mining-kb")) as kb:
        return mine_with_hybrid(examples, kb, negatives=2)


@pytest.fixture(scope="module")
def tiny_late(train_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("late")
    return train_late_interaction(TrainConfig(out=str(out), tiny=True, data=str(train_dir)))


# ----------------------------------------------------------------------------- data


def test_examples_have_one_positive_and_fixed_negatives(examples):
    assert len(examples) == 2
    for e in examples:
        assert e.query and e.positive and len(e.negatives) == 2
        assert e.positive not in e.negatives
        assert not is_research_only(e.source)


def test_chinese_examples_load_and_research_only_sources_stay_out(train_dir):
    zh = load_examples(train_dir, langs=("zh",), limit=6, negatives=2)
    assert len(zh) == 6 and all(e.positive_id.startswith("zh:") for e in zh)
    assert not any(is_research_only(e.source) for e in zh)  # ChineseSquad (no licence) is left out
    both = load_examples(train_dir, langs=("en", "zh"), limit=8, negatives=2)
    assert {e.positive_id[:3] for e in both} == {"en:", "zh:"}


def test_unknown_language_and_missing_folder_are_known_errors(tmp_path):
    with pytest.raises(TrainingDataError, match="language"):
        load_examples(tmp_path, langs=("fr",))
    with pytest.raises(TrainingDataError, match="en_train.jsonl.gz"):
        load_examples(tmp_path, limit=2)


def test_hybrid_mining_gives_negatives_and_teacher_scores(mined, examples):
    for m, e in zip(mined, examples):
        assert m.query == e.query and m.positive == e.positive
        assert len(m.negatives) == 2 and m.positive not in m.negatives
        assert m.teacher is not None and len(m.teacher) == 3
        # the hybrid finds the positive passage for its own question among a few dozen passages
        assert m.teacher[0] > 0


def test_examples_file_round_trip(mined, tmp_path):
    path = save_examples(tmp_path / "mined.jsonl.gz", mined)
    assert read_examples(path) == list(mined)


# ----------------------------------------------------------------------------- reranker


def test_reranker_loss_falls_on_a_fixed_batch_and_the_folder_reloads(mined, tmp_path):
    from sentence_transformers import CrossEncoder
    from transformers import AutoModelForSequenceClassification

    cfg = TrainConfig(out=str(tmp_path / "rr"), steps=4, batch=2, negatives=2, lr=2e-4, warmup=0.0,
                      query_length=12, doc_length=32, teacher="hybrid", log_every=1, device="cpu")
    res = train_reranker(cfg, examples=mined)
    assert len(res.losses) == 4 and all(math.isfinite(x) for x in res.losses)
    assert res.losses[-1] < res.losses[0]
    log = [json.loads(line) for line in (res.out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4] and "margin_mse" in log[0]

    hf = AutoModelForSequenceClassification.from_pretrained(str(res.out))
    assert hf.config.num_labels == 1 and hf.config.architectures == ["BertForSequenceClassification"]
    ce = CrossEncoder(str(res.out), device="cpu")
    e = mined[0]
    scores = ce.predict([(e.query, e.positive), (e.query, e.negatives[0])])
    assert len(scores) == 2 and all(math.isfinite(float(s)) for s in scores)


# ----------------------------------------------------------------------------- late interaction


def test_query_augmentation_and_markers(tiny_late):
    m = LateInteractionModel.load(tiny_late.out)
    q = m.tokenize_queries(["what is aspirin"])
    assert q["input_ids"].shape == (1, TINY["query_length"])
    ids = q["input_ids"][0].tolist()
    assert ids[0] == m.tok.cls_token_id and ids[1] == m.q_id
    assert ids[-1] == m.tok.mask_token_id and q["attention_mask"][0, -1] == 0 and bool(q["score_mask"][0, -1])
    d = m.tokenize_docs(["Aspirin, a drug."])
    assert d["input_ids"][0, 1] == m.d_id
    comma = m.tok.convert_tokens_to_ids(",")
    assert not d["score_mask"][0][d["input_ids"][0] == comma].any()


def test_late_interaction_loss_falls_with_hybrid_distillation(mined, tmp_path):
    cfg = TrainConfig(out=str(tmp_path / "li"), steps=4, batch=2, negatives=2, lr=2e-4, warmup=0.0,
                      query_length=12, doc_length=32, teacher="hybrid", log_every=1, device="cpu")
    res = train_late_interaction(cfg, examples=mined)
    assert all(math.isfinite(x) for x in res.losses)
    assert res.losses[-1] < res.losses[0]
    assert "distill_kl" in json.loads((res.out / "train_log.jsonl").read_text().splitlines()[0])


def test_tiny_late_interaction_saves_a_pylate_folder(tiny_late):
    from sentence_transformers import SentenceTransformer

    out = tiny_late.out
    assert tiny_late.steps == TINY["steps"] and tiny_late.device == "cpu"
    cfg = json.loads((out / "config_sentence_transformers.json").read_text())
    assert cfg["query_prefix"] == "[unused0]" and cfg["document_prefix"] == "[unused1]"
    assert cfg["do_query_expansion"] is True and cfg["query_length"] == TINY["query_length"]
    dense = json.loads((out / "1_Dense" / "config.json").read_text())
    assert (dense["in_features"], dense["out_features"], dense["bias"]) == (384, 128, False)

    st = SentenceTransformer(str(out), device="cpu")
    tokens = st.encode(["aspirin lowers the risk of heart attacks"], output_value="token_embeddings")[0]
    assert tokens.shape[-1] == 128

    m = LateInteractionModel.load(out)
    s = m.score("does aspirin prevent heart attacks?",
                ["Daily low-dose aspirin lowers the risk of a first heart attack.", "Rain falls in Spain."])
    assert len(s) == 2 and all(math.isfinite(x) for x in s)
    assert 0 < max(s) <= TINY["query_length"] + 1e-3  # MaxSim of unit vectors: at most one per query token


# ----------------------------------------------------------------------------- CLI


def test_cli_tiny_reranker(train_dir, tmp_path, capsys):
    from app.cli_train import main

    assert main(["train", "reranker", "--tiny", "--out", str(tmp_path / "rr"), "--data", str(train_dir), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == TINY["steps"] and summary["device"] == "cpu" and summary["examples"] == TINY["limit"]
    assert (tmp_path / "rr" / "model.safetensors").is_file() and (tmp_path / "rr" / "tokenizer.json").is_file()


def test_cli_settings_and_known_errors(tmp_path, capsys):
    from app.cli_train import _config, add_parsers, main

    ap = argparse.ArgumentParser(prog="sift")
    ap.add_argument("--kb")
    add_parsers(ap.add_subparsers(dest="command"))
    cfg = _config(ap.parse_args(["train", "late-interaction", "--out", str(tmp_path / "x"), "--teacher", "hybrid"]))
    assert (cfg.lr, cfg.teacher, cfg.langs, cfg.tiny) == (1e-5, "hybrid", ("en",), False)
    assert _config(ap.parse_args(["train", "reranker", "--lr", "3e-6", "--out", str(tmp_path / "x")])).lr == 3e-6
    with pytest.raises(SystemExit):
        ap.parse_args(["train", "reranker", "--langs", "fr"])
    assert main(["train", "reranker", "--tiny", "--out", str(tmp_path / "y"), "--examples",
                 str(tmp_path / "missing.jsonl.gz")]) == 1
    assert "no such examples file" in capsys.readouterr().err
