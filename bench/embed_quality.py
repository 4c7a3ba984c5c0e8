"""Retrieval quality of the embedder per precision: dense-only nDCG@10 on SciFact (BEIR layout).

    .venv/bin/python bench/embed_quality.py [--data /work/shared/eval/scifact] [--split train]
        [--precision fp32 --precision int8] [--model-dir DIR ...] [--limit-docs N] [--json]

Each document is embedded as ``title + " " + text`` (as BEIR does), each query as its text;
documents are ranked by cosine and scored with trec_eval's nDCG@10 (``pytrec-eval-terrier``).
This is the bar for making int8 the CPU default: it must lose less than 0.005 nDCG@10 against
fp32. Prints figures; asserts nothing. ``--model-dir`` adds any exported folder (its
``model.onnx`` run as fp32), for comparing quantization recipes made by hand.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from core.models.embedder import Embedder  # noqa: E402

DEFAULT_DATA = Path("/work/shared/eval/scifact")


def load_beir(data: Path, split: str, limit_docs: int | None = None):
    """(doc ids, doc texts, {query id: text}, qrels) restricted to queries judged in ``split``."""
    qrels: dict[str, dict[str, int]] = {}
    with open(data / "qrels" / f"{split}.tsv") as f:
        next(f)  # header
        for line in f:
            qid, did, score = line.rstrip("\n").split("\t")
            qrels.setdefault(qid, {})[did] = int(score)
    ids, texts = [], []
    with open(data / "corpus.jsonl") as f:
        for line in f:
            d = json.loads(line)
            ids.append(str(d["_id"]))
            texts.append((d.get("title", "") + " " + d.get("text", "")).strip())
    if limit_docs:
        keep = set(ids[:limit_docs]) | {d for rel in qrels.values() for d in rel}
        pairs = [(i, t) for i, t in zip(ids, texts) if i in keep]
        ids, texts = [p[0] for p in pairs], [p[1] for p in pairs]
    queries = {}
    with open(data / "queries.jsonl") as f:
        for line in f:
            q = json.loads(line)
            if str(q["_id"]) in qrels:
                queries[str(q["_id"])] = q["text"]
    qrels = {q: r for q, r in qrels.items() if q in queries}
    return ids, texts, queries, qrels


def ndcg_at_10(run: dict[str, dict[str, float]], qrels: dict[str, dict[str, int]]) -> float:
    import pytrec_eval

    per_query = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10"}).evaluate(run)
    return float(np.mean([v["ndcg_cut_10"] for v in per_query.values()]))


def evaluate(emb: Embedder, ids, texts, queries, qrels, *, k: int = 100) -> dict:
    n_tokens = sum(len(e.ids) for e in emb.tokenizer.encode_batch(texts))
    emb.encode(texts[:32])  # warm-up: first runs allocate
    t0, c0 = time.perf_counter(), time.process_time()
    docs = emb.encode_documents(texts, batch_size=32).pooled
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    qids = list(queries)
    qv = emb.encode_queries([queries[q] for q in qids], batch_size=32).pooled
    scores = qv @ docs.T
    top = np.argsort(-scores, axis=1)[:, :k]
    run = {q: {ids[j]: float(scores[r, j]) for j in top[r]} for r, q in enumerate(qids)}
    return {"ndcg@10": round(ndcg_at_10(run, qrels), 5), "docs": len(texts), "queries": len(qids),
            "doc_tokens": n_tokens, "embed_s": round(wall, 1), "tokens_per_s": round(n_tokens / wall),
            "tokens_per_cpu_s": round(n_tokens / cpu), "vectors": docs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--split", default="train")
    ap.add_argument("--precision", action="append", choices=("fp32", "int8"),
                    help="precision of the bundled model to score (repeatable; default fp32 and int8)")
    ap.add_argument("--model-dir", action="append", type=Path, default=[],
                    help="an exported model folder to score as it is (repeatable)")
    ap.add_argument("--limit-docs", type=int, help="score on the judged documents plus the first N others")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from core.models import registry

    ids, texts, queries, qrels = load_beir(args.data, args.split, args.limit_docs)
    folder = registry.prepare(registry.get("minilm-l6"))
    setups = [(p, folder, p) for p in (args.precision or ([] if args.model_dir else ["fp32", "int8"]))]
    setups += [(str(d), d, "fp32") for d in args.model_dir]
    results: dict[str, dict] = {}
    base = None
    for name, path, precision in setups:
        emb = Embedder(path, device="cpu", precision=precision)
        r = evaluate(emb, ids, texts, queries, qrels)
        vecs = r.pop("vectors")
        r["precision"] = emb.info.precision
        if base is None:
            base = vecs
        else:  # how far each document vector moved from the first setup's
            cos = (vecs * base).sum(axis=1)
            r["doc_cosine_vs_first"] = {"min": round(float(cos.min()), 4), "mean": round(float(cos.mean()), 5)}
        results[name] = r
        del emb
        if not args.json:
            print(f"{name:>12} [{r['precision']}]: nDCG@10 {r['ndcg@10']:.4f}  "
                  f"{r['tokens_per_s']:6d} tok/s wall, {r['tokens_per_cpu_s']:6d} tok/cpu-s  "
                  f"({r['docs']} docs, {r['doc_tokens']} tokens, {r['queries']} queries, {r['embed_s']} s)"
                  + (f"  cos vs first: min {r['doc_cosine_vs_first']['min']}, mean {r['doc_cosine_vs_first']['mean']}"
                     if "doc_cosine_vs_first" in r else ""), flush=True)
    names = list(results)
    if len(names) > 1 and not args.json:
        first = results[names[0]]
        for n in names[1:]:
            r = results[n]
            print(f"{n} vs {names[0]}: nDCG@10 {r['ndcg@10'] - first['ndcg@10']:+.4f}, "
                  f"speed x{r['tokens_per_s'] / first['tokens_per_s']:.2f} wall, "
                  f"x{r['tokens_per_cpu_s'] / first['tokens_per_cpu_s']:.2f} per cpu-s")
    out = {"split": args.split, "results": results,
           "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"peak RSS {out['peak_rss_mb']} MB")


if __name__ == "__main__":
    main()
