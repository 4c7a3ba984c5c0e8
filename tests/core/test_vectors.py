"""The hnswlib wrapper: exact enough, clamped, deletes, filters, growth, files, threads."""
from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from core.store.vectors import SIDECAR_NAME, IndexFileError, VectorIndex, normalize, read_info

DIM = 32


def unit(n: int, seed: int = 0, dim: int = DIM) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def exact(vecs: np.ndarray, labels: np.ndarray, q: np.ndarray, k: int) -> list[int]:
    sims = vecs @ normalize(q)[0]
    return [int(labels[i]) for i in np.argsort(-sims)[:k]]


def test_search_agrees_with_brute_force():
    vecs, labels = unit(500), np.arange(1000, 1500)
    idx = VectorIndex.build(DIM, labels, vecs, ef=200)
    queries = unit(20, seed=1)
    found = 0
    for q in queries:
        hits = idx.search(q, 10)
        assert [s for _, s in hits] == sorted((s for _, s in hits), reverse=True)
        found += len({lb for lb, _ in hits} & set(exact(vecs, labels, q, 10)))
    assert found / 200 >= 0.98


def test_scores_are_cosine_and_self_is_first():
    vecs = unit(50)
    idx = VectorIndex.build(DIM, np.arange(50), vecs * 7.0)  # not normalised on the way in
    label, score = idx.search(vecs[3] * 0.1, 1)[0]
    assert label == 3
    assert score == pytest.approx(1.0, abs=1e-5)
    assert all(-1.0001 <= s <= 1.0001 for _, s in idx.search(vecs[0], 50))


def test_k_is_clamped_and_empty_index_is_fine():
    idx = VectorIndex(DIM)
    assert idx.search(unit(1)[0], 10) == []
    assert idx.search(unit(1)[0], 0) == []
    idx.add([7, 8, 9], unit(3))
    assert sorted(lb for lb, _ in idx.search(unit(1, seed=5)[0], 100)) == [7, 8, 9]
    idx.delete([7, 8, 9])
    assert len(idx) == 0
    assert idx.search(unit(1)[0], 5) == []


def test_deleted_labels_are_never_returned():
    vecs = unit(200)
    idx = VectorIndex.build(DIM, np.arange(200), vecs)
    gone = set(range(0, 200, 3))
    assert idx.delete(gone) == len(gone)
    assert idx.delete([0, 3, 99999]) == 0  # already deleted, unknown: skipped
    assert len(idx) == 200 - len(gone)
    assert idx.deleted == len(gone)
    for q in unit(10, seed=2):
        hits = idx.search(q, 300)
        assert len(hits) == len(idx)
        assert not {lb for lb, _ in hits} & gone


def test_filter_keeps_only_allowed_labels():
    idx = VectorIndex.build(DIM, np.arange(300), unit(300))
    hits = idx.search(unit(1, seed=3)[0], 20, filter=lambda lb: lb % 2 == 0)
    assert len(hits) == 20 and all(lb % 2 == 0 for lb, _ in hits)
    few = idx.search(unit(1, seed=3)[0], 20, filter=lambda lb: lb in (5, 6))
    assert sorted(lb for lb, _ in few) == [5, 6]
    assert idx.search(unit(1)[0], 5, filter=lambda lb: False) == []


def test_capacity_grows_geometrically():
    idx = VectorIndex(DIM, capacity=4)
    caps = []
    for start in range(0, 100, 10):
        idx.add(range(start, start + 10), unit(10, seed=start))
        caps.append(idx.capacity)
    assert len(idx) == 100 and idx.max_label == 99
    assert caps == sorted(caps) and caps[-1] < 400
    assert len(set(caps)) < 10  # grew in a few doublings, not on every add


def test_add_checks_shapes():
    idx = VectorIndex(DIM)
    with pytest.raises(ValueError):
        idx.add([1, 2], unit(3))
    with pytest.raises(ValueError):
        idx.add([1], unit(1, dim=DIM + 1))
    with pytest.raises(ValueError):
        idx.search(unit(1, dim=DIM + 1)[0], 1)


def test_save_load_roundtrip_restores_ef_and_results(tmp_path):
    vecs = unit(300)
    idx = VectorIndex.build(DIM, np.arange(10, 310), vecs, model_id="fake-model", ef=150)
    idx.delete([10, 11])
    info = idx.save(tmp_path, generation=7)
    assert (tmp_path / info.file).is_file()
    side = json.loads((tmp_path / SIDECAR_NAME).read_text())
    assert side["dim"] == DIM and side["count"] == 298 and side["deleted"] == 2
    assert side["max_label"] == 309 and side["generation"] == 7 and side["model_id"] == "fake-model"

    loaded, linfo = VectorIndex.load(tmp_path, ef=150)
    assert linfo == info
    assert loaded.ef == 150  # hnswlib itself would come back with ef=10
    assert loaded._index.ef == 150
    assert len(loaded) == 298 and loaded.deleted == 2
    for q in unit(5, seed=9):
        assert loaded.search(q, 10) == idx.search(q, 10)


def test_save_replaces_the_pair_and_cleans_leftovers(tmp_path):
    idx = VectorIndex.build(DIM, np.arange(20), unit(20))
    first = idx.save(tmp_path, generation=1)
    (tmp_path / "vectors-0-dead.hnsw.tmp").write_bytes(b"half a file")
    idx.add([20], unit(1, seed=4))
    second = idx.save(tmp_path, generation=2)
    assert first.file != second.file
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([second.file, SIDECAR_NAME])
    assert read_info(tmp_path) == second


def test_load_failures_are_index_file_errors(tmp_path):
    with pytest.raises(IndexFileError):
        VectorIndex.load(tmp_path)
    idx = VectorIndex.build(DIM, np.arange(20), unit(20))
    info = idx.save(tmp_path, generation=1)
    (tmp_path / info.file).write_bytes(b"\0" * 64)  # truncated / garbage graph
    with pytest.raises(IndexFileError):
        VectorIndex.load(tmp_path)
    (tmp_path / info.file).unlink()
    with pytest.raises(IndexFileError):
        VectorIndex.load(tmp_path)
    (tmp_path / SIDECAR_NAME).write_text("{not json")
    assert read_info(tmp_path) is None
    with pytest.raises(IndexFileError):
        VectorIndex.load(tmp_path)


def test_sidecar_count_mismatch_is_detected(tmp_path):
    idx = VectorIndex.build(DIM, np.arange(20), unit(20))
    idx.save(tmp_path, generation=1)
    side = json.loads((tmp_path / SIDECAR_NAME).read_text())
    side["count"] = 25
    (tmp_path / SIDECAR_NAME).write_text(json.dumps(side))
    with pytest.raises(IndexFileError):
        VectorIndex.load(tmp_path)


def test_concurrent_adds_and_searches_are_safe():
    idx = VectorIndex(DIM, capacity=2)  # tiny, so adds resize while others search
    errors: list[BaseException] = []

    def writer(base: int) -> None:
        try:
            for i in range(25):
                idx.add([base + i], unit(1, seed=base + i))
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    def reader() -> None:
        try:
            for i in range(60):
                idx.search(unit(1, seed=i)[0], 5)
        except BaseException as e:  # pragma: no cover
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(b,)) for b in (0, 1000, 2000)]
    threads += [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(idx) == 75
    assert idx.labels() == set(range(25)) | set(range(1000, 1025)) | set(range(2000, 2025))


def test_normalize_keeps_zero_rows():
    out = normalize(np.array([[0.0, 0.0], [3.0, 4.0]]))
    assert out.dtype == np.float32 and out.flags.c_contiguous
    assert out[0].tolist() == [0.0, 0.0]
    assert out[1].tolist() == pytest.approx([0.6, 0.8])
