"""KnowledgeBase.add/remove/list/sync on real files: identity, updates, failures, cancel, kill -9."""
from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.jobs import CancelToken
from core.kb import KnowledgeBase
from core.store.sqltables import list_sql_tables
from tests.conftest import ROOT

DEMO = ROOT / "resources" / "demo"
pytestmark = pytest.mark.slow


def assert_consistent(kb: KnowledgeBase) -> None:
    c = kb.counts()
    assert c.consistent, c
    stored = sum(d.n_chunks for d in kb.list() if d.state == "ready")
    assert c.chunks == stored == c.fts == c.vectors, c


@pytest.fixture(scope="module")
def demo_kb(tmp_path_factory):
    folder = tmp_path_factory.mktemp("demo-kb")
    kb = KnowledgeBase(folder)
    rep = kb.add([DEMO])
    yield kb, rep
    kb.close()


def test_demo_documents_are_added_with_provenance(demo_kb):
    kb, rep = demo_kb
    assert not rep.failed and len(rep.by_status("added")) == 4, rep.files
    docs = {Path(d.path).name: d for d in kb.list()}
    assert all(d.state == "ready" for d in docs.values())
    assert docs["NARA2022.pdf"].n_pages == 16 and docs["NARA2022.pdf"].n_chunks > 16
    assert docs["ntsb_accidents.csv"].n_tables == 1
    assert_consistent(kb)
    # every text chunk points at page text that contains it
    nara = docs["NARA2022.pdf"]
    for ch in kb.store.document_chunks(nara.id)[:10]:
        for sp in ch.spans:
            page = kb.store.get_page(nara.id, sp.page)
            assert 0 <= sp.start < sp.end <= len(page.text)
            assert page.text[sp.start:sp.end].split()[0] in ch.text


def test_the_demo_csv_is_a_real_sql_table(demo_kb):
    kb, _ = demo_kb
    csv_doc = kb.find("ntsb_accidents.csv")
    (table,) = list_sql_tables(kb.store.db, csv_doc.id)
    assert "pilot_age" in table.columns
    ages = kb.store.db.execute(f'SELECT pilot_age FROM "{table.name}" ORDER BY pilot_age').fetchall()
    assert [a for (a,) in ages] == [32, 85]


def test_pdf_tables_become_sql_tables(demo_kb):
    kb, _ = demo_kb
    ntsb = kb.find("20071229X02007.pdf")
    tables = list_sql_tables(kb.store.db, ntsb.id)
    assert tables and all(t.page for t in tables)


def test_readding_unchanged_files_does_nothing(demo_kb):
    kb, _ = demo_kb
    before = kb.counts()
    rep = kb.add([DEMO])
    assert {o.status for o in rep.files} == {"unchanged"}
    assert kb.counts() == before


def test_changed_file_replaces_the_old_version_everywhere(tmp_path):
    src = tmp_path / "docs"
    src.mkdir()
    csv = src / "fleet.csv"
    csv.write_text("plane,seats\nPiper PA-22,4\nCessna 152,2\n")
    with KnowledgeBase(tmp_path / "kb") as kb:
        assert kb.add([csv]).by_status("added")
        old = kb.find(str(csv))
        old_tables = [t.name for t in list_sql_tables(kb.store.db, old.id)]
        csv.write_text("plane,seats\nPiper PA-22,4\nCessna 152,2\nBoeing 737,180\n")
        rep = kb.add([csv])
        assert [o.status for o in rep.files] == ["updated"]
        new = kb.find(str(csv))
        assert len(kb.list()) == 1 and new.sha256 != old.sha256
        names = {r[0] for r in kb.store.db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert not set(old_tables) & names, "the old version's SQL tables must be dropped"
        (t,) = list_sql_tables(kb.store.db, new.id)
        assert kb.store.db.execute(f'SELECT SUM(seats) FROM "{t.name}"').fetchone()[0] == 186
        assert_consistent(kb)
        hits = kb.store.search_bm25("Boeing 737", 5)
        assert hits and all(kb.store.get_chunks([cid])[0].doc_id == new.id for cid, _ in hits)


def test_same_bytes_at_another_path_is_a_duplicate(tmp_path):
    a = tmp_path / "a.pdf"
    shutil.copy(DEMO / "20080111X00040.pdf", a)
    b = tmp_path / "copy-of-a.pdf"
    shutil.copy(a, b)
    with KnowledgeBase(tmp_path / "kb") as kb:
        rep = kb.add([a, b])
        assert sorted(o.status for o in rep.files) == ["added", "duplicate"]
        assert "same content as" in rep.by_status("duplicate")[0].reason


def test_remove_takes_a_document_out_of_every_index(tmp_path):
    with KnowledgeBase(tmp_path / "kb") as kb:
        kb.add([DEMO / "ntsb_accidents.csv", DEMO / "20080111X00040.pdf"])
        doc = kb.find("ntsb_accidents.csv")
        assert kb.remove(doc.id)
        assert kb.find("ntsb_accidents.csv") is None
        assert list_sql_tables(kb.store.db, doc.id) == []
        assert_consistent(kb)
        assert not kb.remove("no-such-file.pdf")


def test_a_bad_file_fails_with_its_reason_and_the_others_go_on(tmp_path):
    bad = tmp_path / "broken.pdf"
    bad.write_bytes(b"%PDF-1.7\n" + os.urandom(2000))
    notes = tmp_path / "notes.docx"
    notes.write_bytes(b"PK")
    good = tmp_path / "fleet.csv"
    good.write_text("plane,seats\nPiper,4\n")
    with KnowledgeBase(tmp_path / "kb") as kb:
        rep = kb.add([bad, notes, good])
        by = {Path(o.path).name: o for o in rep.files}
        assert by["fleet.csv"].status == "added"
        assert by["broken.pdf"].status == "failed" and by["broken.pdf"].reason
        assert by["notes.docx"].status == "failed" and "unsupported" in by["notes.docx"].reason
        rec = kb.find(str(bad))
        assert rec.state == "failed" and rec.error
        assert_consistent(kb)


def test_progress_reports_files_pages_chunks_and_cancel_keeps_the_store_consistent(tmp_path):
    files = [DEMO / "20071229X02007.pdf", DEMO / "20080111X00040.pdf", DEMO / "NARA2022.pdf"]
    cancel = CancelToken()
    seen = []

    def progress(p):
        seen.append(p)
        if p.stage == "add" and p.detail.get("files") == 1:
            cancel.cancel()

    with KnowledgeBase(tmp_path / "kb") as kb:
        rep = kb.add(files, progress=progress, cancel=cancel)
        assert rep.cancelled
        assert rep.by_status("added") and rep.by_status("cancelled")
        adds = [p for p in seen if p.stage == "add"]
        assert adds[-1].detail["files_total"] == 3 and adds[-1].detail["pages"] == 4
        assert adds[-1].detail["chunks"] > 0 and adds[-1].total and adds[-1].eta_s is not None
        assert any(p.stage == "embed" for p in seen) and any(p.stage == "parse" for p in seen)
        assert_consistent(kb)
        states = {Path(d.path).name: d.state for d in kb.list()}
        assert states["20071229X02007.pdf"] == "ready"
        assert states["NARA2022.pdf"] == "queued"
        # the next add resumes what was left
        rep2 = kb.add(files)
        assert sorted(o.status for o in rep2.files) == ["added", "added", "unchanged"]
        assert all(d.state == "ready" for d in kb.list())
        assert_consistent(kb)


def test_sync_follows_a_folder(tmp_path):
    watched = tmp_path / "inbox"
    watched.mkdir()
    (watched / "a.csv").write_text("x,y\n1,2\n")
    (watched / "b.csv").write_text("x,y\n3,4\n")
    with KnowledgeBase(tmp_path / "kb") as kb:
        assert len(kb.sync(watched).by_status("added")) == 2
        assert kb.sync(watched).files == []  # nothing changed: nothing hashed, nothing done
        (watched / "a.csv").unlink()
        (watched / "b.csv").write_text("x,y\n3,4\n5,6\n")
        (watched / "c.csv").write_text("x,y\n7,8\n")
        rep = kb.sync(watched)
        assert sorted((Path(o.path).name, o.status) for o in rep.files) == [
            ("a.csv", "removed"), ("b.csv", "updated"), ("c.csv", "added")]
        assert sorted(Path(d.path).name for d in kb.list()) == ["b.csv", "c.csv"]
        assert_consistent(kb)


def test_kill_9_mid_ingest_loses_nothing_and_the_rerun_completes(tmp_path, eval_dir):
    src = tmp_path / "papers"
    src.mkdir()
    for f in sorted((eval_dir / "pdfqa" / "arxiv").glob("*.pdf"))[:4]:
        shutil.copy(f, src / f.name)
    kb_dir = tmp_path / "kb"
    env = {**os.environ, "SIFT_THREADS": "1"}
    proc = subprocess.Popen([str(Path(sys.executable).with_name("sift")), "--kb", str(kb_dir), "add", str(src)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=ROOT)
    db = kb_dir / "sift.db"
    deadline = time.monotonic() + 600
    ready = 0
    while time.monotonic() < deadline and proc.poll() is None:
        if db.exists():
            try:
                con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
                ready = con.execute("SELECT COUNT(*) FROM documents WHERE state='ready'").fetchone()[0]
                con.close()
            except sqlite3.OperationalError:
                ready = 0
            if ready >= 1:
                break
        time.sleep(0.2)
    assert proc.poll() is None, "ingest finished before it could be killed; use more files"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()
    with KnowledgeBase(kb_dir) as kb:
        assert_consistent(kb)
        kept = {d.path for d in kb.list() if d.state == "ready"}
        assert len(kept) >= 1
        rep = kb.add([src])
        assert not rep.failed
        assert len([d for d in kb.list() if d.state == "ready"]) == 4
        assert_consistent(kb)
