"""``sift eval own`` and ``sift eval pdfqa``: the command-line side of core.eval.own and core.eval.pdfqa.

``app.cli_eval.add_parsers`` registers these on its ``eval`` subparsers with
``app.cli_own.add_parsers(esub)``.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from core.errors import KnownError

__all__ = ["add_parsers", "cmd_eval_own", "cmd_eval_pdfqa"]


def _progress():
    from app.cli import ProgressLine  # imported late: app.cli imports the eval CLI to register it

    return ProgressLine()


def _kb_folder(args) -> Path:
    from core.kb import default_kb_dir

    return Path(args.kb).expanduser() if getattr(args, "kb", None) else default_kb_dir()


def cmd_eval_own(args) -> int:
    from core.eval.own import evaluate_own, parse_configs
    from core.jobs import CancelToken
    from core.kb import KnowledgeBase

    try:
        configs = parse_configs(args.configs)
    except ValueError as e:
        raise KnownError(str(e)) from e
    if args.n < 1:
        raise KnownError(f"--n must be at least 1, not {args.n}")
    folder = _kb_folder(args)
    if not (folder / "sift.db").is_file():
        raise KnownError(f"{folder} is not a knowledge base (no sift.db there)",
                         fix="add documents first: sift add FILES")
    cancel = CancelToken()
    with KnowledgeBase(folder) as kb:
        try:
            rep = evaluate_own(kb, n=args.n, seed=args.seed, configs=configs, use_cache=not args.no_cache,
                               progress=_progress(), cancel=cancel)
        except KeyboardInterrupt:
            cancel.cancel()
            raise
        except TypeError as e:  # kb.search refused an option of a NAME=JSON configuration
            raise KnownError(f"a configuration has an option the search does not take: {e}") from e
    if args.json:
        print(json.dumps(rep.to_json(), ensure_ascii=False))
        return 0
    rejected = len(rep.questions) - len(rep.accepted)
    print(f"{folder}: {len(rep.accepted)} questions from {rep.n_sampled} sampled chunks ({rejected} rejected, "
          f"{rep.generated} written now by {rep.model}, seed {rep.seed})")
    heads = ["Hit@1", "Hit@5", "Hit@10", "MRR@10", "p50 ms"]
    width = max([len("config")] + [len(n) for n in rep.results]) + 2
    print(f"{'config':<{width}}" + "".join(f"{h:>9}" for h in heads))
    for name, r in rep.results.items():
        vals = [f"{r.metrics[m]:.4f}" for m in ("hit@1", "hit@5", "hit@10", "mrr@10")] + [f"{r.p50_ms:.1f}"]
        print(f"{name:<{width}}" + "".join(f"{v:>9}" for v in vals) + ("  (best)" if name == rep.best else ""))
    if args.show:
        for i, q in enumerate(rep.accepted):
            ranks = {n: r.ranks.get(str(i)) for n, r in rep.results.items()}
            print(f"- {q.question}  [{q.document}, chunk {int(q.chunk_id)}]  ranks: "
                  + ", ".join(f"{n} {v if v else '-'}" for n, v in ranks.items()))
    return 0


def cmd_eval_pdfqa(args) -> int:
    from core import config
    from core.eval.pdfqa import evaluate_pdfqa, load_questions
    from core.jobs import CancelToken
    from core.kb import KnowledgeBase

    docs = Path(args.docs).expanduser()
    if not docs.is_dir():
        raise KnownError(f"{docs} is not a folder", fix="--docs must name the folder that holds the PDFs")
    questions = load_questions(args.questions)
    folder = Path(args.kb).expanduser() if args.kb else config.data_dir() / "eval" / f"pdfqa-{docs.resolve().name}"
    cancel = CancelToken()
    with KnowledgeBase(folder, parse_timeout_s=args.parse_timeout) as kb:
        if not args.retrieval_only and not hasattr(kb, "ask"):
            raise KnownError("this build of Sift cannot answer questions yet (KnowledgeBase.ask is missing)",
                             fix="use --retrieval-only to score the search hits")
        try:
            rep = evaluate_pdfqa(kb, questions, docs, limit=args.limit, retrieval_only=args.retrieval_only,
                                 dataset=Path(args.questions).stem, progress=_progress(), cancel=cancel,
                                 out=args.out)
        except KeyboardInterrupt:
            cancel.cancel()
            raise
    if rep.added:
        print(f"stored {rep.added} documents in {folder}", file=sys.stderr)
    for failure in rep.failures:
        print(f"not stored: {failure}", file=sys.stderr)
    if args.json:
        print(json.dumps(rep.to_json(), ensure_ascii=False))
        return 0
    j = rep.to_json()
    print(f"{j['dataset']}: {j['n']} questions ({j['mode']}; {j['skipped']} skipped: document not in {docs}); "
          f"knowledge base {folder}")
    rows = [("evidence hit@1", j["evidence_hit@1"], j["n_evidence"]), ("evidence hit@5", j["evidence_hit@5"],
                                                                         j["n_evidence"]),
            ("document hit@1", j["doc_hit@1"], j["n"]), ("document hit@5", j["doc_hit@5"], j["n"])]
    if j["mode"] == "answer":
        rows += [("answer accuracy", j["answer_accuracy"], j["n_short"]), ("answer F1", j["answer_f1"], j["n"]),
                 ("declined", j["declined"], j["n"])]
    for label, value, n in rows:
        shown = "   n/a" if value is None else f"{value:.4f}"
        print(f"{label:<18}{shown:>8}   (n={n})")
    print(f"{'p50 ms':<18}{j['p50_ms']:>8.1f}")
    return 0


def add_parsers(esub) -> None:
    """Register ``own`` and ``pdfqa`` on the ``sift eval`` subparsers."""
    po = esub.add_parser("own", help="Hit@k and MRR on your own documents, with questions the local LLM writes")
    po.add_argument("--n", type=int, default=200, help="chunks to sample and ask about (default 200)")
    po.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    po.add_argument("--configs", action="append", metavar="CONFIGS",
                    help="search configurations: comma-separated run names of sift eval retrieval (bm25, dense, "
                    "hybrid, hybrid-minmax, hybrid+late, hybrid+rerank-llm ...) or NAME='{...KnowledgeBase.search "
                    "options as JSON...}'; repeatable (default: bm25, dense, hybrid, hybrid-minmax)")
    po.add_argument("--json", action="store_true", help="print one JSON object")
    po.add_argument("--show", action="store_true", help="also list each question and where each configuration "
                    "ranked its source chunk")
    po.add_argument("--no-cache", action="store_true", help="write every question again instead of reusing "
                    "the ones cached in the knowledge base folder")
    po.set_defaults(fn=cmd_eval_own)

    pq = esub.add_parser("pdfqa", help="evidence hit@1/5 and answer accuracy for questions about PDFs")
    pq.add_argument("questions", metavar="QUESTIONS.jsonl",
                    help='lines of {"question", "answer", "doc", "page" (optional), "evidence" (optional)}')
    pq.add_argument("--docs", required=True, metavar="DIR", help="the folder of documents the questions are about")
    pq.add_argument("--limit", type=int, metavar="N", help="only the first N questions")
    pq.add_argument("--json", action="store_true", help="print one JSON object")
    pq.add_argument("--retrieval-only", action="store_true",
                    help="score the pages of the top search hits instead of asking the LLM")
    pq.add_argument("--parse-timeout", type=float, default=120.0, metavar="S",
                    help="seconds one file may take to parse before it is given up (default 120)")
    pq.add_argument("--out", metavar="FILE.jsonl",
                    help="also write one JSON line per question: the answer, its scores and (answer runs) "
                    "what the answer path saw: hits, relevance gate, sources, the model's raw reply, "
                    "each sentence's support and why it was declined")
    pq.set_defaults(fn=cmd_eval_pdfqa)
