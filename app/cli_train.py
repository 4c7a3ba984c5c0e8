"""``sift train reranker | late-interaction | dev-eval``: the command-line side of core.training.

``app.cli.build_parser`` registers these with ``app.cli_train.add_parsers(sub)``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from core.errors import KnownError

__all__ = ["add_parsers", "main", "cmd_train", "cmd_mine", "cmd_dev_eval", "DEFAULT_LR"]

DEFAULT_LR = {"reranker": 7e-5, "late-interaction": 1e-5}
"""The late-interaction model starts from MiniLM, already trained for retrieval: a low rate keeps what it knows."""


class _TrainProgress:
    """Run-log lines of the training stages go to stderr as they come; other stages use the progress bar."""

    def __init__(self) -> None:
        from app.cli import ProgressLine  # imported late: app.cli imports this module to register it

        self.bar = ProgressLine()

    def __call__(self, p) -> None:
        if p.stage.startswith("train"):
            print(f"{p.stage}: {p.message} ({p.elapsed_s:.0f}s)", file=sys.stderr, flush=True)
        else:
            self.bar(p)


def _langs(text: str) -> tuple[str, ...]:
    from core.training.data import LANGUAGES

    langs = tuple(dict.fromkeys(s.strip() for s in text.split(",") if s.strip()))
    bad = [s for s in langs if s not in LANGUAGES]
    if bad or not langs:
        raise argparse.ArgumentTypeError(f"languages must be among {', '.join(LANGUAGES)}, not {text!r}")
    return langs


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {n}")
    return n


def _config(args):
    from core.training import TrainConfig

    kind = args.train_command
    if args.out:
        out = Path(args.out).expanduser()
    else:
        from core import config  # imported here: the GPU machine runs training without platformdirs

        out = config.data_dir() / "training" / kind
    given = {k: getattr(args, k) for k in ("steps", "batch", "negatives", "lr", "limit", "seed", "device",
                                           "log_every", "checkpoint_every", "distill_weight", "teacher_scale",
                                           "squad_cap", "oversample", "head_lr_mult", "query_length", "doc_length")
             if getattr(args, k) is not None}
    given.setdefault("lr", DEFAULT_LR[kind])
    return TrainConfig(out=str(out), teacher=args.teacher, langs=args.langs, tiny=args.tiny, mine=args.mine,
                       kb=args.mining_kb or "", data=args.data or "", base=args.base or "",
                       examples=args.examples or "", **given)


def cmd_train(args) -> int:
    try:
        from core.training.late_interaction import train_late_interaction
        from core.training.reranker import train_reranker
    except ImportError as e:
        raise KnownError(f"training needs PyTorch and transformers ({e.name} is missing)",
                         fix="pip install torch transformers sentence-transformers") from e
    from core.jobs import CancelToken

    cfg = _config(args)
    fn = train_reranker if args.train_command == "reranker" else train_late_interaction
    cancel = CancelToken()
    try:
        res = fn(cfg, progress=_TrainProgress(), cancel=cancel)
    except KeyboardInterrupt:
        cancel.cancel()
        raise
    summary = {"kind": args.train_command, "out": str(res.out), "steps": res.steps, "examples": res.examples,
               "first_loss": round(res.first_loss, 4), "last_loss": round(res.last_loss, 4),
               "seconds": round(res.seconds, 1), "device": res.device}
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"saved {args.train_command} to {res.out}: {res.steps} steps on {res.examples} queries, "
              f"loss {res.first_loss:.4f} → {res.last_loss:.4f}, {res.seconds:.0f}s on {res.device}")
    return 0


def cmd_mine(args) -> int:
    from core.jobs import CancelToken
    from core.kb import KnowledgeBase
    from core.training.data import load_examples, mine_with_hybrid, save_examples

    out = Path(args.out).expanduser()
    kb_folder = Path(args.mining_kb).expanduser() if args.mining_kb else out.parent / (out.name.split(".")[0] + "-kb")
    cancel = CancelToken()
    progress = _TrainProgress()
    try:
        examples = load_examples(args.data or None, langs=args.langs, negatives=args.negatives, limit=args.limit,
                                 squad_cap=args.squad_cap, oversample=args.oversample, seed=args.seed,
                                 progress=progress, cancel=cancel)
        with KnowledgeBase(kb_folder) as kb:
            mined = mine_with_hybrid(examples, kb, negatives=args.negatives, progress=progress, cancel=cancel)
    except KeyboardInterrupt:
        cancel.cancel()
        raise
    save_examples(out, mined)
    found = sum(1 for e in mined if e.teacher and e.teacher[0] > 0)
    print(f"wrote {len(mined)} examples with hybrid negatives and teacher scores to {out} "
          f"(the hybrid found the positive for {found}); knowledge base {kb_folder}")
    return 0


def cmd_dev_eval(args) -> int:
    from core import config
    from core.eval.beir import load_beir
    from core.training.dev_eval import evaluate_rescoring

    ds = load_beir(args.folder, args.split)
    kb = Path(args.kb).expanduser() if getattr(args, "kb", None) else config.data_dir() / "eval" / ds.name
    rep = evaluate_rescoring(args.model, ds, kb, limit=args.limit, rescore=args.rescore, weight=args.weight,
                             progress=_TrainProgress())
    if args.json:
        print(json.dumps(rep))
        return 0
    print(f"{ds.name} / {ds.split}: {rep['n_queries']} queries; top {args.rescore} hybrid documents re-scored")
    for name, m in rep["runs"].items():
        print(f"{name:<24} nDCG@10 {m['ndcg@10']:.4f}  R@100 {m['recall@100']:.4f}  MRR@10 {m['mrr@10']:.4f}")
    return 0


def add_parsers(sub) -> None:
    """Register ``train`` on the main parser's subparsers."""
    pt = sub.add_parser("train", help="train Sift's own reranker or late-interaction model (needs PyTorch)")
    tsub = pt.add_subparsers(dest="train_command", metavar="WHAT")
    pt.set_defaults(fn=lambda args: (pt.print_help(), 2)[1])
    for kind, text in (("reranker", "a MiniLM cross-encoder (listwise softmax; margin-MSE from a teacher)"),
                       ("late-interaction", "a ColBERT-style MiniLM + 128-d projection (contrastive; "
                                            "KL distillation from a teacher)")):
        p = tsub.add_parser(kind, help=text)
        p.add_argument("--tiny", action="store_true", help="a few steps on the CPU with a tiny batch (smoke test)")
        p.add_argument("--steps", type=_positive_int, help="optimizer steps (default 1500)")
        p.add_argument("--batch", type=_positive_int, help="queries per step (default 64)")
        p.add_argument("--negatives", type=_positive_int, help="negatives per query (default 4)")
        p.add_argument("--lr", type=float, help=f"peak learning rate (default {DEFAULT_LR[kind]:g})")
        p.add_argument("--head-lr-mult", type=float, help="the new head's rate as a multiple of --lr (default 10)")
        p.add_argument("--out", metavar="DIR", help="output folder (default: <data dir>/training/" + kind + ")")
        p.add_argument("--teacher", default="none", metavar="hybrid|none|DIR",
                       help="distil scores of Sift's hybrid search, of a cross-encoder folder, or none (default)")
        p.add_argument("--distill-weight", type=float, help="weight of the distillation loss (default 1)")
        p.add_argument("--teacher-scale", type=float,
                       help="teacher score multiplier (default 50, for the hybrid; about 1 for a cross-encoder)")
        p.add_argument("--mine", action="store_true", help="mine hard negatives with Sift's hybrid search")
        p.add_argument("--mining-kb", metavar="DIR", help="knowledge base for mining (default: <out>/mining-kb)")
        p.add_argument("--langs", type=_langs, default=("en",), help="training data languages: en, zh or en,zh")
        p.add_argument("--limit", type=_positive_int, help="use at most N training queries")
        p.add_argument("--squad-cap", type=int, help="SQuAD-style questions kept per paragraph (default 3)")
        p.add_argument("--oversample", type=_positive_int, help="repeat each non-SQuAD query N times (default 1)")
        p.add_argument("--query-length", type=_positive_int, help="query tokens (default 32)")
        p.add_argument("--doc-length", type=_positive_int, help="passage tokens (default 256)")
        p.add_argument("--seed", type=int, help="random seed (default 13)")
        p.add_argument("--device", choices=("auto", "cpu", "cuda"), help="where to train (default auto)")
        p.add_argument("--log-every", type=_positive_int, help="steps between run-log lines (default 50)")
        p.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (default: none)")
        p.add_argument("--data", metavar="DIR", help="training data folder (default ../shared/train)")
        p.add_argument("--examples", metavar="FILE", help="train on a file sift train mine wrote (no data folder)")
        p.add_argument("--base", metavar="DIR", help="starting weights (default: the bundled all-MiniLM-L6-v2)")
        p.add_argument("--json", action="store_true", help="print a JSON summary")
        p.set_defaults(fn=cmd_train)
    pm = tsub.add_parser("mine", help="hard negatives and teacher scores from Sift's hybrid search, to a file")
    pm.add_argument("--out", required=True, metavar="FILE", help="examples file to write (.jsonl.gz)")
    pm.add_argument("--limit", type=_positive_int, help="use at most N training queries")
    pm.add_argument("--negatives", type=_positive_int, default=4, help="negatives per query (default 4)")
    pm.add_argument("--langs", type=_langs, default=("en",), help="training data languages: en, zh or en,zh")
    pm.add_argument("--squad-cap", type=int, default=3, help="SQuAD-style questions kept per paragraph (default 3)")
    pm.add_argument("--oversample", type=_positive_int, default=1, help="repeat each non-SQuAD query N times")
    pm.add_argument("--seed", type=int, default=13, help="random seed (default 13)")
    pm.add_argument("--data", metavar="DIR", help="training data folder (default ../shared/train)")
    pm.add_argument("--mining-kb", metavar="DIR", help="knowledge base the passages go into (default beside FILE)")
    pm.set_defaults(fn=cmd_mine)

    pe = tsub.add_parser("dev-eval", help="nDCG@10 of the hybrid re-scored by a late-interaction model (BEIR dev)")
    pe.add_argument("model", metavar="DIR", help="a late-interaction folder sift train late-interaction wrote")
    pe.add_argument("folder", metavar="BEIR", help="a BEIR folder, e.g. ../shared/eval/scifact")
    pe.add_argument("--split", default="train", help="qrels split (default train: SciFact's dev set)")
    pe.add_argument("--limit", type=_positive_int, help="only the first N queries")
    pe.add_argument("--rescore", type=_positive_int, default=50, help="hybrid documents re-scored (default 50)")
    pe.add_argument("--weight", type=float, default=0.5, help="weight of MaxSim in the min-max fusion (default 0.5)")
    pe.add_argument("--json", action="store_true", help="print one JSON object")
    pe.set_defaults(fn=cmd_dev_eval)


def main(argv: list[str] | None = None) -> int:
    """``python -m app.cli_train train ...``: the train commands alone, without the rest of sift's CLI
    (the GPU machine runs this from a bare checkout; ``sift train ...`` is the same parser)."""
    ap = argparse.ArgumentParser(prog="sift")
    ap.add_argument("--kb", metavar="DIR", help="knowledge-base folder (dev-eval)")
    add_parsers(ap.add_subparsers(dest="command", metavar="COMMAND"))
    args = ap.parse_args(argv)
    if not getattr(args, "fn", None):
        ap.print_help()
        return 2
    try:
        return int(args.fn(args) or 0)
    except KnownError as e:
        print(f"sift: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("sift: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
