"""Why each answer of a ``sift eval pdfqa --out`` run came out as it did.

    .venv/bin/python bench/pdfqa_why.py RUN.jsonl [MORE.jsonl ...] [--before B.jsonl ...] [--replies]

One row per question: the outcome of the answer path (``gate declined``, ``model declined``,
``empty reply``, ``nothing supported``, ``answered``), the relevance gate's scores, which
sources held a short gold answer / the gold evidence, and whether the answer was right. Then
counts of outcomes, split by whether the model was shown the answer, and the run's figures
(answer accuracy over short gold answers, token F1, declined, evidence/document hit of the
citations, p50 seconds), computed from the lines as ``sift eval pdfqa --json`` computes them, so
that a run split over several files (``--limit`` parts, run side by side) is scored as one.
With ``--before``, the earlier run's outcome per question (matched by id) and its figures.
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path


def load(path: Path) -> list[dict]:
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                sys.exit(f"{path}:{n}: not JSON ({e.msg})")
    return rows


def shown(r: dict) -> bool | None:
    """Whether the model was shown the answer: a source holds a short gold answer or the gold
    evidence (None: neither can be checked, the gold being long and without evidence)."""
    if r.get("gold_in_sources") or r.get("evidence_in_sources"):
        return True
    if r.get("correct") is None and r.get("evidence_in_sources") is None:
        return None
    return False


def mark(v) -> str:
    return "-" if v is None else ("yes" if v else "no")


def _mean(vals) -> tuple[float | None, int]:
    vals = [float(v) for v in vals if v is not None]
    return (sum(vals) / len(vals) if vals else None), len(vals)


def figures(name: str, rows: list[dict]) -> str:
    """One table row of the figures ``PdfQaReport.to_json`` gives, from per-question lines."""
    acc, n_short = _mean(r.get("correct") for r in rows)
    f1, _ = _mean(r.get("f1") for r in rows)
    dec, _ = _mean(r.get("declined") for r in rows)
    ev1, n_ev = _mean((r.get("evidence_hit") or {}).get("1") for r in rows)
    ev5, _ = _mean((r.get("evidence_hit") or {}).get("5") for r in rows)
    d1, _ = _mean((r.get("doc_hit") or {}).get("1") for r in rows)
    d5, _ = _mean((r.get("doc_hit") or {}).get("5") for r in rows)
    ms = sorted(r["ms"] for r in rows)
    p50 = (ms[(len(ms) - 1) // 2] + ms[len(ms) // 2]) / 2 / 1000 if ms else 0.0

    def f(v):
        return "n/a" if v is None else f"{v:.3f}"
    return (f"| {name} | {len(rows)} | {f(acc)} ({n_short}) | {f(f1)} | {f(dec)} | {f(ev1)} / {f(ev5)} ({n_ev}) | "
            f"{f(d1)} / {f(d5)} | {p50:.1f} |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, nargs="+")
    ap.add_argument("--before", type=Path, nargs="+", default=[])
    ap.add_argument("--replies", action="store_true", help="also print the model's raw replies")
    a = ap.parse_args(argv)
    rows = [r for p in a.run for r in load(p)]
    before = {r["id"]: r for p in a.before for r in load(p)}
    print("| id | question | gate lex / dense | gold in sources | evidence in sources | outcome | correct |"
          + (" before: outcome, correct |" if before else ""))
    print("|---|---|---|---|---|---|---|" + ("---|" if before else ""))
    counts: collections.Counter = collections.Counter()
    for r in rows:
        t = r.get("trace") or {}
        g = t.get("gate") or {}
        dense = g.get("dense")
        line = (f"| {r['id'][:6]} | {r['question'][:60]} | {g.get('lexical', 0):.2f} / "
                f"{'-' if dense is None else f'{dense:.2f}'} | {r.get('gold_in_sources') or '-'} | "
                f"{r.get('evidence_in_sources') if r.get('evidence_in_sources') is not None else '-'} | "
                f"{t.get('outcome', '?')} | {mark(r.get('correct'))} |")
        if before:
            b = before.get(r["id"], {})
            line += f" {(b.get('trace') or {}).get('outcome', '?')}, {mark(b.get('correct'))} |"
        print(line)
        counts[(t.get("outcome", "?"), mark(shown(r)))] += 1
    print()
    print("| outcome | answer shown to the model | questions |")
    print("|---|---|---|")
    for (outcome, s), n in sorted(counts.items()):
        print(f"| {outcome} | {s} | {n} |")
    print()
    print("| run | n | answer accuracy (n short) | token F1 | declined | evidence hit@1/@5 (n) "
          "| cited-document hit@1/@5 | p50 s |")
    print("|---|---|---|---|---|---|---|---|")
    for name, rs in (("before", list(before.values())), ("after" if before else "run", rows)):
        if rs:
            print(figures(name, rs))
    if a.replies:
        print()
        for r in rows:
            t = r.get("trace") or {}
            print(f"- {r['id'][:6]} {r['question']!r} gold={r['gold'][:2]!r}\n    reply: {t.get('reply')!r}\n"
                  f"    answer: {r.get('answer')!r}\n    sentences: {t.get('sentences')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
