"""Unruled tables read from how the words stand on real 10-Q pages, without the layout model."""
from __future__ import annotations

import pymupdf
import pytest

from core.ingest.pdf import _drawings, _framed_text, _page_lines, has_columns, parse_pdf
from core.ingest.textgrid import count_rows, iou, text_table_regions


@pytest.fixture(scope="module")
def sec(eval_dir):
    return eval_dir / "pdfqa" / "sec-10q" / "docs"


def _tables(path, page: int):
    doc = parse_pdf(path, ocr=False, max_pages=page)
    return doc.pages[page - 1].tables


@pytest.fixture
def no_layout_model(monkeypatch):
    """Fails the test if PyMuPDF's layout model runs."""
    def refuse(*args, **kwargs):
        raise AssertionError("the layout model ran")

    monkeypatch.setattr(pymupdf.Page, "get_layout", refuse)


def test_statement_of_operations_titles_sections_and_amounts(sec, no_layout_model):
    [table] = _tables(sec / "2022 Q3 AAPL.pdf", 4)
    # Three title rows ("Three Months Ended" over two columns, "June 25," then "2022") fold into one header.
    assert table.header == ("", "Three Months Ended June 25, 2022", "Three Months Ended June 26, 2021",
                            "Nine Months Ended June 25, 2022", "Nine Months Ended June 26, 2021")
    rows = {r[0]: r[1:] for r in table.rows}
    assert rows["Total net sales"] == ("82,959", "81,434", "304,182", "282,457")
    assert rows["Net income"] == ("$ 19,442", "$ 21,744", "$ 79,082", "$ 74,129")
    assert rows["Other income/(expense), net"] == ("(10)", "243", "(97)", "796")
    # Section labels stay rows of their own; the table runs across the gaps between sections.
    assert ("Operating expenses:", "", "", "", "") in table.rows
    assert [r[0] for r in table.rows].index("Cost of sales:") > [r[0] for r in table.rows].index("Total net sales")
    assert len(table.cell_rects) == len(table.rows) and all(len(r) == 5 for r in table.cell_rects)


def test_percent_signs_printed_apart_join_their_numbers(sec):
    tables = _tables(sec / "2022 Q3 AAPL.pdf", 20)
    [table] = [t for t in tables if any(r[0] == "Gross margin percentage:" for r in t.rows)]
    rows = {r[0]: r[1:] for r in table.rows}
    assert rows["Total gross margin percentage"] == ("43.3 %", "43.3 %", "43.6 %", "41.7 %")
    assert rows["Total gross margin"] == ("$ 35,885", "$ 35,255", "$ 132,687", "$ 117,662")


def test_tables_printed_close_together_are_told_apart(sec):
    # Four small tables, each under a caption and a "(In millions)" line, with little space between.
    tables = _tables(sec / "2022 Q3 MSFT.pdf", 11)
    assert len(tables) == 4
    assert all(t.header[1:] == ("2022", "2021") for t in tables)
    assert all("Three Months Ended September 30," in t.header[0] for t in tables)
    second = {r[0]: r[1:] for r in tables[1].rows}
    assert second["Total"] == ("$ 54", "$ 286")
    assert "Realized gains from sales of available-for-sale securities" not in second
    third = {r[0]: r[1:] for r in tables[2].rows}
    assert third["Impairments and allowance for credit losses"] == ("(18)", "(3)")


def test_footnotes_and_long_labels(sec):
    [table] = _tables(sec / "2022 Q3 AAPL.pdf", 23)
    assert table.header[0] == "Periods" and table.header[2] == "Average Price Paid Per Share"
    assert table.rows[-1][0] == "Total"  # the "(1) On April 28, 2022, ..." footnote below is not a row
    # A row label wrapped over two lines keeps the table in one piece.
    [balance] = _tables(sec / "2022 Q3 AAPL.pdf", 6)
    assert balance.header == ("", "June 25, 2022", "September 25, 2021")
    labels = [r[0] for r in balance.rows]
    assert labels[0] == "ASSETS:" and labels[-1] == "Total liabilities and shareholders’ equity"


def test_prose_with_numbers_and_numbered_lists_are_no_tables(sec, eval_dir):
    doc = pymupdf.open(sec / "2022 Q3 AAPL.pdf")
    for number in (23, 26):  # legal proceedings prose; the CEO's certification, a numbered list
        page = doc[number - 1]
        lines, *_ = _page_lines(page)
        regions = text_table_regions(lines, page.rect.width)
        assert all(r[1] > 400 for r in regions) if number == 23 else regions == []
    paper = pymupdf.open(eval_dir / "pdfqa" / "arxiv" / "1706.03762v7.pdf")
    for page in list(paper)[:3]:
        lines, *_ = _page_lines(page)
        assert text_table_regions(lines, page.rect.width) == []


def test_same_facts_as_the_layout_model_on_a_whole_filing(sec):
    """Across one filing, the amounts by row label match what PyMuPDF's layout model finds."""
    path = sec / "2022 Q3 NVDA.pdf"
    fast = parse_pdf(path, ocr=False)
    slow = parse_pdf(path, ocr=False, layout=True)

    def facts(doc):
        return {(t.page, r[0], c.replace("$", "").strip()) for p in doc.pages for t in p.tables
                for r in t.rows for c in r[1:] if any(ch.isdigit() for ch in c)}

    a, b = facts(slow), facts(fast)
    assert len(a) > 500
    assert len(a & b) >= 0.9 * len(a) and len(a & b) >= 0.95 * len(b)


def test_pages_the_words_cannot_read_go_to_the_layout_model(sec, eval_dir):
    """Two-column papers and tables of words between rules are left to the layout model; pages of
    filings, with their tables beside labels and cover blocks, are not."""
    arxiv = eval_dir / "pdfqa" / "arxiv"

    def page_of(path, number):
        page = pymupdf.open(path)[number - 1]
        lines, *_ = _page_lines(page)
        return page, lines

    page, lines = page_of(arxiv / "1809.01202.pdf", 6)
    assert has_columns(lines, page.rect.width)
    page, lines = page_of(arxiv / "1705.07830.pdf", 13)  # one column; a table of queries and answers
    assert not has_columns(lines, page.rect.width) and _framed_text(page, lines, _drawings(page))
    for number in (1, 4, 23):  # cover, statement of operations, legal proceedings
        page, lines = page_of(sec / "2022 Q3 AAPL.pdf", number)
        regions = text_table_regions(lines, page.rect.width)
        assert not has_columns(lines, page.rect.width)
        assert not _framed_text(page, lines, _drawings(page), regions)

    # On the two-column page, the tables the model finds are read, and the prose beside them is not.
    tables = parse_pdf(arxiv / "1809.01202.pdf", ocr=False, max_pages=6).pages[5].tables
    headers = [t.header for t in tables]
    assert ("Model", "Prec", "Rec", "F1") in headers
    assert all(len(t.rows) <= 8 for t in tables)
    # An attention map (a figure of tokens in a grid of lines) is no table.
    doc = parse_pdf(arxiv / "1706.03762v7.pdf", ocr=False)
    assert not any(t.page in (13, 15) for p in doc.pages for t in p.tables)


def test_helpers():
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0
    assert iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(1 / 3)
    assert count_rows([], (0, 0, 1, 1)) == 0
