"""Approximate training neighbours: an IVF-PQ index of D_train (faiss, as autofaiss builds them),
for databases whose exact scoring would take too long.

The index is built from the database in blocks, written to a file and searched memory-mapped, so
that only its compressed codes are paged in; `database` may itself be a `np.memmap`. The candidates
the index returns (`rerank` per neighbour) are scored exactly against their stored vectors before
near-duplicates are dropped and the best k kept: the threshold applies to true cosine similarities,
never to the product-quantised estimate.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from rdm.errors import UserError
from rdm.retrieval.neighbors import Neighbors

if TYPE_CHECKING:
    import faiss

MIN_DATABASE = 10_000
"""Fewer vectors than this train no useful product quantiser (256 centroids per sub-vector)."""


@dataclass(frozen=True)
class IvfPq:
    """The index's shape and search width; `lists` None means 4 x sqrt(N), autofaiss' choice."""

    lists: int | None = None
    code_bytes: int = 64
    nprobe: int = 16
    rerank: int = 16
    train_points: int = 100_000
    block: int = 65_536


def ivfpq_neighbors(
    queries: np.ndarray,
    database: np.ndarray,
    k: int,
    settings: IvfPq,
    duplicate_threshold: float = 1.01,
    progress: bool = False,
) -> Neighbors:
    """queries (Q, D), database (N, D), both L2-normalised -> the k best per query below the
    threshold among the index's candidates."""
    n, dim = database.shape
    if n < MIN_DATABASE:
        raise UserError(
            f"neighbors.method ivfpq: D_train holds {n} vectors, fewer than {MIN_DATABASE}; "
            "use neighbors.method: exact, which is faster at this size anyway"
        )
    if dim % settings.code_bytes:
        raise UserError(
            f"neighbors.code_bytes {settings.code_bytes} does not divide the embedding size {dim}; "
            "pick a divisor (e.g. 32 or 64 for 512 or 768)"
        )
    index = build_index(database, settings, progress)
    return search_index(index, queries, database, k, settings, duplicate_threshold, progress)


def search_index(
    index: faiss.IndexIVFPQ,
    queries: np.ndarray,
    database: np.ndarray,
    k: int,
    settings: IvfPq,
    duplicate_threshold: float = 1.01,
    progress: bool = False,
) -> Neighbors:
    """The k best of `index`'s candidates per query, re-scored against `database`; the index is
    written to a file and searched memory-mapped, as one too large for memory would be."""
    import faiss

    with tempfile.TemporaryDirectory(prefix="rdm-ivfpq-") as folder:
        path = Path(folder) / "d_train.faiss"
        faiss.write_index(index, str(path))
        mapped = faiss.read_index(str(path), faiss.IO_FLAG_MMAP)
        faiss.extract_index_ivf(mapped).nprobe = settings.nprobe
        return _search(mapped, queries, database, k, settings, duplicate_threshold, progress)


def build_index(database: np.ndarray, settings: IvfPq, progress: bool) -> faiss.IndexIVFPQ:
    """The trained IVF-PQ index (inner product) holding every row of `database`, added in blocks."""
    import faiss

    n, dim = database.shape
    lists = settings.lists or max(1, min(int(4 * math.sqrt(n)), n // 39))
    index = faiss.IndexIVFPQ(
        faiss.IndexFlatIP(dim), dim, lists, settings.code_bytes, 8, faiss.METRIC_INNER_PRODUCT
    )
    # faiss asks for 39 points or more per list; 40 of them, or `train_points` if that is more
    sample = np.sort(
        np.random.default_rng(0).choice(n, min(n, max(settings.train_points, 40 * lists)), replace=False)
    )
    index.train(np.ascontiguousarray(database[sample], dtype=np.float32))
    for start in tqdm(range(0, n, settings.block), desc="ivfpq index", unit="block", disable=not progress):
        index.add(np.ascontiguousarray(database[start : start + settings.block], dtype=np.float32))
    return index


def _search(
    index: faiss.Index,
    queries: np.ndarray,
    database: np.ndarray,
    k: int,
    settings: IvfPq,
    duplicate_threshold: float,
    progress: bool,
) -> Neighbors:
    candidates = k * settings.rerank
    indices, scores, dropped = [], [], 0
    batch = 256  # (B, C, D) candidate vectors: 64 MiB at k 8, rerank 16, 512-d
    for start in tqdm(range(0, len(queries), batch), desc="neighbors", unit="batch", disable=not progress):
        q = np.ascontiguousarray(queries[start : start + batch], dtype=np.float32)  # (B, D)
        _, found = index.search(q, candidates)  # (B, C), -1 where a list ran out
        rows = np.sort(np.unique(found[found >= 0]))
        stored = np.asarray(database[rows], dtype=np.float32)  # (R, D): one sorted read of a memmap
        exact = np.einsum("bd,bcd->bc", q, stored[np.searchsorted(rows, np.maximum(found, 0))])  # (B, C)
        duplicates = (exact >= duplicate_threshold) & (found >= 0)
        dropped += int(duplicates.sum())
        exact[duplicates | (found < 0)] = -np.inf
        best = np.argsort(-exact, axis=1, kind="stable")[:, :k]  # (B, k)
        top = np.take_along_axis(exact, best, axis=1)
        if np.isinf(top).any():
            raise UserError(
                f"neighbors: fewer than k={k} candidates below duplicate_threshold for some query; "
                "raise neighbors.nprobe or neighbors.rerank, or lower k"
            )
        indices.append(np.take_along_axis(found, best, axis=1))
        scores.append(top)
    return Neighbors(
        np.concatenate(indices).astype(np.int64), np.concatenate(scores).astype(np.float32), dropped
    )


def exact_top_k(
    queries: np.ndarray, database: np.ndarray, k: int, duplicate_threshold: float = 1.01, block: int = 65_536
) -> np.ndarray:
    """(Q, k) rows of the exact best per query below the threshold, best first, reading `database`
    a block at a time: the reference recall is measured against, for a memory-mapped D_train."""
    q = np.ascontiguousarray(queries, dtype=np.float32)  # (Q, D)
    best_rows = np.empty((len(q), 0), dtype=np.int64)
    best_scores = np.empty((len(q), 0), dtype=np.float32)
    for start in range(0, len(database), block):
        sims = q @ np.asarray(database[start : start + block], dtype=np.float32).T  # (Q, B)
        sims[sims >= duplicate_threshold] = -np.inf
        rows = np.concatenate(
            [best_rows, np.broadcast_to(np.arange(start, start + sims.shape[1]), sims.shape)], 1
        )
        scores = np.concatenate([best_scores, sims], axis=1)
        keep = (
            np.argpartition(-scores, k - 1, axis=1)[:, :k] if scores.shape[1] > k else np.argsort(-scores, 1)
        )
        best_rows, best_scores = np.take_along_axis(rows, keep, 1), np.take_along_axis(scores, keep, 1)
    order = np.argsort(-best_scores, axis=1, kind="stable")
    return np.take_along_axis(best_rows, order, axis=1)


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    """Share of the exact top-k (Q, k) that the approximate top-k (Q, k) holds, over all queries."""
    hits = sum(len(set(a) & set(e)) for a, e in zip(found.tolist(), exact.tolist(), strict=True))
    return hits / exact.size
