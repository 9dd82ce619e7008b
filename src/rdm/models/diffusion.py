"""The retrieval-augmented diffusion model as a LightningModule: the UNet, the noise schedule, the
loss and the optimiser. The UNet itself knows nothing of Lightning (`rdm.models.unet`).

A batch holds, per training image, its latent posterior (both flips, from the autoencoder stage), its
own CLIP embedding (the query token) and the CLIP embeddings of its k neighbours in D_train.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F

from rdm.config import UNetParams
from rdm.models import unet as unet_builder
from rdm.sampling.context import build_context
from rdm.sampling.denoise import TRAIN_TIMESTEPS, ddim, denoise, noise_schedule, seeded_noise


def drop_context(
    context: torch.Tensor, p_uncond: float, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero the whole context of a random `p_uncond` share of examples: the null that classifier-free
    guidance samples against. Returns (context, dropped (B,) bool)."""
    dropped = torch.rand(context.shape[0], generator=generator, device=context.device) < p_uncond
    return context.masked_fill(dropped[:, None, None], 0.0), dropped


class RetrievalDiffusion(L.LightningModule):
    """Epsilon-prediction latent diffusion conditioned by cross-attention on retrieved CLIP vectors."""

    def __init__(
        self,
        unet: dict[str, Any],
        latent_shape: tuple[int, int, int],
        context_dim: int,
        scale_factor: float,
        p_uncond: float = 0.1,
        flip: bool = True,
        lr: float = 1e-4,
        warmup_steps: int = 100,
        weight_decay: float = 0.01,
    ) -> None:
        super().__init__()
        # plain values only, so checkpoints load with torch's safe (weights-only) unpickler
        self.save_hyperparameters()
        channels, size, _ = latent_shape
        self.unet = unet_builder.build(UNetParams(**unet), channels, size, context_dim)
        self.schedule = noise_schedule()
        self.register_buffer("alphas_cumprod", self.schedule.alphas_cumprod.clone(), persistent=False)
        self.flops_per_batch: int | None = None
        """Set by whoever measured it (benchmarks/train.py); Lightning's ThroughputMonitor then logs MFU."""

    def latents(self, batch: dict[str, torch.Tensor], flip: torch.Tensor | None = None) -> torch.Tensor:
        """A sample of each image's latent posterior, scaled to unit variance: (B, C, h, w).
        Where `flip` is true the mirrored image's posterior is used."""
        mean, std = batch["mean"], batch["std"]
        if flip is not None:
            pick = flip[:, None, None, None]
            mean = torch.where(pick, batch["mean_flipped"], mean)
            std = torch.where(pick, batch["std_flipped"], std)
        return (mean + std * torch.randn_like(std)) * self.hparams["scale_factor"]

    def loss(
        self, latents: torch.Tensor, context: torch.Tensor, timesteps: torch.Tensor, noise: torch.Tensor
    ) -> torch.Tensor:
        """L2 between the true and the predicted noise at the given timesteps."""
        alphas_cumprod: torch.Tensor = self.alphas_cumprod  # type: ignore[assignment]
        alpha_bar = alphas_cumprod[timesteps].to(latents.dtype)[:, None, None, None]
        noisy = alpha_bar.sqrt() * latents + (1 - alpha_bar).sqrt() * noise  # q(x_t | x_0)
        predicted = self.unet(noisy, timesteps, encoder_hidden_states=context).sample
        return F.mse_loss(predicted.float(), noise.float())

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        size = batch["mean"].shape[0]
        flip = torch.rand(size, device=self.device) < 0.5 if self.hparams["flip"] else None
        latents = self.latents(batch, flip)
        context, _ = drop_context(build_context(batch["query"], batch["neighbors"]), self.hparams["p_uncond"])
        timesteps = torch.randint(0, TRAIN_TIMESTEPS, (size,), device=self.device)
        loss = self.loss(latents, context, timesteps, torch.randn_like(latents))
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        # the same noise and timesteps at every validation, so the curve shows the model, not the draw
        size = batch["mean"].shape[0]
        generator = torch.Generator().manual_seed(batch_idx)
        eps = torch.randn(batch["std"].shape, generator=generator).to(self.device)
        latents = (batch["mean"] + batch["std"] * eps) * self.hparams["scale_factor"]
        timesteps = torch.linspace(0, TRAIN_TIMESTEPS - 1, size).long().to(self.device)
        noise = torch.randn(latents.shape, generator=generator).to(self.device)
        context = build_context(batch["query"], batch["neighbors"])
        loss = self.loss(latents, context, timesteps, noise)
        self.log("val/loss", loss, prog_bar=True, batch_size=size, sync_dist=True)

    def sample(
        self, context: torch.Tensor, steps: int = 50, guidance_scale: float = 5.0, seed: int = 0
    ) -> torch.Tensor:
        """Scaled latents (B, C, h, w) for contexts (B, 1+k, D), by DDIM with guidance; image i from
        seed + i."""
        noise = seeded_noise(tuple(self.hparams["latent_shape"]), [seed + i for i in range(len(context))])
        return denoise(self.unet, ddim(self.schedule.config), context, noise, steps, guidance_scale)

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.AdamW(
            self.unet.parameters(), lr=self.hparams["lr"], weight_decay=self.hparams["weight_decay"]
        )
        warmup = max(1, self.hparams["warmup_steps"])
        # the reference's LambdaLinearScheduler: a linear warm-up, then the constant base rate
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": schedule, "interval": "step", "name": "train/lr"},
        }
