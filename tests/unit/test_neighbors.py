import numpy as np
import pytest

from rdm.retrieval.neighbors import exact_neighbors


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
