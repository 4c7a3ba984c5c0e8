"""OCR of image-only pages (English and Chinese) with word boxes back in PDF points."""
from __future__ import annotations

from difflib import SequenceMatcher
from pathlib import Path

import pymupdf
import pytest

from core.ingest.ocr import MAX_SIDE_PX, default_engine, ocr_page, render_page
from core.ingest.pdf import parse_pdf

ENGLISH = ["Sift reads scanned pages with optical character recognition.",
           "The quick brown fox jumps over the lazy dog."]
CHINESE = ["知识库可以回答问题并引用来源。", "本地优先的桌面知识库"]


def _scanned_pdf(path: Path) -> pymupdf.Document:
    """A born-digital source, and beside it the same pages as pictures only (no text layer)."""
    src = pymupdf.open()
    page = src.new_page(width=595, height=842)
    for i, line in enumerate(ENGLISH):
        page.insert_text((72, 100 + 30 * i), line, fontsize=14)
    page = src.new_page(width=595, height=842)
    for i, line in enumerate(CHINESE):
        page.insert_text((72, 120 + 40 * i), line, fontsize=18, fontname="china-s")
    out = pymupdf.open()
    for p in src:
        pix = p.get_pixmap(dpi=150)
        scan = out.new_page(width=p.rect.width, height=p.rect.height)
        scan.insert_image(scan.rect, pixmap=pix)
    out.save(path)
    return src


def _similar(a: str, b: str) -> float:
    return SequenceMatcher(None, a, b).ratio()


def _center(r) -> tuple[float, float]:
    return ((r[0] + r[2]) / 2, (r[1] + r[3]) / 2)


@pytest.fixture(scope="module")
def scanned(tmp_path_factory):
    path = tmp_path_factory.mktemp("ocr") / "scanned.pdf"
    src = _scanned_pdf(path)
    assert all(not p.get_text().strip() for p in pymupdf.open(path)), "the scan has no text layer"
    return src, parse_pdf(path, ocr_dpi=150)


@pytest.mark.slow
def test_english_scan_is_read_with_word_boxes(scanned):
    src, doc = scanned
    page = doc.pages[0]
    assert page.ocr
    lines = page.text.split("\n")
    assert len(lines) == 2
    for got, want in zip(lines, ENGLISH):
        assert _similar(got, want) > 0.9, (got, want)
    for w in page.words:
        assert page.text[w.start:w.end] == w.text
    # Each recognised word sits where the source drew it (within a few points).
    for name in ("quick", "optical", "lazy"):
        word = next(w for w in page.words if w.text.strip(".") == name)
        [hit] = src[0].search_for(name)
        (cx, cy), (ex, ey) = _center(word.rect), _center(tuple(hit))
        assert abs(cx - ex) < 6 and abs(cy - ey) < 6, (name, word.rect, hit)


@pytest.mark.slow
def test_chinese_scan_is_read_character_by_character(scanned):
    src, doc = scanned
    page = doc.pages[1]
    assert page.ocr
    lines = page.text.split("\n")
    assert len(lines) == 2
    for got, want in zip(lines, CHINESE):
        assert _similar(got, want) > 0.8, (got, want)
    assert " " not in page.text  # no spaces invented between Chinese characters
    for w in page.words:
        assert page.text[w.start:w.end] == w.text
    for ch in "知识库桌面":
        word = next(w for w in page.words if w.text == ch)
        hit = src[1].search_for(ch)[0]
        (cx, cy), (ex, ey) = _center(word.rect), _center(tuple(hit))
        assert abs(cx - ex) < 8 and abs(cy - ey) < 8, (ch, word.rect, hit)


@pytest.mark.slow
def test_engine_is_loaded_once_and_ocr_page_works_on_its_own(scanned, tmp_path):
    assert default_engine() is default_engine()
    path = tmp_path / "one.pdf"
    _scanned_pdf(path)
    text, words = ocr_page(pymupdf.open(path)[0], dpi=150)
    assert "quick brown fox" in text
    assert all(text[w.start:w.end] == w.text for w in words)


@pytest.mark.slow
def test_a_small_text_layer_over_a_scan_is_kept_beside_the_ocr(tmp_path):
    path = tmp_path / "scan.pdf"
    _scanned_pdf(path)
    doc = pymupdf.open(path)
    doc[0].insert_text((500, 820), "Page 1", fontsize=9)  # a stamp added after scanning
    stamped = tmp_path / "stamped.pdf"
    doc.save(stamped)
    page = parse_pdf(stamped, max_pages=1, ocr_dpi=150).pages[0]
    assert page.ocr
    assert "quick brown fox" in page.text
    assert page.text.count("Page 1") == 1
    stamp = next(w for w in page.words if w.text == "Page")
    assert stamp.rect[0] == pytest.approx(500, abs=1)


def test_without_ocr_a_scan_gives_an_empty_page_and_a_warning(tmp_path):
    path = tmp_path / "scan.pdf"
    _scanned_pdf(path)
    doc = parse_pdf(path, ocr=False)
    assert [p.text for p in doc.pages] == ["", ""]
    assert not any(p.ocr for p in doc.pages)
    assert any("without a text layer" in w and "not OCR'd" in w for w in doc.warnings)


def test_huge_pages_render_within_the_pixel_cap():
    doc = pymupdf.open()
    page = doc.new_page(width=14400, height=7200)  # the largest page PDF allows, 200 inches wide
    page.insert_text((100, 200), "poster", fontsize=120)
    image, scale = render_page(page, dpi=300)
    assert max(image.shape[:2]) <= MAX_SIDE_PX
    assert image.shape[1] == pytest.approx(14400 * scale, abs=1)


def test_blank_page_is_not_sent_to_ocr(tmp_path):
    doc = pymupdf.open()
    doc.new_page()
    path = tmp_path / "blank.pdf"
    doc.save(path)
    parsed = parse_pdf(path)  # OCR on, but nothing is drawn: no engine is needed
    assert parsed.pages[0].text == "" and not parsed.pages[0].ocr
    assert parsed.warnings == ()


def test_progress_says_which_pages_were_ocrd(tmp_path):
    """The window shows a document as "ocr" (not "parsing") while its scanned pages are read."""
    path = tmp_path / "scan.pdf"
    _scanned_pdf(path).close()
    seen: list[str] = []
    parse_pdf(path, max_pages=1, ocr_dpi=150, progress=lambda p: seen.append(p.message))
    assert seen and seen[-1].endswith("page 1 of 1 (OCR)"), seen
