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

from rdm.diffusion.context import QueryMode, sampling_context
from rdm.errors import UserError

if TYPE_CHECKING:
    from PIL import Image

    from rdm.retrieval.search import Retriever
    from rdm.retrieval.store import Hit


@dataclass(frozen=True)
class Conditioning:
    context: torch.Tensor
    """(B, T, D): each query's vector, then its neighbours', most similar first (`with_neighbors`,
    T = 1+k), the neighbours alone (T = k) or the query alone (T = 1)."""
    hits: list[list[Hit]]
    """The neighbours of each query: image ids, scores and payloads (style, caption, path)."""


class ContextBuilder:
    """Turns queries into model contexts by retrieving their k nearest neighbours in a collection.
    `query` (`sample.query`) says which tokens the context holds; a call may override it."""

    def __init__(self, retriever: Retriever, k: int, query: QueryMode = "with_neighbors") -> None:
        self.retriever = retriever
        self.k = k
        self.query = query

    def for_texts(
        self, texts: Sequence[str], collection: str, query: QueryMode | None = None
    ) -> Conditioning:
        return self.for_vectors(self.retriever.embed_texts(texts), collection, query)

    def for_images(
        self, images: Sequence[Image.Image | Path], collection: str, query: QueryMode | None = None
    ) -> Conditioning:
        return self.for_vectors(self.retriever.embed_images(images), collection, query)

    def for_vectors(
        self, queries: np.ndarray, collection: str | None, query: QueryMode | None = None
    ) -> Conditioning:
        """(B, D) query vectors -> their contexts in `collection` (none needed for `query_only`)."""
        mode = query or self.query
        vectors = torch.from_numpy(np.asarray(queries, dtype=np.float32))  # (B, D)
        if mode == "query_only" or self.k == 0:
            if mode == "neighbors_only":
                raise UserError("sample.query neighbors_only needs k >= 1 neighbours; raise sample.k (or -k)")
            if collection is not None:
                self.retriever.store.require(collection)
            no_neighbors = torch.empty(len(vectors), 0, vectors.shape[1])
            return Conditioning(sampling_context(vectors, no_neighbors, "query_only"), [[] for _ in vectors])
        if collection is None:
            raise UserError(f"sample.query {mode} retrieves neighbours: name a collection")
        hits = self.retriever.by_vectors(queries, collection, self.k, with_vectors=True)
        found = min(len(row) for row in hits)
        if found < self.k:
            raise UserError(
                f"collection {collection!r} returned {found} neighbours but k is {self.k}: it holds too few "
                "images; lower sample.k (or -k) or add images to the collection"
            )
        rows = [np.stack([np.asarray(hit.vector) for hit in row]) for row in hits]  # asked with vectors
        neighbors = torch.from_numpy(np.stack(rows).astype(np.float32))  # (B, k, D)
        return Conditioning(sampling_context(vectors, neighbors, mode), hits)
