"""`neighbors` stage: for every training image, its k nearest neighbours in D_train
(`neighbors.out`, laid out in `rdm.artifacts.neighbors`), exactly or through an IVF-PQ index
(`neighbors.method`); an approximate run also reports its recall@k against exact on a sample."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rdm.artifacts.clip import ClipCard, read_card
from rdm.artifacts.embeddings import VectorChunks
from rdm.artifacts.manifest import read_manifest
from rdm.artifacts.neighbors import NeighborsMeta, write_neighbors
from rdm.config import EmbedParams, NeighborsParams
from rdm.devices import resolve_device
from rdm.files import write_json
from rdm.retrieval.approximate import IvfPq, exact_top_k, ivfpq_neighbors, recall_at_k
from rdm.retrieval.neighbors import Neighbors, exact_neighbors


def run(
    params: NeighborsParams, embed: EmbedParams, clip_dir: Path, prepared: Path, progress: bool = True
) -> dict[str, Any]:
    card = read_card(clip_dir)
    train = read_manifest(prepared / "train.parquet")
    d_train = read_manifest(prepared / "d_train.parquet")
    Path(params.out).parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".vectors-", dir=Path(params.out).parent) as scratch:
        queries, database = _vectors(params, embed, card, train, d_train, Path(scratch))
        started = time.perf_counter()
        found = find_neighbors(params, queries, database, progress)
        seconds = time.perf_counter() - started
        recall = approximate_recall(params, queries, database, found) if params.method == "ivfpq" else {}
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
    report |= recall
    write_json(Path(params.metrics), report)
    print(
        f"neighbors: {params.k} neighbours for {len(train)} training images from {len(d_train)} in D_train "
        f"in {seconds:.2f} s, {params.method} ({found.dropped} near-duplicates dropped"
        + (f"; recall@{params.k} {report['recall_at_k']}" if "recall_at_k" in report else "")
        + f") -> {params.out}"
    )
    return report


def _vectors(
    params: NeighborsParams,
    embed: EmbedParams,
    card: ClipCard,
    train: pd.DataFrame,
    d_train: pd.DataFrame,
    scratch: Path,
) -> tuple[np.ndarray, np.ndarray]:
    """The training images' and D_train's vectors, in manifest order: in memory for exact search
    (all of D_train is scored anyway), memory-mapped files in `scratch` for IVF-PQ."""
    train_vectors = VectorChunks(Path(embed.out) / "train", card)
    d_train_vectors = VectorChunks(Path(embed.out) / "d_train", card)
    if params.method == "ivfpq":
        return (
            train_vectors.vectors_to_file(list(train["id"]), scratch / "train.npy"),
            d_train_vectors.vectors_to_file(list(d_train["id"]), scratch / "d_train.npy"),
        )
    return train_vectors.vectors_for(list(train["id"])), d_train_vectors.vectors_for(list(d_train["id"]))


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
    exact = exact_top_k(queries[sample], database, params.k, params.duplicate_threshold)
    return {
        "recall_at_k": round(recall_at_k(found.indices[sample], exact), 4),
        "recall_queries": len(sample),
    }
