"""``sift ask``: a cited answer on the command line.

The answer streams to the terminal as the model writes it; then the final text (with
citation numbers pointing at the evidence found) and the sources are printed. ``--json``
prints one object instead: answer, citations (page, text, rectangles or table, rows,
columns), route, unsupported sentences.
"""
from __future__ import annotations

import argparse
import json
import sys
import textwrap

__all__ = ["add_parsers", "cmd_ask", "format_citation"]


def format_citation(c) -> str:
    """One line per citation: ``[n] file p.3: “text”`` or ``[n] file, table t, rows 2, 5 (cols): “…”``."""
    text = " ".join(c.text.split())
    if len(text) > 160:
        text = text[:157] + "…"
    if c.kind == "table":
        cols = f" ({', '.join(c.columns)})" if c.columns else ""
        rows = ", ".join(str(r) for r in c.rows[:12]) + (" …" if len(c.rows) > 12 else "")
        return f"[{c.n}] {c.document}, table {c.table}, row {rows}{cols}: “{text}”"
    where = f" p.{c.page}" if c.page is not None else ""
    return f"[{c.n}] {c.document}{where}: “{text}”"


def cmd_ask(args) -> int:
    from app.cli_eval import parse_pages
    from core.answer.types import AskOptions
    from core.jobs import CancelToken
    from core.kb import KnowledgeBase
    from core.search.hybrid import SearchFilters

    page_from, page_to = parse_pages(args.pages) if args.pages else (None, None)
    filters = None
    if args.doc or args.pages:
        filters = SearchFilters(documents=tuple(args.doc) if args.doc else None, page_from=page_from, page_to=page_to)
    opts = AskOptions(route=args.route, k=args.k, multi_query=args.multi_query, step_back=args.step_back,
                      hyde=args.hyde, decompose=args.decompose, filters=filters)
    cancel = CancelToken()
    streamed = []

    def on_token(piece: str) -> None:
        if not args.json and sys.stdout.isatty():
            streamed.append(piece)
            sys.stdout.write(piece)
            sys.stdout.flush()

    def on_status(line: str) -> None:
        if not args.json and sys.stderr.isatty():
            sys.stderr.write(f"\r\x1b[2K{line}…")
            sys.stderr.flush()

    with KnowledgeBase(args.kb) as kb:
        if args.quality:
            kb.settings = kb.settings.with_(llm_tier="quality")
        try:
            ans = kb.ask(args.question, options=opts, on_token=on_token, on_status=on_status, cancel=cancel)
        except KeyboardInterrupt:
            cancel.cancel()
            raise
    if not args.json and sys.stderr.isatty():
        sys.stderr.write("\r\x1b[2K")
    if args.json:
        print(json.dumps(ans.to_json(), ensure_ascii=False))
        return 0
    if streamed:
        sys.stdout.write("\r\x1b[2K\n")  # the draft stays above; the checked answer follows
    print(textwrap.fill(ans.text, width=100) if "\n" not in ans.text else ans.text)
    if ans.unsupported:
        print("\nNot supported by the documents:")
        for s in ans.unsupported:
            print(f"  ✗ {s}")
    if ans.citations:
        print("\nSources:")
        for c in ans.citations:
            print("  " + format_citation(c))
    if ans.sql:
        print(f"\nSQL: {ans.sql}")
    t = ans.timings.get("total")
    print(f"\n({ans.route}" + (f", {t:.1f}s" if t is not None else "") + (f", {ans.model}" if ans.model else "") + ")")
    return 0


def add_parsers(sub) -> None:
    """Register ``ask`` on the main parser's subparsers."""
    from core.answer.types import ROUTES

    def positive(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not 1 <= n <= 20:
            raise argparse.ArgumentTypeError(f"must be between 1 and 20, not {n}")
        return n

    p = sub.add_parser("ask", help="answer a question from the documents, with cited evidence")
    p.add_argument("question")
    p.add_argument("--json", action="store_true", help="print one JSON object (answer, citations, route, unsupported)")
    p.add_argument("--route", choices=("auto", *ROUTES), default="auto",
                   help="passages (search), table (SQL over tables), summary (whole document); default: auto")
    p.add_argument("--k", type=positive, default=5, help="passages given to the model (default 5)")
    p.add_argument("--doc", action="append", metavar="NAME", help="only this document (id, path or file name); repeatable")
    p.add_argument("--pages", metavar="RANGE", help="only these pages, e.g. 3-5")
    p.add_argument("--multi-query", action="store_true", help="also search paraphrases of the question")
    p.add_argument("--step-back", action="store_true", help="also search a more general question")
    p.add_argument("--hyde", action="store_true", help="also search a hypothetical answer passage")
    p.add_argument("--decompose", action="store_true", help="answer the parts of a compound question in turn")
    p.add_argument("--quality", action="store_true", help="use the quality-tier chat model (1.5B; slower)")
    p.set_defaults(fn=cmd_ask)


def cmd_eval_rewrites(args) -> int:
    from core import config
    from core.eval.beir import DatasetError, ingest_corpus, load_beir
    from core.eval.rewrites import evaluate_rewrites
    from core.jobs import CancelToken
    from core.kb import KnowledgeBase
    from app.cli import ProgressLine
    from pathlib import Path

    ds = load_beir(args.folder, args.split)
    if not ds.queries:
        raise DatasetError(f"{args.folder}: no judged queries in split {ds.split!r}")
    folder = Path(args.kb).expanduser() if args.kb else config.data_dir() / "eval" / ds.name
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    cancel = CancelToken()
    with KnowledgeBase(folder) as kb:
        try:
            ingest_corpus(kb, ds, progress=ProgressLine(), cancel=cancel)
            runs = evaluate_rewrites(kb, ds, configs=configs, limit=args.limit, progress=ProgressLine(), cancel=cancel)
        except KeyboardInterrupt:
            cancel.cancel()
            raise
        except ValueError as e:
            from core.errors import KnownError

            raise KnownError(str(e)) from None
    n = len(list(ds.queries)[: args.limit if args.limit else None])
    if args.json:
        print(json.dumps({"dataset": ds.name, "split": ds.split, "n_queries": n,
                          "runs": {k: r.to_json() for k, r in runs.items()}}))
        return 0
    print(f"{ds.name} / {ds.split}: {n} queries; rewrites by the knowledge base's chat model")
    heads = ["nDCG@10", "R@100", "MRR@10", "Hit@1", "Hit@5", "Hit@10", "p50 ms", "p95 ms", "rewritten"]
    print(f"{'run':<14}" + "".join(f"{h:>10}" for h in heads))
    for name, r in runs.items():
        vals = [f"{v:.4f}" for v in r.metrics.values()] + [f"{r.p50_ms:.0f}", f"{r.p95_ms:.0f}", str(r.rewritten)]
        print(f"{name:<14}" + "".join(f"{v:>10}" for v in vals))
    return 0


def add_eval_parser(eval_sub) -> None:
    """Register ``eval rewrites`` on the ``eval`` command's subparsers."""
    from core.eval.rewrites import CONFIGS

    p = eval_sub.add_parser("rewrites", help="retrieval quality with each query rewrite (multi-query, step-back, "
                                             "HyDE) against none, on a BEIR folder")
    p.add_argument("folder", help="BEIR folder: corpus.jsonl, queries.jsonl, qrels/SPLIT.tsv")
    p.add_argument("--split", default=None, help="qrels split (default: test, else dev, else train)")
    p.add_argument("--limit", type=int, default=None, help="only the first N judged queries")
    p.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated, from {', '.join(CONFIGS)}")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(fn=cmd_eval_rewrites)
