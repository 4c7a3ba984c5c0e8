"""What the LLM pointwise reranker does to SciFact (train split, the dev set): nDCG@10 and cost.

    .venv/bin/python bench/rerank_llm.py [--kb /tmp/sift-eval-scifact] [--data ../shared/eval/scifact]
                                         [--n 20] [--top 10] [--cache /tmp/rerank-llm.jsonl] [--json]

For each of the first ``n`` judged claims: the default hybrid search (300 candidates, as
``sift eval retrieval`` runs it), then the local chat model's yes/no score
(``core.search.rerank.LLMReranker``) for the top ``top`` chunks, timed. Scores are appended to
``--cache`` as they are made (one JSON line per query), so an interrupted run resumes and the
blend weights below cost nothing extra. Then nDCG@10 etc. of the plain hybrid ranking and of the
head re-ordered by ``w * llm + (1 - w) * fused`` (both min-max normalised over the head;
``core.search.rerank.blend``) for several weights, on the same queries. ``w = 1`` is exactly what
``sift eval retrieval --stages hybrid+rerank-llm --rerank-top TOP`` measures. Prints figures;
asserts nothing. The knowledge base must already hold the corpus (``sift eval retrieval`` stores it).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.eval.beir import corpus_id_of, load_beir  # noqa: E402
from core.eval.metrics import METRICS, evaluate, percentile  # noqa: E402
from core.kb import KnowledgeBase  # noqa: E402
from core.search.hybrid import search  # noqa: E402
from core.search.rerank import LLMReranker, blend  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = (1.0, 0.7, 0.5, 0.3)


def _docs(ranked, paths: dict[str, str], dataset: str, depth: int = 100) -> list[str]:
    out: dict[str, None] = {}
    for cid, _ in ranked:
        c = corpus_id_of(paths[str(cid)], dataset)
        if c and c not in out:
            out[c] = None
            if len(out) >= depth:
                break
    return list(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kb", default="/tmp/sift-eval-scifact")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "eval" / "scifact"))
    ap.add_argument("--split", default="train")
    ap.add_argument("--n", type=int, default=20, help="judged queries (the first n)")
    ap.add_argument("--top", type=int, default=10, help="chunks the LLM scores per query")
    ap.add_argument("--cache", default="/tmp/rerank-llm.jsonl", help="per-query scores, appended as made")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    ds = load_beir(args.data, args.split)
    qids = list(ds.queries)[: args.n]
    cache = Path(args.cache)
    rows: dict[str, dict] = {}
    if cache.exists():
        for line in cache.read_text().splitlines():
            d = json.loads(line)
            if len(d["llm"]) >= min(args.top, len(d["first"])):
                rows[d["q"]] = d
    todo = [q for q in qids if q not in rows]
    if todo:
        with KnowledgeBase(args.kb) as kb, open(cache, "a") as f:
            rr = LLMReranker(kb.llm)
            rr.score("warm-up", ["a passage"])
            for q in todo:
                hits = search(kb.store, kb.embedder, ds.queries[q], k=300, candidates=300)
                head = hits[: args.top]
                t = time.perf_counter()
                scores = rr.score(ds.queries[q], [h.text for h in head])
                d = {"q": q, "first": [(int(h.chunk_id), h.score) for h in hits],
                     "llm": {str(int(h.chunk_id)): float(s) for h, s in zip(head, scores)},
                     "ms": (time.perf_counter() - t) * 1000, "paths": {str(int(h.chunk_id)): h.path for h in hits}}
                f.write(json.dumps(d) + "\n")
                f.flush()
                rows[q] = d
                print(f"{q}: {d['ms'] / 1000:.1f} s", file=sys.stderr, flush=True)
    rows = {q: rows[q] for q in qids if q in rows}
    qrels = {q: ds.qrels[q] for q in rows}
    out: dict = {"n_queries": len(rows), "top": args.top, "runs": {}}
    out["runs"]["hybrid-minmax"] = evaluate(qrels, {q: _docs(d["first"], d["paths"], ds.name) for q, d in rows.items()})
    for w in WEIGHTS:
        run = {q: _docs(blend([tuple(x) for x in d["first"]], {int(k): v for k, v in d["llm"].items()}, weight=w,
                              top_n=args.top).ranked, d["paths"], ds.name) for q, d in rows.items()}
        out["runs"][f"+rerank-llm w={w}"] = evaluate(qrels, run)
    ms = [d["ms"] for d in rows.values()]
    n_passages = sum(len(d["llm"]) for d in rows.values())
    out["llm_ms_per_query"] = {"p50": round(percentile(ms, 50)), "p95": round(percentile(ms, 95))}
    out["llm_ms_per_passage"] = round(sum(ms) / max(1, n_passages))
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"{len(rows)} queries, LLM on the top {args.top} chunks of the default hybrid search")
    print(f"{'run':<22}" + "".join(f"{m:>11}" for m in METRICS))
    for name, r in out["runs"].items():
        print(f"{name:<22}" + "".join(f"{r[m]:>11.4f}" for m in METRICS))
    print(f"LLM time per query p50 {out['llm_ms_per_query']['p50'] / 1000:.1f} s, p95 "
          f"{out['llm_ms_per_query']['p95'] / 1000:.1f} s; {out['llm_ms_per_passage'] / 1000:.1f} s a passage")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
