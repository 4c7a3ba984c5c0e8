"""BEIR-format retrieval data: load it, and store its corpus in a knowledge base.

A BEIR folder holds ``corpus.jsonl`` (``_id``, ``title``, ``text``), ``queries.jsonl``
(``_id``, ``text``) and ``qrels/<split>.tsv`` (a header ``query-id corpus-id score``, then one
judgement a line). Only queries that have a judgement in the split are evaluated, as BEIR does.

``ingest_corpus`` stores each corpus entry as one document at ``beir://<dataset>/<_id>`` with
one synthetic page (``title + "\\n" + text``, no word boxes), chunked like any page and
embedded in large batches. The title is also the page's heading, so a chunk from the middle
of a long abstract carries it (the chunker prefixes the heading), as a chunk from the middle
of a PDF section carries its section title. A knowledge base that already holds some of the
corpus keeps those documents; only the missing ids are added.
"""
from __future__ import annotations

import csv
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from core.errors import KnownError
from core.jobs import CancelToken, ProgressFn, check, report
from core.types import Heading, ParsedDocument, ParsedPage

__all__ = ["DatasetError", "CorpusDoc", "BeirDataset", "IngestReport", "SPLITS", "load_beir", "available_splits",
           "doc_path", "corpus_id_of", "ingest_corpus",
           "read_qrels", "squad_to_beir"]

SPLITS = ("test", "dev", "train")
PATH_SCHEME = "beir://"


class DatasetError(KnownError):
    """A folder that is not readable BEIR data."""


@dataclass(frozen=True)
class CorpusDoc:
    """One corpus entry."""

    id: str
    title: str
    text: str

    @property
    def page_text(self) -> str:
        """What is stored as the document's one page."""
        return f"{self.title}\n{self.text}" if self.title else self.text


@dataclass(frozen=True)
class BeirDataset:
    """A loaded BEIR folder, restricted to one split's judged queries."""

    name: str
    """The folder name (``scifact``), used in document paths."""
    folder: Path
    split: str
    corpus: dict[str, CorpusDoc]
    queries: dict[str, str]
    """Query id → text, only the queries judged in ``split``, in file order."""
    qrels: dict[str, dict[str, int]]
    """Query id → {corpus id: relevance}."""


@dataclass(frozen=True)
class IngestReport:
    """What ``ingest_corpus`` did."""

    added: int
    skipped: int
    """Corpus entries already stored."""
    chunks: int
    seconds: float


def available_splits(folder: str | Path) -> list[str]:
    """The splits that have a qrels file, in ``SPLITS`` order (then any others, sorted)."""
    q = Path(folder) / "qrels"
    found = sorted(p.stem for p in q.glob("*.tsv")) if q.is_dir() else []
    return [s for s in SPLITS if s in found] + [s for s in found if s not in SPLITS]


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        raise DatasetError(f"{path.parent} is not a BEIR folder: {path.name} is missing",
                           fix="point at a folder with corpus.jsonl, queries.jsonl and qrels/<split>.tsv")
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DatasetError(f"{path}:{n}: not JSON ({e.msg})") from e
    return out


def read_qrels(path: Path) -> dict[str, dict[str, int]]:
    """A BEIR qrels TSV (header row optional) as {query id: {corpus id: relevance}}."""
    qrels: dict[str, dict[str, int]] = {}
    with open(path, encoding="utf-8", newline="") as f:
        for n, row in enumerate(csv.reader(f, delimiter="\t"), 1):
            if not row or (n == 1 and row[0].strip().lower() in ("query-id", "query_id", "qid")):
                continue
            if len(row) < 3:
                raise DatasetError(f"{path}:{n}: expected query-id, corpus-id, score")
            try:
                score = int(float(row[2]))
            except ValueError as e:
                raise DatasetError(f"{path}:{n}: score {row[2]!r} is not a number") from e
            qrels.setdefault(row[0].strip(), {})[row[1].strip()] = score
    return qrels


def load_beir(folder: str | Path, split: str | None = None) -> BeirDataset:
    """Load a BEIR folder. ``split`` None picks the first of test, dev, train that exists."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DatasetError(f"{folder} is not a folder")
    splits = available_splits(folder)
    if split is None:
        if not splits:
            raise DatasetError(f"{folder} has no qrels/<split>.tsv", fix="add qrels/test.tsv (or dev, train)")
        split = splits[0]
    qpath = folder / "qrels" / f"{split}.tsv"
    if not qpath.is_file():
        raise DatasetError(f"{folder} has no split {split!r}", fix=f"use one of: {', '.join(splits) or 'none'}")
    corpus: dict[str, CorpusDoc] = {}
    for d in _read_jsonl(folder / "corpus.jsonl"):
        cid = str(d["_id"])
        corpus[cid] = CorpusDoc(cid, (d.get("title") or "").strip(), (d.get("text") or "").strip())
    qrels = read_qrels(qpath)
    all_queries = {str(d["_id"]): str(d.get("text") or "") for d in _read_jsonl(folder / "queries.jsonl")}
    queries = {qid: text for qid, text in all_queries.items() if qid in qrels and text.strip()}
    qrels = {qid: rel for qid, rel in qrels.items() if qid in queries}
    return BeirDataset(folder.name, folder, split, corpus, queries, qrels)


def doc_path(dataset: str, corpus_id: str) -> str:
    """The stored path of a corpus entry."""
    return f"{PATH_SCHEME}{dataset}/{corpus_id}"


def corpus_id_of(path: str, dataset: str) -> str | None:
    """The corpus id of a stored path, or None for a path outside ``dataset``."""
    prefix = f"{PATH_SCHEME}{dataset}/"
    return path[len(prefix):] if path.startswith(prefix) else None


def _parsed(dataset: str, doc: CorpusDoc) -> ParsedDocument:
    text = doc.page_text
    headings = (Heading(doc.title, 1, 0, len(doc.title)),) if doc.title and doc.text else ()
    page = ParsedPage(number=1, width=0.0, height=0.0, text=text, words=(), headings=headings)
    return ParsedDocument(path=doc_path(dataset, doc.id), kind="text", pages=(page,), title=doc.title)


def ingest_corpus(kb, corpus: Mapping[str, CorpusDoc] | BeirDataset, *, dataset: str | None = None,
                  batch_docs: int = 512, progress: ProgressFn | None = None,
                  cancel: CancelToken | None = None) -> IngestReport:
    """Store every corpus entry not yet in ``kb`` (a ``core.kb.KnowledgeBase``).

    Documents are chunked with the embedder's token limit, embedded ``batch_docs`` documents
    at a time (one ``encode`` call per batch, so the embedder sorts and pads a large batch),
    and written inside ``store.bulk()`` so the vector index is saved once. Cancelling keeps
    every batch already written; the next call adds the rest.
    """
    from core.ingest.chunking import chunk_pages

    if isinstance(corpus, BeirDataset):
        dataset = dataset or corpus.name
        corpus = corpus.corpus
    if not dataset:
        raise ValueError("dataset name needed for the document paths")
    t0 = time.monotonic()
    st = kb.store
    emb = kb.embedder
    prefix = f"{PATH_SCHEME}{dataset}/"
    present = {d.path[len(prefix):] for d in st.list_documents(state="ready") if d.path.startswith(prefix)}
    todo = [d for cid, d in corpus.items() if cid not in present and d.page_text.strip()]
    added = n_chunks = 0
    if todo:
        report(progress, "ingest", 0, len(todo), unit="docs", started=t0)
    with st.bulk():
        for start in range(0, len(todo), batch_docs):
            check(cancel)
            batch = todo[start:start + batch_docs]
            parsed = [_parsed(dataset, d) for d in batch]
            chunked = [chunk_pages(p.pages, count_tokens=emb.count_tokens, max_tokens=emb.max_length) for p in parsed]
            texts = [c.text for cs in chunked for c in cs]
            vectors = emb.encode(texts, cancel=cancel).pooled
            check(cancel)
            row = 0
            for doc, p, cs in zip(batch, parsed, chunked):
                vecs = vectors[row:row + len(cs)]
                row += len(cs)
                if not cs:
                    continue
                data = doc.page_text.encode("utf-8")
                st.add_document(p, cs, vecs, path=p.path, sha256=hashlib.sha256(data).hexdigest(), size=len(data),
                                mtime=0.0)
                added += 1
                n_chunks += len(cs)
            report(progress, "ingest", start + len(batch), len(todo), unit="docs", started=t0,
                   message=f"{added} documents, {n_chunks} chunks")
    if st.has_cjk_chunks():  # chunks in CJK scripts also go to the multilingual graph
        kb.sync_multilingual(st, progress=progress, cancel=cancel)
    return IngestReport(added, len(present), n_chunks, time.monotonic() - t0)


def squad_to_beir(squad_json: str | Path, out: str | Path, *, split: str = "dev", titles: bool = True) -> Path:
    """Write a SQuAD-format file (CMRC 2018, SQuAD) as a BEIR folder: paragraphs are the
    corpus, questions the queries, each judged relevant (1) to its own paragraph only.

    ``titles`` keeps the article title as the corpus entry's title. Returns ``out``.
    """
    data = json.loads(Path(squad_json).read_text(encoding="utf-8"))["data"]
    out = Path(out)
    (out / "qrels").mkdir(parents=True, exist_ok=True)
    corpus, queries, qrels = [], [], []
    for a, article in enumerate(data):
        for p, para in enumerate(article["paragraphs"]):
            pid = str(para.get("id") or f"{a}-{p}")
            corpus.append({"_id": pid, "title": article.get("title", "") if titles else "", "text": para["context"]})
            for qa in para["qas"]:
                queries.append({"_id": str(qa["id"]), "text": qa["question"]})
                qrels.append((str(qa["id"]), pid))
    for name, rows in (("corpus.jsonl", corpus), ("queries.jsonl", queries)):
        with open(out / name, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    with open(out / "qrels" / f"{split}.tsv", "w", encoding="utf-8") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        f.writelines(f"{q}\t{d}\t1\n" for q, d in qrels)
    return out
