"""Chunking invariants on real PDFs and real Chinese text, with the real MiniLM tokenizer.

Pages are built here straight from PyMuPDF words (the PDF parser is a separate module), so
the tests exercise real text layouts: columns, headers, hyphenation, tables of figures.
"""
from __future__ import annotations

import json
import pathlib

import pymupdf
import pytest

from core.ingest.chunking import HEADING_SEP, SEP, chunk_body, chunk_pages, locate, span_rects, split_sentences
from core.types import Heading, ParsedPage, Word



def pdf_pages(path: pathlib.Path) -> list[ParsedPage]:
    """ParsedPages from PyMuPDF words: words joined by spaces, lines by newlines, blocks by blank lines."""
    pages = []
    with pymupdf.open(path) as doc:
        for page in doc:
            parts: list[str] = []
            words: list[Word] = []
            pos, prev = 0, None
            for x0, y0, x1, y1, text, block, line, _ in page.get_text("words", sort=True):
                if prev is not None:
                    sep = " " if (block, line) == prev else ("\n" if block == prev[0] else "\n\n")
                    parts.append(sep)
                    pos += len(sep)
                words.append(Word(text, (x0, y0, x1, y1), pos, pos + len(text)))
                parts.append(text)
                pos += len(text)
                prev = (block, line)
            pages.append(ParsedPage(page.number + 1, page.rect.width, page.rect.height, "".join(parts), tuple(words)))
    return pages


def text_page(number: int, text: str, headings: tuple[Heading, ...] = ()) -> ParsedPage:
    words = []
    pos = 0
    for token in text.split():
        start = text.index(token, pos)
        words.append(Word(token, (start * 5.0, 10.0, (start + len(token)) * 5.0, 20.0), start, start + len(token)))
        pos = start + len(token)
    return ParsedPage(number, 600.0, 800.0, text, tuple(words), headings=headings)


def heading_at(text: str, title: str, level: int = 1) -> Heading:
    start = text.index(title)
    return Heading(title, level, start, start + len(title))


def check_chunks(pages, chunks, count_tokens, max_tokens):
    """The provenance and size invariants every text chunk must keep."""
    by_number = {p.number: p for p in pages}
    nonblank = [p.number for p in pages if p.text.strip()]
    assert chunks, "no chunks"
    for c in chunks:
        assert c.kind == "text" and c.spans
        body = SEP.join(by_number[s.page].text[s.start:s.end] for s in c.spans)
        assert chunk_body(c) == body
        assert c.text == body or c.text == c.heading + HEADING_SEP + body
        assert body == body.strip() and body
        assert c.n_tokens == count_tokens(c.text) <= max_tokens
        for s in c.spans:
            assert 0 <= s.start < s.end <= len(by_number[s.page].text)
        pages_used = [s.page for s in c.spans]
        i = nonblank.index(pages_used[0])
        assert pages_used == nonblank[i:i + len(pages_used)]  # one span per page, consecutive pages
    # every character of every word is inside some chunk (a word longer than a chunk is cut)
    covered = {p.number: bytearray(len(p.text)) for p in pages}
    for c in chunks:
        for s in c.spans:
            covered[s.page][s.start:s.end] = b"\x01" * (s.end - s.start)
    for p in pages:
        for w in p.words:
            assert all(covered[p.number][w.start:w.end]), (p.number, w)


@pytest.fixture(scope="module")
def demo_pages(shared_dir):
    return {f.name: pdf_pages(f) for f in sorted((shared_dir / "demo").glob("*.pdf"))}


@pytest.fixture(scope="module")
def paper_pages(eval_dir):
    papers = sorted((eval_dir / "pdfqa" / "arxiv").glob("*.pdf"))
    assert papers
    return pdf_pages(papers[0])


@pytest.mark.parametrize("max_tokens,overlap", [(256, 32), (64, 16), (32, 0), (128, 64)])
def test_invariants_on_real_pdfs(demo_pages, paper_pages, count_tokens, max_tokens, overlap):
    for pages in [*demo_pages.values(), paper_pages]:
        chunks = chunk_pages(pages, count_tokens=count_tokens, max_tokens=max_tokens, overlap_tokens=overlap)
        check_chunks(pages, chunks, count_tokens, max_tokens)


def test_chunks_fill_the_budget_and_cross_pages(demo_pages, count_tokens):
    pages = demo_pages["NARA2022.pdf"]
    chunks = chunk_pages(pages, count_tokens=count_tokens, max_tokens=256, overlap_tokens=32)
    sizes = sorted(c.n_tokens for c in chunks)
    assert sizes[len(sizes) // 2] > 180  # packed, not one sentence per chunk
    assert any(len(c.spans) == 2 for c in chunks) or len(pages) == 1


def test_token_counter_called_about_once_per_sentence(paper_pages, count_tokens):
    calls = []

    def counting(text):
        calls.append(text)
        return count_tokens(text)

    chunks = chunk_pages(paper_pages, count_tokens=counting)
    text = SEP.join(p.text.strip() for p in paper_pages if p.text.strip())
    n_sentences = len(split_sentences(text))
    # one count per sentence, one per finished chunk, and a few for over-long sentences
    assert len(calls) <= n_sentences + 2 * len(chunks) + 60


def test_chunk_runs_across_a_page_break():
    p1 = text_page(1, "Intro words here. The engine stopped while the")
    p2 = text_page(2, "  aircraft climbed through 300 feet.\nThe pilot landed.  ")
    chunks = chunk_pages([p1, p2], count_tokens=lambda t: len(t.split()) + 2, max_tokens=64)
    assert len(chunks) == 1
    c = chunks[0]
    assert [s.page for s in c.spans] == [1, 2]
    assert c.spans[1].start == 2 and p2.text[c.spans[1].end - 1] == "."
    assert c.text == p1.text + SEP + p2.text.strip()
    # a sentence that straddles the break is one unit: a small budget cuts before it, not inside
    small = chunk_pages([p1, p2], count_tokens=lambda t: len(t.split()) + 2, max_tokens=14, overlap_tokens=0)
    assert [c.text for c in small][:2] == ["Intro words here.",
                                           "The engine stopped while the" + SEP + "aircraft climbed through 300 feet."]


def test_headings_start_chunks_and_prefix_continuations(count_tokens):
    body = " ".join(f"Sentence number {i} talks about the fuel system in some detail." for i in range(30))
    text = f"Engine Failure\n{body}\n\nWeather\nIt was clear. Winds were calm.\n\nFindings\n{body}"
    headings = tuple(heading_at(text, t) for t in ("Engine Failure", "Weather", "Findings"))
    page = text_page(1, text, headings)
    chunks = chunk_pages([page], count_tokens=count_tokens, max_tokens=96, overlap_tokens=24)
    check_chunks([page], chunks, count_tokens, 96)
    starts = {c.spans[0].start for c in chunks}
    for h in headings:
        assert h.start in starts  # each heading opens a chunk
        # and no chunk holds body text before a heading
        assert not any(c.spans[0].start < h.start < c.spans[0].end for c in chunks)
    assert [c.heading for c in chunks if c.spans[0].start in {h.start for h in headings}] == [
        "Engine Failure", "Weather", "Findings"]
    engine = [c for c in chunks if c.heading == "Engine Failure"]
    assert len(engine) > 2
    assert engine[0].text.startswith("Engine Failure\nSentence number 0")
    for c in engine[1:]:  # continuations carry their heading in the text the embedder sees
        assert c.text.startswith("Engine Failure" + HEADING_SEP + "Sentence number")
        assert not chunk_body(c).startswith("Engine Failure")
    weather = [c for c in chunks if c.heading == "Weather"]
    assert len(weather) == 1 and weather[0].text == "Weather\nIt was clear. Winds were calm."


def test_consecutive_headings_share_a_chunk(count_tokens):
    text = "Part II\n\nChapter 3\n\nThe first sentence. The second sentence."
    hs = (heading_at(text, "Part II", 1), heading_at(text, "Chapter 3", 2))
    chunks = chunk_pages([text_page(1, text, hs)], count_tokens=count_tokens)
    assert len(chunks) == 1 and chunks[0].heading == "Chapter 3" and chunks[0].text == text


def test_overlap_repeats_the_last_sentences(count_tokens):
    text = " ".join(f"Fact {i} is that the value equals {i * 7}." for i in range(80))
    page = text_page(1, text)
    chunks = chunk_pages([page], count_tokens=count_tokens, max_tokens=64, overlap_tokens=20)
    check_chunks([page], chunks, count_tokens, 64)
    for a, b in zip(chunks, chunks[1:]):
        assert b.spans[0].start < a.spans[0].end  # overlapping
        shared = page.text[b.spans[0].start:a.spans[0].end]
        assert count_tokens(shared) - 2 <= 20
        assert a.text.endswith(shared)
    none = chunk_pages([page], count_tokens=count_tokens, max_tokens=64, overlap_tokens=0)
    assert all(b.spans[0].start > a.spans[0].end for a, b in zip(none, none[1:]))


def test_long_sentence_is_cut_at_words(count_tokens):
    text = "Start. " + " ".join(f"item{i}" for i in range(700)) + " end. Tail sentence."
    page = text_page(1, text)
    chunks = chunk_pages([page], count_tokens=count_tokens, max_tokens=48, overlap_tokens=8)
    check_chunks([page], chunks, count_tokens, 48)
    for c in chunks:
        s = c.spans[0]
        assert s.start == 0 or text[s.start - 1] == " "
        assert s.end == len(text) or text[s.end] == " "


def test_chinese_text_stays_under_the_limit(eval_dir, count_tokens):
    data = json.loads((eval_dir / "cmrc2018" / "cmrc2018_trial.json").read_text())
    contexts = [p["context"] for d in data["data"][:12] for p in d["paragraphs"]]
    pages = [text_page(i + 1, t) for i, t in enumerate(contexts)]
    chunks = chunk_pages(pages, count_tokens=count_tokens, max_tokens=64, overlap_tokens=16)
    check_chunks(pages, chunks, count_tokens, 64)
    # sentences end at 。！？ — a chunk that ends inside a page ends at one (or is a cut long sentence)
    ends = [pages[c.spans[-1].page - 1].text[c.spans[-1].end - 1] for c in chunks]
    assert sum(e in "。！？」”" for e in ends) > len(chunks) // 2

    # no punctuation and no spaces at all: cut between characters
    bare = contexts[0].replace("。", "").replace("，", "").replace(" ", "")
    page = ParsedPage(1, 600.0, 800.0, bare, ())
    chunks = chunk_pages([page], count_tokens=count_tokens, max_tokens=32, overlap_tokens=0)
    assert len(chunks) > 3 and all(c.n_tokens <= 32 for c in chunks)
    assert "".join(c.text for c in chunks) == bare


def test_sentence_splitter():
    text = ("See Fig. 3 and Eq. 2 for details, e.g. the U.S. Army data. It rose 3.5 percent in 2003. "
            "Dr. J. Smith agreed! Was it approx. five? Yes.\n\nNew paragraph without a stop\n"
            "• first item\n• second item\n中文句子。第二句！第三句？“引号。”最后\n\n"
            "2. Related Work\nMore text.")
    got = [text[a:b] for a, b in split_sentences(text)]
    assert got == [
        "See Fig. 3 and Eq. 2 for details, e.g. the U.S. Army data.",
        "It rose 3.5 percent in 2003.",
        "Dr. J. Smith agreed!",
        "Was it approx. five?",
        "Yes.",
        "New paragraph without a stop",
        "• first item",
        "• second item\n中文句子。",
        "第二句！",
        "第三句？",
        "“引号。”",
        "最后",
        "2. Related Work\nMore text.",
    ]


def test_locate_maps_chunk_text_back_to_pages(demo_pages, count_tokens):
    pages = demo_pages["20071229X02007.pdf"]
    by_number = {p.number: p for p in pages}
    chunks = chunk_pages(pages, count_tokens=count_tokens, max_tokens=128)
    for c in chunks:
        body_at = len(c.text) - len(chunk_body(c))
        for a, b in [(body_at, len(c.text)), (body_at + 3, body_at + 40), (0, len(c.text))]:
            spans = locate(c, a, b)
            assert SEP.join(by_number[s.page].text[s.start:s.end] for s in spans) == c.text[max(a, body_at):b]
    two = next((c for c in chunks if len(c.spans) == 2), None)
    if two is not None:  # a range over the page break splits into one span per page
        sep_at = len(two.text) - len(chunk_body(two)) + (two.spans[0].end - two.spans[0].start)
        assert [s.page for s in locate(two, sep_at - 2, sep_at + 3)] == [two.spans[0].page, two.spans[1].page]


def test_span_rects_on_a_real_page(demo_pages):
    page = demo_pages["20071229X02007.pdf"][1]
    assert len(page.words) > 50
    w = page.words[10]
    assert span_rects(page, w.start, w.end) == [w.rect]
    assert span_rects(page, w.start + 1, w.start + 2) == [w.rect]  # any overlap selects the word
    assert span_rects(page, 0, 0) == []

    # consecutive words on one line merge into one rectangle covering them
    ws = page.words
    k = next(k for k in range(len(ws) - 2) if all(
        abs(ws[k + i].rect[1] - ws[k].rect[1]) < 1.0 and 0 < ws[k + i].rect[0] - ws[k + i - 1].rect[2] < 8
        for i in (1, 2)))
    line = ws[k:k + 3]
    r = span_rects(page, line[0].start, line[-1].end)
    assert r == [(line[0].rect[0], min(x.rect[1] for x in line), line[-1].rect[2], max(x.rect[3] for x in line))]

    # a whole page: every word inside some rectangle, far fewer rectangles than words
    rects = span_rects(page, 0, len(page.text))
    for x in page.words:
        assert any(a[0] <= x.rect[0] + 1e-6 and a[1] <= x.rect[1] + 1e-6 and x.rect[2] <= a[2] + 1e-6
                   and x.rect[3] <= a[3] + 1e-6 for a in rects)
    assert len(rects) < len(page.words) / 2
    for a in rects:
        assert 0 <= a[0] < a[2] <= page.width and 0 <= a[1] < a[3] <= page.height


def test_empty_input_and_tiny_budgets(count_tokens):
    assert chunk_pages([], count_tokens=count_tokens) == []
    assert chunk_pages([text_page(1, "  \n "), text_page(2, "")], count_tokens=count_tokens) == []
    with pytest.raises(ValueError):
        chunk_pages([text_page(1, "Hello.")], count_tokens=count_tokens, max_tokens=5)
