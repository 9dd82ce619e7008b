"""Nearest neighbours of text, images or raw vectors in any collection: what later stages call.

Queries are embedded with the same CLIP the collection was built with (checked), L2-normalised,
and answered by the store; each hit carries the image id, score, payload and (on request) vector.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from rdm.embedding.encode import to_uint8
from rdm.embedding.model import Clip
from rdm.errors import UserError
from rdm.retrieval.store import Hit, VectorStore


class Retriever:
    def __init__(self, store: VectorStore, clip: Clip) -> None:
        self.store = store
        self.clip = clip

    def by_vectors(
        self, vectors: np.ndarray, collection: str, k: int, with_vectors: bool = False
    ) -> list[list[Hit]]:
        """(B, D) vectors (normalised here) -> k hits each, most similar first."""
        info = self.store.require(collection)
        self.store.check(info, self.clip.card)
        vectors = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True).clip(min=1e-12)
        return self.store.query(collection, vectors, k, with_vectors)

    def by_text(
        self, texts: Sequence[str], collection: str, k: int, with_vectors: bool = False
    ) -> list[list[Hit]]:
        return self.by_vectors(self.embed_texts(texts), collection, k, with_vectors)

    def by_images(
        self, images: Sequence[Image.Image | Path], collection: str, k: int, with_vectors: bool = False
    ) -> list[list[Hit]]:
        return self.by_vectors(self.embed_images(images), collection, k, with_vectors)

    def embed_texts(self, texts: Sequence[str], normalize: bool = True) -> np.ndarray:
        """(B,) texts -> (B, D) CLIP text vectors, L2-normalised unless `normalize` is False."""
        return self.clip.encode_text(list(texts), normalize).cpu().numpy()

    def embed_images(self, images: Sequence[Image.Image | Path], normalize: bool = True) -> np.ndarray:
        """(B,) images or image files -> (B, D) CLIP image vectors (L2-normalised unless `normalize`
        is False), the images made square as the collections' were (the CLIP folder's `resize`), not
        by open_clip's transform."""
        import torch

        size, resize = self.clip.image_size, self.clip.card.resize
        batch = torch.stack([to_uint8(_rgb(image), size, resize) for image in images])
        return self.clip.encode_images(self.clip.normalize(batch), normalize).cpu().numpy()


def _rgb(image: Image.Image | Path) -> Image.Image:
    if isinstance(image, Path):
        if not image.is_file():
            raise UserError(f"{image}: no such image file")
        with Image.open(image) as opened:
            return opened.convert("RGB")
    return image.convert("RGB")
