"""Contexts for sampling: a query (text or image) and its k nearest neighbours in a chosen collection.

Swapping the collection is the whole of stylization: the same model, query and k, but the neighbour
tokens now come from one style's images (the paper's database swap; no retraining).

Tokens are unit vectors, except for a model trained on CLIP's raw vectors (the RDM repo's ImageNet
model, card `context_vectors: raw`): each token then gets back its own length, the query's as embedded
and each neighbour's as its collection recorded it (`norm`, kept by `rdm collections import`).
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

    def __init__(
        self, retriever: Retriever, k: int, query: QueryMode = "with_neighbors", raw: bool = False
    ) -> None:
        self.retriever = retriever
        self.k = k
        self.query = query
        self.raw = raw
        """Tokens keep their raw lengths (a model with `context_vectors: raw`)."""

    def for_texts(
        self, texts: Sequence[str], collection: str, query: QueryMode | None = None
    ) -> Conditioning:
        return self.for_vectors(self.retriever.embed_texts(texts, normalize=not self.raw), collection, query)

    def for_images(
        self, images: Sequence[Image.Image | Path], collection: str, query: QueryMode | None = None
    ) -> Conditioning:
        return self.for_vectors(
            self.retriever.embed_images(images, normalize=not self.raw), collection, query
        )

    def for_vectors(
        self, queries: np.ndarray, collection: str | None, query: QueryMode | None = None
    ) -> Conditioning:
        """(B, D) query vectors -> their contexts in `collection` (none needed for `query_only`). For
        a raw-context model the queries' lengths are theirs: give them as embedded."""
        mode = query or self.query
        vectors = torch.from_numpy(np.asarray(queries, dtype=np.float32))  # (B, D)
        if mode == "query_only" or self.k == 0:
            if mode == "neighbors_only":
                raise UserError("sample.query neighbors_only needs k >= 1 neighbours; raise sample.k (or -k)")
            if collection is not None:
                self.retriever.store.require(collection)
            no_neighbors = torch.empty(len(vectors), 0, vectors.shape[1])
            context = sampling_context(vectors, no_neighbors, "query_only")
            return Conditioning(
                self._lengths(context, vectors, [[] for _ in vectors], "query_only"), [[] for _ in vectors]
            )
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
        return Conditioning(
            self._lengths(sampling_context(vectors, neighbors, mode), vectors, hits, mode), hits
        )

    def _lengths(
        self, context: torch.Tensor, queries: torch.Tensor, hits: list[list[Hit]], mode: QueryMode
    ) -> torch.Tensor:
        """Unit-token `context` (B, T, D), or for a raw-context model each token times its raw length."""
        if not self.raw:
            return context
        if any("norm" not in hit.payload for row in hits for hit in row):
            raise UserError(
                "this model reads raw CLIP vectors, but the collection's points record no raw length "
                "(`norm`): use collections imported from their .npz databases (`rdm collections import`)"
            )
        query = queries.norm(dim=1, keepdim=True)  # (B, 1)
        neighbors = torch.tensor([[float(hit.payload["norm"]) for hit in row] for row in hits])  # (B, k)
        neighbors = neighbors.reshape(len(hits), -1)
        lengths = {"with_neighbors": [query, neighbors], "neighbors_only": [neighbors], "query_only": [query]}
        return context * torch.cat(lengths[mode], dim=1)[..., None]
