"""What the diffusion model trains on: per training image, its latent (the autoencoder's posterior mode,
both flips) and its D_train neighbours' CLIP embeddings, all held as tensors in memory (small per
image: a 256 px image at f=4 is a 3x64x64 latent) and served by a Lightning DataModule."""

from __future__ import annotations

from dataclasses import dataclass

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

FIELDS = ("latent", "latent_flipped", "neighbors")


@dataclass(frozen=True)
class TrainingTensors:
    """Row i of every tensor belongs to image `ids[i]`."""

    ids: list[str]
    latent: torch.Tensor  # (N, C, h, w) posterior mode of the image, unscaled
    latent_flipped: torch.Tensor  # (N, C, h, w) the same for the mirrored image
    neighbors: torch.Tensor  # (N, k, D) its k nearest D_train embeddings, best first

    def __post_init__(self) -> None:
        sizes = {name: len(getattr(self, name)) for name in FIELDS}
        if set(sizes.values()) != {len(self.ids)}:
            raise ValueError(
                f"training tensors disagree on the number of images: {sizes}, ids {len(self.ids)}"
            )

    def subset(self, index: torch.Tensor) -> TrainingTensors:
        return TrainingTensors(
            [self.ids[i] for i in index.tolist()], *(getattr(self, name)[index] for name in FIELDS)
        )


class TensorRows(Dataset[dict[str, torch.Tensor]]):
    def __init__(self, tensors: TrainingTensors) -> None:
        self.tensors = tensors

    def __len__(self) -> int:
        return len(self.tensors.ids)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {name: getattr(self.tensors, name)[index] for name in FIELDS}


class RetrievalDataModule(L.LightningDataModule):
    """Training rows, with `val_images` of them (a seeded choice) kept for validation and sample grids."""

    def __init__(
        self, tensors: TrainingTensors, batch_size: int, val_images: int, workers: int = 0, seed: int = 0
    ) -> None:
        super().__init__()
        if val_images >= len(tensors.ids):
            raise ValueError(
                f"train.val_images ({val_images}) leaves no training images out of {len(tensors.ids)}"
            )
        order = torch.randperm(len(tensors.ids), generator=torch.Generator().manual_seed(seed))
        self.val = tensors.subset(order[:val_images].sort().values)
        self.train = tensors.subset(order[val_images:].sort().values)
        self.batch_size = batch_size
        self.workers = workers

    def train_dataloader(self) -> DataLoader[dict[str, torch.Tensor]]:
        return DataLoader(
            TensorRows(self.train),
            batch_size=min(self.batch_size, len(self.train.ids)),
            shuffle=True,
            drop_last=True,
            num_workers=self.workers,
            persistent_workers=self.workers > 0,
        )

    def val_dataloader(self) -> DataLoader[dict[str, torch.Tensor]]:
        return DataLoader(TensorRows(self.val), batch_size=self.batch_size, num_workers=0)
