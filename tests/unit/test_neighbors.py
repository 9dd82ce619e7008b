from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from rdm.artifacts.clip import WEIGHTS, ClipCard, write_card
from rdm.artifacts.embeddings import VectorChunks
from rdm.artifacts.manifest import Record, write_manifest
from rdm.artifacts.neighbors import read_neighbors
from rdm.config import EmbedParams, NeighborsParams
from rdm.errors import UserError
from rdm.retrieval.approximate import IvfPq, exact_top_k, ivfpq_neighbors, recall_at_k
from rdm.retrieval.neighbors import exact_neighbors
from rdm.stages import neighbors as neighbors_stage
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


def test_exact_top_k_by_blocks_equals_exact_neighbours() -> None:
    data = clustered(5_000, 32, seed=4)
    queries, database = data[:40].copy(), data[40:]
    queries[5] = database[123]  # dropped as a near-duplicate by both
    expected = exact_neighbors(queries, database, k=7, duplicate_threshold=0.99).indices
    np.testing.assert_array_equal(exact_top_k(queries, database, 7, 0.99, block=300), expected)


def test_vectors_to_file_streams_the_chunks_in_the_asked_order(tmp_path: Path) -> None:
    card = ClipCard(model="m", source="s", embed_dim=4, fingerprint="f")
    chunks = VectorChunks(tmp_path / "d_train", card)
    vectors = unit(np.random.default_rng(5).normal(size=(10, 4)))
    ids = [f"id{n}" for n in range(10)]
    chunks.append(ids[:6], vectors[:6])
    chunks.append(ids[4:], vectors[4:] * -1)  # ids 4 and 5 again: the first occurrence is kept
    wanted = ids[::-1]
    mapped = chunks.vectors_to_file(wanted, tmp_path / "v.npy")
    assert isinstance(mapped, np.memmap)
    np.testing.assert_array_equal(mapped, chunks.vectors_for(wanted))
    with pytest.raises(UserError, match="1 images have no embedding"):
        chunks.vectors_to_file([*ids, "absent"], tmp_path / "w.npy")


def test_the_stage_finds_ivfpq_neighbours_from_memory_mapped_vectors_and_reports_recall(
    tmp_path: Path,
) -> None:
    clip = tmp_path / "clip"
    clip.mkdir()
    (clip / WEIGHTS).write_bytes(b"weights")
    card = write_card(clip, "m", "test", embed_dim=32)
    data = clustered(13_000, 32, seed=6)
    splits = {"train": (data[:1000], 0), "d_train": (data[1000:], 1000)}
    for split, (vectors, offset) in splits.items():
        ids = [f"{n + offset:064x}" for n in range(len(vectors))]
        records = [Record(i, split, f"{i}.png", "here", None, None, None, 8, 8) for i in ids]
        write_manifest(records, tmp_path / "prepared" / f"{split}.parquet")
        VectorChunks(tmp_path / "embeddings" / split, card).append(ids, vectors)
    embed = EmbedParams(out=str(tmp_path / "embeddings"))

    def neighbours(method: str) -> tuple[dict, pa.Table]:
        out = tmp_path / method / "train.parquet"
        params = NeighborsParams(
            k=4,
            method=method,
            code_bytes=8,
            out=str(out),
            metrics=str(tmp_path / f"{method}.json"),
            device="cpu",
        )
        report = neighbors_stage.run(params, embed, clip, tmp_path / "prepared", progress=False)
        assert [p.name for p in out.parent.iterdir()] == [
            "train.parquet"
        ]  # the memory-mapped copies are gone
        return report, read_neighbors(out)[0]

    report, approximate = neighbours("ivfpq")
    _, exact = neighbours("exact")
    assert report["method"] == "ivfpq" and report["recall_queries"] == 1000
    found, truth = approximate.column("neighbor_ids").to_pylist(), exact.column("neighbor_ids").to_pylist()
    shared = sum(len(set(f) & set(t)) for f, t in zip(found, truth, strict=True)) / (4 * len(truth))
    assert report["recall_at_k"] == pytest.approx(shared, abs=1e-4) and shared >= 0.9
