"""Does a late-interaction model help the hybrid? Re-score the hybrid's top documents on a BEIR dev split.

For every judged query (the first ``limit``), Sift's default search (hybrid, min-max fusion)
ranks the corpus as ``sift eval retrieval`` does (a document scores as its best chunk). The
top ``rescore`` documents are scored by MaxSim against their stored page text (title and
abstract, cut to the model's ``document_length``), and three rankings are measured with the
same trec_eval metrics:

* ``hybrid``: the search as it is;
* ``maxsim@N``: the top N ordered by MaxSim alone (then the rest of the hybrid's list);
* ``hybrid+maxsim``: min-max fusion of the hybrid's document score and MaxSim over the top N,
  MaxSim weighted ``weight`` (then the rest of the hybrid's list).

Only SciFact's train split (the dev set) should be used to choose anything.
"""
from __future__ import annotations

import time
from pathlib import Path

from core.eval.beir import BeirDataset, corpus_id_of, ingest_corpus
from core.eval.metrics import METRICS, evaluate
from core.jobs import CancelToken, ProgressFn, check, report
from core.search.fusion import minmax
from core.search.hybrid import search

__all__ = ["evaluate_rescoring"]


def evaluate_rescoring(model_dir: str | Path, ds: BeirDataset, kb_folder: str | Path, *, limit: int | None = None,
                       rescore: int = 50, weight: float = 0.5, candidates: int = 300, depth: int = 100,
                       progress: ProgressFn | None = None, cancel: CancelToken | None = None) -> dict:
    """Metrics of ``hybrid``, ``maxsim@N`` and ``hybrid+maxsim`` (see the module docstring)."""
    from core.kb import KnowledgeBase
    from core.training.late_interaction import LateInteractionModel

    model = LateInteractionModel.load(model_dir)
    qids = list(ds.queries)[: limit if limit else None]
    qrels = {q: ds.qrels[q] for q in qids}
    runs: dict[str, dict[str, list[str]]] = {"hybrid": {}, f"maxsim@{rescore}": {}, "hybrid+maxsim": {}}
    t0 = time.monotonic()
    with KnowledgeBase(kb_folder) as kb:
        ingest_corpus(kb, ds, progress=progress, cancel=cancel)
        for j, q in enumerate(qids):
            check(cancel)
            hits = search(kb.store, kb.embedder, ds.queries[q], k=candidates, candidates=candidates)
            doc_scores: dict[str, float] = {}
            for h in hits:
                cid = corpus_id_of(h.path, ds.name)
                if cid is not None and cid not in doc_scores:
                    doc_scores[cid] = float(h.score)
            ranked = list(doc_scores)[:depth]
            top = ranked[:rescore]
            ms = model.score(ds.queries[q], [ds.corpus[c].page_text for c in top])
            by_ms = [c for c, _ in sorted(zip(top, ms), key=lambda t: -t[1])]
            fused = minmax([[(c, doc_scores[c]) for c in top], list(zip(top, ms))], weights=[1.0 - weight, weight])
            runs["hybrid"][q] = ranked
            runs[f"maxsim@{rescore}"][q] = by_ms + ranked[rescore:]
            runs["hybrid+maxsim"][q] = [c for c, _ in fused] + ranked[rescore:]
            if j % 10 == 0 or j + 1 == len(qids):
                report(progress, "dev-eval", j + 1, len(qids), unit="queries", started=t0)
    return {"dataset": ds.name, "split": ds.split, "n_queries": len(qids), "model": str(model_dir),
            "rescore": rescore, "weight": weight, "seconds": round(time.monotonic() - t0, 1),
            "runs": {name: {m: round(v, 4) for m, v in evaluate(qrels, run).items() if m in METRICS}
                     for name, run in runs.items()}}
