"""PDF parsing: exact word offsets, reading order, headings, tables, and clear errors for bad files."""
from __future__ import annotations

from pathlib import Path

import pymupdf
import pytest

from core.errors import Cancelled, DamagedFile, EncryptedFile
from core.ingest.pdf import limit_layout_threads, parse_pdf
from core.jobs import CancelToken, Progress
from core.types import ParsedDocument


def _assert_offsets_exact(doc: ParsedDocument) -> None:
    for page in doc.pages:
        last = -1
        for w in page.words:
            assert page.text[w.start:w.end] == w.text, (page.number, w)
            assert w.start > last, "words are in text order and do not overlap"
            last = w.end - 1
            x0, y0, x1, y1 = w.rect
            assert x0 <= x1 and y0 <= y1
        for h in page.headings:
            assert 0 <= h.start < h.end <= len(page.text)
            assert h.text == " ".join(page.text[h.start:h.end].split())


@pytest.fixture(scope="module")
def attention(eval_dir) -> ParsedDocument:
    [path] = sorted((eval_dir / "pdfqa" / "arxiv").glob("1706.03762*.pdf"))
    return parse_pdf(path, ocr=False)


def test_word_offsets_index_page_text_on_a_real_paper(attention):
    assert attention.kind == "pdf"
    assert len(attention.pages) == 15
    _assert_offsets_exact(attention)
    first = attention.pages[0]
    assert "Attention Is All You Need" in first.text
    assert "The dominant sequence transduction models" in first.text
    # Words carry real boxes on the page.
    word = next(w for w in first.words if w.text == "Attention")
    assert 0 < word.rect[0] < first.width and 0 < word.rect[1] < first.height


def test_title_and_headings(attention):
    assert attention.title == "Attention Is All You Need"
    title = next(h for h in attention.pages[0].headings if h.text == "Attention Is All You Need")
    assert title.level == 1
    texts = [h.text for p in attention.pages for h in p.headings]
    assert "1 Introduction" in texts
    assert "3 Model Architecture" in texts
    intro = next(h for h in attention.pages[1].headings if h.text == "1 Introduction")
    assert intro.level > title.level
    assert all(h.text != "3" for p in attention.pages for h in p.headings)


@pytest.mark.parametrize("name", ["20071229X02007.pdf", "20080111X00040.pdf", "NARA2022.pdf"])
def test_word_offsets_on_demo_pdfs(shared_dir, name):
    doc = parse_pdf(shared_dir / "demo" / name, ocr=False, layout=False)
    assert doc.pages and sum(len(p.words) for p in doc.pages) > 200
    _assert_offsets_exact(doc)
    assert doc.title


def test_two_column_page_reads_column_by_column(tmp_path):
    left = " ".join(f"alpha{i}" for i in range(120))
    right = " ".join(f"omega{i}" for i in range(120))
    doc = pymupdf.open()
    page = doc.new_page(width=612, height=792)
    page.insert_textbox(pymupdf.Rect(50, 60, 562, 90), "A Two Column Page", fontsize=16)
    assert page.insert_textbox(pymupdf.Rect(50, 110, 290, 740), left, fontsize=10) >= 0
    assert page.insert_textbox(pymupdf.Rect(322, 110, 562, 740), right, fontsize=10) >= 0
    path = tmp_path / "two-columns.pdf"
    doc.save(path)
    parsed = parse_pdf(path, ocr=False)
    _assert_offsets_exact(parsed)
    words = [w.text for w in parsed.pages[0].words]
    assert words[:4] == ["A", "Two", "Column", "Page"]
    assert words[4:] == left.split() + right.split()
    assert parsed.pages[0].headings[0].text == "A Two Column Page"


def test_real_two_column_paper_keeps_columns_apart(eval_dir):
    # AAAI two-column paper: page 2's left column ends with "...crowdsourcing is another" and its
    # right column starts "solution to obtain labeled data".
    doc = parse_pdf(eval_dir / "pdfqa" / "arxiv" / "1801.05147.pdf", ocr=False, max_pages=2, tables=False)
    text = doc.pages[1].text
    flat = " ".join(text.split())
    assert "For evaluation, we create two Chinese NER datasets in two domains: dialog and e-commerce." in flat
    assert "However, hiring experts is costly and non-scalable" in flat
    assert flat.index("Sequence labeling. NER is widely") < flat.index("solution to obtain labeled data")
    assert flat.index("solution to obtain labeled data") < flat.index("Baseline: LSTM-CRF")
    assert "Related Work" in [h.text for h in doc.pages[1].headings]


def test_latex_two_columns_and_sentence_gaps(eval_dir):
    doc = parse_pdf(eval_dir / "pdfs" / "samples" / "026-latex-multicolumn" / "multicolumn.pdf", ocr=False)
    text = doc.pages[0].text
    # MuPDF cuts a justified line at the wide space after a sentence; it stays one line here.
    assert "iscing elit. Ut purus elit, vestibulum ut, placerat\n" in text
    assert doc.title == "Two-Column Document with Lorem Ipsum"
    # The left column's last line comes before the right column's first.
    flat = " ".join(text.split())
    left_end = flat.index("Vivamus viverra fermentum felis. Donec nonummy")
    right_start = flat.index("pellentesque ante. Phasellus adipiscing semper elit.")
    assert flat.index("Lorem ipsum dolor sit amet") < left_end < right_start
    _assert_offsets_exact(doc)


def _table_pdf(path: Path) -> None:
    doc = pymupdf.open()
    page = doc.new_page(width=595, height=842)
    page.insert_text((72, 80), "Quarterly figures", fontsize=16)
    xs, ys = [72, 220, 340, 460], [100, 125, 150, 175, 200]
    for x in xs:
        page.draw_line((x, ys[0]), (x, ys[-1]))
    for y in ys:
        page.draw_line((xs[0], y), (xs[-1], y))
    data = [["Region", "Revenue", "Growth"], ["North", "1,200", "4%"], ["South", "950", "-2%"],
            ["East", "1,480", "7%"]]
    for i, row in enumerate(data):
        for j, cell in enumerate(row):
            page.insert_text((xs[j] + 6, ys[i] + 17), cell, fontsize=11)
    page.insert_text((72, 240), "The table above shows revenue by region for the quarter.", fontsize=11)
    doc.save(path)


def test_table_with_header_rows_and_cell_rects(tmp_path):
    path = tmp_path / "table.pdf"
    _table_pdf(path)
    page = parse_pdf(path, ocr=False).pages[0]
    [table] = page.tables
    assert table.name == "p1-t1" and table.page == 1
    assert table.header == ("Region", "Revenue", "Growth")
    assert table.rows == (("North", "1,200", "4%"), ("South", "950", "-2%"), ("East", "1,480", "7%"))
    assert table.bbox == pytest.approx((72, 100, 460, 200), abs=1)
    assert len(table.cell_rects) == 3 and all(len(r) == 3 for r in table.cell_rects)
    assert table.cell_rects[0][1] == pytest.approx((220, 125, 340, 150), abs=1)
    assert table.header_rects[0] == pytest.approx((72, 100, 220, 125), abs=1)
    # The table reads row by row in the page text, between the text above and below it.
    flat = " ".join(page.text.split())
    assert "Quarterly figures Region Revenue Growth North 1,200 4% South 950 -2% East 1,480 7% The table" in flat
    _assert_offsets_exact(parse_pdf(path, ocr=False))


def test_tables_from_a_sec_filing(eval_dir):
    path = eval_dir / "pdfqa" / "sec-10q" / "docs" / "2022 Q3 AAPL.pdf"
    doc = parse_pdf(path, ocr=False, max_pages=4)
    _assert_offsets_exact(doc)
    page = doc.pages[3]  # condensed consolidated statements of operations
    table = next(t for t in page.tables if any(r[0] == "Total net sales" for r in t.rows))
    assert len(table.header) >= 3
    assert "Three Months" in " ".join(table.header)
    row = next(r for r in table.rows if r[0] == "Total net sales")
    assert "82,959" in row and "304,182" in row
    assert all(len(r) == len(table.header) for r in table.rows)
    assert len(table.cell_rects) == len(table.rows)
    assert all(len(r) == len(table.header) for r in table.cell_rects)
    assert len(table.header_rects) == len(table.header)
    x0, y0, x1, y1 = table.bbox
    assert 0 <= x0 < x1 <= page.width and 0 <= y0 < y1 <= page.height
    assert doc.warnings == ("only the first 4 of 28 pages were read",)


@pytest.fixture
def finder_calls(monkeypatch) -> list[int]:
    """Page numbers (1-based) on which PyMuPDF's table finder ran, the real finder still running."""
    calls: list[int] = []
    real = pymupdf.Page.find_tables

    def counted(page, *args, **kwargs):
        calls.append(page.number + 1)
        return real(page, *args, **kwargs)

    monkeypatch.setattr(pymupdf.Page, "find_tables", counted)
    return calls


def _unruled_table_pdf(path: Path, *, table: bool = True) -> None:
    """Prose full of numbers around (optionally) a table without a single ruling line."""
    doc = pymupdf.open()
    page = doc.new_page(width=595, height=842)
    page.insert_text((72, 80), "Results by region", fontsize=14)
    prose = ("Revenue was 4,210 million in 2023, up from 3,950 million in 2022 and 3,100 million in 2021, "
             "across 12 regions and 4 product lines. ") * 3
    page.insert_textbox(pymupdf.Rect(72, 100, 520, 220), prose, fontsize=10)
    if table:
        rows = [["Region", "2021", "2022", "2023"], ["North", "1,200", "1,310", "1,402"],
                ["South", "950", "1,002", "1,120"], ["East", "1,480", "1,530", "1,610"],
                ["West", "700", "760", "802"], ["Total", "4,330", "4,602", "4,934"]]
        for i, row in enumerate(rows):
            for x, cell in zip((72, 230, 330, 430), row):
                page.insert_text((x, 250 + 18 * i), cell, fontsize=10)
    page.insert_textbox(pymupdf.Rect(72, 380, 520, 520), prose, fontsize=10)
    doc.save(path)


def test_unruled_table_is_found_from_the_words_alone(tmp_path, finder_calls):
    path = tmp_path / "unruled.pdf"
    _unruled_table_pdf(path)
    page = parse_pdf(path, ocr=False).pages[0]
    assert finder_calls == []  # no line art: neither the line finder nor the layout model runs
    [table] = page.tables
    assert ("North", "1,200", "1,310", "1,402") in table.rows
    assert ("Total", "4,330", "4,602", "4,934") in table.rows
    assert all(len(r) == 4 for r in table.rows) and len(table.header) == 4
    _assert_offsets_exact(parse_pdf(path, ocr=False))


def test_pages_that_cannot_hold_a_table_skip_the_finder(tmp_path, finder_calls, eval_dir):
    # Prose that mentions many numbers, no line art: no table, and no finder (nor layout model) run.
    path = tmp_path / "prose.pdf"
    _unruled_table_pdf(path, table=False)
    assert parse_pdf(path, ocr=False).pages[0].tables == ()
    assert finder_calls == []
    # The first pages of a paper (title, abstract, running text) do not need it either.
    doc = parse_pdf(eval_dir / "pdfqa" / "arxiv" / "1706.03762v7.pdf", ocr=False, max_pages=5)
    assert finder_calls == [] and all(not p.tables for p in doc.pages)
    # A ruled table still gets one run, also with the layout model off.
    ruled = tmp_path / "table.pdf"
    _table_pdf(ruled)
    assert len(parse_pdf(ruled, ocr=False, layout=False).pages[0].tables) == 1
    assert finder_calls == [1]


def test_layout_model_on_one_thread_finds_the_same_tables(eval_dir, finder_calls):
    path = eval_dir / "pdfqa" / "sec-10q" / "docs" / "2022 Q3 AAPL.pdf"
    before = parse_pdf(path, ocr=False, max_pages=5, layout=True)
    assert finder_calls == sorted(set(finder_calls)), "at most one finder run per page"
    assert limit_layout_threads(1)
    after = parse_pdf(path, ocr=False, max_pages=5, layout=True)
    tables = [t for p in before.pages for t in p.tables]
    assert len(tables) >= 3
    assert tables == [t for p in after.pages for t in p.tables]


def test_cjk_text_layer_gives_one_word_per_character(tmp_path):
    doc = pymupdf.open()
    page = doc.new_page()
    page.insert_text((72, 100), "知识库 Sift 可以回答", fontsize=14, fontname="china-s")
    path = tmp_path / "cjk.pdf"
    doc.save(path)
    parsed = parse_pdf(path, ocr=False)
    p = parsed.pages[0]
    assert p.text == "知识库 Sift 可以回答"
    assert [w.text for w in p.words] == ["知", "识", "库", "Sift", "可", "以", "回", "答"]
    _assert_offsets_exact(parsed)


def test_rotated_page_boxes_are_in_displayed_space(tmp_path):
    doc = pymupdf.open()
    page = doc.new_page(width=595, height=842)
    page.insert_text((72, 100), "Sideways words", fontsize=12)
    page.set_rotation(90)
    path = tmp_path / "rotated.pdf"
    doc.save(path)
    parsed = parse_pdf(path, ocr=False).pages[0]
    assert (parsed.width, parsed.height) == (842, 595)
    word = next(w for w in parsed.words if w.text == "Sideways")
    check = pymupdf.open(path)[0]
    [hit] = check.search_for("Sideways")
    expected = hit * check.rotation_matrix
    assert word.rect == pytest.approx(tuple(expected), abs=0.5)


def test_progress_per_page_and_cancel(eval_dir):
    path = eval_dir / "pdfqa" / "arxiv" / "1706.03762v7.pdf"
    seen: list[Progress] = []
    parse_pdf(path, ocr=False, tables=False, max_pages=3, progress=seen.append)
    assert [(p.stage, p.done, p.total, p.unit) for p in seen] == [("parse", i, 3, "pages") for i in (1, 2, 3)]
    token = CancelToken()

    def cancel_after_first(p: Progress) -> None:
        token.cancel()

    with pytest.raises(Cancelled):
        parse_pdf(path, ocr=False, tables=False, progress=cancel_after_first, cancel=token)


def test_encrypted_pdf_needs_a_password(tmp_path):
    doc = pymupdf.open()
    doc.new_page().insert_text((72, 72), "secret")
    path = tmp_path / "locked.pdf"
    doc.save(path, encryption=pymupdf.PDF_ENCRYPT_AES_256, user_pw="pw", owner_pw="owner")
    with pytest.raises(EncryptedFile) as err:
        parse_pdf(path)
    assert str(path) in str(err.value) and "password" in str(err.value)


def test_owner_password_only_pdf_opens(tmp_path):
    doc = pymupdf.open()
    doc.new_page().insert_text((72, 72), "readable by anyone")
    path = tmp_path / "owner-only.pdf"
    doc.save(path, encryption=pymupdf.PDF_ENCRYPT_AES_256, owner_pw="owner")
    assert "readable by anyone" in parse_pdf(path).pages[0].text


def test_damaged_and_empty_pdfs(tmp_path):
    junk = tmp_path / "junk.pdf"
    junk.write_bytes(b"this is not a PDF at all\n" * 10)
    with pytest.raises(DamagedFile) as err:
        parse_pdf(junk)
    assert str(junk) in str(err.value)

    empty = tmp_path / "no-pages.pdf"
    empty.write_bytes(b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n"
                      b"2 0 obj<</Type/Pages/Kids[]/Count 0>>endobj\n"
                      b"trailer<</Root 1 0 R>>\n%%EOF\n")
    with pytest.raises(DamagedFile) as err:
        parse_pdf(empty)
    assert err.value.reason == "has no pages" and str(empty) in str(err.value)

    with pytest.raises(DamagedFile) as err:
        parse_pdf(tmp_path / "missing.pdf")
    assert "does not exist" in str(err.value)


def test_truncated_pdf_keeps_what_it_can(tmp_path, eval_dir):
    data = (eval_dir / "pdfqa" / "arxiv" / "1706.03762v7.pdf").read_bytes()
    cut = tmp_path / "truncated.pdf"
    cut.write_bytes(data[: len(data) * 2 // 3])
    try:
        doc = parse_pdf(cut, ocr=False, tables=False)
    except DamagedFile as e:  # acceptable: nothing readable was left
        assert str(cut) in str(e)
    else:
        assert any(p.words for p in doc.pages)
        assert any("repaired" in w or "could not be read" in w for w in doc.warnings)
        _assert_offsets_exact(doc)
