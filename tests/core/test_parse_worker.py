"""The parse worker: dispatch by suffix, time limits, crashes, cancelling, and every bad PDF we have."""
from __future__ import annotations

import collections
import faulthandler
import shutil
import sys
import time
from pathlib import Path

import pymupdf
import pytest

from core.errors import Cancelled, DamagedFile, FileTimeout, IngestError, UnsupportedFile
from core.ingest.worker import ParsePool, parse_file
from core.jobs import CancelToken, Progress
from core.types import ParsedDocument


# Parsers the worker runs by name: real parsing, except for files named to misbehave.
def parse_or_misbehave(path: str, **opts) -> ParsedDocument:
    name = Path(path).name
    if "hang" in name:
        time.sleep(3600)
    if "crash" in name:
        faulthandler.disable()  # keep the test output free of a fault dump
        faulthandler._sigsegv()  # a real segmentation fault, as a broken C library would cause
    return parse_file(path, **opts)


@pytest.fixture
def small_pdf(tmp_path) -> Path:
    doc = pymupdf.open()
    doc.new_page().insert_text((72, 72), "A small document for the worker.")
    path = tmp_path / "small.pdf"
    doc.save(path)
    return path


@pytest.fixture
def paper(eval_dir) -> Path:
    return eval_dir / "pdfqa" / "arxiv" / "1706.03762v7.pdf"


def test_parse_file_dispatches_by_suffix(tmp_path, small_pdf):
    doc = parse_file(small_pdf)
    assert doc.kind == "pdf" and "small document" in doc.pages[0].text
    note = tmp_path / "notes.docx"
    note.write_bytes(b"PK\x03\x04")
    with pytest.raises(UnsupportedFile) as err:
        parse_file(note)
    assert str(note) in str(err.value) and ".docx" in str(err.value)
    with pytest.raises(UnsupportedFile):
        parse_file(tmp_path / "README")
    with pytest.raises(DamagedFile):
        parse_file(tmp_path / "missing.csv")


def test_table_files_go_to_the_table_parser_in_the_worker(tmp_path):
    csv = tmp_path / "cities.csv"
    csv.write_text("city,population\nOslo,700000\nBergen,290000\n", encoding="utf-8")
    with ParsePool() as pool:
        doc = pool.parse(csv)
    assert doc.kind == "csv"
    assert doc.tables[0].rows[0] == ("Oslo", "700000")


def test_pool_result_equals_in_process_result(small_pdf, paper):
    opts = {"ocr": False, "max_pages": 4}
    with ParsePool(**opts) as pool:
        results = list(pool.imap([paper, small_pdf]))
    assert [p for p, _ in results] == [str(paper), str(small_pdf)]
    assert results[0][1] == parse_file(paper, **opts)
    assert results[1][1] == parse_file(small_pdf, **opts)


def test_tiny_time_limit_gives_file_timeout_and_the_next_file_still_parses(paper, small_pdf):
    with ParsePool(ocr=False) as pool:
        with pytest.raises(FileTimeout) as err:
            pool.parse(paper, timeout_s=0.01)
        assert str(paper) in str(err.value) and "longer than" in str(err.value)
        assert "small document" in pool.parse(small_pdf).pages[0].text


def test_hanging_parser_is_killed_and_replaced(tmp_path, small_pdf):
    hang = tmp_path / "hang.pdf"
    shutil.copy(small_pdf, hang)
    with ParsePool(timeout_s=2, parser=parse_or_misbehave) as pool:
        results = [r for _, r in pool.imap([hang, small_pdf, hang])]
    assert [type(r) for r in results] == [FileTimeout, ParsedDocument, FileTimeout]
    assert "small document" in results[1].pages[0].text


def test_crashing_parser_is_reported_and_the_pool_goes_on(tmp_path, small_pdf):
    crash = tmp_path / "crash.pdf"
    shutil.copy(small_pdf, crash)
    with ParsePool(parser=parse_or_misbehave) as pool:
        results = list(pool.imap([crash, small_pdf]))
    err = results[0][1]
    assert isinstance(err, DamagedFile) and err.reason == "the parser crashed"
    assert str(crash) in str(err)
    assert isinstance(results[1][1], ParsedDocument)


def test_progress_is_forwarded_and_cancel_stops_the_pool(paper, small_pdf):
    token = CancelToken()
    seen: list[Progress] = []

    def progress(p: Progress) -> None:
        seen.append(p)
        token.cancel()

    with ParsePool(ocr=False) as pool:
        with pytest.raises(Cancelled):
            list(pool.imap([paper, small_pdf], progress=progress, cancel=token))
        assert seen and seen[0].unit == "pages"
        assert pool.parse(small_pdf).pages  # still usable afterwards


def test_two_workers_keep_input_order(small_pdf, paper, tmp_path):
    bad = tmp_path / "bad.pdf"
    bad.write_bytes(b"%PDF-1.7 garbage")
    with ParsePool(workers=2, ocr=False, tables=False) as pool:
        results = list(pool.imap([paper, bad, small_pdf]))
    assert [p for p, _ in results] == [str(paper), str(bad), str(small_pdf)]
    assert isinstance(results[1][1], DamagedFile)


@pytest.mark.slow
def test_every_pdf_in_the_robustness_set_is_parsed_or_reported(eval_dir):
    """qpdf's test suite (damaged, encrypted, odd) and py-pdf's samples: no crash, no hang."""
    root = eval_dir / "pdfs"
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() == ".pdf")
    assert len(files) > 600
    outcome: collections.Counter[str] = collections.Counter()
    started = time.monotonic()
    with ParsePool(timeout_s=60, ocr=False, layout=False, max_pages=25) as pool:
        for path, result in pool.imap(files):
            if isinstance(result, IngestError):
                assert path in str(result), result
                assert result.reason
                outcome[type(result).__name__] += 1
            else:
                assert isinstance(result, ParsedDocument) and result.pages
                outcome["parsed"] += 1
    assert sum(outcome.values()) == len(files)
    assert outcome["parsed"] > 0.85 * len(files)
    print(f"\nrobustness: {dict(outcome)} in {time.monotonic() - started:.0f} s", file=sys.stderr)
