"""The knowledge-base store: schema and migrations, add/replace/remove across every index,
crash repair (simulated and a real SIGKILL), reindex, locking, filters, pages and words."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import zlib

import numpy as np
import pytest

import core.store.store as store_mod
from core.errors import Cancelled, StoreError
from core.jobs import CancelToken
from core.store.db import (MIGRATIONS, Migrations, decode_words, encode_words, migrate, open_db)
from core.store.fts import ChunkFilter
from core.store.store import Store
from core.store.vectors import SIDECAR_NAME, read_info
from core.types import Chunk, ChunkSpan, Heading, ParsedDocument, ParsedPage, Word
from tests.conftest import ROOT

DIM = 32
MODEL = "fake-hash-32"


def embed(texts: list[str]) -> np.ndarray:
    """A deterministic stand-in for a model: hashed bag of words, so shared words mean nearby vectors."""
    out = np.zeros((len(texts), DIM), dtype=np.float32)
    for i, t in enumerate(texts):
        for w in t.lower().split():
            out[i, zlib.crc32(w.encode()) % DIM] += 1.0
        out[i, zlib.crc32(t.encode()) % DIM] += 0.1  # no two texts identical
    return out


def make_doc(path: str, page_texts: list[str], *, heading: str = "") -> tuple[ParsedDocument, list[Chunk]]:
    """A parsed document with word boxes, one chunk per page (and a second for long pages)."""
    pages = []
    chunks = []
    for n, text in enumerate(page_texts, start=1):
        words, pos = [], 0
        for i, w in enumerate(text.split()):
            s = text.index(w, pos)
            pos = s + len(w)
            words.append(Word(w, (10.0 + s, 20.0 * n, 10.0 + pos, 20.0 * n + 12.5), s, pos))
        pages.append(ParsedPage(n, 612.0, 792.0, text, tuple(words),
                                (Heading(heading, 1, 0, len(heading)),) if heading else ()))
        chunks.append(Chunk(text, (ChunkSpan(n, 0, len(text)),), heading, n_tokens=len(words)))
    return ParsedDocument(path, "pdf", tuple(pages), title=path.rsplit("/", 1)[-1],
                          metadata={"author": "test"}), chunks


def add(st: Store, path: str, page_texts: list[str], **kw) -> int:
    parsed, chunks = make_doc(path, page_texts)
    return st.add_document(parsed, chunks, embed([c.text for c in chunks]), path=path,
                           sha256=f"sha-{path}", size=len(path), mtime=1.5, **kw)


def replace(st: Store, old: int, path: str, page_texts: list[str], **kw) -> int:
    parsed, chunks = make_doc(path, page_texts)
    return st.replace_document(old, parsed, chunks, embed([c.text for c in chunks]), path=path,
                               sha256=f"sha2-{path}", size=2, mtime=2.5, **kw)


def open_store(folder, **kw) -> Store:
    return Store.open(folder, dim=DIM, model_id=MODEL, **kw)


def assert_consistent(st: Store) -> None:
    c = st.counts()
    assert c.consistent, c
    live = {cid for cid, _ in st.search_dense(np.ones(DIM), 10_000)}
    assert live == {r[0] for r in st.db.execute("SELECT id FROM chunks")}  # no orphan, none missing
    st.db.execute("INSERT INTO chunks_fts (chunks_fts, rank) VALUES ('integrity-check', 1)")
    st.db.execute("INSERT INTO chunks_fts_cjk (chunks_fts_cjk) VALUES ('integrity-check')")


TEXTS = {
    "/docs/alpha.pdf": ["solar panels convert sunlight into electricity", "battery storage smooths supply"],
    "/docs/beta.pdf": ["the river delta floods every spring", "farmers plant rice after the flood"],
    "/docs/gamma.pdf": ["熊猫生活在中国的山区，以竹子为食。", "pandas eat bamboo in the mountains"],
}


@pytest.fixture
def kb(tmp_path):
    st = open_store(tmp_path / "kb")
    ids = {p: add(st, p, t) for p, t in TEXTS.items()}
    yield st, ids
    st.close()


# ------------------------------------------------------------------ schema and migrations


def test_fresh_store_schema_and_migrations_recorded(tmp_path):
    st = open_store(tmp_path / "kb")
    names = set(st.db.table_names())
    assert {"documents", "pages", "chunks", "chunks_fts", "chunks_fts_cjk", "_migrations", "kb_meta"} <= names
    rows = list(st.db.execute("SELECT migration_set, name FROM _migrations"))
    assert rows == [("sift", m.name) for m in MIGRATIONS.steps]
    assert st.db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS.steps)
    assert st.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert st.db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert st.db.execute("PRAGMA busy_timeout").fetchone()[0] > 0
    st.close()
    st = open_store(tmp_path / "kb")  # reopening runs nothing again
    assert migrate(st.db) == []
    assert list(st.db.execute("SELECT migration_set, name FROM _migrations")) == rows
    st.close()


def test_custom_migrations_run_once_in_order(tmp_path):
    calls = []
    steps = Migrations("plugin")

    @steps
    def m001_table(db):
        calls.append("m001")
        db.execute("CREATE TABLE plugin_t (x INTEGER)")

    @steps
    def m002_row(db):
        calls.append("m002")
        db.execute("INSERT INTO plugin_t VALUES (1)")

    db = open_db(tmp_path)
    assert steps.pending(db) == ["m001_table", "m002_row"]
    assert steps.apply(db) == ["m001_table", "m002_row"]
    assert steps.apply(db) == []
    assert calls == ["m001", "m002"]
    assert steps.applied(db) == ["m001_table", "m002_row"]
    with pytest.raises(ValueError):
        steps(m001_table)  # a name may be used once
    db.close()


def test_failed_migration_leaves_nothing_behind(tmp_path):
    steps = Migrations("broken")

    @steps
    def m001_half(db):
        db.execute("CREATE TABLE half (x)")
        raise RuntimeError("boom")

    db = open_db(tmp_path)
    with pytest.raises(RuntimeError):
        steps.apply(db)
    assert "half" not in db.table_names()
    assert steps.applied(db) == []
    db.close()


def test_new_store_reports_created(tmp_path):
    st = open_store(tmp_path / "kb")
    assert st.last_check.vectors == "created"
    st.close()
    st = open_store(tmp_path / "kb")
    assert st.last_check.vectors == "ok"
    st.close()


def test_a_file_that_is_not_a_database_is_a_store_error(tmp_path):
    (tmp_path / "kb").mkdir()
    (tmp_path / "kb" / "sift.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="sift.db"):
        open_store(tmp_path / "kb")
    (tmp_path / "kb" / "sift.db").unlink()
    open_store(tmp_path / "kb").close()  # the failed open released the folder lock


def test_newer_schema_is_refused(tmp_path):
    st = open_store(tmp_path / "kb")
    st.db.execute("INSERT INTO _migrations VALUES ('sift', 'm999_from_the_future', 'x')")
    st.close()
    with pytest.raises(StoreError, match="newer Sift"):
        open_store(tmp_path / "kb")


# ------------------------------------------------------------------ add / replace / remove


def test_add_writes_every_index(kb):
    st, ids = kb
    assert_consistent(st)
    c = st.counts()
    assert (c.documents, c.chunks, c.cjk_chunks) == (3, 6, 1)
    doc = st.find_by_path("/docs/alpha.pdf")
    assert doc.id == ids["/docs/alpha.pdf"] and doc.state == "ready" and doc.error is None
    assert (doc.n_pages, doc.n_chunks, doc.kind, doc.name) == (2, 2, "pdf", "alpha.pdf")
    assert doc.metadata == {"author": "test"} and doc.sha256 == "sha-/docs/alpha.pdf" and doc.mtime == 1.5
    assert [d.path for d in st.list_documents()] == list(TEXTS)
    assert [d.id for d in st.find_by_sha("sha-/docs/beta.pdf")] == [ids["/docs/beta.pdf"]]
    assert st.find_by_sha("nope") == [] and st.find_by_path("/nope") is None


def test_bm25_and_dense_find_the_document(kb):
    st, ids = kb
    (cid, _), *_ = st.search_bm25("how do solar panels make electricity", 3)
    assert st.get_chunks([cid])[0].doc_id == ids["/docs/alpha.pdf"]
    (cid, score), *_ = st.search_dense(embed(["farmers plant rice after the flood"])[0], 3)
    assert st.get_chunks([cid])[0].text == "farmers plant rice after the flood"
    assert score == pytest.approx(1.0, abs=0.01)
    (cid, _), *_ = st.search_bm25("熊猫吃什么", 3)
    assert st.get_chunks([cid])[0].doc_id == ids["/docs/gamma.pdf"]


def test_replace_swaps_versions_everywhere(kb):
    st, ids = kb
    old = ids["/docs/beta.pdf"]
    old_chunks = [c.id for c in st.document_chunks(old)]
    new = replace(st, old, "/docs/beta.pdf", ["glaciers retreat as summers warm", "meltwater feeds lakes",
                                              "冰川融化"])
    assert new != old
    assert st.get_document(old) is None and st.get_chunks(old_chunks) == []
    assert st.find_by_path("/docs/beta.pdf").id == new
    assert st.find_by_path("/docs/beta.pdf").sha256 == "sha2-/docs/beta.pdf"
    assert st.search_bm25("river delta floods", 10, doc_ids=[old]) == []
    assert not {c for c, _ in st.search_dense(np.ones(DIM), 100)} & set(old_chunks)
    (cid, _), *_ = st.search_bm25("glacier retreat", 3)
    assert st.get_chunks([cid])[0].doc_id == new
    c = st.counts()
    assert (c.documents, c.chunks, c.cjk_chunks) == (3, 7, 2)
    assert_consistent(st)


def test_remove_cascades_to_every_index(kb):
    st, ids = kb
    gamma = ids["/docs/gamma.pdf"]
    chunk_ids = [c.id for c in st.document_chunks(gamma)]
    assert st.remove_document(gamma) is True
    assert st.remove_document(gamma) is False
    assert st.get_page(gamma, 1) is None and st.get_chunks(chunk_ids) == []
    assert st.db.execute("SELECT count(*) FROM pages WHERE doc_id = ?", [gamma]).fetchone()[0] == 0
    assert st.search_bm25("熊猫", 5) == [] and st.search_bm25("bamboo", 5) == []
    c = st.counts()
    assert (c.documents, c.chunks, c.cjk_chunks, c.fts_cjk) == (2, 4, 0, 0)
    assert c.vectors_deleted == 2
    assert_consistent(st)


def test_ids_are_never_reused(tmp_path):
    st = open_store(tmp_path / "kb")
    a = add(st, "/a.pdf", ["one"])
    first_chunk = st.document_chunks(a)[0].id
    st.remove_document(a)
    b = add(st, "/a.pdf", ["one"])
    assert b > a and st.document_chunks(b)[0].id > first_chunk
    st.close()


def test_sql_delete_outside_the_store_cleans_fts(kb, tmp_path):
    """Triggers keep the FTS indexes right even for a delete from the sqlite3 shell."""
    st, ids = kb
    folder = st.folder
    st.close()
    con = sqlite3.connect(folder / "sift.db")
    con.execute("PRAGMA foreign_keys = ON")
    con.execute("DELETE FROM documents WHERE id = ?", [ids["/docs/gamma.pdf"]])
    con.commit()
    con.close()
    st = open_store(folder)
    assert st.last_check.fts_rebuilt is False
    assert st.last_check.vectors == "repaired" and st.last_check.removed == 2
    assert_consistent(st)
    st.close()


def test_chunks_are_immutable(kb):
    st, _ = kb
    with pytest.raises(sqlite3.IntegrityError, match="immutable"):
        st.db.execute("UPDATE chunks SET text = 'changed' WHERE id = (SELECT min(id) FROM chunks)")


def test_add_over_a_ready_path_is_refused(kb):
    st, _ = kb
    with pytest.raises(StoreError, match="replace_document"):
        add(st, "/docs/alpha.pdf", ["again"])
    assert st.counts().documents == 3


def test_register_set_state_then_add_keeps_the_id(tmp_path):
    st = open_store(tmp_path / "kb")
    q = st.register("/in/report.pdf", kind="pdf", sha256="abc", size=10, mtime=1.0)
    assert st.find_by_path("/in/report.pdf").state == "queued"
    st.set_state(q, "failed", "page 3: cannot decode image")
    rec = st.get_document(q)
    assert (rec.state, rec.error) == ("failed", "page 3: cannot decode image")
    assert [d.id for d in st.list_documents(state="failed")] == [q]
    st.set_state(q, "parsing")
    assert st.get_document(q).error is None
    assert st.register("/in/report.pdf") == q
    doc = add(st, "/in/report.pdf", ["quarterly report text"])
    assert doc == q and st.get_document(q).state == "ready"
    with pytest.raises(ValueError):
        st.set_state(q, "exploded")
    with pytest.raises(StoreError):
        st.set_state(12345, "ready")
    assert_consistent(st)
    st.close()


def test_failed_write_rolls_back_everything(kb):
    st, _ = kb
    before = st.counts()
    gen = st.db.execute("SELECT value FROM kb_meta WHERE key = 'generation'").fetchone()[0]

    def boom(db, doc_id):
        db.execute("CREATE TABLE t_x (a)")
        raise RuntimeError("table writer failed")

    with pytest.raises(RuntimeError):
        add(st, "/docs/delta.pdf", ["never stored"], in_transaction=boom)
    assert st.counts() == before and st.find_by_path("/docs/delta.pdf") is None
    assert "t_x" not in st.db.table_names()
    assert st.db.execute("SELECT value FROM kb_meta WHERE key = 'generation'").fetchone()[0] == gen
    with pytest.raises(ValueError):  # wrong embedding shape: rejected before anything is written
        parsed, chunks = make_doc("/docs/e.pdf", ["x", "y"])
        st.add_document(parsed, chunks, np.zeros((1, DIM)), path="/docs/e.pdf", sha256="", size=0, mtime=0)
    assert st.counts() == before


def test_in_transaction_callback_sees_the_new_id(kb):
    st, _ = kb
    seen = []
    doc = add(st, "/docs/t.csv", ["table chunk"], in_transaction=lambda db, d: seen.append(
        (d, db.execute("SELECT state FROM documents WHERE id = ?", [d]).fetchone()[0])))
    assert seen == [(doc, "ready")]


def test_sql_tables_written_and_dropped_with_their_document(tmp_path):
    """The callback writes a document's SQL table in the same transaction and names it by
    the new id; the chunks' table names are renamed to match."""
    st = open_store(tmp_path / "kb")

    def write_table(db, doc_id):
        name = f"t_{doc_id}_sales"
        db.execute(f"CREATE TABLE {name} (row_num INTEGER PRIMARY KEY, amount REAL)")
        db.execute(f"INSERT INTO {name} VALUES (1, 5.0)")
        return {"sales": name}

    parsed = ParsedDocument("/s.csv", "csv")
    chunk = Chunk("amount 5.0", (), kind="table", table="sales", row_ids=(1,))
    doc = st.add_document(parsed, [chunk], embed([chunk.text]), path="/s.csv", sha256="s", size=1, mtime=0,
                          in_transaction=write_table)
    assert st.document_chunks(doc)[0].table == f"t_{doc}_sales"
    assert st.db.execute(f"SELECT amount FROM t_{doc}_sales").fetchone()[0] == 5.0
    new = st.replace_document(doc, parsed, [chunk], embed([chunk.text]), path="/s.csv", sha256="s2", size=1,
                              mtime=0, in_transaction=lambda db, d: (db.execute(f"DROP TABLE t_{doc}_sales"),
                                                                     write_table(db, d))[1])
    assert st.document_chunks(new)[0].table == f"t_{new}_sales"
    assert {t for t in st.db.table_names() if t.startswith("t_")} == {f"t_{new}_sales"}
    st.remove_document(new, in_transaction=lambda db, d: db.execute(f"DROP TABLE t_{d}_sales"))
    assert not [t for t in st.db.table_names() if t.startswith("t_")]
    assert_consistent(st)
    st.close()


def test_document_without_chunks(tmp_path):
    st = open_store(tmp_path / "kb")
    parsed = ParsedDocument("/empty.pdf", "pdf", (ParsedPage(1, 100.0, 100.0, "", ()),))
    doc = st.add_document(parsed, [], np.zeros((0, DIM)), path="/empty.pdf", sha256="e", size=0, mtime=0)
    assert st.get_document(doc).n_chunks == 0
    assert_consistent(st)
    st.close()


# ------------------------------------------------------------------ pages, words, chunks


def test_page_words_round_trip(kb):
    st, ids = kb
    parsed, _ = make_doc("/docs/alpha.pdf", TEXTS["/docs/alpha.pdf"])
    page = st.get_page(ids["/docs/alpha.pdf"], 2)
    assert page == parsed.pages[1]
    assert st.get_page(ids["/docs/alpha.pdf"], 9) is None


def test_words_encoding():
    text = "ﬁnd the oﬃce"
    words = (Word("find", (1.25, 2.5, 3.75, 4.0), 0, 1), Word("the", (5.0, 2.5, 9.0, 4.0), 2, 5),
             Word("office", (10.0, 2.5, 20.5, 4.0), 6, 10))
    blob = encode_words(words, text)
    assert decode_words(blob, text) == words  # texts differ from the page text: stored
    plain = "a bb ccc"
    pw = tuple(Word(w, (float(i), 0.0, float(i + 1), 1.0), s, s + len(w))
               for i, (w, s) in enumerate([("a", 0), ("bb", 2), ("ccc", 5)]))
    pblob = encode_words(pw, plain)
    assert len(pblob) == 8 + 24 * 3  # header + float32 rects + int32 offsets, no texts
    assert decode_words(pblob, plain) == pw
    assert decode_words(encode_words((), ""), "") == ()
    assert decode_words(None, "") == ()


def test_get_chunks_in_asked_order(kb):
    st, ids = kb
    chunks = st.document_chunks(ids["/docs/beta.pdf"])
    assert [c.ord for c in chunks] == [0, 1]
    got = st.get_chunks([chunks[1].id, 999_999, chunks[0].id])
    assert [c.id for c in got] == [chunks[1].id, chunks[0].id]
    c = got[0]
    assert c.spans == (ChunkSpan(2, 0, len(c.text)),) and c.kind == "text" and c.n_tokens == 6
    assert c.as_chunk() == make_doc("/docs/beta.pdf", TEXTS["/docs/beta.pdf"])[1][1]
    emb = st.get_embeddings([c.id])
    assert emb.shape == (1, DIM) and np.linalg.norm(emb[0]) == pytest.approx(1.0, abs=1e-5)


def test_table_chunk_fields(tmp_path):
    st = open_store(tmp_path / "kb")
    parsed = ParsedDocument("/t.csv", "csv")
    chunk = Chunk("year | revenue\n2020 | 5", (), kind="table", table="t_1_sheet1", row_ids=(1, 2, 3))
    doc = st.add_document(parsed, [chunk], embed([chunk.text]), path="/t.csv", sha256="t", size=1, mtime=0)
    (sc,) = st.document_chunks(doc)
    assert (sc.kind, sc.table, sc.row_ids, sc.spans) == ("table", "t_1_sheet1", (1, 2, 3), ())
    assert st.search_bm25("revenue", 3, where=ChunkFilter(page_from=1)) == []  # no pages: outside any range
    st.close()


# ------------------------------------------------------------------ dense search and filters


def test_dense_search_filters_exact_and_hnsw(kb, monkeypatch):
    st, ids = kb
    alpha, beta = ids["/docs/alpha.pdf"], ids["/docs/beta.pdf"]
    q = embed(["solar panels convert sunlight into electricity"])[0]
    assert st.get_chunks([st.search_dense(q, 1)[0][0]])[0].doc_id == alpha
    for limit in (4096, 0):  # exact over stored embeddings, then hnswlib's filter
        monkeypatch.setattr(store_mod, "EXACT_SEARCH_LIMIT", limit)
        hits = st.search_dense(q, 5, doc_ids=[beta])
        assert len(hits) == 2 and {st.get_chunks([c])[0].doc_id for c, _ in hits} == {beta}
        page2 = st.search_dense(q, 5, where=ChunkFilter(page_from=2, page_to=2))
        assert {st.get_chunks([c])[0].spans[0].page for c, _ in page2} == {2} and len(page2) == 3
        assert st.search_dense(q, 5, doc_ids=[]) == []
        assert st.search_dense(q, 5, doc_ids=[424242]) == []
    assert len(st.search_dense(q, 1000)) == 6  # k > count
    assert st.search_dense(q, 0) == []


def test_empty_store_searches(tmp_path):
    st = open_store(tmp_path / "kb")
    assert st.search_dense(np.ones(DIM), 10) == []
    assert st.search_bm25("anything at all", 10) == []
    assert st.counts().consistent
    st.close()


# ------------------------------------------------------------------ crash repair and reindex


def _crash(st: Store) -> None:
    """What a kill leaves: the database as committed, the index files as last saved."""
    st._closed = True
    st.db.close()
    st._folder_lock.release()


def test_crash_after_commit_before_index_save_is_repaired(kb):
    st, ids = kb
    folder = st.folder
    saved = read_info(folder)
    with pytest.raises(KeyboardInterrupt):
        with st.bulk():  # graph saves deferred ...
            new = add(st, "/docs/late.pdf", ["wind turbines spin in the storm"])
            st.remove_document(ids["/docs/alpha.pdf"])
            _crash(st)  # ... and the process dies before the block ends
            raise KeyboardInterrupt
    assert read_info(folder) == saved  # the graph on disk still has alpha and lacks the new doc
    st = open_store(folder)
    rep = st.last_check
    assert (rep.vectors, rep.added, rep.removed) == ("repaired", 1, 2)
    assert_consistent(st)
    (cid, _), *_ = st.search_dense(embed(["wind turbines spin in the storm"])[0], 1)
    assert st.get_chunks([cid])[0].doc_id == new
    st.close()
    st = open_store(folder)
    assert st.last_check.vectors == "ok"
    st.close()


@pytest.mark.parametrize("damage", ["sidecar", "graph", "truncated", "garbage", "other-model"])
def test_damaged_index_files_are_rebuilt(kb, damage):
    st, _ = kb
    folder = st.folder
    q = embed(["pandas eat bamboo in the mountains"])[0]
    before = st.search_dense(q, 6)
    st.close()
    info = read_info(folder)
    if damage == "sidecar":
        (folder / SIDECAR_NAME).unlink()
    elif damage == "graph":
        (folder / info.file).unlink()
    elif damage == "truncated":
        data = (folder / info.file).read_bytes()
        (folder / info.file).write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        (folder / info.file).write_bytes(np.random.default_rng(0).bytes(200))
    else:
        side = json.loads((folder / SIDECAR_NAME).read_text())
        side["model_id"] = "another-model"
        (folder / SIDECAR_NAME).write_text(json.dumps(side))
    st = open_store(folder)
    assert st.last_check.vectors == "rebuilt"
    assert_consistent(st)
    assert [c for c, _ in st.search_dense(q, 6)] == [c for c, _ in before]
    st.close()


def test_fts_drift_is_rebuilt_on_open(kb):
    st, _ = kb
    folder = st.folder
    st.db.execute("DELETE FROM chunks_fts_cjk")
    st.close()
    st = open_store(folder)
    assert st.last_check.fts_rebuilt
    assert_consistent(st)
    st.close()


def test_reindex_gives_identical_results(kb):
    st, _ = kb
    queries = ["solar electricity", "rice flood", "熊猫 竹子", "bamboo pandas mountains"]
    bm = [st.search_bm25(q, 5) for q in queries]
    dense = [st.search_dense(v, 5) for v in embed(queries)]
    seen = []
    counts = st.reindex(progress=seen.append)
    assert counts.consistent and counts.vectors_deleted == 0
    assert {p.stage for p in seen} == {"fts", "vectors"} and seen[-1].done == seen[-1].total == 6
    assert [st.search_bm25(q, 5) for q in queries] == bm
    assert [[c for c, _ in st.search_dense(v, 5)] for v in embed(queries)] == [[c for c, _ in d] for d in dense]
    assert read_info(st.folder).count == 6


def test_cancelled_reindex_keeps_the_old_index(kb):
    st, _ = kb
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        st.reindex(cancel=token)
    assert_consistent(st)


def test_many_deletes_compact_the_graph(tmp_path, monkeypatch):
    monkeypatch.setattr(store_mod, "COMPACT_MIN_DELETED", 4)
    st = open_store(tmp_path / "kb")
    docs = [add(st, f"/d{i}.pdf", [f"document number {i}", f"second page {i}"]) for i in range(6)]
    for d in docs[:5]:
        st.remove_document(d)
    c = st.counts()
    assert c.vectors == 2 and c.vectors_deleted <= 4
    assert_consistent(st)
    st.close()


def test_bulk_saves_once_at_the_end(tmp_path):
    st = open_store(tmp_path / "kb")
    gen0 = read_info(st.folder).generation
    with st.bulk():
        for i in range(3):
            add(st, f"/b{i}.pdf", [f"bulk text {i}"])
        assert read_info(st.folder).generation == gen0
    assert read_info(st.folder).generation == gen0 + 3 and read_info(st.folder).count == 3
    st.close()


# ------------------------------------------------------------------ locking, model, threads


def test_second_writer_is_refused_with_the_folder_named(tmp_path):
    st = open_store(tmp_path / "kb")
    with pytest.raises(StoreError, match=str(tmp_path / "kb")):
        open_store(tmp_path / "kb")
    st.close()
    open_store(tmp_path / "kb").close()


def test_another_model_is_refused_once_vectors_exist(tmp_path):
    Store.open(tmp_path / "kb", dim=DIM, model_id="a").close()
    Store.open(tmp_path / "kb", dim=16, model_id="b").close()  # nothing stored yet: fine
    st = Store.open(tmp_path / "kb", dim=DIM, model_id="c")
    add(st, "/x.pdf", ["text"])
    st.close()
    with pytest.raises(StoreError, match="embedded with c"):
        Store.open(tmp_path / "kb", dim=DIM, model_id="d")


def test_closed_store_refuses_work(tmp_path):
    st = open_store(tmp_path / "kb")
    st.close()
    st.close()
    with pytest.raises(StoreError, match="closed"):
        st.search_bm25("x", 1)


def test_store_used_from_another_thread(kb):
    st, _ = kb
    out = []
    t = threading.Thread(target=lambda: out.append((add(st, "/thread.pdf", ["from a worker"]),
                                                    st.search_bm25("worker", 1))))
    t.start()
    t.join()
    assert out and out[0][1]
    assert_consistent(st)


# ------------------------------------------------------------------ a real kill -9

CHILD = r"""
import sys
import numpy as np
from core.store.store import Store
from tests.core.test_store import add, open_store

st = open_store(sys.argv[1])
start = int(sys.argv[2])
alive = []
for i in range(start, start + 100_000):
    if i % 4 == 3:
        with st.bulk():  # some writes leave the graph behind until the block ends
            alive.append(add(st, f"/k/{i}a.pdf", [f"kill test {i} first", f"page two of {i}"]))
            print(f"add {alive[-1]}", flush=True)
            alive.append(add(st, f"/k/{i}b.pdf", [f"kill test {i} second"]))
            print(f"add {alive[-1]}", flush=True)
    else:
        alive.append(add(st, f"/k/{i}.pdf", [f"kill test {i}", "another page", "third page"]))
        print(f"add {alive[-1]}", flush=True)
    if i % 5 == 4:
        gone = alive.pop(0)
        st.remove_document(gone)
        print(f"rm {gone}", flush=True)
"""


@pytest.mark.skipif(os.name == "nt", reason="SIGKILL is POSIX")
def test_kill_minus_9_loses_nothing_committed(tmp_path):
    folder = tmp_path / "kb"
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    committed: set[int] = set()
    for round_, lines_before_kill in enumerate((23, 41)):
        proc = subprocess.Popen([sys.executable, str(script), str(folder), str(round_ * 1000)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
        seen = 0
        for line in proc.stdout:
            op, doc = line.split()
            (committed.add if op == "add" else committed.discard)(int(doc))
            seen += 1
            if seen >= lines_before_kill:
                break
        assert seen >= lines_before_kill, proc.stderr.read()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
        assert proc.returncode == -signal.SIGKILL

        con = sqlite3.connect(folder / "sift.db")
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        con.close()
        st = open_store(folder)  # the lock died with the child
        assert_consistent(st)
        present = {d.id for d in st.list_documents()}
        assert committed <= present  # anything reported is there; at most one more was mid-report
        assert len(present - committed) <= 1
        committed = present
        st.close()
