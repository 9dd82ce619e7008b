"""Batched image encoding: a DataLoader whose workers decode and resize while the model encodes."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from rdm.embedding.model import Clip


class ImageFiles(Dataset[torch.Tensor]):
    """Images by path, each through the CLIP transform: (3, H, W) float tensors."""

    def __init__(self, paths: Sequence[Path], transform: Callable[[Image.Image], torch.Tensor]) -> None:
        self.paths = list(paths)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        with Image.open(self.paths[index]) as image:
            return self.transform(image.convert("RGB"))


def image_batches(
    paths: Sequence[Path], transform: Any, batch_size: int, workers: int, pin: bool = False
) -> DataLoader[torch.Tensor]:
    return DataLoader(
        ImageFiles(paths, transform),
        batch_size=batch_size,
        num_workers=workers,
        pin_memory=pin,
        persistent_workers=False,
        prefetch_factor=4 if workers else None,
    )


def encode_paths(
    clip: Clip,
    paths: Sequence[Path],
    batch_size: int,
    workers: int,
    desc: str = "embed",
    progress: bool = True,
) -> Iterator[np.ndarray]:
    """Yield (B, D) float32 embeddings batch by batch, in the order of `paths`."""
    loader = image_batches(paths, clip.preprocess, batch_size, workers, pin=clip.device.type == "cuda")
    with tqdm(total=len(paths), desc=desc, unit="img", disable=not progress) as bar:
        for pixels in loader:
            yield clip.encode_images(pixels).cpu().numpy()
            bar.update(len(pixels))
