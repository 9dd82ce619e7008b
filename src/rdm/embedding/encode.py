"""Batched image encoding: DataLoader workers decode, resize and crop to uint8; the normalisation
to CLIP's input happens once per batch, vectorised, on the model's device.

Per-image work is kept to what cannot be batched (decode, resize): on a 2-core machine, per-image
tensor transforms cost as much as a small model's forward pass. `to_uint8` makes an image square in
one of two ways, the CLIP folder's `resize` (`clip.resize`): `crop` reproduces open_clip's default
transform (shortest-side bicubic resize, centre crop) exactly, so vectors match it; `squash` reproduces
the preprocessing of CompVis' released retrieval databases (latent-diffusion's knn2img), so new
collections are comparable with them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from rdm.artifacts.clip import ClipError
from rdm.embedding.model import Clip


def to_uint8(image: Image.Image, size: int, resize: str = "crop") -> torch.Tensor:
    """RGB image -> (3, size, size) uint8, made square the `resize` way (`crop` or `squash`)."""
    if resize not in RESIZERS:
        raise ClipError(
            f"clip.resize: {resize!r} is not one of {', '.join(RESIZERS)}; set clip.resize to one"
        )
    return RESIZERS[resize](image.convert("RGB"), size)


def crop_uint8(image: Image.Image, size: int) -> torch.Tensor:
    """Resize the short side to `size` (PIL bicubic), centre crop: open_clip's default transform."""
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
    return _chw(image)


def squash_uint8(image: Image.Image, size: int) -> torch.Tensor:
    """The whole image to size x size, aspect ratio not kept, as knn2img's CLIP embedder does it:
    bicubic, align_corners=True, no antialiasing (kornia's resize is this same interpolate call).

    knn2img resizes pixels in [-1, 1] and never rounds; bicubic weights sum to 1, so resizing 0..255
    is the same up to float error. The result is rounded to the nearest integer and clamped to
    0..255 (bicubic overshoots at sharp edges), so it stays uint8 for the batched `Clip.normalize`:
    within half a level of knn2img's input, except where the overshoot is clipped.
    """
    pixels = _chw(image).float()[None]  # (1, 3, H, W)
    resized = F.interpolate(pixels, size=(size, size), mode="bicubic", align_corners=True, antialias=False)
    return resized[0].round_().clamp_(0, 255).to(torch.uint8)


RESIZERS = {"crop": crop_uint8, "squash": squash_uint8}


def _chw(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)


class ImageFiles(Dataset[torch.Tensor]):
    """Images by path as (3, size, size) uint8 tensors, made square the `resize` way."""

    def __init__(self, paths: Sequence[Path], size: int, resize: str = "crop") -> None:
        self.paths = list(paths)
        self.size = size
        self.resize = resize

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        with Image.open(self.paths[index]) as image:
            return to_uint8(image, self.size, self.resize)


def uint8_batches(
    paths: Sequence[Path], size: int, batch_size: int, workers: int, pin: bool = False, resize: str = "crop"
) -> DataLoader[torch.Tensor]:
    return DataLoader(
        ImageFiles(paths, size, resize),
        batch_size=batch_size,
        num_workers=workers,
        pin_memory=pin,
        prefetch_factor=4 if workers else None,
    )


def load_images(paths: Sequence[Path], size: int, workers: int = 0, resize: str = "crop") -> torch.Tensor:
    """All images, decoded and made square once: (N, 3, size, size) uint8. Small training sets fit in
    memory."""
    return torch.cat(list(uint8_batches(paths, size, batch_size=256, workers=workers, resize=resize)))


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
    """Yield (B, D) float32 embeddings batch by batch, in the order of `paths`, images resized the way
    the CLIP folder says (`clip.card.resize`)."""
    count = decode_workers(workers, clip.device)
    pin = clip.device.type == "cuda"
    loader = uint8_batches(paths, clip.image_size, batch_size, count, pin, clip.card.resize)
    with tqdm(total=len(paths), desc=desc, unit="img", disable=not progress) as bar:
        for batch in loader:
            yield clip.encode_images(clip.normalize(batch)).cpu().numpy()
            bar.update(len(batch))
