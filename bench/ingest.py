"""Ingest throughput, and which stage holds it back: parse-only, embed-only, then full ingest.

    .venv/bin/python bench/ingest.py [DIR] [--limit N] [--precision fp32 --precision int8] [--timeout S] [--json]

DIR defaults to the 20 SEC 10-Q filings. Each phase runs in its own fresh process, so every
peak-memory figure is that phase's own (the main process, and its parse worker counted apart
through RUSAGE_CHILDREN):

- parse: ``ParsePool`` over the files (the worker process ``KnowledgeBase.add`` uses), nothing else,
  with the number of tables found; then the parsed pages are chunked as ingest chunks them, timed
  apart, for the embed phase;
- embed: ``Embedder.encode`` over those chunk texts, per precision, on CPU;
- ingest: ``KnowledgeBase.add`` into a fresh temp knowledge base (parse, chunk, embed, index),
  per precision; ``embed_s`` is the time spent inside ``encode`` during it, and the rest is
  waiting for the parser, chunking and writing.

Prints pages/s, chunks/s, tokens/s (word pieces embedded, after truncation), CPU seconds and
peak RSS per phase, and int8/fp32 ratios: on a shared machine absolute times are noisy,
ratios between phases of the same run less so. Asserts nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_DIR = Path("/work/shared/eval/pdfqa/sec-10q/docs")


def _files(folder: Path, limit: int | None) -> list[str]:
    from core.kb import expand_paths

    files, _ = expand_paths([folder])
    return [str(f) for f in files[:limit]]


class _WorkerPeak:
    """Peak RSS of this process's children (the parse worker), sampled from /proc (Linux).

    RUSAGE_CHILDREN's ru_maxrss is no use for this: a spawned child is forked before it execs,
    and Linux keeps the parent's RSS at the fork as the child's high-water mark.
    """

    def __init__(self) -> None:
        self.peak_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "_WorkerPeak":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        me = str(os.getpid())
        while not self._stop.wait(0.25):
            for pid in os.listdir("/proc") if os.path.isdir("/proc") else ():
                if not pid.isdigit():
                    continue
                try:
                    with open(f"/proc/{pid}/stat") as f:
                        if f.read().rsplit(")", 1)[1].split()[1] != me:
                            continue
                    with open(f"/proc/{pid}/status") as f:
                        hwm = next((int(ln.split()[1]) for ln in f if ln.startswith("VmHWM:")), 0)
                except (OSError, IndexError, ValueError):
                    continue
                self.peak_kb = max(self.peak_kb, hwm)


def _usage(worker: _WorkerPeak | None = None) -> dict:
    """CPU seconds of this process and its reaped children (the parse worker); peak RSS of each."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"cpu_s": round(me.ru_utime + me.ru_stime, 1), "worker_cpu_s": round(kids.ru_utime + kids.ru_stime, 1),
            "peak_rss_mb": round(me.ru_maxrss / 1024),
            "worker_peak_rss_mb": round(worker.peak_kb / 1024) if worker is not None else 0}


# ----------------------------------------------------------------------------- phases (child processes)


def phase_parse(files: list[str], texts_out: Path, timeout_s: float) -> dict:
    from core.ingest.chunking import chunk_pages
    from core.ingest.worker import ParsePool
    from core.models.embedder import Embedder
    from core.store.sqltables import table_chunks

    t0 = time.perf_counter()
    docs, failed = [], []
    # as KnowledgeBase.add starts it
    with _WorkerPeak() as worker, ParsePool(ocr=True, timeout_s=timeout_s) as pool:
        for path, result in pool.imap(files):
            if isinstance(result, Exception):
                failed.append(f"{Path(path).name}: {result}")
            else:
                docs.append(result)
    parse_s = time.perf_counter() - t0
    usage = _usage(worker)  # the worker is reaped by now: its CPU time is in RUSAGE_CHILDREN
    pages = sum(len(d.pages) for d in docs)
    n_tables = sum(len(d.tables) + sum(len(p.tables) for p in d.pages) for d in docs)
    table_pages = sum(1 for d in docs for p in d.pages if p.tables)

    # Chunk as KnowledgeBase._store_parsed does, for the embed phase (and to time chunking apart).
    emb = Embedder.default(device="cpu", precision="fp32")
    t1 = time.perf_counter()
    texts: list[str] = []
    for d in docs:
        chunks = list(chunk_pages(d.pages, count_tokens=emb.count_tokens, max_tokens=emb.max_length))
        tables = list(d.tables) + [t for p in d.pages for t in p.tables]
        for i, table in enumerate(tables):
            chunks += table_chunks(table, f"t{i}", count_tokens=emb.count_tokens, max_tokens=emb.max_length)
        texts += [c.text for c in chunks]
    chunk_s = time.perf_counter() - t1
    texts_out.write_text(json.dumps({"pages": pages, "texts": texts}))
    return {"files": len(files), "failed": failed, "pages": pages, "seconds": round(parse_s, 1),
            "pages_per_s": round(pages / parse_s, 2), "tables": n_tables, "table_pages": table_pages,
            "chunks": len(texts), "chunk_s": round(chunk_s, 1), **usage}


def phase_prepare(precision: str) -> dict:
    """Make the model variant once, so the timed phases only load it."""
    from core.models.embedder import Embedder

    t0 = time.perf_counter()
    emb = Embedder.default(device="cpu", precision=precision)
    return {"precision": emb.info.precision, "model": emb.info.model_path, "reason": emb.info.reason,
            "seconds": round(time.perf_counter() - t0, 1)}


def phase_embed(texts_in: Path, precision: str) -> dict:
    from core.models.embedder import Embedder

    data = json.loads(texts_in.read_text())
    texts, pages = data["texts"], data["pages"]
    t0 = time.perf_counter()
    emb = Embedder.default(device="cpu", precision=precision)
    load_s = time.perf_counter() - t0
    tokens = sum(len(e.ids) for e in emb.tokenizer.encode_batch(texts))
    emb.encode(texts[:32])  # warm-up: the first runs allocate
    t0, c0 = time.perf_counter(), time.process_time()
    emb.encode(texts, batch_size=32)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"precision": emb.info.precision, "model": Path(emb.info.model_path).name, "load_s": round(load_s, 1),
            "chunks": len(texts), "tokens": tokens, "seconds": round(dt, 1), "chunks_per_s": round(len(texts) / dt, 1),
            "tokens_per_s": round(tokens / dt), "tokens_per_cpu_s": round(tokens / cpu),
            "pages_per_s": round(pages / dt, 2), **_usage()}


def phase_ingest(files: list[str], precision: str, timeout_s: float) -> dict:
    from core.kb import KnowledgeBase
    from core.models.embedder import Embedder

    t0 = time.perf_counter()
    emb = Embedder.default(device="cpu", precision=precision)
    load_s = time.perf_counter() - t0
    spent = {"s": 0.0, "texts": 0, "tokens": 0}
    encode = emb.encode

    def timed_encode(texts, **kw):
        t = time.perf_counter()
        out = encode(texts, **kw)
        spent["s"] += time.perf_counter() - t
        spent["texts"] += len(texts)
        spent["tokens"] += sum(len(e.ids) for e in emb.tokenizer.encode_batch(list(texts)))
        return out

    emb.encode = timed_encode  # type: ignore[method-assign]
    with tempfile.TemporaryDirectory(prefix="sift-bench-kb-") as tmp:
        kb = KnowledgeBase(Path(tmp) / "kb", device="cpu", parse_timeout_s=timeout_s)
        # KnowledgeBase has no precision option: hand it the embedder this phase measures.
        kb._embedder = emb
        try:
            with _WorkerPeak() as worker:
                t0 = time.perf_counter()
                rep = kb.add(files)
                dt = time.perf_counter() - t0
        finally:
            kb.close()
    return {"precision": emb.info.precision, "load_s": round(load_s, 1), "files": len(files),
            "failed": [f"{Path(f.path).name}: {f.reason}" for f in rep.failed], "pages": rep.pages, "chunks": rep.chunks, "tokens": spent["tokens"],
            "seconds": round(dt, 1), "pages_per_s": round(rep.pages / dt, 2), "chunks_per_s": round(rep.chunks / dt, 1),
            "tokens_per_s": round(spent["tokens"] / dt), "embed_s": round(spent["s"], 1),
            "embed_share": round(spent["s"] / dt, 2), **_usage(worker)}


# ----------------------------------------------------------------------------- driver


def _child(args: list[str]) -> dict:
    """Run one phase in a fresh interpreter and return its figures."""
    r = subprocess.run([sys.executable, __file__, "--phase", *args], capture_output=True, text=True, cwd=ROOT)
    if r.returncode != 0:
        raise SystemExit(f"phase {args[0]} failed:\n{r.stderr[-4000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _print_phase(name: str, r: dict) -> None:
    bits = [f"{r['pages_per_s']:6.2f} pages/s"]
    if "chunks_per_s" in r:
        bits.append(f"{r['chunks_per_s']:7.1f} chunks/s")
    if "tokens_per_s" in r:
        bits.append(f"{r['tokens_per_s']:6d} tokens/s")
    extra = f"  ({r['seconds']} s"
    if "embed_s" in r:
        extra += f", {r['embed_s']} s of it in encode = {r['embed_share']:.0%}"
    if "tables" in r:
        extra += f"; {r['tables']} tables on {r['table_pages']} pages"
    if "chunk_s" in r:
        extra += f"; then chunking {r['chunks']} chunks took {r['chunk_s']} s"
    if "load_s" in r:
        extra += f"; model load {r['load_s']} s"
    extra += ")"
    print(f"{name:>15}: " + "  ".join(bits) + extra)
    for f in r.get("failed", ()):
        print(f"{'':>15}  failed: {f}")
    print(f"{'':>15}  cpu {r['cpu_s']} s main + {r['worker_cpu_s']} s worker; "
          f"peak RSS {r['peak_rss_mb']} MB main, {r['worker_peak_rss_mb']} MB parse worker")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dir", nargs="?", type=Path, default=DEFAULT_DIR)
    ap.add_argument("--limit", type=int, help="only the first N files (sorted by path)")
    ap.add_argument("--precision", action="append", choices=("fp32", "int8"),
                    help="embedder precision to measure (repeatable; default fp32 and int8)")
    ap.add_argument("--skip", action="append", default=[], choices=("parse", "embed", "ingest"),
                    help="leave a phase out (the embed phase needs the parse phase)")
    ap.add_argument("--timeout", type=float, default=120.0,
                    help="per-file parse time limit in seconds (the app's default: 120; raise it on a busy "
                         "machine, where a slow file would otherwise be cut off and left out of the figures)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--phase", nargs="+", help=argparse.SUPPRESS)  # internal: run one phase in this process
    args = ap.parse_args()

    if args.phase:
        kind, *rest = args.phase
        if kind == "prepare":
            out = phase_prepare(rest[0])
        elif kind == "parse":
            out = phase_parse(json.loads(rest[0]), Path(rest[1]), float(rest[2]))
        elif kind == "embed":
            out = phase_embed(Path(rest[0]), rest[1])
        else:
            out = phase_ingest(json.loads(rest[0]), rest[1], float(rest[2]))
        print(json.dumps(out))
        return

    files = _files(args.dir, args.limit)
    if not files:
        raise SystemExit(f"{args.dir}: no files Sift reads")
    precisions = args.precision or ["fp32", "int8"]
    res: dict = {"dir": str(args.dir), "files": len(files), "cores": os.cpu_count(),
                 "threads": os.environ.get("SIFT_THREADS", "all cores"), "load_avg": os.getloadavg()[0]}
    if not args.json:
        print(f"{len(files)} files from {args.dir}; {os.cpu_count()} cores, load average {res['load_avg']:.1f}",
              flush=True)
    for p in precisions:
        res[f"model_{p}"] = _child(["prepare", p])
        if not args.json:
            m = res[f"model_{p}"]
            print(f"{p}: runs {m['precision']} from {Path(m['model']).name} ({m['reason']}; ready in {m['seconds']} s)",
                  flush=True)
    with tempfile.TemporaryDirectory(prefix="sift-bench-") as tmp:
        texts = Path(tmp) / "chunks.json"
        if "parse" not in args.skip:
            res["parse"] = _child(["parse", json.dumps(files), str(texts), str(args.timeout)])
            if not args.json:
                _print_phase("parse-only", res["parse"])
            if "embed" not in args.skip:
                for p in precisions:
                    res[f"embed_{p}"] = _child(["embed", str(texts), p])
                    if not args.json:
                        _print_phase(f"embed-only {p}", res[f"embed_{p}"])
        if "ingest" not in args.skip:
            for p in precisions:
                res[f"ingest_{p}"] = _child(["ingest", json.dumps(files), p, str(args.timeout)])
                if not args.json:
                    _print_phase(f"ingest {p}", res[f"ingest_{p}"])
    if {"fp32", "int8"} <= set(precisions):
        res["ratios_int8_over_fp32"] = {
            k: round(res[f"{k}_int8"]["pages_per_s"] / res[f"{k}_fp32"]["pages_per_s"], 2)
            for k in ("embed", "ingest") if f"{k}_int8" in res and res.get(f"{k}_fp32", {}).get("pages_per_s")}
    if "parse" in res and "embed_fp32" in res:
        res["ratios_embed_over_parse"] = {p: round(res[f"embed_{p}"]["pages_per_s"] / res["parse"]["pages_per_s"], 2)
                                          for p in precisions if f"embed_{p}" in res and res["parse"]["pages_per_s"]}
    if args.json:
        print(json.dumps(res, indent=2))
        return
    for k in ("ratios_int8_over_fp32", "ratios_embed_over_parse"):
        if k in res:
            print(f"{k}: " + ", ".join(f"{a} x{b}" for a, b in res[k].items()))


if __name__ == "__main__":
    main()
