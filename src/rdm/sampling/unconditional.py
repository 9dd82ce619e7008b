"""Unconditional samples by pseudo-query, the RDM repo's top-m (`scripts/rdm_sample.py`, `nn_memory`).

With no prompt, the query is a D_train image drawn from those retrieved most often for the training
images: p_D(x) = |{training images whose k neighbours hold x}| / (k |X|), cut to its most frequent
`top_m` share (the paper: m = 0.01 is best for FID) and drawn from uniformly. The query's CLIP image
vector then retrieves k neighbours from a collection (D_train, or a style's), as a prompt's would.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from rdm.artifacts.samples import UNCONDITIONAL
from rdm.errors import UserError
from rdm.retrieval.store import D_TRAIN, style_collection
from rdm.sampling.batch import Request


def retrieval_counts(neighbors_path: Path) -> dict[str, int]:
    """How often each D_train image is among the training images' neighbours (the `neighbors`
    stage's `neighbor_ids`), most frequent first, ties in id order."""
    import pyarrow.parquet as pq

    if not neighbors_path.is_file():
        raise UserError(
            f"{neighbors_path}: no training neighbours (neighbors.out); run `dvc repro neighbors`"
        )
    rows = pq.read_table(neighbors_path, columns=["neighbor_ids"])["neighbor_ids"].to_pylist()
    counts = Counter(i for row in rows for i in row)
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def most_retrieved(counts: Mapping[str, int], top_m: float) -> list[str]:
    """The most frequent `top_m` share of the retrieved ids (at least one), most frequent first."""
    if not counts:
        raise UserError("no D_train image is a training neighbour: neighbors.out is empty")
    ranked = sorted(counts, key=lambda i: (-counts[i], i))
    return ranked[: max(1, int(top_m * len(ranked) + 1e-9))]  # (+1e-9: 0.29 * 100 is 28.999...)


def pseudo_queries(counts: Mapping[str, int], top_m: float, n: int, seed: int) -> list[str]:
    """`n` query ids drawn by `seed` uniformly from `most_retrieved`, with replacement as the
    reference does."""
    top = most_retrieved(counts, top_m)
    return [top[i] for i in np.random.default_rng(seed).integers(len(top), size=n)]


def unconditional_requests(query_ids: Sequence[str], styles: Sequence[str], seed: int) -> list[Request]:
    """Request i of every collection (D_train with no `styles`, else each style's) has pseudo-query i
    and seed + i, so a grid's columns differ by the database alone."""
    targets: list[tuple[str | None, str]] = [(s, style_collection(s)) for s in styles] or [(None, D_TRAIN)]
    return [
        Request(query, style, UNCONDITIONAL, seed + i, query_id=query, collection=collection)
        for style, collection in targets
        for i, query in enumerate(query_ids)
    ]
