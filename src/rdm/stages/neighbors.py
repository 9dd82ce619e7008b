"""`neighbors` stage: for every training image, its k nearest neighbours in D_train
(`neighbors.out`, laid out in `rdm.artifacts.neighbors`)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rdm.artifacts.clip import read_card
from rdm.artifacts.embeddings import VectorChunks
from rdm.artifacts.manifest import read_manifest
from rdm.artifacts.neighbors import NeighborsMeta, write_neighbors
from rdm.config import EmbedParams, NeighborsParams
from rdm.devices import resolve_device
from rdm.files import write_json
from rdm.retrieval.neighbors import exact_neighbors


def run(
    params: NeighborsParams, embed: EmbedParams, clip_dir: Path, prepared: Path, progress: bool = True
) -> dict[str, Any]:
    card = read_card(clip_dir)
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
        resolve_device(params.device),
        progress,
    )
    seconds = time.perf_counter() - started
    db_ids = d_train["id"].to_numpy()
    meta = NeighborsMeta(params.k, card.fingerprint, params.duplicate_threshold)
    write_neighbors(Path(params.out), train["id"].tolist(), db_ids[found.indices], found.scores, meta)
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
