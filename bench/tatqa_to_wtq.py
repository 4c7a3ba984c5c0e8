"""Convert TAT-QA (``tatqa_dataset_*.json``) to the WikiTableQuestions folder ``sift eval tables`` reads.

    .venv/bin/python bench/tatqa_to_wtq.py ../shared/eval/tables/tatqa/tatqa_dataset_dev.json /tmp/tatqa-wtq
    .venv/bin/sift eval tables /tmp/tatqa-wtq --decimals 2 --json

Each context becomes ``csv/<caption>-<uid8>.csv`` (its table) and, unless ``--no-paragraphs``,
``text/<uid8>.csv`` (its paragraphs: columns ``paragraph``, ``text``); a question's
``context`` names both, separated by ``|``. TAT-QA tables have multi-row headers with an
empty first cell (a caption such as "Years Ended September 30," above the year row): the
leading rows whose first cell is empty are the header; a row holding one distinct text is a
caption, which goes into the file name (so into the SQLite table's name, which the model
reads) rather than into every column; the other header rows are filled rightwards over their
spans and joined per column ("Domestic 2019", "International 2019"). ``targetValue`` is the
answer list (``|``-joined, TSV-escaped) or the number; ``answer_type``, ``answer_from`` and
``scale`` are extra columns, so the report breaks accuracy down by them. Scale is not applied
to the answer (TAT-QA scores it separately), and numbers are written as given.
"""
from __future__ import annotations

import argparse
import csv
import json
import re
from pathlib import Path


def tsv_escape(x: str) -> str:
    return x.replace("\\", "\\\\").replace("\n", "\\n").replace("|", "\\p").replace("\t", " ")


def _number_text(v) -> str:
    if isinstance(v, float) and v == int(v):
        return str(int(v))
    return str(v)


def target_value(answer) -> str:
    if isinstance(answer, list):
        return "|".join(tsv_escape(str(a).strip()) for a in answer)
    if isinstance(answer, (int, float)):
        return _number_text(answer)
    return tsv_escape(str(answer).strip())


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40].strip("-")


def split_header(table: list[list[str]]) -> tuple[list[str], list[list[str]], list[str]]:
    """(header, body rows, captions) of a TAT-QA table."""
    rows = [[" ".join(str(c).split()) for c in r] for r in table]
    width = max(len(r) for r in rows)
    rows = [r + [""] * (width - len(r)) for r in rows]
    captions: list[str] = []
    while len(rows) > 2 and width > 2 and sum(1 for c in rows[0] if c) == 1:  # a title line above the header
        captions.append(next(c for c in rows[0] if c))
        rows = rows[1:]
    k = 0
    while k < len(rows) - 1 and not rows[k][0]:
        k += 1
    head_rows, body = rows[:k], rows[k:]
    if not head_rows:  # no empty-corner header: the first row is the header
        head_rows, body = rows[:1], rows[1:]
    parts: list[list[str]] = [[] for _ in range(width)]
    for i, r in enumerate(head_rows):
        cells = [c for c in r[1:] if c]
        if not cells:
            continue
        last = i == len(head_rows) - 1
        if len(head_rows) > 1 and len(set(cells)) == 1 and (not last or (len(cells) == 1 and width > 2)):
            captions.append(cells[0])
            continue
        cur = ""
        for j, c in enumerate(r):
            cur = c or (cur if j > 0 and not last else "")
            if cur and (not parts[j] or parts[j][-1] != cur):
                parts[j].append(cur)
    header = [" ".join(p) for p in parts]
    header[0] = header[0] or (head_rows[0][0] if len(head_rows) == 1 and head_rows[0][0] else "item")
    return header, body, captions


def convert(src: str | Path, out: str | Path, *, paragraphs: bool = True, every: int = 1,
            answer_from: set[str] | None = None) -> int:
    """Write the folder; ``every`` > 1 keeps every n-th question (a subset spread over all contexts);
    ``answer_from`` keeps only questions whose evidence is one of these (``table``, ``table-text``,
    ``text``), counted before ``every`` picks among them."""
    known = {"table", "table-text", "text"}
    if answer_from is not None and not answer_from <= known:
        raise ValueError(f"answer_from must be among {', '.join(sorted(known))}, not {', '.join(sorted(answer_from))}")
    data = json.loads(Path(src).read_text(encoding="utf-8"))
    out = Path(out)
    (out / "csv").mkdir(parents=True, exist_ok=True)
    if paragraphs:
        (out / "text").mkdir(parents=True, exist_ok=True)
    lines = ["id\tutterance\tcontext\ttargetValue\tanswer_type\tanswer_from\tscale"]
    k = 0
    for ctx in data:
        uid = ctx["table"]["uid"]
        header, body, captions = split_header(ctx["table"]["table"])
        stem = "-".join(x for x in (_slug(" ".join(captions)), uid[:8]) if x)
        table_path = f"csv/{stem}.csv"
        with open(out / table_path, "w", encoding="utf-8", newline="") as f:
            w = csv.writer(f)
            w.writerow(header)
            w.writerows(body)
        contexts = [table_path]
        if paragraphs and ctx.get("paragraphs"):
            text_path = f"text/{uid[:8]}.csv"
            with open(out / text_path, "w", encoding="utf-8", newline="") as f:
                w = csv.writer(f)
                w.writerow(["paragraph", "text"])
                for p in sorted(ctx["paragraphs"], key=lambda p: p["order"]):
                    w.writerow([p["order"], " ".join(p["text"].split())])
            contexts.append(text_path)
        for q in ctx["questions"]:
            if answer_from is not None and q["answer_from"] not in answer_from:
                continue
            k += 1
            if (k - 1) % every:
                continue
            lines.append("\t".join([q["uid"], tsv_escape(" ".join(q["question"].split())), "|".join(contexts),
                                    target_value(q["answer"]), q["answer_type"], q["answer_from"], q["scale"]]))
    (out / "questions.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return len(lines) - 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src", help="tatqa_dataset_dev.json")
    ap.add_argument("out", help="folder to write questions.tsv, csv/ and text/ to")
    ap.add_argument("--no-paragraphs", action="store_true", help="only the tables")
    ap.add_argument("--every", type=int, default=1, metavar="K", help="keep every K-th question (default: all)")
    ap.add_argument("--answer-from", metavar="KINDS", help="keep only questions whose evidence is one of these, "
                    "comma-separated: table, table-text, text (e.g. table,table-text for what one SELECT can answer)")
    args = ap.parse_args()
    kinds = {k.strip() for k in args.answer_from.split(",") if k.strip()} if args.answer_from else None
    try:
        n = convert(args.src, args.out, paragraphs=not args.no_paragraphs, every=args.every, answer_from=kinds)
    except ValueError as e:
        raise SystemExit(f"{args.src}: {e}")
    print(f"{n} questions written to {args.out}")


if __name__ == "__main__":
    main()
