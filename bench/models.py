"""Throughput of the bundled models on this machine: embedder sequences/s and tokens/s, LLM tokens/s.

    .venv/bin/python bench/models.py [--device auto|cpu|gpu] [--n 512] [--json]

Prints figures; asserts nothing. On a shared 2-core machine absolute numbers are noisy:
compare runs made one after another on the same machine.
"""
from __future__ import annotations

import argparse
import json
import random
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.models.embedder import Embedder  # noqa: E402
from core.models.llm import ChatMessage, LocalLLM  # noqa: E402

WORDS = ("the pilot reported that the airplane departed the runway after landing with a crosswind and the nose "
         "gear collapsed revenue increased quarter compared prior year primarily due to higher net sales").split()


def passages(n: int, words: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(words)) for _ in range(n)]


def bench_embedder(device: str, n: int) -> dict:
    emb = Embedder.default(device=device)
    out = {"device": emb.info.device, "precision": emb.info.precision}
    for words in (32, 180):
        texts = passages(n, words)
        emb.encode(texts[:32])  # warm-up
        t0 = time.perf_counter()
        enc = emb.encode(texts, batch_size=32, tokens=True)
        dt = time.perf_counter() - t0
        toks = sum(len(t.ids) + 2 for t in enc.tokens)
        out[f"len{words}w"] = {"seq_per_s": round(n / dt, 1), "tokens_per_s": round(toks / dt),
                               "avg_tokens": round(toks / n)}
    return out


def bench_llm(device: str) -> dict:
    t0 = time.perf_counter()
    llm = LocalLLM.default(device=device, n_ctx=2048)
    load = time.perf_counter() - t0
    ctx = " ".join(passages(1, 300)[0].split())
    llm.chat([ChatMessage("user", f"{ctx}\n\nSummarise the text above in three sentences.")], max_tokens=128)
    s = llm.last_stats
    return {"device": llm.device, "load_s": round(load, 2), "first_token_s": round(s.first_token_s or 0, 3),
            "tokens_per_s": round(s.tokens_per_s or 0, 1), "completion_tokens": s.completion_tokens}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "gpu"))
    ap.add_argument("--n", type=int, default=512, help="passages per embedder run")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    res = {"embedder": bench_embedder(args.device, args.n), "llm": bench_llm(args.device),
           "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
    if args.json:
        print(json.dumps(res, indent=2))
        return
    e = res["embedder"]
    print(f"embedder on {e['device']} ({e['precision']}):")
    for k in ("len32w", "len180w"):
        print(f"  {k:>8}: {e[k]['seq_per_s']:8.1f} seq/s  {e[k]['tokens_per_s']:7d} tok/s  (avg {e[k]['avg_tokens']} tokens)")
    lm = res["llm"]
    print(f"llm on {lm['device']}: load {lm['load_s']} s, first token {lm['first_token_s']} s, "
          f"{lm['tokens_per_s']} tok/s over {lm['completion_tokens']} tokens")
    print(f"peak RSS {res['peak_rss_mb']} MB")


if __name__ == "__main__":
    main()
