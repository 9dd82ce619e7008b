from pathlib import Path

import numpy as np
import pytest

from rdm.config import NeighborsParams
from rdm.errors import UserError
from rdm.retrieval.approximate import IvfPq, ivfpq_neighbors, recall_at_k
from rdm.retrieval.neighbors import exact_neighbors
from rdm.stages.neighbors import approximate_recall, find_neighbors


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def test_equal_to_brute_force_and_near_duplicates_dropped() -> None:
    rng = np.random.default_rng(0)
    database = unit(rng.normal(size=(500, 32)))
    queries = unit(rng.normal(size=(70, 32)))
    database[10] = queries[3]  # an exact copy of query 3 sits in the database
    database[11] = unit(queries[4:5] + 0.001 * rng.normal(size=(1, 32)))[0]  # a near-copy of query 4
    found = exact_neighbors(queries, database, k=6, duplicate_threshold=0.99, batch_size=16)
    sims = queries @ database.T
    sims[sims >= 0.99] = -np.inf
    expected = np.argsort(-sims, axis=1)[:, :6]
    np.testing.assert_array_equal(found.indices, expected)
    np.testing.assert_allclose(found.scores, np.take_along_axis(sims, expected, axis=1), atol=1e-5)
    assert 10 not in found.indices[3] and 11 not in found.indices[4]
    assert found.dropped == 2


def test_too_small_a_database_is_an_error() -> None:
    with pytest.raises(ValueError, match="fewer than k"):
        exact_neighbors(unit(np.ones((2, 4))), unit(np.ones((3, 4))), k=4)


def clustered(points: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(points // 50, dim))
    return unit(centres[rng.integers(0, len(centres), points)] + 0.4 * rng.normal(size=(points, dim)))


def test_ivfpq_finds_most_exact_neighbours_from_a_memory_mapped_database(tmp_path: Path) -> None:
    data = clustered(20_300, 64, seed=1)
    queries = data[:300].copy()
    queries[0] = data[1000]  # a training image that is also in D_train: its copy is a near-duplicate
    stored = np.lib.format.open_memmap(
        tmp_path / "d_train.npy", mode="w+", dtype=np.float32, shape=(20_000, 64)
    )
    stored[:] = data[300:]
    stored.flush()
    database = np.load(tmp_path / "d_train.npy", mmap_mode="r")

    settings = IvfPq(code_bytes=16, nprobe=16)
    found = ivfpq_neighbors(queries, database, k=8, settings=settings, duplicate_threshold=0.99)
    exact = exact_neighbors(queries, np.asarray(database), k=8, duplicate_threshold=0.99)
    assert recall_at_k(found.indices, exact.indices) >= 0.9
    # scores are the true cosine similarities of the rows returned, best first
    expected = np.einsum("qd,qkd->qk", queries, database[found.indices])
    np.testing.assert_allclose(found.scores, expected, atol=1e-5)
    assert (np.diff(found.scores, axis=1) <= 1e-6).all()
    assert 700 not in found.indices[0] and found.dropped >= 1  # data[1000] is row 700 of D_train
    # fewer lists searched, fewer exact neighbours found: the index is really approximate
    narrow = ivfpq_neighbors(queries, database, k=8, settings=IvfPq(code_bytes=16, nprobe=1, rerank=1))
    assert recall_at_k(narrow.indices, exact.indices) < recall_at_k(found.indices, exact.indices)


def test_the_stage_reports_the_recall_of_approximate_neighbours() -> None:
    data = clustered(11_000, 32, seed=2)
    params = NeighborsParams(method="ivfpq", k=4, code_bytes=8, recall_queries=200, device="cpu")
    found = find_neighbors(params, data[:1000], data[1000:], progress=False)
    report = approximate_recall(params, data[:1000], data[1000:], found)
    assert report["recall_queries"] == 200 and 0.8 <= report["recall_at_k"] <= 1.0


def test_ivfpq_refuses_small_databases_and_code_sizes_that_do_not_divide() -> None:
    with pytest.raises(UserError, match=r"use neighbors\.method: exact"):
        ivfpq_neighbors(unit(np.ones((2, 8))), unit(np.ones((500, 8))), k=4, settings=IvfPq(code_bytes=8))
    with pytest.raises(UserError, match="does not divide the embedding size 60"):
        ivfpq_neighbors(unit(np.ones((2, 60))), clustered(10_000, 60, 3), k=4, settings=IvfPq(code_bytes=16))


def test_recall_at_k_counts_shared_neighbours() -> None:
    assert recall_at_k(np.array([[1, 2, 3], [4, 5, 6]]), np.array([[3, 2, 9], [7, 8, 9]])) == 2 / 6
