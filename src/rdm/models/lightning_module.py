"""The retrieval-augmented diffusion model as a LightningModule: the UNet, the loss and the optimiser.
The UNet itself knows nothing of Lightning (`rdm.models.unet`); the noise schedule, the samplers, the
context and the guided loop are the diffusion core's (`rdm.diffusion`).

A batch holds, per training image, its latent (the autoencoder's posterior mode, both flips: what the
decoder decodes) and the CLIP embeddings of its k nearest neighbours in D_train, the whole context.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F

from rdm.config import UNetParams
from rdm.diffusion.context import drop_context, neighbor_context, random_k
from rdm.diffusion.guidance import denoise, seeded_noise
from rdm.diffusion.noise_schedule import TRAIN_TIMESTEPS, noise_schedule
from rdm.diffusion.samplers import ddim
from rdm.models import unet as unet_builder


def min_snr_weights(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Per-example loss weights (B,) of Min-SNR-gamma for epsilon prediction: min(SNR, gamma) / SNR,
    so the nearly clean timesteps, whose noise is easy to guess, stop dominating the gradient."""
    alpha_bar = alphas_cumprod[timesteps]
    snr = alpha_bar / (1 - alpha_bar)
    return snr.clamp(max=gamma) / snr


def offset_noise(latents: torch.Tensor, offset: float) -> torch.Tensor:
    """Training noise like `latents` (B, C, h, w): standard normal, plus a constant per image and channel
    of std `offset` (Guttenberg's offset noise), so that the noise, not only the image, moves the mean."""
    noise = torch.randn_like(latents)
    if offset:
        noise = noise + offset * torch.randn(*latents.shape[:2], 1, 1, device=latents.device)
    return noise


class RdmLightningModule(L.LightningModule):
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
        lr_schedule: str = "constant",
        max_steps: int | None = None,
        weight_decay: float = 0.01,
        k_min: int | None = None,
        min_snr_gamma: float | None = None,
        noise_offset: float = 0.0,
    ) -> None:
        super().__init__()
        # plain values only, so checkpoints load with torch's safe (weights-only) unpickler; not to the
        # logger: the run gets the whole config once, when new (stages.train.open_run), and Lightning
        # would log these again on a resume, where MLflow refuses a changed value (max_steps)
        self.save_hyperparameters(logger=False)
        channels, size, _ = latent_shape
        self.unet = unet_builder.build(UNetParams(**unet), channels, size, context_dim)
        self.noise_schedule = noise_schedule()
        self.register_buffer("alphas_cumprod", self.noise_schedule.alphas_cumprod.clone(), persistent=False)
        self.flops_per_batch: int | None = None
        """Set by whoever measured it (benchmarks/train.py); Lightning's ThroughputMonitor then logs MFU."""

    def latents(self, batch: dict[str, torch.Tensor], flip: torch.Tensor | None = None) -> torch.Tensor:
        """Each image's latent, scaled to unit variance: (B, C, h, w); mirrored where `flip` is true."""
        latent = batch["latent"]
        if flip is not None:
            latent = torch.where(flip[:, None, None, None], batch["latent_flipped"], latent)
        return latent * self.hparams["scale_factor"]

    def loss(
        self,
        latents: torch.Tensor,
        context: torch.Tensor,
        timesteps: torch.Tensor,
        noise: torch.Tensor,
        reduce: bool = True,
    ) -> torch.Tensor:
        """L2 between the true and the predicted noise at the given timesteps (Min-SNR weighted if set);
        per example (B,) unless `reduce`."""
        alphas_cumprod: torch.Tensor = self.alphas_cumprod  # type: ignore[assignment]
        alpha_bar = alphas_cumprod[timesteps].to(latents.dtype)[:, None, None, None]
        noisy = alpha_bar.sqrt() * latents + (1 - alpha_bar).sqrt() * noise  # q(x_t | x_0)
        predicted = self.unet(noisy, timesteps, encoder_hidden_states=context).sample
        per_example = F.mse_loss(predicted.float(), noise.float(), reduction="none").mean((1, 2, 3))
        if self.hparams["min_snr_gamma"] is not None:
            per_example = per_example * min_snr_weights(
                alphas_cumprod, timesteps, self.hparams["min_snr_gamma"]
            )
        return per_example.mean() if reduce else per_example

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        size = batch["latent"].shape[0]
        flip = torch.rand(size, device=self.device) < 0.5 if self.hparams["flip"] else None
        latents = self.latents(batch, flip)
        neighbors = batch["neighbors"]  # (B, k, D)
        if self.hparams["k_min"] is not None:
            neighbors = random_k(neighbors, self.hparams["k_min"])
        context, _ = drop_context(neighbor_context(neighbors), self.hparams["p_uncond"])
        timesteps = torch.randint(0, TRAIN_TIMESTEPS, (size,), device=self.device)
        noise = offset_noise(latents, self.hparams["noise_offset"])
        loss = self.loss(latents, context, timesteps, noise)
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        """The loss with each image's own neighbours and with another image's: the gap is how much the
        model reads its context. The same noise and timesteps every time, so curves show the model."""
        size = batch["latent"].shape[0]
        generator = torch.Generator().manual_seed(batch_idx)
        latents = self.latents(batch)
        timesteps = torch.linspace(0, TRAIN_TIMESTEPS - 1, size).long().to(self.device)
        noise = torch.randn(latents.shape, generator=generator).to(self.device)
        context = neighbor_context(batch["neighbors"])
        shuffled = context.roll(1, dims=0)  # (B, k, D): the previous image's neighbours
        loss = self.loss(latents, context, timesteps, noise)
        self.log("val/loss", loss, prog_bar=True, batch_size=size, sync_dist=True)
        if size > 1:
            wrong = self.loss(latents, shuffled, timesteps, noise)
            self.log("val/loss_shuffled_context", wrong, batch_size=size, sync_dist=True)

    def sample(
        self, context: torch.Tensor, steps: int = 50, guidance_scale: float = 5.0, seed: int = 0
    ) -> torch.Tensor:
        """Scaled latents (B, C, h, w) for contexts (B, T, D), by DDIM with guidance; image i from
        seed + i."""
        noise = seeded_noise(tuple(self.hparams["latent_shape"]), [seed + i for i in range(len(context))])
        return denoise(self.unet, ddim(self.noise_schedule.config), context, noise, steps, guidance_scale)

    def configure_optimizers(self) -> Any:
        from diffusers.optimization import get_scheduler

        # fused: one kernel for all parameters (on 2 CPU cores 5 ms a step instead of 21)
        optimizer = torch.optim.AdamW(
            self.unet.parameters(),
            lr=self.hparams["lr"],
            weight_decay=self.hparams["weight_decay"],
            fused=True,
        )
        # constant: the reference's LambdaLinearScheduler (a linear warm-up, then the base rate)
        lr_scheduler = get_scheduler(
            {"constant": "constant_with_warmup", "cosine": "cosine"}[self.hparams["lr_schedule"]],
            optimizer,
            num_warmup_steps=self.hparams["warmup_steps"],
            num_training_steps=self.hparams["max_steps"],
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": lr_scheduler, "interval": "step", "name": "train/lr"},
        }
