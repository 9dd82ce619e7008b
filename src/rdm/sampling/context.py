"""Contexts for sampling: a query (text or image) and its k nearest neighbours in a chosen collection.

Swapping the collection is the whole of stylization: the same model, query and k, but the neighbour
tokens now come from one style's images (the paper's database swap; no retraining).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from rdm.errors import UserError

if TYPE_CHECKING:
    from PIL import Image

    from rdm.retrieval.search import Retriever
    from rdm.retrieval.store import Hit


def build_context(query: torch.Tensor, neighbors: torch.Tensor) -> torch.Tensor:
    """(B, D) query and (B, k, D) neighbours -> the L2-normalised context (B, 1+k, D), query first."""
    return F.normalize(torch.cat([query[:, None], neighbors], dim=1), dim=-1)


@dataclass(frozen=True)
class Conditioning:
    context: torch.Tensor
    """(B, 1+k, D): each query's vector, then its neighbours', most similar first."""
    hits: list[list[Hit]]
    """The neighbours of each query: image ids, scores and payloads (style, caption, path)."""


class ContextBuilder:
    """Turns queries into model contexts by retrieving their k nearest neighbours in a collection."""

    def __init__(self, retriever: Retriever, k: int) -> None:
        self.retriever = retriever
        self.k = k

    def for_texts(self, texts: Sequence[str], collection: str) -> Conditioning:
        return self.for_vectors(self.retriever.embed_texts(texts), collection)

    def for_images(self, images: Sequence[Image.Image | Path], collection: str) -> Conditioning:
        return self.for_vectors(self.retriever.embed_images(images), collection)

    def for_vectors(self, queries: np.ndarray, collection: str) -> Conditioning:
        """(B, D) query vectors -> their contexts in `collection`."""
        query = torch.from_numpy(np.asarray(queries, dtype=np.float32))
        if self.k == 0:
            self.retriever.store.require(collection)
            no_neighbors = torch.empty(len(query), 0, query.shape[1])
            return Conditioning(build_context(query, no_neighbors), [[] for _ in query])
        hits = self.retriever.by_vectors(queries, collection, self.k, with_vectors=True)
        found = min(len(row) for row in hits)
        if found < self.k:
            raise UserError(
                f"collection {collection!r} returned {found} neighbours but k is {self.k}: it holds too few "
                "images; lower sample.k (or -k) or add images to the collection"
            )
        vectors = [np.stack([np.asarray(hit.vector) for hit in row]) for row in hits]  # asked with vectors
        neighbors = torch.from_numpy(np.stack(vectors).astype(np.float32))
        return Conditioning(build_context(query, neighbors), hits)
