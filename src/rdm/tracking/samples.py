"""Sample grids during training: what the model draws for the contexts of validation images, beside
those images, logged to MLflow as a stepped image series and written to a PNG people can open."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from PIL import Image


def image_grid(rows: list[torch.Tensor], upscale: int = 2) -> Image.Image:
    """uint8 rows of images, each (n, 3, H, W) -> one PIL image with the rows stacked."""
    from torchvision.utils import make_grid

    images = torch.cat(rows)
    grid = make_grid(images, nrow=rows[0].shape[0], padding=2, pad_value=255)  # (3, H', W')
    picture = Image.fromarray(grid.permute(1, 2, 0).numpy())
    return picture.resize((picture.width * upscale, picture.height * upscale), Image.Resampling.NEAREST)


class SampleGrid(L.Callback):
    """At every validation (so with the EMA weights swapped in), sample the contexts of a few
    validation images; top row: those images through the autoencoder, bottom row: the samples."""

    def __init__(
        self,
        vae: Any,
        references: torch.Tensor,
        contexts: torch.Tensor,
        out: Path,
        steps: int = 25,
        guidance_scale: float = 3.0,
    ) -> None:
        self.vae = vae
        self.references = references  # (n, 3, H, W) uint8
        self.contexts = contexts  # (n, 1+k, D)
        self.out = out
        self.steps = steps
        self.guidance_scale = guidance_scale

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if batch_idx != 0 or trainer.sanity_checking or not trainer.is_global_zero:
            return
        self.draw(trainer, pl_module)

    def draw(self, trainer: L.Trainer, pl_module: Any) -> Image.Image:
        from rdm.models.autoencoder import decode

        latents = pl_module.sample(self.contexts, self.steps, self.guidance_scale, seed=0)
        self.vae.to(pl_module.device)
        samples = decode(self.vae, latents, pl_module.hparams["scale_factor"])
        grid = image_grid([self.references, samples])
        self.out.parent.mkdir(parents=True, exist_ok=True)
        grid.save(self.out)
        logger: Any = trainer.logger
        if logger is not None and getattr(logger, "run_id", None):
            logger.experiment.log_image(logger.run_id, grid, key="samples", step=trainer.global_step)
        return grid
