"""Hybrid search on real data with the real embedder: fusion, filters inside the search,
deletes reaching every stage, and hybrid doing at least as well as either stage alone."""
from __future__ import annotations

import json
from datetime import date, timedelta

import pytest

from core.eval.beir import CorpusDoc, ingest_corpus, read_qrels
from core.eval.metrics import evaluate
from core.eval.retrieval import doc_ranking
from core.kb import KnowledgeBase
from core.search.fusion import minmax, minmax_normalize, rrf
from core.search.hybrid import (DEFAULT_FUSION, DEFAULT_STAGES, MAX_K, Hit, SearchFilters, resolve_filters,
                                 search)
from core.types import Chunk, ChunkSpan, ParsedDocument, ParsedPage

N_QUERIES = 30
N_FILLER = 40
TEXT_CHARS = 700  # keeps each abstract to one chunk, so the real embedder needs only seconds


# ----------------------------------------------------------------------------- fusion (no model)


def test_rrf_scores_and_stable_ties():
    a = [(1, 9.0), (2, 8.0), (3, 7.0)]
    b = [(2, 0.9), (1, 0.8), (4, 0.7)]
    fused = rrf([a, b])
    assert [cid for cid, _ in fused] == [1, 2, 3, 4]  # 1 and 2 tie: both best rank 1, then the smaller id
    assert fused[0][1] == pytest.approx(1 / 61 + 1 / 62)
    assert fused[0][1] == fused[1][1]
    assert rrf([b, a]) == fused  # the order of the lists does not matter
    assert rrf([a, b], limit=2) == fused[:2]
    # equal fused scores from different ranks: the one that reached the better rank wins
    c = [(10, 0.0), (11, 0.0), (12, 0.0), (13, 0.0)]
    d = [(13, 0.0), (12, 0.0), (11, 0.0), (10, 0.0)]
    assert [cid for cid, _ in rrf([c, d])] == [10, 13, 11, 12]
    assert rrf([c, d]) == rrf([d, c]) == rrf([list(c), list(d)])


def test_minmax_normalises_and_weights():
    assert minmax_normalize([(1, 10.0), (2, 5.0), (3, 0.0)]) == [(1, 1.0), (2, 0.5), (3, 0.0)]
    assert minmax_normalize([(1, 3.0), (2, 3.0)]) == [(1, 1.0), (2, 1.0)]
    fused = minmax([[(1, 10.0), (2, 0.0)], [(2, 0.9), (1, 0.1)]], weights=[0.25, 0.75])
    assert fused == [(2, pytest.approx(0.75)), (1, pytest.approx(0.25))]
    # a tie is broken by best rank then id, whatever the input order
    t = minmax([[(5, 1.0), (6, 0.0)], [(6, 1.0), (5, 0.0)]])
    assert [cid for cid, _ in t] == [5, 6]
    assert minmax([[(6, 1.0), (5, 0.0)], [(5, 1.0), (6, 0.0)]]) == t
    with pytest.raises(ValueError):
        minmax([[(1, 1.0)]], weights=[1.0, 2.0])


# ----------------------------------------------------------------------------- a small real knowledge base


def _short(text: str) -> str:
    return text if len(text) <= TEXT_CHARS else text[:TEXT_CHARS].rsplit(" ", 1)[0]


@pytest.fixture(scope="module")
def scifact(eval_dir):
    """The first judged claims, their gold abstracts and filler abstracts (cut short)."""
    root = eval_dir / "scifact"
    qrels = read_qrels(root / "qrels" / "train.tsv")
    queries = {}
    for line in (root / "queries.jsonl").read_text(encoding="utf-8").splitlines():
        d = json.loads(line)
        if d["_id"] in qrels:
            queries[d["_id"]] = d["text"]
        if len(queries) == N_QUERIES:
            break
    gold = {c for q in queries for c in qrels[q]}
    corpus = {}
    for line in (root / "corpus.jsonl").read_text(encoding="utf-8").splitlines():
        d = json.loads(line)
        if d["_id"] in gold or len(corpus) < len(gold) + N_FILLER:
            corpus[d["_id"]] = CorpusDoc(d["_id"], d["title"], _short(d["text"]))
    return queries, {q: qrels[q] for q in queries}, corpus


def _add_paged(kb: KnowledgeBase, path: str, kind: str, pages: list[str]) -> int:
    parsed = ParsedDocument(path, kind, tuple(ParsedPage(i, 612.0, 792.0, t, ()) for i, t in enumerate(pages, 1)))
    chunks = [Chunk(t, (ChunkSpan(i, 0, len(t)),)) for i, t in enumerate(pages, 1)]
    vecs = kb.embedder.encode([c.text for c in chunks]).pooled
    return kb.store.add_document(parsed, chunks, vecs, path=path, sha256=path, size=1, mtime=0.0)


REPORT_PAGES = [
    "Annual report introduction: the laboratory budget and staffing for the year.",
    "Vitamin D supplementation trial results in elderly patients with fractures.",
    "Insulin resistance and obesity outcomes measured in the cohort study.",
    "Antibiotic resistance of bacteria found in hospital water samples.",
    "Conclusions about vitamin D and bone density in the trial.",
]


@pytest.fixture(scope="module")
def kb(tmp_path_factory, scifact):
    _, _, corpus = scifact
    k = KnowledgeBase(tmp_path_factory.mktemp("search-kb"))
    rep = ingest_corpus(k, corpus, dataset="scifact")
    assert rep.added == len(corpus)
    _add_paged(k, "/docs/report.pdf", "pdf", REPORT_PAGES)
    _add_paged(k, "/docs/measurements.csv", "csv", ["vitamin D serum level 25 nmol per litre, patient 7"])
    yield k
    k.close()


def test_hits_carry_document_page_and_stage_ranks(kb):
    hits = search(kb.store, kb.embedder, "vitamin D supplementation and bone fractures", k=5)
    assert 1 <= len(hits) <= 5 and all(isinstance(h, Hit) for h in hits)
    assert [h.rank for h in hits] == list(range(1, len(hits) + 1))
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    for h in hits:
        assert h.path and h.name and h.page in range(1, 6)
        assert h.stages and all(s.rank >= 1 for s in h.stages)
        assert kb.store.get_chunks([h.chunk_id])[0].text == h.text
    assert any(h.stage("bm25") and h.stage("dense") for h in hits)


def test_blank_query_empty_kb_and_k_clamped(kb, tmp_path):
    assert search(kb.store, kb.embedder, "   ", k=5) == []
    assert search(kb.store, kb.embedder, "vitamin", k=0) == []
    assert search(kb.store, kb.embedder, "vitamin", k=-3) == []
    n = kb.counts().chunks
    assert len(search(kb.store, kb.embedder, "vitamin D trial", k=10 ** 9, candidates=10)) <= min(n, MAX_K)
    with KnowledgeBase(tmp_path / "empty") as empty:
        assert search(empty.store, kb.embedder, "vitamin D", k=5) == []


def test_document_filter_is_applied_inside_the_search(kb):
    # A claim about something else still returns k hits from the one allowed document:
    # the filter narrows the candidates, it does not cut a global top-k afterwards.
    q = "Cancer cells evade the immune system through PD-L1 expression."
    flt = SearchFilters(documents=("report.pdf",))
    for stages in (("dense",), ("bm25", "dense")):
        hits = search(kb.store, kb.embedder, q, k=3, filters=flt, stages=stages)
        assert len(hits) == 3 and {h.name for h in hits} == {"report.pdf"}
    by_id = search(kb.store, kb.embedder, "vitamin D", k=20,
                   filters=SearchFilters(documents=(int(kb.find("/docs/report.pdf").id),)))
    assert by_id and {h.path for h in by_id} == {"/docs/report.pdf"}
    assert search(kb.store, kb.embedder, "vitamin D", filters=SearchFilters(documents=("no-such.pdf",))) == []


def test_page_range_filter(kb):
    hits = search(kb.store, kb.embedder, "vitamin D trial bone", k=10,
                  filters=SearchFilters(documents=("report.pdf",), page_from=3, page_to=4))
    assert hits and {h.page for h in hits} <= {3, 4}
    assert all(3 <= s.page <= 4 for h in hits for s in h.spans)
    unfiltered = search(kb.store, kb.embedder, "vitamin D trial bone", k=10,
                        filters=SearchFilters(documents=("report.pdf",)))
    assert {h.page for h in unfiltered} & {2, 5}  # the pages the range excluded do match


def test_file_type_and_date_filters(kb):
    q = "vitamin D level"
    pdf = search(kb.store, kb.embedder, q, k=10, filters=SearchFilters(file_types=("pdf",)))
    assert pdf and {h.name for h in pdf} == {"report.pdf"}
    csv = search(kb.store, kb.embedder, q, k=10, filters=SearchFilters(file_types=(".CSV",)))
    assert [h.name for h in csv] == ["measurements.csv"]
    both = search(kb.store, kb.embedder, q, k=10, filters=SearchFilters(file_types=("pdf", "csv")))
    assert {h.name for h in both} == {"report.pdf", "measurements.csv"}
    assert all(h.path.startswith("beir://") for h in
               search(kb.store, kb.embedder, q, k=10, filters=SearchFilters(file_types=("text",))))
    today = date.today()
    assert search(kb.store, kb.embedder, q, k=5, filters=SearchFilters(added_after=today + timedelta(days=2))) == []
    assert search(kb.store, kb.embedder, q, k=5, filters=SearchFilters(added_before=today - timedelta(days=2))) == []
    assert len(search(kb.store, kb.embedder, q, k=5, filters=SearchFilters(
        added_after=today - timedelta(days=2), added_before=today + timedelta(days=2)))) == 5
    flt = resolve_filters(kb.store, SearchFilters(file_types=("pdf",), page_from=2))
    assert flt.doc_ids == (int(kb.find("/docs/report.pdf").id),) and flt.page_from == 2


def test_deleting_a_document_removes_it_from_every_stage(kb):
    text = "Zebrafish regenerate amputated fins through a blastema of dedifferentiated osteoblasts."
    _add_paged(kb, "/docs/zebrafish.pdf", "pdf", [text])
    q = "zebrafish fin regeneration blastema osteoblasts"
    for stages in (("bm25",), ("dense",), ("bm25", "dense")):
        assert search(kb.store, kb.embedder, q, k=3, stages=stages)[0].name == "zebrafish.pdf"
    assert kb.remove("/docs/zebrafish.pdf")
    for stages in (("bm25",), ("dense",), ("bm25", "dense")):
        for fusion in ("rrf", "minmax"):
            hits = search(kb.store, kb.embedder, q, k=50, stages=stages, fusion=fusion)
            assert "zebrafish.pdf" not in {h.name for h in hits}
    assert kb.counts().consistent


def test_hybrid_does_at_least_as_well_as_each_stage(kb, scifact):
    # On a corpus this small MiniLM alone often has the better nDCG@10 (BM25's statistics
    # over ~80 documents are poor); what fusion must never do is lose the gold abstract that
    # either stage found. nDCG@10 on the full corpus is what `sift eval retrieval` measures.
    queries, qrels, _ = scifact
    scores = {}
    for name, stages, fusion in (("bm25", ("bm25",), "rrf"), ("dense", ("dense",), "rrf"),
                                 ("hybrid", ("bm25", "dense"), "rrf"),
                                 ("default", DEFAULT_STAGES, DEFAULT_FUSION)):
        run = {q: doc_ranking(search(kb.store, kb.embedder, t, k=30, stages=stages, fusion=fusion), "scifact")
               for q, t in queries.items()}
        scores[name] = evaluate(qrels, run)
    for m in ("hit@5", "hit@10", "recall@100"):
        assert scores["default"][m] >= max(scores["bm25"][m], scores["dense"][m]), (m, scores)
        assert scores["hybrid"][m] >= min(scores["bm25"][m], scores["dense"][m]), (m, scores)


def test_cjk_queries_skip_an_english_only_embedder(kb):
    _add_paged(kb, "/docs/zh.pdf", "pdf", ["维生素D补充剂可以降低老年人骨折的风险。", "抗生素耐药性细菌出现在医院的水样中。"])
    hits = search(kb.store, kb.embedder, "老年人骨折的风险", k=3)
    assert hits[0].name == "zh.pdf" and hits[0].page == 1
    assert all({s.stage for s in h.stages} == {"bm25"} for h in hits)
    dense_only = search(kb.store, kb.embedder, "老年人骨折的风险", k=3, stages=("dense",))
    assert dense_only and all({s.stage for s in h.stages} == {"dense"} for h in dense_only)


# ----------------------------------------------------------------------------- second stages: late, rerank


class _LengthReranker:
    """Scores a passage by its length: a stand-in that makes the expected order obvious. The
    plumbing (head size, blending, StageScore, timings) does not care which model scores."""

    name = "rerank-ce"

    def __init__(self) -> None:
        self.calls: list[int] = []

    def score(self, query, passages, *, cancel=None):
        import numpy as np

        self.calls.append(len(passages))
        return np.array([float(len(p)) for p in passages])


def test_rerank_stage_reorders_the_head_with_its_own_score_and_timing(kb):
    q = "vitamin D supplementation and bone fractures"
    plain = search(kb.store, kb.embedder, q, k=30)
    rr = _LengthReranker()
    timings: dict = {}
    hits = search(kb.store, kb.embedder, q, k=30, reranker=rr, rerank_top=8, timings=timings)
    assert rr.calls == [8]
    head = hits[:8]
    assert {h.chunk_id for h in head} == {h.chunk_id for h in plain[:8]}  # the same 8, re-ordered
    assert [len(h.text) for h in head] == sorted((len(h.text) for h in head), reverse=True)
    assert all(h.stage("rerank-ce").score == float(len(h.text)) for h in head)
    assert all(h.stage("rerank-ce") is None for h in hits[8:])
    assert [h.chunk_id for h in hits[8:]] == [h.chunk_id for h in plain[8:]]  # the tail keeps its order
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert {"bm25", "dense", "fusion", "rerank-ce", "hydrate", "total"} <= set(timings)
    assert timings["total"] >= timings["rerank-ce"] >= 0
    # a weight of 0 keeps the fused order but still reports the stage's scores
    kept = search(kb.store, kb.embedder, q, k=30, reranker=rr, rerank_top=8, rerank_weight=0.0)
    assert [h.chunk_id for h in kept] == [h.chunk_id for h in plain]
    assert kept[0].stage("rerank-ce") is not None


def test_late_stage_with_minilm_token_vectors(kb):
    from core.search.late_interaction import EmbedderTokens, LateInteraction, maxsim

    q = "vitamin D and bone density in the trial"
    late = LateInteraction(EmbedderTokens(kb.embedder))
    timings: dict = {}
    hits = search(kb.store, kb.embedder, q, k=10, late=late, late_top=10, late_weight=1.0, timings=timings)
    assert "late" in timings and len(hits) == 10
    qv = kb.embedder.encode([q], tokens=True).tokens[0].vectors
    # the ten passages in one encode call, as the stage does (int8 MiniLM scales activations per batch)
    docs = kb.embedder.encode([h.text for h in hits], tokens=True).tokens
    want = {h.chunk_id: maxsim(qv, d.vectors) for h, d in zip(hits, docs)}
    late_scores = [h.stage("late").score for h in hits]
    assert late_scores == sorted(late_scores, reverse=True)  # weight 1: MaxSim alone orders the head
    for h in hits:
        assert h.stage("late").score == pytest.approx(want[h.chunk_id], abs=1e-4)


def test_deleted_document_is_gone_from_the_second_stages_too(kb):
    text = "Axolotls regrow whole limbs after amputation, unlike adult mammals."
    _add_paged(kb, "/docs/axolotl.pdf", "pdf", [text])
    q = "axolotl limb regrowth after amputation"
    from core.search.late_interaction import EmbedderTokens, LateInteraction

    late = LateInteraction(EmbedderTokens(kb.embedder))
    assert "axolotl.pdf" in {h.name for h in search(kb.store, kb.embedder, q, k=100, late=late,
                                                    reranker=_LengthReranker())}
    assert kb.remove("/docs/axolotl.pdf")
    hits = search(kb.store, kb.embedder, q, k=50, late=late, reranker=_LengthReranker())
    assert "axolotl.pdf" not in {h.name for h in hits}
