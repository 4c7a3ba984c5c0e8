"""Query latency without the LLM: p50/p95 of one search per stage configuration.

    .venv/bin/python bench/query.py [--kb /tmp/sift-eval-scifact] [--data /work/shared/eval/scifact]
                                    [--n 200] [--k 10] [--json]

Searches the SciFact claims (train split) against a knowledge base that holds the SciFact
corpus; the corpus is stored first when the knowledge base lacks it (slow on a CPU: ~10k
chunks). Each timing is one ``core.search.hybrid.search`` call as the app makes it: query
embedding, both stages, fusion, hydration of ``k`` hits. Prints figures; asserts nothing.
On a shared 2-core machine absolute numbers are noisy: compare runs made one after another.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.eval.beir import ingest_corpus, load_beir  # noqa: E402
from core.eval.metrics import percentile  # noqa: E402
from core.eval.retrieval import RUNS  # noqa: E402
from core.kb import KnowledgeBase  # noqa: E402
from core.search.hybrid import search  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kb", default="/tmp/sift-eval-scifact", help="knowledge-base folder with the corpus")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "eval" / "scifact"), help="BEIR folder")
    ap.add_argument("--split", default="train")
    ap.add_argument("--n", type=int, default=200, help="queries per configuration")
    ap.add_argument("--k", type=int, default=10, help="hits per query")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    ds = load_beir(args.data, args.split)
    queries = list(ds.queries.values())[: args.n]
    out: dict = {"kb": args.kb, "queries": len(queries), "k": args.k, "runs": {}}
    with KnowledgeBase(args.kb) as kb:
        ing = ingest_corpus(kb, ds)
        store, emb = kb.store, kb.embedder
        out["chunks"] = store.counts().chunks
        out["device"] = emb.info.device
        if ing.added:
            out["ingest_s"] = round(ing.seconds, 1)
        for q in queries[:5]:  # warm-up: ONNX allocations, SQLite page cache
            search(store, emb, q, k=args.k)
        t0 = time.perf_counter()
        emb.encode(queries[:50])
        out["embed_batch_ms_per_query"] = round((time.perf_counter() - t0) * 1000 / min(50, len(queries)), 2)
        for name, cfg in RUNS.items():
            times = []
            for q in queries:
                t = time.perf_counter()
                search(store, emb, q, k=args.k, stages=cfg.stages, fusion=cfg.fusion, weights=cfg.weights)
                times.append((time.perf_counter() - t) * 1000)
            out["runs"][name] = {"p50_ms": round(percentile(times, 50), 2), "p95_ms": round(percentile(times, 95), 2),
                                 "mean_ms": round(sum(times) / len(times), 2)}
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"{out['queries']} queries, k={args.k}, {out['chunks']} chunks, embeddings on {out['device']}")
    print(f"query embedding alone (batched): {out['embed_batch_ms_per_query']} ms/query")
    print(f"{'run':<15}{'p50 ms':>9}{'p95 ms':>9}{'mean ms':>9}")
    for name, r in out["runs"].items():
        print(f"{name:<15}{r['p50_ms']:>9.1f}{r['p95_ms']:>9.1f}{r['mean_ms']:>9.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
