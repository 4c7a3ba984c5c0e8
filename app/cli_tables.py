"""``sift eval tables DIR``: denotation accuracy of the table route on WikiTableQuestions-format folders.

Registered on the ``eval`` subparsers with ``app.cli_tables.add_parsers(esub)``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ["add_parsers", "cmd_eval_tables"]


def _progress():
    from app.cli import ProgressLine  # imported late: app.cli imports the modules that register commands

    return ProgressLine()


def cmd_eval_tables(args) -> int:
    from core import config
    from core.eval.tables import evaluate_tables, load_questions
    from core.jobs import CancelToken
    from core.kb import KnowledgeBase

    folder = Path(args.folder).expanduser()
    if args.rescore:
        from core.eval.tables import rescore

        with open(args.rescore, encoding="utf-8") as f:
            saved = [json.loads(line) for line in f if line.strip()]
        rep = rescore(saved[:args.limit] if args.limit else saved, dataset=folder.resolve().name,
                      decimals=args.decimals)
        return _print(rep, args, f"saved outcomes {args.rescore}")
    # fails early on a bad folder, before any model loads
    questions = load_questions(folder, limit=args.limit, offset=args.offset)
    kb_arg = getattr(args, "kb", None)
    kb_dir = Path(kb_arg).expanduser() if kb_arg else config.data_dir() / "eval" / f"tables-{folder.resolve().name}"
    cancel = CancelToken()
    out = open(args.out, "w", encoding="utf-8") if args.out else None

    def write(item) -> None:  # line by line, so a long run that is stopped keeps what it measured
        out.write(json.dumps(item.to_json(), ensure_ascii=False) + "\n")
        out.flush()

    try:
        with KnowledgeBase(kb_dir) as kb:
            try:
                rep = evaluate_tables(kb, folder, questions=questions, decimals=args.decimals, progress=_progress(),
                                      cancel=cancel, on_item=write if out else None)
            except KeyboardInterrupt:
                cancel.cancel()
                raise
    finally:
        if out is not None:
            out.close()
    return _print(rep, args, f"knowledge base {kb_dir}; model {rep.model}")


def _print(rep, args, where: str) -> int:
    if args.json:
        print(json.dumps(rep.to_json()))
        return 0
    print(f"{rep.dataset}: {rep.n} questions; {where}")
    print(f"accuracy {rep.accuracy:.4f}   p50 {rep.p50_ms:.0f} ms   p95 {rep.p95_ms:.0f} ms   "
          f"failed SQL {rep.errors}   retried {rep.retried}")
    for key, groups in rep.by.items():
        for g, v in groups.items():
            print(f"  {key}={g or '(none)'}: n={v['n']} accuracy {v['accuracy']:.4f}")
    if getattr(args, "out", None):
        print(f"per-question results in {args.out}", file=sys.stderr)
    return 0


def add_parsers(esub) -> None:
    """Register ``tables`` on the ``eval`` command's subparsers."""
    p = esub.add_parser("tables", help="denotation accuracy and latency of table questions (WikiTableQuestions "
                        "format: questions.tsv + csv/)")
    p.add_argument("folder", metavar="DIR", help="a folder with questions.tsv (id, utterance, context, targetValue) "
                   "and the CSV files it names")
    p.add_argument("--limit", type=int, metavar="N", help="only N questions (the first N after --offset)")
    p.add_argument("--offset", type=int, default=0, metavar="K", help="skip the first K questions of "
                   "questions.tsv (file order), e.g. --offset 200 --limit 200 for questions 201-400")
    p.add_argument("--json", action="store_true", help='print one JSON object: {"n":…, "accuracy":…, "p50_ms":…}')
    # SUPPRESS: without a value here, ``sift --kb DIR eval tables`` keeps the main parser's --kb
    p.add_argument("--kb", metavar="DIR", default=argparse.SUPPRESS,
                   help="knowledge base to store the tables in (default: one per data set in the data dir)")
    p.add_argument("--decimals", type=int, metavar="D", help="round numeric answers to D decimals before scoring "
                   "(for gold answers that are rounded, as in TAT-QA)")
    p.add_argument("--out", metavar="FILE", help="write every question's SQL, prediction and outcome as JSON lines")
    p.add_argument("--rescore", metavar="FILE", help="score the outcomes saved by --out again (all of them, or as "
                   "many as a stopped run wrote) instead of asking the model")
    p.set_defaults(fn=cmd_eval_tables)


def main(argv: list[str] | None = None) -> int:
    """``python -m app.cli_tables ARGS`` = ``sift ARGS`` with ``eval tables`` registered (until app.cli does it)."""
    from app import cli

    ap = cli.build_parser()
    sub = next(a for a in ap._actions if a.dest == "command")
    esub = next(a for a in sub.choices["eval"]._actions if a.dest == "eval_command")
    if "tables" not in esub.choices:
        add_parsers(esub)
    cli.build_parser = lambda: ap  # cli.main parses with the parser that knows ``eval tables``
    return cli.main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
