"""The conditioning context the UNet's cross-attention reads: L2-normalised CLIP vectors (B, T, D).

Training, as the reference's `retro_only` models: the k nearest D_train neighbours of the image, and
never the image's own embedding (a model given that learns to copy it and ignore its neighbours).
Sampling, as knn2img: `[query, nn_1 .. nn_k]`, the prompt's (or image's) vector first. Cross-attention
is a set operation, so the extra token and another k are both at home.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F

QueryMode = Literal["with_neighbors", "neighbors_only", "query_only"]
QUERY_MODES: tuple[str, ...] = get_args(QueryMode)


def neighbor_context(neighbors: torch.Tensor) -> torch.Tensor:
    """(B, k, D) neighbour vectors -> the training context (B, k, D), each row unit length."""
    return F.normalize(neighbors, dim=-1)


def sampling_context(
    query: torch.Tensor, neighbors: torch.Tensor, mode: QueryMode = "with_neighbors"
) -> torch.Tensor:
    """(B, D) queries and (B, k, D) their neighbours -> the sampling context, unit rows:
    `with_neighbors` (B, 1+k, D) query first; `neighbors_only` (B, k, D); `query_only` (B, 1, D)."""
    if mode == "with_neighbors":
        return F.normalize(torch.cat([query[:, None], neighbors], dim=1), dim=-1)
    if mode == "neighbors_only":
        return neighbor_context(neighbors)
    if mode == "query_only":
        return F.normalize(query[:, None], dim=-1)
    raise ValueError(f"unknown query mode {mode!r}; use one of {QUERY_MODES}")


def drop_context(
    context: torch.Tensor, p_uncond: float, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero the whole context of a random `p_uncond` share of examples: the null that classifier-free
    guidance samples against. Returns (context, dropped (B,) bool)."""
    dropped = torch.rand(context.shape[0], generator=generator, device=context.device) < p_uncond
    return context.masked_fill(dropped[:, None, None], 0.0), dropped


def random_k(neighbors: torch.Tensor, k_min: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, K, D) -> (B, k, D) with k drawn uniformly from [k_min, K] for the batch: the model meets
    the range of k it will be sampled with. The nearest k are kept (order is irrelevant to attention)."""
    top = neighbors.shape[1]
    k = int(torch.randint(k_min, top + 1, (1,), generator=generator))
    return neighbors[:, :k]
