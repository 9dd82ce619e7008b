"""Unconditional sampling's pseudo-queries (the RDM repo's top-m): counted from the training
neighbours, the most retrieved share kept, drawn from uniformly by the seed."""

from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rdm.artifacts.samples import UNCONDITIONAL
from rdm.errors import UserError
from rdm.sampling.batch import Request
from rdm.sampling.unconditional import (
    most_retrieved,
    pseudo_queries,
    retrieval_counts,
    unconditional_requests,
)


def write_neighbors(path: Path, rows: list[list[str]]) -> Path:
    """A table shaped like the `neighbors` stage's output."""
    k = len(rows[0])
    table = pa.table(
        {
            "id": pa.array([f"train-{n}" for n in range(len(rows))], pa.string()),
            "neighbor_ids": pa.array(rows, pa.list_(pa.string(), k)),
            "neighbor_scores": pa.array([[0.5] * k for _ in rows], pa.list_(pa.float32(), k)),
        }
    )
    pq.write_table(table, path)
    return path


def test_counts_are_how_often_each_image_is_a_neighbour_most_frequent_first(tmp_path: Path) -> None:
    rows = [["a", "b", "c"], ["b", "c", "d"], ["c", "b", "e"], ["c", "f", "a"]]
    counts = retrieval_counts(write_neighbors(tmp_path / "train.parquet", rows))
    assert counts == {"c": 4, "b": 3, "a": 2, "d": 1, "e": 1, "f": 1}
    assert list(counts) == ["c", "b", "a", "d", "e", "f"]  # ties in id order
    with pytest.raises(UserError, match=r"missing\.parquet: no training neighbours.*dvc repro neighbors"):
        retrieval_counts(tmp_path / "missing.parquet")


def test_the_most_retrieved_share_is_kept() -> None:
    counts = {f"id{n:03d}": 1000 - n for n in range(200)}  # id000 the most retrieved
    assert most_retrieved(counts, 0.05) == [f"id{n:03d}" for n in range(10)]
    assert most_retrieved(counts, 0.29) == [f"id{n:03d}" for n in range(58)]  # 0.29 * 200 = 57.99...
    assert most_retrieved(counts, 0.001) == ["id000"]  # at least one
    assert len(most_retrieved(counts, 1.0)) == 200
    shuffled = dict(sorted(counts.items(), key=lambda item: item[1]))  # least frequent first
    assert most_retrieved(shuffled, 0.05) == most_retrieved(counts, 0.05)
    with pytest.raises(UserError, match=r"neighbors\.out is empty"):
        most_retrieved({}, 0.01)


def test_pseudo_queries_are_drawn_uniformly_from_the_top_by_the_seed() -> None:
    counts = {f"id{n:03d}": 1000 // (n + 1) for n in range(500)}  # id000 twice as often as id001
    top = set(most_retrieved(counts, 0.01))  # 5 ids
    drawn = pseudo_queries(counts, 0.01, 2000, seed=3)
    assert set(drawn) == top
    assert all(300 < c < 500 for c in Counter(drawn).values())  # about 400 each, not weighted by count
    assert pseudo_queries(counts, 0.01, 2000, seed=3) == drawn
    assert pseudo_queries(counts, 0.01, 2000, seed=4) != drawn
    assert len(pseudo_queries(counts, 0.5, 7, seed=0)) == 7


def test_request_i_of_every_collection_has_query_i_and_seed_i() -> None:
    (only,) = unconditional_requests(["q1"], [], seed=5)
    assert only == Request("q1", None, UNCONDITIONAL, 5, query_id="q1", collection="d_train")
    requests = unconditional_requests(["q1", "q2", "q1"], ["neon", "mosaic"], seed=0)
    assert [(r.style, r.collection, r.query_id, r.seed) for r in requests] == [
        ("neon", "style-neon", "q1", 0),
        ("neon", "style-neon", "q2", 1),
        ("neon", "style-neon", "q1", 2),
        ("mosaic", "style-mosaic", "q1", 0),
        ("mosaic", "style-mosaic", "q2", 1),
        ("mosaic", "style-mosaic", "q1", 2),
    ]
