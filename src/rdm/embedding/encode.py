"""Batched image encoding: DataLoader workers decode, resize and crop to uint8; the normalisation
to CLIP's input happens once per batch, vectorised, on the model's device.

Per-image work is kept to what cannot be batched (decode, resize): on a 2-core machine, per-image
tensor transforms cost as much as a small model's forward pass. `to_uint8` reproduces open_clip's
default transform (shortest-side bicubic resize, centre crop) exactly, so vectors match it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from rdm.embedding.model import Clip


def to_uint8(image: Image.Image, size: int) -> torch.Tensor:
    """RGB image -> (3, size, size) uint8: resize the short side to `size` (bicubic), centre crop."""
    image = image.convert("RGB")
    width, height = image.size
    short, long = min(width, height), max(width, height)
    if short != size:
        new_short, new_long = size, int(size * long / short)
        new = (new_short, new_long) if width <= height else (new_long, new_short)
        image = image.resize(new, Image.Resampling.BICUBIC)
    width, height = image.size
    top, left = round((height - size) / 2.0), round((width - size) / 2.0)
    if (width, height) != (size, size):
        image = image.crop((left, top, left + size, top + size))
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)


class ImageFiles(Dataset[torch.Tensor]):
    """Images by path as (3, size, size) uint8 tensors."""

    def __init__(self, paths: Sequence[Path], size: int) -> None:
        self.paths = list(paths)
        self.size = size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        with Image.open(self.paths[index]) as image:
            return to_uint8(image, self.size)


def uint8_batches(
    paths: Sequence[Path], size: int, batch_size: int, workers: int, pin: bool = False
) -> DataLoader[torch.Tensor]:
    return DataLoader(
        ImageFiles(paths, size),
        batch_size=batch_size,
        num_workers=workers,
        pin_memory=pin,
        prefetch_factor=4 if workers else None,
    )


def load_images(paths: Sequence[Path], size: int, workers: int = 0) -> torch.Tensor:
    """All images, decoded and cropped once: (N, 3, size, size) uint8. Small training sets fit in memory."""
    return torch.cat(list(uint8_batches(paths, size, batch_size=256, workers=workers)))


def decode_workers(setting: int | str, device: torch.device) -> int:
    """DataLoader workers for a setting of `embed.workers` (a number, or `auto`)."""
    if setting != "auto":
        return int(setting)
    if device.type == "cpu":
        return 0
    return max(0, min(8, (os.cpu_count() or 1) - 1))


def encode_paths(
    clip: Clip,
    paths: Sequence[Path],
    batch_size: int,
    workers: int | str = "auto",
    desc: str = "embed",
    progress: bool = True,
) -> Iterator[np.ndarray]:
    """Yield (B, D) float32 embeddings batch by batch, in the order of `paths`."""
    count = decode_workers(workers, clip.device)
    loader = uint8_batches(paths, clip.image_size, batch_size, count, pin=clip.device.type == "cuda")
    with tqdm(total=len(paths), desc=desc, unit="img", disable=not progress) as bar:
        for batch in loader:
            yield clip.encode_images(clip.normalize(batch)).cpu().numpy()
            bar.update(len(batch))
