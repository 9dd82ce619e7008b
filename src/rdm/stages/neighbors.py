"""`neighbors` stage: for every training image, its k nearest neighbours in D_train.

Output (`neighbors.out`, parquet): `id`, `neighbor_ids` (k image ids, best first) and
`neighbor_scores`; the file's metadata records k and the CLIP fingerprint, so a stale file made
with other settings is recognised by the stages that read it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from rdm.config import EmbedParams, NeighborsParams
from rdm.data.manifest import read_manifest
from rdm.embedding import model as clip_model
from rdm.embedding.vectors import VectorChunks
from rdm.files import atomic_write_bytes, write_json
from rdm.retrieval.neighbors import exact_neighbors


def run(
    params: NeighborsParams, embed: EmbedParams, clip_dir: Path, prepared: Path, progress: bool = True
) -> dict[str, Any]:
    card = clip_model.read_card(clip_dir)
    train = read_manifest(prepared / "train.parquet")
    d_train = read_manifest(prepared / "d_train.parquet")
    queries = VectorChunks(Path(embed.out) / "train", card).vectors_for(list(train["id"]))
    database = VectorChunks(Path(embed.out) / "d_train", card).vectors_for(list(d_train["id"]))
    started = time.perf_counter()
    found = exact_neighbors(
        queries,
        database,
        params.k,
        params.duplicate_threshold,
        params.batch_size,
        clip_model.resolve_device(params.device),
        progress,
    )
    seconds = time.perf_counter() - started
    db_ids = d_train["id"].to_numpy()
    table = pa.table(
        {
            "id": pa.array(train["id"].tolist(), pa.string()),
            "neighbor_ids": pa.array(db_ids[found.indices].tolist(), pa.list_(pa.string(), params.k)),
            "neighbor_scores": pa.array(found.scores.tolist(), pa.list_(pa.float32(), params.k)),
        }
    )
    meta = {
        "k": params.k,
        "clip_fingerprint": card.fingerprint,
        "duplicate_threshold": params.duplicate_threshold,
    }
    table = table.replace_schema_metadata({"rdm": json.dumps(meta)})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    atomic_write_bytes(Path(params.out), sink.getvalue().to_pybytes())
    report = {
        "queries": len(train),
        "database": len(d_train),
        "k": params.k,
        "near_duplicates_dropped": found.dropped,
        "mean_score_top1": round(float(found.scores[:, 0].mean()), 4),
        "mean_score_topk": round(float(found.scores[:, -1].mean()), 4),
    }
    write_json(Path(params.metrics), report)
    print(
        f"neighbors: {params.k} neighbours for {len(train)} training images from {len(d_train)} in D_train "
        f"in {seconds:.2f} s ({found.dropped} near-duplicates dropped) -> {params.out}"
    )
    return report


def read_neighbors(path: Path) -> tuple[Any, dict[str, Any]]:
    """The neighbours table and its metadata (k, clip_fingerprint, duplicate_threshold)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no neighbours; run `dvc repro neighbors` (or `rdm neighbors`)")
    table = pq.read_table(path)
    return table, json.loads(table.schema.metadata[b"rdm"])


def main() -> int:
    from rdm.cli import main as cli_main

    return cli_main(["neighbors"])


if __name__ == "__main__":
    raise SystemExit(main())
