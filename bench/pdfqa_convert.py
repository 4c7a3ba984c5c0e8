"""Convert the shared PDF QA sets to the JSONL that ``sift eval pdfqa`` reads.

    .venv/bin/python bench/pdfqa_convert.py [--shared ../shared] [--out bench/data]

writes

``pdfqa_arxiv.jsonl``   UDA's QASPER-derived questions (``paper_text_qa.csv`` and
                        ``paper_tab_qa.csv``, ``|``-separated) about the arXiv papers whose PDF
                        is in ``eval/pdfqa/arxiv`` (the others are dropped). ``answer`` is the
                        first non-empty annotator answer, ``answers`` all of them. UDA gives no
                        page or evidence; where an answer of 2+ words (12+ characters, not
                        yes/no) occurs verbatim in the PDF's text (``core.eval.pdfqa``'s
                        normalisation: case, punctuation, hyphenated line breaks), that answer
                        becomes ``evidence``, and ``page`` is set when it occurs on exactly one
                        page (``"evidence_source": "answer span in the PDF"``). Questions with
                        abstractive answers keep only ``doc``.
``pdfqa_sec10q.jsonl``  Docugami's human-reviewed questions about 20 SEC 10-Q filings
                        (``qna_data_mini.csv``). ``Source Docs`` is a glob (``*AAPL*``,
                        ``*2023 Q3 INTC*``): ``docs`` lists every filing it matches and ``doc``
                        is the first. The answers are long, free-form texts with no page or
                        evidence, so only document hit and answer F1 can be scored on this set.
"""
from __future__ import annotations

import argparse
import csv
import fnmatch
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.eval.pdfqa import normalize_answer, normalize_text  # noqa: E402

MIN_EVIDENCE_WORDS = 2
MIN_EVIDENCE_CHARS = 12


def page_texts(pdf: Path) -> list[str]:
    """Normalised text of each page (1-based page = index + 1)."""
    import pymupdf

    with pymupdf.open(pdf) as doc:
        return [normalize_text(page.get_text()) for page in doc]


def locate(answer: str, pages: list[str]) -> list[int]:
    """1-based pages whose text holds ``answer`` as a run of whole words."""
    needle = normalize_text(answer)
    return [i + 1 for i, t in enumerate(pages) if needle and f" {needle} " in f" {t} "]


def evidence_for(answers: list[str], pages: list[str]) -> tuple[str | None, int | None]:
    """The first answer usable as evidence text, and its page when it is on exactly one."""
    for a in answers:
        if (len(normalize_text(a).split()) < MIN_EVIDENCE_WORDS or len(a.strip()) < MIN_EVIDENCE_CHARS
                or normalize_answer(a) in ("yes", "no")):
            continue
        found = locate(a, pages)
        if found:
            return a.strip(), (found[0] if len(found) == 1 else None)
    return None, None


def arxiv_file(doc_name: str, pdfs: list[Path]) -> Path | None:
    """The PDF of an arXiv id: ``1706.03762`` is ``1706.03762.pdf`` or ``1706.03762v7.pdf``."""
    for p in pdfs:
        stem = p.stem
        if stem == doc_name or (stem.startswith(doc_name + "v") and stem[len(doc_name) + 1:].isdigit()):
            return p
    return None


def convert_arxiv(folder: Path) -> list[dict]:
    pdfs = sorted(folder.glob("*.pdf"))
    texts: dict[Path, list[str]] = {}
    out = []
    for name, source in (("paper_text_qa.csv", "text"), ("paper_tab_qa.csv", "table")):
        with open(folder / name, encoding="utf-8", newline="") as f:
            for row in csv.DictReader(f, delimiter="|"):
                pdf = arxiv_file(row["doc_name"].strip(), pdfs)
                if pdf is None:
                    continue
                answers = [a.strip() for a in (row.get("answer_1"), row.get("answer_2"), row.get("answer_3"))
                           if a and a.strip()]
                if not answers or not row["question"].strip():
                    continue
                if pdf not in texts:
                    texts[pdf] = page_texts(pdf)
                line = {"id": row["q_uid"], "question": row["question"].strip(), "answer": answers[0],
                        "answers": answers, "doc": pdf.name, "source": source}
                evidence, page = evidence_for(answers, texts[pdf])
                if evidence:
                    line["evidence"] = evidence
                    line["evidence_source"] = "answer span in the PDF"
                    if page:
                        line["page"] = page
                out.append(line)
    return out


def convert_sec10q(folder: Path) -> list[dict]:
    names = sorted(p.name for p in (folder / "docs").glob("*.pdf"))
    out = []
    with open(folder / "qna_data_mini.csv", encoding="utf-8-sig", newline="") as f:
        for n, row in enumerate(csv.DictReader(f), 1):
            pattern = row["Source Docs"].strip()
            docs = [d for d in names if fnmatch.fnmatch(d, pattern if pattern.endswith(".pdf") else pattern + ".pdf")
                    or fnmatch.fnmatch(d, pattern)]
            if not docs:
                print(f"sec-10q row {n}: no filing matches {pattern!r}; dropped", file=sys.stderr)
                continue
            out.append({"id": f"sec10q-{n}", "question": row["Question"].strip(), "answer": row["Answer"].strip(),
                        "doc": docs[0], "docs": docs, "question_type": row["Question Type"].strip(),
                        "source": row["Source Chunk Type"].strip().lower()})
    return out


def write_jsonl(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared", help="the shared data folder")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "data", help="where the JSONL files go")
    args = ap.parse_args(argv)
    pdfqa = args.shared / "eval" / "pdfqa"
    for name, rows in (("pdfqa_arxiv.jsonl", convert_arxiv(pdfqa / "arxiv")),
                       ("pdfqa_sec10q.jsonl", convert_sec10q(pdfqa / "sec-10q"))):
        write_jsonl(rows, args.out / name)
        located = sum(1 for r in rows if r.get("evidence"))
        paged = sum(1 for r in rows if r.get("page"))
        print(f"{args.out / name}: {len(rows)} questions, {len(set(r['doc'] for r in rows))} documents, "
              f"{located} with evidence, {paged} with a page")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
