"""Exact k-nearest neighbours by batched matrix products: the training context of every image.

For L2-normalised vectors cosine similarity is a dot product, so a (B, D) x (D, N) product per
batch of queries scores the whole database exactly; it beats an approximate index here because
every database vector is needed anyway. Neighbours at or above `duplicate_threshold` are
near-duplicates of the query and are skipped, so the model learns to compose, not to copy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm


@dataclass(frozen=True)
class Neighbors:
    indices: np.ndarray  # (Q, k) int64 rows of the database
    scores: np.ndarray  # (Q, k) float32 cosine similarities, best first
    dropped: int  # near-duplicates skipped over all queries


def exact_neighbors(
    queries: np.ndarray,
    database: np.ndarray,
    k: int,
    duplicate_threshold: float = 1.01,
    batch_size: int = 1024,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> Neighbors:
    """queries (Q, D), database (N, D), both L2-normalised -> the k best per query below the threshold."""
    if len(database) < k:
        raise ValueError(f"the database holds {len(database)} vectors, fewer than k={k}")
    db = torch.from_numpy(np.ascontiguousarray(database, dtype=np.float32)).to(device)  # (N, D)
    indices, scores, dropped = [], [], 0
    for start in tqdm(
        range(0, len(queries), batch_size), desc="neighbors", unit="batch", disable=not progress
    ):
        q = torch.from_numpy(np.ascontiguousarray(queries[start : start + batch_size], dtype=np.float32)).to(
            device
        )
        sims = q @ db.T  # (B, N)
        duplicates = sims >= duplicate_threshold
        dropped += int(duplicates.sum())
        sims = sims.masked_fill(duplicates, float("-inf"))
        top = torch.topk(sims, k, dim=1)  # (B, k), sorted
        if torch.isinf(top.values).any():
            raise ValueError(
                "fewer than k neighbours below duplicate_threshold for some query; lower k or "
                "raise the threshold"
            )
        indices.append(top.indices.cpu().numpy())
        scores.append(top.values.cpu().numpy())
    return Neighbors(np.concatenate(indices), np.concatenate(scores).astype(np.float32), dropped)
