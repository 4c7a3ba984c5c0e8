"""Query latency without the LLM: p50/p95 of one search per stage configuration.

    .venv/bin/python bench/query.py [--kb /tmp/sift-eval-scifact] [--data /work/shared/eval/scifact]
                                    [--n 200] [--k 10] [--runs bm25,hybrid-minmax,hybrid+late,...]
                                    [--late-top 100] [--rerank-top 50] [--json]

Searches the SciFact claims (train split) against a knowledge base that holds the SciFact
corpus; the corpus is stored first when the knowledge base lacks it (slow on a CPU: ~10k
chunks). Each timing is one ``core.search.hybrid.search`` call as the app makes it: query
embedding, both stages, fusion, the optional late/rerank stages, hydration of ``k`` hits; beside
the whole call, each stage's own p50/p95 (``search(..., timings=)``). Runs with a second stage
(``hybrid+late``, ``hybrid+rerank-llm``, ...) are measured only when named in ``--runs``; without
a configured late-interaction model ``hybrid+late`` encodes the candidates with MiniLM on the fly.
Prints figures; asserts nothing.
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
from core.eval.retrieval import BASE_RUNS, RUNS, run_names  # noqa: E402
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
    ap.add_argument("--runs", default=",".join(BASE_RUNS), help=f"comma-separated, from: {', '.join(RUNS)}")
    ap.add_argument("--late-top", type=int, default=None, help="candidates the late stage re-scores")
    ap.add_argument("--rerank-top", type=int, default=None, help="candidates a reranker re-scores")
    ap.add_argument("--late-model", metavar="FOLDER",
                    help="a ColBERT checkpoint to use as the late-interaction model (its token vectors are "
                    "encoded into the knowledge base first)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    ds = load_beir(args.data, args.split)
    queries = list(ds.queries.values())[: args.n]
    out: dict = {"kb": args.kb, "queries": len(queries), "k": args.k, "runs": {}}
    with KnowledgeBase(args.kb) as kb:
        if args.late_model:
            kb.settings = kb.settings.with_(extra={**kb.settings.extra, "late_interaction_model": args.late_model})
            t0 = time.perf_counter()
            kb.store  # opens the store and encodes the token vectors it lacks
            out["late_model"] = {"folder": args.late_model, "dim": kb.colbert.dim,
                                 "codec": kb.store.token_vectors.codec,
                                 "encode_s": round(time.perf_counter() - t0, 1),
                                 "token_vectors": kb.store.token_vectors.n_tokens,
                                 "bytes": kb.store.token_vectors.disk_bytes()}
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
        for name in run_names(args.runs):
            cfg = RUNS[name]
            extra: dict = {}
            if cfg.late:
                extra.update(late=kb.late_stage(), late_top=args.late_top)
            if cfg.rerank:
                extra.update(reranker=kb.reranker(cfg.rerank), rerank_top=args.rerank_top)
            if extra:  # first call of a model allocates; keep it out of the figures
                search(store, emb, queries[0], k=args.k, stages=cfg.stages, fusion=cfg.fusion, weights=cfg.weights,
                       **extra)
            times = []
            stages: dict[str, list[float]] = {}
            for q in queries:
                timings: dict[str, float] = {}
                t = time.perf_counter()
                search(store, emb, q, k=args.k, stages=cfg.stages, fusion=cfg.fusion, weights=cfg.weights,
                       timings=timings, **extra)
                times.append((time.perf_counter() - t) * 1000)
                for s, ms in timings.items():
                    stages.setdefault(s, []).append(ms)
            out["runs"][name] = {"p50_ms": round(percentile(times, 50), 2), "p95_ms": round(percentile(times, 95), 2),
                                 "mean_ms": round(sum(times) / len(times), 2),
                                 "stages": {s: {"p50_ms": round(percentile(v, 50), 2),
                                                "p95_ms": round(percentile(v, 95), 2)}
                                            for s, v in stages.items() if s != "total"}}
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"{out['queries']} queries, k={args.k}, {out['chunks']} chunks, embeddings on {out['device']}")
    print(f"query embedding alone (batched): {out['embed_batch_ms_per_query']} ms/query")
    if "late_model" in out:
        lm = out["late_model"]
        print(f"late-interaction model {lm['folder']}: dim {lm['dim']} {lm['codec']}, {lm['token_vectors']} token "
              f"vectors in {lm['bytes'] / 2**20:.1f} MiB ({lm['bytes'] / out['chunks'] / 1024:.1f} KiB a chunk), "
              f"encoded in {lm['encode_s']} s")
    width = max([15] + [len(n) + 2 for n in out["runs"]])
    print(f"{'run':<{width}}{'p50 ms':>9}{'p95 ms':>9}{'mean ms':>9}   per stage p50/p95 ms")
    for name, r in out["runs"].items():
        per = ", ".join(f"{s} {v['p50_ms']:.1f}/{v['p95_ms']:.1f}" for s, v in r["stages"].items())
        print(f"{name:<{width}}{r['p50_ms']:>9.1f}{r['p95_ms']:>9.1f}{r['mean_ms']:>9.1f}   {per}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
