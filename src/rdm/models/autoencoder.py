"""The KL autoencoder (diffusers `AutoencoderKL`) whose latent space the diffusion model works in.

Either a pretrained one is loaded from a local diffusers folder (Stable Diffusion's VAE, for one), or
a small one is trained here with the reference's loss minus its perceptual and adversarial terms
(no LPIPS or discriminator weights can be downloaded): L1 reconstruction plus a tiny KL weight. It
reconstructs from the posterior mean: decoding samples of it, the demo-sized model learned shapes
but lost colour within its few hundred steps.
The latent scale factor is always measured on the data (LDM's `scale_by_std`: 1 / std of latents),
so the diffusion model sees latents of unit variance whatever the autoencoder.
"""

from __future__ import annotations

import math
from typing import Any, TypeAlias

import torch
from tqdm import tqdm

from rdm.config import AutoencoderParams
from rdm.errors import UserError

AutoencoderKL: TypeAlias = Any
"""A diffusers AutoencoderKL, typed loosely: diffusers' lazy modules hide torch's methods from mypy."""


NORM_GROUPS = 4
"""GroupNorm groups: few, so each group mixes channels; one channel per group would normalise away
every image's colour (measured: reconstructions turned brown)."""


class AutoencoderError(UserError):
    pass


def to_pixels(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) in [0, 255] -> float (B, 3, H, W) in [-1, 1], the autoencoder's input."""
    return images.float().div(127.5).sub(1.0)


def to_uint8(pixels: torch.Tensor) -> torch.Tensor:
    """float (B, 3, H, W) in [-1, 1] -> uint8 (B, 3, H, W)."""
    return pixels.clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)


def build(params: AutoencoderParams) -> AutoencoderKL:
    """A fresh AutoencoderKL of the configured size, without attention (at demo size it costs more
    than it gives)."""
    from diffusers import AutoencoderKL as Autoencoder

    levels = len(params.block_out_channels)
    return Autoencoder(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=tuple(params.block_out_channels),
        layers_per_block=params.layers_per_block,
        latent_channels=params.latent_channels,
        norm_num_groups=NORM_GROUPS,
        sample_size=params.image_size,
        mid_block_add_attention=False,
    )


def load_pretrained(folder: str) -> AutoencoderKL:
    """A diffusers AutoencoderKL saved with `save_pretrained` (config.json + weights)."""
    from pathlib import Path

    from diffusers import AutoencoderKL as Autoencoder

    path = Path(folder)
    if not (path / "config.json").is_file():
        raise AutoencoderError(
            f"autoencoder.pretrained: {folder} is not a diffusers AutoencoderKL folder (no config.json); "
            "give the folder holding config.json and diffusion_pytorch_model.safetensors (for Stable "
            "Diffusion, its vae/ subfolder), or null to train one"
        )
    try:
        return Autoencoder.from_pretrained(path, low_cpu_mem_usage=False)
    except (OSError, ValueError, RuntimeError) as exc:
        raise AutoencoderError(f"autoencoder.pretrained: cannot load {folder}: {exc}") from None


def downsampling_factor(vae: AutoencoderKL) -> int:
    return int(2 ** (len(vae.config.block_out_channels) - 1))


def train(
    vae: AutoencoderKL,
    images: torch.Tensor,
    params: AutoencoderParams,
    device: torch.device,
    progress: bool = True,
) -> list[float]:
    """Train in place on uint8 images (N, 3, H, W); returns the loss of every step."""
    generator = torch.Generator().manual_seed(params.seed)
    vae.to(device).train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=params.lr, weight_decay=0.0)
    warmup = max(1, params.steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / params.steps)),
    )
    batch = min(params.batch_size, len(images))
    history: list[float] = []
    order = torch.randperm(len(images), generator=generator)
    cursor = 0
    with tqdm(total=params.steps, desc="train autoencoder", unit="step", disable=not progress) as bar:
        for _ in range(params.steps):
            if cursor + batch > len(images):
                order, cursor = torch.randperm(len(images), generator=generator), 0
            index = order[cursor : cursor + batch]
            cursor += batch
            pixels = to_pixels(images[index]).to(device)
            flip = torch.rand(len(index), generator=generator) < 0.5
            pixels[flip] = pixels[flip].flip(-1)
            posterior = vae.encode(pixels).latent_dist
            reconstruction = vae.decode(posterior.mean).sample
            kl = posterior.kl().mean() / pixels[0].numel()
            loss = (reconstruction - pixels).abs().mean() + params.kl_weight * kl
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            history.append(loss.item())
            bar.set_postfix(loss=f"{history[-1]:.4f}")
            bar.update()
    vae.eval()
    return history


@torch.inference_mode()
def encode(
    vae: AutoencoderKL, images: torch.Tensor, device: torch.device, batch_size: int = 64
) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images (N, 3, H, W) -> the posterior's (mean, std), each (N, C, H/f, W/f), unscaled."""
    means, stds = [], []
    for start in range(0, len(images), batch_size):
        dist = vae.encode(to_pixels(images[start : start + batch_size]).to(device)).latent_dist
        means.append(dist.mean.float().cpu())
        stds.append(dist.std.float().cpu())
    return torch.cat(means), torch.cat(stds)


@torch.inference_mode()
def decode(vae: AutoencoderKL, latents: torch.Tensor, scale_factor: float) -> torch.Tensor:
    """Scaled latents (B, C, h, w) -> uint8 images (B, 3, H, W)."""
    return to_uint8(vae.decode(latents.to(vae.device, vae.dtype) / scale_factor).sample.float()).cpu()


def scale_factor(mean: torch.Tensor, std: torch.Tensor, seed: int = 0) -> float:
    """1 / std of sampled latents, so that scaled latents have unit variance (LDM's scale_by_std)."""
    generator = torch.Generator().manual_seed(seed)
    sample = mean + std * torch.randn(mean.shape, generator=generator)
    return float(1.0 / sample.std())


@torch.inference_mode()
def psnr(vae: AutoencoderKL, images: torch.Tensor, device: torch.device, batch_size: int = 64) -> float:
    """Mean reconstruction PSNR (dB, on 8-bit pixels) of the posterior mean, decoded."""
    values = []
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]
        latents = vae.encode(to_pixels(batch).to(device)).latent_dist.mean
        restored = to_uint8(vae.decode(latents).sample.float()).cpu()
        mse = (restored.float() - batch.float()).pow(2).flatten(1).mean(1).clamp_min(1e-10)
        values.append(10 * torch.log10(255.0**2 / mse))
    return float(torch.cat(values).mean())
