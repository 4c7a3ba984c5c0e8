"""Training examples for the reranker and the late-interaction model.

The packed data in ``../shared/train`` (see its README) is read as it is: passages once in
``<lang>_corpus.tsv.gz`` (``id<TAB>text``), one query a line in ``<lang>_train.jsonl.gz`` with
``pos`` / ``neg`` (BM25 hard negatives) / ``neg_easy`` passage ids and a ``source``.

``load_examples`` turns that into ``Example`` values (one positive, ``negatives`` hard
negatives, optional teacher scores), keeping only what a shipped model may learn from:

* sources without a usable licence (WikiQA, TrecQA, machine-translated ChineseSquad) are left
  out unless ``research_sources=True``;
* SQuAD-style questions (three quarters of the English data, written while reading one
  paragraph) are capped per paragraph, and the other sources can be oversampled;
* records with no positive (unanswerable questions) are dropped: listwise losses need one.

``mine_with_hybrid`` replaces (or tops up) the file's negatives with passages that Sift's own
hybrid search ranks high for the query, in a knowledge base that holds the passages, and
records the hybrid's fused scores as teacher scores for distillation.

Only the passages that the chosen examples use are read from the corpus file, so a tiny run
reads a few hundred lines of JSON and streams the corpus once.
"""
from __future__ import annotations

import gzip
import json
import random
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from core.errors import KnownError
from core.jobs import CancelToken, ProgressFn, check, report

__all__ = ["TrainingDataError", "Example", "LANGUAGES", "RESEARCH_ONLY_SOURCES", "SQUAD_STYLE_SOURCES",
           "default_train_dir", "is_research_only", "is_squad_style", "read_records", "read_passages",
           "load_examples", "mine_with_hybrid", "with_teacher", "save_examples", "read_examples", "TRAIN_DATASET"]

LANGUAGES = ("en", "zh")
RESEARCH_ONLY_SOURCES = ("wikiqa", "trecqa", "chinesesquad")
"""``source`` prefixes whose licence does not allow a shipped model (the data README)."""
SQUAD_STYLE_SOURCES = ("squad", "squadshifts", "drcd", "xquad", "chinesesquad")
"""Questions written while reading the paragraph: they share its words, so they are capped."""
TRAIN_DATASET = "sift-train"
"""The dataset name under which training passages are stored in a mining knowledge base."""


class TrainingDataError(KnownError):
    """The training data folder is missing or unreadable."""


@dataclass(frozen=True)
class Example:
    """One query with its positive and negative passages, as a listwise loss sees it."""

    query: str
    """The question or search query."""
    positive: str
    """The text of one relevant passage."""
    negatives: tuple[str, ...]
    """Texts of non-relevant passages, hardest first."""
    source: str = ""
    """Where the query came from (the data file's ``source``)."""
    teacher: tuple[float, ...] | None = None
    """Teacher scores for ``(positive, *negatives)`` in that order, or None."""
    positive_id: str = ""
    """Corpus id of the positive passage."""
    negative_ids: tuple[str, ...] = ()
    """Corpus ids of the negatives, in the same order."""


def default_train_dir() -> Path:
    """``../shared/train`` beside the checkout (``SIFT_SHARED_DIR`` overrides the shared folder)."""
    import os

    shared = os.environ.get("SIFT_SHARED_DIR")
    if shared:
        return Path(shared) / "train"
    return Path(__file__).resolve().parents[2].parent / "shared" / "train"


def is_research_only(source: str) -> bool:
    s = source.lower()
    return any(s.startswith(p) for p in RESEARCH_ONLY_SOURCES)


def is_squad_style(source: str) -> bool:
    s = source.lower()
    return any(s.startswith(p) for p in SQUAD_STYLE_SOURCES)


def _data_file(folder: Path, name: str) -> Path:
    path = folder / name
    if not path.is_file():
        raise TrainingDataError(f"{folder}: training file {name} is missing",
                                fix="point --data at the shared train folder (en_train.jsonl.gz, en_corpus.tsv.gz)")
    return path


def read_records(folder: str | Path, lang: str = "en", *, split: str = "train") -> Iterable[dict]:
    """The JSON records of ``<lang>_<split>.jsonl.gz``, in file order."""
    if lang not in LANGUAGES:
        raise TrainingDataError(f"no training data for language {lang!r}; expected one of {', '.join(LANGUAGES)}")
    path = _data_file(Path(folder), f"{lang}_{split}.jsonl.gz")
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError as e:
                        raise TrainingDataError(f"{path}:{n}: not JSON ({e.msg})") from e
    except (OSError, EOFError) as e:
        raise TrainingDataError(f"{path} cannot be read: {e}") from e


def read_passages(folder: str | Path, lang: str, ids: set[str] | None = None) -> dict[str, str]:
    """Passage id → text from ``<lang>_corpus.tsv.gz``; only ``ids`` when given."""
    path = _data_file(Path(folder), f"{lang}_corpus.tsv.gz")
    out: dict[str, str] = {}
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for line in f:
                pid, sep, text = line.rstrip("\n").partition("\t")
                if sep and (ids is None or pid in ids):
                    out[pid] = text
                    if ids is not None and len(out) == len(ids):
                        break
    except (OSError, EOFError) as e:
        raise TrainingDataError(f"{path} cannot be read: {e}") from e
    return out


def load_examples(folder: str | Path | None = None, *, langs: Sequence[str] = ("en",), negatives: int = 4,
                  limit: int | None = None, squad_cap: int = 3, oversample: int = 1,
                  research_sources: bool = False, seed: int = 0, split: str = "train",
                  progress: ProgressFn | None = None, cancel: CancelToken | None = None) -> list[Example]:
    """Shuffled training examples from the packed data.

    ``negatives`` hard negatives per query (BM25 ones from the file first, then the easy ones
    from the same article when a query has too few; queries with none are dropped).
    ``squad_cap`` keeps at most that many SQuAD-style questions per positive paragraph (0: no
    cap); ``oversample`` repeats every other query that many times. ``limit`` caps the number
    of examples after shuffling (a tiny run reads the files only as far as it needs).
    """
    folder = Path(folder) if folder else default_train_dir()
    rng = random.Random(seed)
    picked: list[tuple[str, dict]] = []
    for lang in langs:
        per_paragraph: dict[str, int] = {}
        # A tiny run needs a few examples, not the whole file: read a window several times the limit
        # (shuffled afterwards) so the sources still mix.
        window = None if limit is None else max(200, 20 * limit)
        for n, rec in enumerate(read_records(folder, lang, split=split)):
            if window is not None and n >= window:
                break
            if n % 5000 == 0:
                check(cancel)
            src = str(rec.get("source", ""))
            pos = [str(p) for p in rec.get("pos") or []]
            if not pos or not str(rec.get("query", "")).strip():
                continue
            if is_research_only(src) and not research_sources:
                continue
            if not (rec.get("neg") or rec.get("neg_easy")):
                continue
            if is_squad_style(src):
                key = f"{lang}:{pos[0]}"
                if squad_cap and per_paragraph.get(key, 0) >= squad_cap:
                    continue
                per_paragraph[key] = per_paragraph.get(key, 0) + 1
                picked.append((lang, rec))
            else:
                picked.extend([(lang, rec)] * max(1, oversample))
        report(progress, "data", len(picked), None, unit="queries", message=f"{lang}: {len(picked)} queries")
    rng.shuffle(picked)
    if limit is not None:
        picked = picked[:limit]
    need: dict[str, set[str]] = {}
    rows: list[tuple[str, dict, str, list[str]]] = []
    for lang, rec in picked:
        pos_id = str(rng.choice(rec["pos"]))
        negs = [str(x) for x in rec.get("neg") or []]
        easy = [str(x) for x in rec.get("neg_easy") or []]
        negs = (negs + [e for e in easy if e not in negs])[:negatives]
        rows.append((lang, rec, pos_id, negs))
        need.setdefault(lang, set()).update([pos_id, *negs])
    texts = {lang: read_passages(folder, lang, ids) for lang, ids in need.items()}
    out: list[Example] = []
    for lang, rec, pos_id, negs in rows:
        t = texts[lang]
        negs = [n for n in negs if n in t]
        if pos_id not in t or not negs:
            continue
        # Keep the number of negatives fixed: repeat the last one when a query has too few, so a
        # batch is one rectangular tensor (a repeated negative changes the loss only slightly).
        while len(negs) < negatives:
            negs.append(negs[-1])
        out.append(Example(query=str(rec["query"]).strip(), positive=t[pos_id], negatives=tuple(t[n] for n in negs),
                           source=str(rec.get("source", "")), positive_id=f"{lang}:{pos_id}",
                           negative_ids=tuple(f"{lang}:{n}" for n in negs)))
    if not out:
        raise TrainingDataError(f"{folder}: no usable training examples for {', '.join(langs)}")
    return out


def mine_with_hybrid(examples: Sequence[Example], kb, *, negatives: int | None = None, candidates: int = 100,
                     keep_file_negatives: int = 1, progress: ProgressFn | None = None,
                     cancel: CancelToken | None = None) -> list[Example]:
    """Hard negatives and teacher scores from Sift's own hybrid search.

    Every passage the examples use is stored in ``kb`` (a ``core.kb.KnowledgeBase``; passages
    already there are kept) as ``beir://sift-train/<id>``. Each query is then searched exactly
    as the app searches (default stages and fusion); the top passages that are not the
    positive become the negatives (after the first ``keep_file_negatives`` BM25 negatives of
    the file), and the hybrid's fused score of each passage (0 when it was not among the
    ``candidates``) becomes the teacher score for distillation.
    """
    from core.eval.beir import CorpusDoc, corpus_id_of, ingest_corpus
    from core.search.hybrid import search

    if not examples:
        return []
    n_neg = negatives if negatives is not None else len(examples[0].negatives)
    corpus: dict[str, CorpusDoc] = {}
    for ex in examples:
        ids = (ex.positive_id, *ex.negative_ids)
        for pid, text in zip(ids, (ex.positive, *ex.negatives)):
            key = pid.replace(":", "_")
            corpus.setdefault(key, CorpusDoc(key, "", text))
    ingest_corpus(kb, corpus, dataset=TRAIN_DATASET, progress=progress, cancel=cancel)
    text_of = {cid: d.text for cid, d in corpus.items()}
    out: list[Example] = []
    for i, ex in enumerate(examples):
        check(cancel)
        hits = search(kb.store, kb.embedder, ex.query, k=candidates, candidates=candidates)
        scores: dict[str, float] = {}
        for h in hits:
            cid = corpus_id_of(h.path, TRAIN_DATASET)
            if cid is not None and cid not in scores:
                scores[cid] = float(h.score)
        pos_key = ex.positive_id.replace(":", "_")
        neg_keys = [k.replace(":", "_") for k in ex.negative_ids[:keep_file_negatives]]
        for cid in scores:  # best first
            if len(neg_keys) >= n_neg:
                break
            if cid != pos_key and cid not in neg_keys and text_of.get(cid) != ex.positive:
                neg_keys.append(cid)
        for k in (x.replace(":", "_") for x in ex.negative_ids):
            if len(neg_keys) >= n_neg:
                break
            if k not in neg_keys:
                neg_keys.append(k)
        while len(neg_keys) < n_neg:
            neg_keys.append(neg_keys[-1])
        teacher = tuple(scores.get(k, 0.0) for k in (pos_key, *neg_keys))
        out.append(replace(ex, negatives=tuple(text_of[k] for k in neg_keys), teacher=teacher,
                           negative_ids=tuple(k.replace("_", ":", 1) for k in neg_keys)))
        if i % 20 == 0 or i + 1 == len(examples):
            report(progress, "mine", i + 1, len(examples), unit="queries")
    return out


def with_teacher(examples: Sequence[Example], scores: Mapping[int, Sequence[float]]) -> list[Example]:
    """Examples with teacher scores set from ``{index: scores}`` (used by cross-encoder teachers)."""
    return [replace(ex, teacher=tuple(float(s) for s in scores[i])) if i in scores else ex
            for i, ex in enumerate(examples)]


def save_examples(path: str | Path, examples: Sequence[Example]) -> Path:
    """Write examples (with their negatives and teacher scores) as gzipped JSON lines.

    Mining needs Sift's store and search; training needs only torch. A mined file lets the
    two run on different machines (mine here, train on the GPU machine).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for e in examples:
            f.write(json.dumps({"query": e.query, "positive": e.positive, "negatives": list(e.negatives),
                                "source": e.source, "teacher": list(e.teacher) if e.teacher is not None else None,
                                "positive_id": e.positive_id, "negative_ids": list(e.negative_ids)},
                               ensure_ascii=False) + "\n")
    return path


def read_examples(path: str | Path) -> list[Example]:
    """Examples ``save_examples`` wrote."""
    path = Path(path)
    if not path.is_file():
        raise TrainingDataError(f"{path}: no such examples file", fix="write one with sift train mine")
    out: list[Example] = []
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    d = json.loads(line)
                    out.append(Example(query=d["query"], positive=d["positive"], negatives=tuple(d["negatives"]),
                                       source=d.get("source", ""),
                                       teacher=tuple(d["teacher"]) if d.get("teacher") is not None else None,
                                       positive_id=d.get("positive_id", ""),
                                       negative_ids=tuple(d.get("negative_ids", ()))))
                except (json.JSONDecodeError, KeyError, TypeError) as e:
                    raise TrainingDataError(f"{path}:{n}: not an example ({e})") from e
    except (OSError, EOFError) as e:
        raise TrainingDataError(f"{path} cannot be read: {e}") from e
    if not out:
        raise TrainingDataError(f"{path} holds no examples")
    return out
