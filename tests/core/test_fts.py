"""BM25 over the two FTS5 indexes: tokenising, escaping, OR semantics, CJK routing, filters,
and retrieval on real text (SciFact abstracts, CMRC 2018 Chinese paragraphs)."""
from __future__ import annotations

import json
import sqlite3
import zlib

import numpy as np
import pytest

from core.store.fts import (ChunkFilter, bm25_search, cjk_bigrams, cjk_match_query, has_cjk, latin_match_query,
                            latin_terms)
from core.store.store import Store
from core.types import Chunk, ChunkSpan, ParsedDocument, ParsedPage

DIM = 8

NASTY = [
    '"AND (NOT* x:y -z',
    "NEAR(a b, 3)",
    "a OR b AND NOT c",
    "OR",
    "AND",
    "NOT",
    '""',
    '"',
    "'",
    "*",
    "-",
    ":",
    "^start",
    "(((",
    ")",
    "col:value",
    "text:hello heading:world",
    "{text heading}: x",
    "a + b",
    "emoji 🙂 and ∑ math",
    "x\x00y",
    "word " * 500,
    "“smart quotes” and ‘single’",
    "中文\"引号\"(括号)*星号",
    "NEAR/3 中文 AND 英文",
]


def _store(tmp_path, name="kb") -> Store:
    return Store.open(tmp_path / name, dim=DIM, model_id="fake")


def _add(store: Store, path: str, texts: list[str], *, heading: str = "", pages: list[int] | None = None,
         kinds: list[str] | None = None) -> int:
    """One document with one chunk per text (on page ``pages[i]``)."""
    pages = pages or [1] * len(texts)
    kinds = kinds or ["text"] * len(texts)
    page_nums = sorted(set(pages))
    parsed = ParsedDocument(path, "pdf", tuple(
        ParsedPage(n, 600.0, 800.0, " ".join(t for t, p in zip(texts, pages) if p == n), ()) for n in page_nums))
    chunks = [Chunk(t, (ChunkSpan(p, 0, len(t)),), heading, kind) for t, p, kind in zip(texts, pages, kinds)]
    vecs = np.random.default_rng(zlib.crc32(path.encode())).normal(size=(len(chunks), DIM))
    return store.add_document(parsed, chunks, vecs, path=path, sha256=path, size=1, mtime=0.0)


# ------------------------------------------------------------------ tokenising


def test_cjk_bigrams():
    assert cjk_bigrams("由韩国Nexon开发。") == "由韩 韩国 Nexon 开发"
    assert cjk_bigrams("猫") == "猫"
    assert cjk_bigrams("我爱北京天安门") == "我爱 爱北 北京 京天 天安 安门"
    assert cjk_bigrams("玩家(NPC)，2V2模式") == "玩家 NPC 2V2 模式"
    assert cjk_bigrams("ＮＰＣ１２") == "NPC12"  # NFKC folds full-width forms
    assert cjk_bigrams("東京にいます") == "東京 京に にい いま ます"
    assert cjk_bigrams("한국어 텍스트") == "한국 국어 텍스 스트"
    assert cjk_bigrams("") == ""
    assert cjk_bigrams("plain latin, words_here") == "plain latin words here"


def test_has_cjk():
    assert has_cjk("abc 中 def")
    assert has_cjk("カタカナ")
    assert not has_cjk("café naïve — ∑ 🙂")
    assert not has_cjk("，。、")  # CJK punctuation alone is not CJK text


def test_latin_terms_drop_stopwords_and_duplicates():
    assert latin_terms("The cat and THE dog of the cat") == ["cat", "dog"]
    assert latin_terms("to be or not to be") == ["to", "be", "or", "not"]  # nothing else: keep them
    assert latin_terms("中文 only") == ["only"]
    assert latin_terms("?!") == []


@pytest.mark.parametrize("text", NASTY)
def test_user_text_always_makes_a_valid_fts5_query(text):
    con = sqlite3.connect(":memory:")
    con.execute("CREATE VIRTUAL TABLE t USING fts5(text, heading, tokenize='porter unicode61 remove_diacritics 2')")
    con.execute("INSERT INTO t VALUES ('near and not or the words', 'x')")
    for q in (latin_match_query(text), cjk_match_query(text)):
        if q is not None:
            con.execute("SELECT rowid FROM t WHERE t MATCH ?", (q,)).fetchall()


@pytest.mark.parametrize("text", NASTY + ["", "   ", "?!.,;", "\n\t"])
def test_bm25_search_never_raises_on_user_text(text, _shared_small_kb):
    hits = _shared_small_kb.search_bm25(text, 5)
    assert isinstance(hits, list)


@pytest.fixture(scope="module")
def _shared_small_kb(tmp_path_factory):
    st = _store(tmp_path_factory.mktemp("nasty"))
    _add(st, "/a.pdf", ["near and not or operators in words", "x:y column syntax and minus -z"])
    _add(st, "/b.pdf", ["中文文本，带有“引号”和(括号)"])
    yield st
    st.close()


def test_quoted_operator_words_are_plain_terms(tmp_path):
    st = _store(tmp_path)
    doc = _add(st, "/ops.pdf", ["logic gates: and or not near"])
    _add(st, "/other.pdf", ["something unrelated"])
    hits = st.search_bm25("NOT NEAR", 5)
    assert [st.get_chunks([c])[0].doc_id for c, _ in hits] == [doc]
    st.close()


# ------------------------------------------------------------------ semantics


def test_terms_are_ored_not_anded(tmp_path):
    st = _store(tmp_path)
    target = _add(st, "/t.pdf", ["mitochondria produce energy for the cell"])
    _add(st, "/u.pdf", ["an unrelated passage about rivers"])
    # Most of these words are in no document: an implicit AND would find nothing.
    q = "Why exactly do mitochondria matter so much for eukaryotic organisms according to biologists"
    hits = st.search_bm25(q, 5)
    assert hits and st.get_chunks([hits[0][0]])[0].doc_id == target
    assert st.db.execute("SELECT count(*) FROM chunks_fts WHERE chunks_fts MATCH ?",
                         [" ".join(f'"{w}"' for w in latin_terms(q))]).fetchone()[0] == 0
    st.close()


def test_stemming_and_diacritics(tmp_path):
    st = _store(tmp_path)
    a = _add(st, "/a.pdf", ["the runner runs quickly"])
    b = _add(st, "/b.pdf", ["a café in the old town"])
    assert [st.get_chunks([c])[0].doc_id for c, _ in st.search_bm25("running", 5)] == [a]
    assert [st.get_chunks([c])[0].doc_id for c, _ in st.search_bm25("CAFE", 5)] == [b]
    st.close()


def test_scores_are_higher_is_better(tmp_path):
    st = _store(tmp_path)
    _add(st, "/a.pdf", ["protein folding protein folding protein", "protein once", "nothing here at all"])
    _add(st, "/b.pdf", ["filler text number one", "filler text number two", "more filler text"])
    hits = st.search_bm25("protein folding", 5)
    assert len(hits) == 2
    assert hits[0][1] > hits[1][1] > 0
    assert st.get_chunks([hits[0][0]])[0].text.startswith("protein folding")
    st.close()


def test_filters_apply_inside_the_sql(tmp_path):
    st = _store(tmp_path)
    # Many strong matches in one document, a weak one in another: a filter applied after a
    # top-k cut would return nothing for the weak document.
    strong = _add(st, "/strong.pdf", ["graphene graphene graphene sheet"] * 30)
    weak = _add(st, "/weak.pdf", ["a note that mentions graphene once among many other words here",
                                  "graphene again, briefly, in a long sentence about other materials"])
    paged = _add(st, "/paged.pdf", ["graphene on page one", "graphene on page two", "graphene on page three"],
                 pages=[1, 2, 3])
    top = st.search_bm25("graphene", 3)
    assert {st.get_chunks([c])[0].doc_id for c, _ in top} == {strong}
    only_weak = st.search_bm25("graphene", 3, doc_ids=[weak])
    assert len(only_weak) == 2 and {st.get_chunks([c])[0].doc_id for c, _ in only_weak} == {weak}
    assert st.search_bm25("graphene", 3, doc_ids=[]) == []
    # The module function takes a plain sqlite3 connection as well as a sqlite-utils Database.
    assert bm25_search(st.db.conn, "graphene", 3, doc_filter=ChunkFilter(doc_ids=(weak,))) == only_weak
    page2 = st.search_bm25("graphene", 10, where=ChunkFilter(doc_ids=(paged,), page_from=2, page_to=2))
    assert [st.get_chunks([c])[0].text for c, _ in page2] == ["graphene on page two"]
    from_2 = st.search_bm25("graphene", 10, where=ChunkFilter(doc_ids=(paged,), page_from=2))
    assert len(from_2) == 2
    st.close()


def test_kind_filter(tmp_path):
    st = _store(tmp_path)
    _add(st, "/k.pdf", ["revenue by quarter table", "revenue discussion text"], kinds=["table", "text"])
    hits = st.search_bm25("revenue", 5, where=ChunkFilter(kinds=("table",)))
    assert [st.get_chunks([c])[0].kind for c, _ in hits] == ["table"]
    st.close()


# ------------------------------------------------------------------ CJK routing


def test_cjk_index_holds_only_cjk_chunks(tmp_path):
    st = _store(tmp_path)
    _add(st, "/en.pdf", ["english only text", "more english"])
    _add(st, "/zh.pdf", ["中文段落", "mixed 中文 and English"])
    c = st.counts()
    assert (c.chunks, c.fts, c.cjk_chunks, c.fts_cjk) == (4, 4, 2, 2)
    st.close()


def test_cjk_mixed_and_glued_latin_queries(tmp_path):
    st = _store(tmp_path)
    game = _add(st, "/game.pdf", ["基于《跑跑卡丁车》所开发的游戏，由韩国Nexon开发与发行。"])
    city = _add(st, "/city.pdf", ["北京是中华人民共和国的首都，位于华北平原。"])
    en = _add(st, "/en.pdf", ["Nexon is a video game publisher based in Japan."])

    def docs(q):
        return [st.get_chunks([c])[0].doc_id for c, _ in st.search_bm25(q, 5)]

    assert docs("中国的首都是哪里？")[0] == city
    assert docs("谁开发了这个游戏")[0] == game
    assert docs("首")[0] == city  # one character: a prefix query on the bigram index
    assert set(docs("Nexon开发的游戏")[:2]) == {game, en}
    # "由韩国Nexon开发" is a single unicode61 token; only the bigram index knows "Nexon" is there.
    assert set(docs("Nexon")) == {game, en}
    st.close()


@pytest.fixture(scope="module")
def cmrc(eval_dir):
    data = json.loads((eval_dir / "cmrc2018" / "cmrc2018_trial.json").read_text(encoding="utf-8"))["data"]
    return [p for a in data for p in a["paragraphs"]][:80]


def test_cmrc_questions_find_their_paragraph(tmp_path, cmrc):
    st = _store(tmp_path)
    ids = {}
    with st.bulk():
        for p in cmrc:
            ids[_add(st, p["id"], [p["context"]])] = p["id"]
    found = total = 0
    for p in cmrc:
        for qa in p["qas"]:
            hits = st.search_bm25(qa["question"], 5)
            total += 1
            found += p["id"] in {ids[st.get_chunks([c])[0].doc_id] for c, _ in hits}
    assert total > 200
    assert found / total >= 0.9  # measured 0.99 hit@5 on the whole trial set
    c = st.counts()
    assert c.cjk_chunks == c.fts_cjk == len(cmrc)
    st.close()


# ------------------------------------------------------------------ SciFact


@pytest.fixture(scope="module")
def scifact(eval_dir):
    """Gold abstracts of the first 40 judged claims plus filler abstracts: ~300 documents."""
    root = eval_dir / "scifact"
    queries = {}
    for line in (root / "queries.jsonl").read_text(encoding="utf-8").splitlines():
        d = json.loads(line)
        queries[d["_id"]] = d["text"]
    qrels: dict[str, set[str]] = {}
    for line in (root / "qrels" / "train.tsv").read_text().splitlines()[1:]:
        q, c, _ = line.split("\t")
        qrels.setdefault(q, set()).add(c)
    chosen = dict(list(qrels.items())[:40])
    gold = set().union(*chosen.values())
    corpus = []
    with open(root / "corpus.jsonl", encoding="utf-8") as f:
        for line in f:
            d = json.loads(line)
            if d["_id"] in gold or len(corpus) < 300 - len(gold):
                corpus.append(d)
    return corpus, {q: (queries[q], rel) for q, rel in chosen.items()}


def test_scifact_claims_find_their_abstracts(tmp_path, scifact):
    corpus, claims = scifact
    st = _store(tmp_path)
    ids = {}
    with st.bulk():
        for d in corpus:
            ids[_add(st, d["_id"], [d["text"]], heading=d["title"])] = d["_id"]
    hit = 0
    for text, rel in claims.values():
        got = [ids[st.get_chunks([c])[0].doc_id] for c, _ in st.search_bm25(text, 10)]
        hit += bool(rel & set(got))
    assert hit / len(claims) >= 0.8  # BM25 hit@10 on the full 5,183-abstract corpus is 0.83
    st.close()


def test_long_question_finds_the_abstract(tmp_path, scifact):
    corpus, _ = scifact
    st = _store(tmp_path)
    ids = {}
    with st.bulk():
        for d in corpus[:200]:
            ids[_add(st, d["_id"], [d["text"]], heading=d["title"])] = d["_id"]
    target = corpus[0]  # diffusion tensor MRI of newborn cerebral white matter
    assert "diffusion" in target["text"]
    q = ("How does the apparent diffusion coefficient and relative anisotropy of cerebral white matter "
         "change in preterm and full-term newborn infants when measured with diffusion tensor imaging?")
    got = [ids[st.get_chunks([c])[0].doc_id] for c, _ in st.search_bm25(q, 3)]
    assert got[0] == target["_id"]
    st.close()
