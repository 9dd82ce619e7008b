"""The `neighbors` stage's output: for every training image, its k nearest neighbours in D_train.

One parquet file: `id`, `neighbor_ids` (k image ids, best first) and `neighbor_scores`; its metadata
records k, the CLIP fingerprint and the near-duplicate threshold, so a file made with other settings
is recognised by the stages that read it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rdm.errors import UserError
from rdm.files import atomic_write_bytes


class NeighborsError(UserError):
    pass


@dataclass(frozen=True)
class NeighborsMeta:
    k: int
    clip_fingerprint: str
    duplicate_threshold: float


def write_neighbors(
    path: Path, ids: list[str], neighbor_ids: np.ndarray, scores: np.ndarray, meta: NeighborsMeta
) -> None:
    """ids (N,), neighbour ids (N, k) and their scores (N, k), best first."""
    k = meta.k
    table = pa.table(
        {
            "id": pa.array(ids, pa.string()),
            "neighbor_ids": pa.array(neighbor_ids.tolist(), pa.list_(pa.string(), k)),
            "neighbor_scores": pa.array(scores.tolist(), pa.list_(pa.float32(), k)),
        }
    )
    table = table.replace_schema_metadata({"rdm": json.dumps(asdict(meta))})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    atomic_write_bytes(path, sink.getvalue().to_pybytes())


def read_neighbors(path: Path) -> tuple[Any, NeighborsMeta]:
    """The neighbours table (pyarrow) and its metadata."""
    if not path.is_file():
        raise NeighborsError(f"{path}: no neighbours; run `dvc repro neighbors` (or `rdm neighbors`)")
    table = pq.read_table(path)
    return table, NeighborsMeta(**json.loads(table.schema.metadata[b"rdm"]))
