"""``sift search`` and ``sift eval retrieval``: the command-line side of core.search and core.eval.

``app.cli.build_parser`` registers these with ``app.cli_eval.add_parsers(sub)``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from core.errors import KnownError

__all__ = ["add_parsers", "cmd_search", "cmd_eval_retrieval", "parse_pages", "hit_json"]


def _progress():
    from app.cli import ProgressLine  # imported late: app.cli imports this module to register it

    return ProgressLine()


def parse_pages(text: str) -> tuple[int | None, int | None]:
    """``"3-5"`` → (3, 5); ``"4"`` → (4, 4); ``"3-"`` → (3, None); ``"-5"`` → (None, 5)."""
    s = text.strip()
    try:
        if "-" in s:
            a, b = s.split("-", 1)
            lo, hi = (int(a) if a.strip() else None), (int(b) if b.strip() else None)
        else:
            lo = hi = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"pages must look like 3-5, 4, 3- or -5, not {text!r}") from None
    if (lo is not None and lo < 1) or (hi is not None and hi < 1) or (lo and hi and lo > hi):
        raise argparse.ArgumentTypeError(f"bad page range {text!r}")
    return lo, hi


def hit_json(h) -> dict:
    """A ``core.search.hybrid.Hit`` as plain JSON."""
    return {"rank": h.rank, "score": round(h.score, 6), "document": h.path, "name": h.name, "doc_id": int(h.doc_id),
            "page": h.page, "chunk_id": int(h.chunk_id), "kind": h.kind, "heading": h.heading, "text": h.text,
            "spans": [[s.page, s.start, s.end] for s in h.spans], "table": h.table, "row_ids": list(h.row_ids),
            "stages": {s.stage: {"rank": s.rank, "score": round(s.score, 6)} for s in h.stages}}


def cmd_search(args) -> int:
    from core.kb import KnowledgeBase
    from core.search.hybrid import SearchFilters, resolve_documents, search

    page_from, page_to = args.pages if args.pages else (None, None)
    filters = SearchFilters(documents=tuple(args.doc) if args.doc else None,
                            file_types=tuple(args.type) if args.type else None,
                            page_from=page_from, page_to=page_to, added_after=args.after, added_before=args.before)
    stages = ("bm25",) if args.mode == "bm25" else ("dense",) if args.mode == "dense" else ("bm25", "dense")
    timings: dict[str, float] = {}
    with KnowledgeBase(args.kb) as kb:
        if args.doc:
            _, unknown = resolve_documents(kb.store.list_documents(state="ready"), args.doc)
            if unknown:
                raise KnownError(f"no document {', '.join(repr(u) for u in unknown)} in this knowledge base",
                                 fix="see sift ls for ids, paths and names")
        extra: dict = {}
        if args.late:
            extra.update(late=kb.late_stage(), late_top=args.late_top)
        if args.rerank:
            extra.update(reranker=kb.reranker(args.rerank), rerank_top=args.rerank_top)
        try:
            hits = search(kb.store, kb.embedder, args.query, k=args.k, filters=filters, stages=stages,
                          timings=timings, ml_embedder=kb.ml_embedder_for(args.query), **extra)
        except ValueError as e:  # a malformed date
            raise KnownError(str(e)) from e
    later = (["late"] if args.late else []) + ([extra["reranker"].name] if args.rerank else [])
    if args.json:
        print(json.dumps([hit_json(h) for h in hits], indent=2, ensure_ascii=False))
        return 0
    if not hits:
        print("no matches")
        return 0
    for h in hits:
        where = f"{h.name}" + (f" p.{h.page}" if h.page else "") + (f" [{h.table}]" if h.table else "")
        snippet = " ".join(h.text.split())
        print(f"{h.rank:>2}. {h.score:.4f}  {where}")
        print(f"    {snippet[:200]}{'…' if len(snippet) > 200 else ''}")
        if args.explain:
            parts = [f"{s.stage} #{s.rank} ({s.score:.4f})" for s in h.stages]
            missing = [s for s in list(stages) + later if h.stage(s) is None]
            parts += [f"{s} not in top candidates" for s in missing]
            print(f"    explain: {'; '.join(parts)}")
    if args.explain and timings:
        print("timings: " + ", ".join(f"{k} {v:.1f} ms" for k, v in timings.items()))
    return 0


def cmd_eval_retrieval(args) -> int:
    from core import config
    from core.eval.beir import DatasetError, ingest_corpus, load_beir
    from core.eval.metrics import METRICS
    from core.eval.retrieval import evaluate_retrieval, run_names
    from core.jobs import CancelToken
    from core.kb import KnowledgeBase

    try:
        names = run_names(args.stages)
    except ValueError as e:
        raise KnownError(str(e)) from e
    ds = load_beir(args.folder, args.split)
    if not ds.queries:
        raise DatasetError(f"{args.folder}: no judged queries in split {ds.split!r}")
    folder = Path(args.kb).expanduser() if args.kb else config.data_dir() / "eval" / ds.name
    cancel = CancelToken()
    with KnowledgeBase(folder) as kb:
        try:
            ing = ingest_corpus(kb, ds, progress=_progress(), cancel=cancel)
            if ing.added:
                print(f"stored {ing.added} documents ({ing.chunks} chunks) in {folder} in {ing.seconds:.0f}s",
                      file=sys.stderr)
            rep = evaluate_retrieval(kb, ds, runs=names, limit=args.limit, late_top=args.late_top,
                                     rerank_top=args.rerank_top, progress=_progress(), cancel=cancel)
        except KeyboardInterrupt:
            cancel.cancel()
            raise
    if args.json:
        print(json.dumps(rep.to_json()))
        return 0
    print(f"{rep.dataset} / {rep.split}: {rep.n_queries} queries; knowledge base {folder}")
    heads = ["nDCG@10", "R@100", "MRR@10", "Hit@1", "Hit@5", "Hit@10", "p50 ms", "p95 ms"]
    width = max([15] + [len(n) + 2 for n in rep.runs])
    print(f"{'run':<{width}}" + "".join(f"{h:>9}" for h in heads))
    for name, r in rep.runs.items():
        vals = [f"{r.metrics[m]:.4f}" for m in METRICS] + [f"{r.p50_ms:.1f}", f"{r.p95_ms:.1f}"]
        mark = "  (default)" if name == rep.best else ""
        print(f"{name:<{width}}" + "".join(f"{v:>9}" for v in vals) + mark)
    for name, r in rep.runs.items():
        later = {s: v for s, v in r.stage_ms.items() if s in ("late", "rerank-llm", "rerank-ce")}
        if later:
            print(f"  {name}: " + ", ".join(f"{s} p50 {a:.1f} / p95 {b:.1f} ms" for s, (a, b) in later.items()))
    return 0


def _stage_args(p) -> None:
    from core.search.late_interaction import DEFAULT_LATE_TOP
    from core.search.rerank import DEFAULT_RERANK_TOP

    def positive(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if n < 1:
            raise argparse.ArgumentTypeError(f"must be at least 1, not {n}")
        return n

    p.add_argument("--late-top", type=positive, default=DEFAULT_LATE_TOP, metavar="N",
                   help=f"candidates the late-interaction stage re-scores (default {DEFAULT_LATE_TOP})")
    p.add_argument("--rerank-top", type=positive, default=DEFAULT_RERANK_TOP, metavar="N",
                   help=f"candidates a reranker re-scores (default {DEFAULT_RERANK_TOP})")


def add_parsers(sub) -> None:
    """Register ``search`` and ``eval`` on the main parser's subparsers."""
    from core.search.hybrid import MAX_K

    def k_arg(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        return max(1, min(n, MAX_K))

    p = sub.add_parser("search", help="find the passages and table rows that best match a query (no LLM)")
    p.add_argument("query")
    p.add_argument("--k", type=k_arg, default=10, help="how many hits (default 10)")
    p.add_argument("--json", action="store_true", help="print a JSON list of hits")
    p.add_argument("--explain", action="store_true", help="show each stage's rank and score for every hit")
    p.add_argument("--doc", action="append", metavar="NAME", help="only this document (id, path or file name); "
                   "repeatable")
    p.add_argument("--type", action="append", metavar="TYPE", help="only files of this type (pdf, csv, xlsx...); "
                   "repeatable")
    p.add_argument("--pages", type=parse_pages, metavar="A-B", help="only these pages, e.g. 3-5")
    p.add_argument("--after", metavar="DATE", help="only documents added on or after DATE (YYYY-MM-DD)")
    p.add_argument("--before", metavar="DATE", help="only documents added on or before DATE (YYYY-MM-DD)")
    p.add_argument("--mode", choices=("hybrid", "bm25", "dense"), default="hybrid",
                   help="which retrieval to use (default hybrid)")
    _stage_args(p)
    p.add_argument("--late", action="store_true",
                   help="re-score the top candidates by late interaction (MaxSim over token vectors)")
    p.add_argument("--rerank", choices=("llm", "cross-encoder"),
                   help="rerank the top candidates with the local LLM or the configured cross-encoder")
    p.set_defaults(fn=cmd_search)

    pe = sub.add_parser("eval", help="measure Sift on public benchmarks")
    esub = pe.add_subparsers(dest="eval_command", metavar="WHAT")
    pe.set_defaults(fn=lambda args: (pe.print_help(), 2)[1])
    pr = esub.add_parser("retrieval", help="nDCG@10, Recall@100, MRR@10, Hit@k and latency on a BEIR folder")
    pr.add_argument("folder", metavar="DIR", help="a BEIR folder: corpus.jsonl, queries.jsonl, qrels/<split>.tsv")
    pr.add_argument("--split", help="qrels split (default: the first of test, dev, train present)")
    pr.add_argument("--stages", action="append", metavar="RUNS",
                    help="runs to measure, comma-separated: bm25, dense, hybrid (RRF), hybrid-minmax, and with a "
                    "second stage hybrid+late, hybrid+rerank-llm, hybrid+rerank-ce, hybrid+late+rerank-llm "
                    "(default: the first four)")
    _stage_args(pr)
    pr.add_argument("--json", action="store_true", help="print one JSON object")
    pr.add_argument("--limit", type=int, metavar="N", help="only the first N queries")
    pr.set_defaults(fn=cmd_eval_retrieval)

    from app.cli_ask import add_eval_parser as add_rewrites_parser
    from app.cli_own import add_parsers as add_own_parsers
    from app.cli_tables import add_parsers as add_table_eval_parsers

    add_rewrites_parser(esub)
    add_table_eval_parsers(esub)
    add_own_parsers(esub)
