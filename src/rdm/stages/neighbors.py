"""`neighbors` stage: for every training image, its k nearest neighbours in D_train
(`neighbors.out`, laid out in `rdm.artifacts.neighbors`), exactly or through an IVF-PQ index
(`neighbors.method`); an approximate run also reports its recall@k against exact on a sample."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from rdm.artifacts.clip import read_card
from rdm.artifacts.embeddings import VectorChunks
from rdm.artifacts.manifest import read_manifest
from rdm.artifacts.neighbors import NeighborsMeta, write_neighbors
from rdm.config import EmbedParams, NeighborsParams
from rdm.devices import resolve_device
from rdm.files import write_json
from rdm.retrieval.approximate import IvfPq, ivfpq_neighbors, recall_at_k
from rdm.retrieval.neighbors import Neighbors, exact_neighbors


def run(
    params: NeighborsParams, embed: EmbedParams, clip_dir: Path, prepared: Path, progress: bool = True
) -> dict[str, Any]:
    card = read_card(clip_dir)
    train = read_manifest(prepared / "train.parquet")
    d_train = read_manifest(prepared / "d_train.parquet")
    queries = VectorChunks(Path(embed.out) / "train", card).vectors_for(list(train["id"]))
    database = VectorChunks(Path(embed.out) / "d_train", card).vectors_for(list(d_train["id"]))
    started = time.perf_counter()
    found = find_neighbors(params, queries, database, progress)
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
        "method": params.method,
        "seconds": round(seconds, 2),
    }
    if params.method == "ivfpq":
        report |= approximate_recall(params, queries, database, found)
    write_json(Path(params.metrics), report)
    print(
        f"neighbors: {params.k} neighbours for {len(train)} training images from {len(d_train)} in D_train "
        f"in {seconds:.2f} s, {params.method} ({found.dropped} near-duplicates dropped"
        + (f"; recall@{params.k} {report['recall_at_k']}" if "recall_at_k" in report else "")
        + f") -> {params.out}"
    )
    return report


def find_neighbors(
    params: NeighborsParams, queries: np.ndarray, database: np.ndarray, progress: bool
) -> Neighbors:
    if params.method == "ivfpq":
        settings = IvfPq(params.ivf_lists, params.code_bytes, params.nprobe, params.rerank)
        return ivfpq_neighbors(queries, database, params.k, settings, params.duplicate_threshold, progress)
    return exact_neighbors(
        queries,
        database,
        params.k,
        params.duplicate_threshold,
        params.batch_size,
        resolve_device(params.device),
        progress,
    )


def approximate_recall(
    params: NeighborsParams, queries: np.ndarray, database: np.ndarray, found: Neighbors
) -> dict[str, Any]:
    """recall@k of the approximate neighbours against exact ones, on a seeded sample of the queries."""
    sample = np.sort(
        np.random.default_rng(0).choice(len(queries), min(len(queries), params.recall_queries), replace=False)
    )
    exact = exact_neighbors(
        queries[sample],
        database,
        params.k,
        params.duplicate_threshold,
        params.batch_size,
        resolve_device(params.device),
    )
    return {
        "recall_at_k": round(recall_at_k(found.indices[sample], exact.indices), 4),
        "recall_queries": len(sample),
    }
