"""Contract tests for every VectorIndex (NumPy baseline, FAISS flat, FAISS HNSW), then FAISS specifics."""
from __future__ import annotations

import threading

import faiss
import numpy as np
import pytest

from bot.core.errors import IndexCorrupt
from bot.core.settings import IndexSettings
from retrieval.faiss_index import FaissIndex, IndexDataError, NumpyIndex
from retrieval.types import VectorIndex

DIM = 32


def unit(a: np.ndarray) -> np.ndarray:
    return (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32)


def random_vecs(n: int, seed: int = 0) -> np.ndarray:
    return unit(np.random.default_rng(seed).standard_normal((n, DIM)))


def clustered(n: int, seed: int = 0, clusters: int = 20) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = unit(rng.standard_normal((clusters, DIM)))
    return unit(centres[rng.integers(0, clusters, n)] + 0.5 * unit(rng.standard_normal((n, DIM))))


def brute_force(ids: np.ndarray, vecs: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    scores = q @ vecs.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return ids[order]


# HNSW made exact for the contract (efSearch above the index size); approximation is tested on
# its own below.
HNSW_EXACT = IndexSettings(exact_max=100, hnsw_ef_search=1000)
FLAT = IndexSettings(exact_max=100_000)

FACTORIES = {
    "numpy": lambda: NumpyIndex(DIM),
    "faiss-flat": lambda: FaissIndex(DIM, FLAT),
    "faiss-hnsw": lambda: FaissIndex(DIM, HNSW_EXACT),
}


@pytest.fixture(params=list(FACTORIES))
def make(request):
    return FACTORIES[request.param]


def loaded(make, n=400, seed=0):
    """An index holding ids 1000..1000+n-1 (HNSW past its threshold: 400 > exact_max 100)."""
    index = make()
    vecs = random_vecs(n, seed)
    ids = np.arange(1000, 1000 + n, dtype=np.int64)
    index.add(ids, vecs)
    return index, ids, vecs


def test_is_a_vector_index(make):
    assert isinstance(make(), VectorIndex)


def test_search_ranks_like_brute_force(make):
    index, ids, vecs = loaded(make)
    q = unit(vecs[:5] + 0.3 * random_vecs(5, seed=9))
    scores, found = index.search(q, 10)
    assert found.shape == (5, 10) and found.dtype == np.int64 and scores.dtype == np.float32
    np.testing.assert_array_equal(found, brute_force(ids, vecs, q, 10))
    np.testing.assert_allclose(scores, np.take_along_axis(q @ vecs.T, np.searchsorted(ids, found), 1), atol=1e-5)
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # best first


def test_own_vector_comes_first_with_cosine_one(make):
    index, ids, vecs = loaded(make)
    scores, found = index.search(vecs[7], 1)  # a 1-d query is one query
    assert found[0, 0] == ids[7]
    assert scores[0, 0] == pytest.approx(1.0, abs=1e-5)


def test_adding_an_existing_id_replaces_its_vector(make):
    index, ids, vecs = loaded(make)
    fresh = random_vecs(1, seed=42)
    index.add(np.array([ids[3]]), fresh)
    assert len(index) == len(ids)
    _, found = index.search(fresh, 1)
    assert found[0, 0] == ids[3]
    scores, found = index.search(vecs[3], 3)
    assert ids[3] not in found[0] or scores[0, list(found[0]).index(ids[3])] < 0.99


def test_duplicate_ids_in_one_add_keep_the_last_vector(make):
    index = make()
    v = random_vecs(3, seed=5)
    index.add(np.array([7, 8, 7]), v)
    assert len(index) == 2
    scores, found = index.search(v[2], 1)
    assert found[0, 0] == 7 and scores[0, 0] == pytest.approx(1.0, abs=1e-5)


def test_remove_counts_present_ids_and_they_never_come_back(make):
    index, ids, vecs = loaded(make)
    gone = ids[:50]
    assert index.remove(np.concatenate([gone, [5, 6]])) == 50  # 5 and 6 were never added
    assert len(index) == len(ids) - 50
    _, found = index.search(vecs[:50], 10)
    assert not np.isin(found, gone).any()
    assert index.remove(gone) == 0
    np.testing.assert_array_equal(found, brute_force(ids[50:], vecs[50:], vecs[:50], 10))


def test_missing_slots_are_minus_one_and_minus_inf(make):
    index = make()
    scores, found = index.search(random_vecs(2), 4)
    assert (found == -1).all() and np.isneginf(scores).all()
    v = random_vecs(3)
    index.add(np.array([1, 2, 3]), v)
    scores, found = index.search(v[:1], 5)
    assert sorted(found[0, :3]) == [1, 2, 3]
    assert list(found[0, 3:]) == [-1, -1] and np.isneginf(scores[0, 3:]).all()


def test_allowed_ids_restrict_results_exactly(make):
    index, ids, vecs = loaded(make)
    allowed = ids[::37]  # 11 ids scattered over every cluster
    q = vecs[:4]
    _, found = index.search(q, 5, allowed_ids=np.concatenate([allowed, [99_999]]))
    sub = np.isin(ids, allowed)
    np.testing.assert_array_equal(found, brute_force(ids[sub], vecs[sub], q, 5))
    scores, found = index.search(q, 20, allowed_ids=allowed)
    assert set(found[0][found[0] >= 0]) == set(allowed) and (found[:, len(allowed):] == -1).all()
    scores, found = index.search(q, 3, allowed_ids=np.array([], dtype=np.int64))
    assert (found == -1).all() and np.isneginf(scores).all()


def test_save_and_load_round_trip(make, tmp_path):
    index, ids, vecs = loaded(make)
    index.remove(ids[:10])
    before = index.search(vecs[:8], 6)
    index.save(tmp_path / "idx")
    again = type(index).load(tmp_path / "idx", getattr(index, "settings", None))
    assert len(again) == len(index) and getattr(again, "kind", None) == getattr(index, "kind", None)
    after = again.search(vecs[:8], 6)
    np.testing.assert_array_equal(before[1], after[1])
    np.testing.assert_allclose(before[0], after[0], atol=1e-6)
    again.add(np.array([5]), vecs[:1])  # still writable after a load
    assert len(again) == len(index) + 1


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda ix: ix.add(np.array([1, 2]), random_vecs(2)[:, :8]), "shape (n, 32)"),
        (lambda ix: ix.add(np.array([1, 2]), random_vecs(3)), "2 ids for 3 vectors"),
        (lambda ix: ix.add(np.array([-4]), random_vecs(1)), "must be >= 0"),
        (lambda ix: ix.add(np.array([1.5]), random_vecs(1)), "must be integers"),
        (lambda ix: ix.add(np.array([1]), np.full((1, DIM), np.nan)), "NaN"),
        (lambda ix: ix.search(random_vecs(1), 0), "k must be a positive integer"),
        (lambda ix: ix.search(np.zeros((1, 5), np.float32), 3), "query vectors must have shape"),
        (lambda ix: ix.search(random_vecs(1), 3, allowed_ids=np.array([[1]])), "allowed_ids must be a 1-d"),
    ],
)
def test_bad_arguments_are_clear_errors_and_change_nothing(make, call, message):
    index, ids, vecs = loaded(make, n=150)
    with pytest.raises(IndexDataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        call(index)
    assert len(index) == 150
    assert index.search(vecs[0], 1)[1][0, 0] == ids[0]


# ---- FAISS specifics ---------------------------------------------------------------------------


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / truth.shape[1] for a, b in zip(found, truth)]))


def test_switches_to_hnsw_past_exact_max_and_back_on_rebuild():
    index = FaissIndex(DIM, IndexSettings(exact_max=100, hnsw_ef_search=1000, rebuild_dead_fraction=0.9))
    vecs = random_vecs(300)
    index.add(np.arange(100), vecs[:100])
    assert index.kind == "flat"
    index.add(np.arange(100, 300), vecs[100:])
    assert index.kind == "hnsw" and len(index) == 300
    index.remove(np.arange(250))
    assert index.kind == "hnsw" and index.dead == 250  # no rebuild under readers below the threshold
    index.rebuild()
    assert index.kind == "flat" and len(index) == 50 and index.dead == 0
    np.testing.assert_array_equal(index.search(vecs[260:262], 5)[1], brute_force(np.arange(250, 300), vecs[250:], vecs[260:262], 5))


def test_hnsw_removal_marks_dead_then_rebuilds_past_the_threshold():
    index = FaissIndex(DIM, IndexSettings(exact_max=100, hnsw_ef_search=1000, rebuild_dead_fraction=0.2))
    vecs = random_vecs(500)
    ids = np.arange(500)
    index.add(ids, vecs)
    assert index.remove(ids[:90]) == 90
    assert index.dead == 90 and len(index) == 410  # 90 / 500 slots: below 20%
    _, found = index.search(vecs[:90], 10)
    assert not np.isin(found, ids[:90]).any()
    np.testing.assert_array_equal(found, brute_force(ids[90:], vecs[90:], vecs[:90], 10))
    index.add(ids[90:100], random_vecs(10, seed=3))  # replacements leave dead slots too
    assert index.dead == 100 and len(index) == 410  # 100 / 510: still below
    index.add(ids[100:120], random_vecs(20, seed=4))
    assert index.dead == 0 and index.kind == "hnsw" and len(index) == 410  # 120 / 530 > 20%: rebuilt
    _, found = index.search(vecs[120:140], 10)
    np.testing.assert_array_equal(found[:, 0], ids[120:140])
    assert (found >= 90).all()


def test_flat_removal_compacts_at_once():
    index = FaissIndex(DIM, FLAT)
    index.add(np.arange(50), random_vecs(50))
    index.remove(np.arange(10))
    index.add(np.array([20]), random_vecs(1, seed=8))
    assert index.dead == 0 and len(index) == 40


def test_hnsw_recall_on_clustered_data_with_default_settings():
    vecs = clustered(6000, seed=1)
    index = FaissIndex(DIM, IndexSettings(exact_max=1000))
    index.add(np.arange(6000), vecs)
    assert index.kind == "hnsw"
    q = clustered(200, seed=2)
    _, found = index.search(q, 10)
    assert recall(found, brute_force(np.arange(6000), vecs, q, 10)) >= 0.9


def test_filtered_search_small_subset_is_exact():
    vecs = clustered(3000, seed=3)
    ids = np.arange(3000)
    index = FaissIndex(DIM, IndexSettings(exact_max=200, hnsw_ef_search=4))  # lossy unfiltered
    index.add(ids, vecs)
    index.remove(ids[::2])  # dead slots must stay out of the subset too
    q = clustered(30, seed=4)
    allowed = ids[::15]  # 200 ids, 100 of them still live: scored exactly
    _, found = index.search(q, 5, allowed_ids=allowed)
    live = allowed[allowed % 2 == 1]
    np.testing.assert_array_equal(found, brute_force(live, vecs[live], q, 5))


def test_filtered_search_large_subset_keeps_unfiltered_recall():
    vecs = clustered(3000, seed=3)
    ids = np.arange(3000)
    index = FaissIndex(DIM, IndexSettings(exact_max=200, hnsw_m=8, hnsw_ef_search=4))
    index.add(ids, vecs)
    q = clustered(50, seed=4)
    unfiltered = recall(index.search(q, 5)[1], brute_force(ids, vecs, q, 5))
    assert unfiltered < 0.95  # approximate at this efSearch, so the comparison means something
    for allowed in (ids[:2000], ids[::2], ids[::5]):  # above exact_max: efSearch scaled by 1/fraction
        _, found = index.search(q, 5, allowed_ids=allowed)
        assert np.isin(found[found >= 0], allowed).all()
        assert recall(found, brute_force(allowed, vecs[allowed], q, 5)) >= unfiltered


def test_saved_dead_slots_stay_dead_after_load(tmp_path):
    index, ids, vecs = loaded(lambda: FaissIndex(DIM, IndexSettings(exact_max=100, hnsw_ef_search=1000)))
    index.remove(ids[:30])
    index.save(tmp_path / "idx")
    again = FaissIndex.load(tmp_path / "idx", index.settings)
    assert again.kind == "hnsw" and again.dead == 30 and len(again) == len(ids) - 30
    _, found = again.search(vecs[:30], 10)
    np.testing.assert_array_equal(found, brute_force(ids[30:], vecs[30:], vecs[:30], 10))


def test_vectors_returns_everything_stored():
    index, ids, vecs = loaded(lambda: FaissIndex(DIM, IndexSettings(exact_max=100)))
    index.remove(ids[:5])
    got_ids, got_vecs = index.vectors()
    order = np.argsort(got_ids)
    np.testing.assert_array_equal(got_ids[order], ids[5:])
    np.testing.assert_allclose(got_vecs[order], vecs[5:])


def test_concurrent_searches_match_serial_and_keep_thread_settings():
    index, ids, vecs = loaded(lambda: FaissIndex(DIM, IndexSettings(exact_max=100)))
    q = random_vecs(64, seed=11)
    serial = [index.search(q[i], 5)[1] for i in range(64)]
    threads_before = faiss.omp_get_max_threads()
    errors, results = [], {}

    def worker(start):
        try:
            for i in range(start, 64, 4):
                results[i] = index.search(q[i], 5)[1]
        except Exception as e:  # pragma: no cover - reported by the assert below
            errors.append(e)

    pool = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert not errors
    for i in range(64):
        np.testing.assert_array_equal(results[i], serial[i])
    assert faiss.omp_get_max_threads() == threads_before


@pytest.mark.parametrize("damage", ["truncate", "garbage", "meta-format", "meta-missing", "wrong-kind", "ids"])
def test_damaged_files_raise_index_corrupt_naming_the_file(tmp_path, damage):
    index, _, _ = loaded(lambda: FaissIndex(DIM, IndexSettings(exact_max=100)))
    d = tmp_path / "idx"
    index.save(d)
    blob = d / "dense.faiss"
    if damage == "truncate":
        blob.write_bytes(blob.read_bytes()[:1000])
    elif damage == "garbage":
        blob.write_bytes(b"\x00" * blob.stat().st_size)
    elif damage == "meta-format":
        (d / "dense.json").write_text((d / "dense.json").read_text().replace('"format": 2', '"format": 99'))
    elif damage == "meta-missing":
        (d / "dense.json").unlink()
    elif damage == "ids":
        np.save(d / "ids.npy", np.arange(7))
    elif damage == "wrong-kind":
        NumpyIndex(DIM).save(tmp_path / "np")
        d = tmp_path / "np"
    with pytest.raises(IndexCorrupt) as err:
        FaissIndex.load(d)
    assert str(d) in str(err.value)
