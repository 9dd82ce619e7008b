"""The KL autoencoder (diffusers `AutoencoderKL`) whose latent space the diffusion model works in.

Either a pretrained one is loaded from a local diffusers folder (Stable Diffusion's VAE, for one), or
a small one is trained here. The reference's loss has perceptual and adversarial terms to keep texture;
no LPIPS or discriminator weights can be downloaded, so texture is kept by L1 terms on image gradients
and on Fourier magnitudes beside the L1 on pixels, plus a tiny KL weight.

One latent contract: the encoder's posterior mode is the latent. The decoder is trained on it, the
diffusion model learns it, and sampling decodes what the diffusion model draws of it. The latent scale
factor is measured on those latents (LDM's `scale_by_std`: 1 / std), so the diffusion model sees unit
variance whatever the autoencoder.
"""

from __future__ import annotations

from typing import Any, TypeAlias

import torch
from tqdm import tqdm

from rdm.artifacts.autoencoder import AutoencoderError
from rdm.config import AutoencoderParams

AutoencoderKL: TypeAlias = Any
"""A diffusers AutoencoderKL, typed loosely: diffusers' lazy modules hide torch's methods from mypy."""


NORM_GROUPS = 4
"""GroupNorm groups: few, so each group mixes channels; one channel per group would normalise away
every image's colour (measured: reconstructions turned brown)."""


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


def image_gradients(pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 3, H, W) -> horizontal (B, 3, H, W-1) and vertical (B, 3, H-1, W) finite differences."""
    return pixels[..., :, 1:] - pixels[..., :, :-1], pixels[..., 1:, :] - pixels[..., :-1, :]


def reconstruction_loss(
    reconstruction: torch.Tensor, pixels: torch.Tensor, gradient_weight: float, fft_weight: float
) -> torch.Tensor:
    """L1 on pixels, plus L1 on image gradients (edges, strokes) and on Fourier magnitudes (textures:
    dots, hatching, tiles, whose phase varies but whose spectrum is the style)."""
    loss = (reconstruction - pixels).abs().mean()
    if gradient_weight:
        for made, true in zip(image_gradients(reconstruction), image_gradients(pixels), strict=True):
            loss = loss + gradient_weight * (made - true).abs().mean()
    if fft_weight:
        spectrum = torch.fft.rfft2(reconstruction, norm="ortho").abs()
        target = torch.fft.rfft2(pixels, norm="ortho").abs()
        loss = loss + fft_weight * (spectrum - target).abs().mean()
    return loss


def train(
    vae: AutoencoderKL,
    images: torch.Tensor,
    params: AutoencoderParams,
    device: torch.device,
    progress: bool = True,
) -> list[float]:
    """Train in place on uint8 images (N, 3, H, W); returns the loss of every step."""
    from diffusers.optimization import get_constant_schedule_with_warmup

    generator = torch.Generator().manual_seed(params.seed)
    vae.to(device).train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=params.lr, weight_decay=0.0, fused=True)
    # constant after warm-up: within a CPU budget the model is far from converged, and a decaying rate
    # (cosine, measured) stops it learning colour early
    schedule = get_constant_schedule_with_warmup(optimizer, max(1, params.steps // 20))
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
            reconstruction = vae.decode(posterior.mode()).sample
            kl = posterior.kl().mean() / pixels[0].numel()
            loss = reconstruction_loss(reconstruction, pixels, params.gradient_weight, params.fft_weight)
            loss = loss + params.kl_weight * kl
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
) -> torch.Tensor:
    """uint8 images (N, 3, H, W) -> their latents, the posterior mode (N, C, H/f, W/f), unscaled."""
    latents = [
        vae.encode(to_pixels(images[start : start + batch_size]).to(device)).latent_dist.mode().float().cpu()
        for start in range(0, len(images), batch_size)
    ]
    return torch.cat(latents)


@torch.inference_mode()
def decode(vae: AutoencoderKL, latents: torch.Tensor, scale_factor: float) -> torch.Tensor:
    """Scaled latents (B, C, h, w) -> uint8 images (B, 3, H, W)."""
    return to_uint8(vae.decode(latents.to(vae.device, vae.dtype) / scale_factor).sample.float()).cpu()


def reconstruct(
    vae: AutoencoderKL, images: torch.Tensor, device: torch.device, batch_size: int = 64
) -> torch.Tensor:
    """uint8 images (N, 3, H, W) through the latent and back: what the diffusion model can at best draw."""
    return torch.cat(
        [
            decode(vae, encode(vae, images[start : start + batch_size], device), 1.0)
            for start in range(0, len(images), batch_size)
        ]
    )


def scale_factor(latents: torch.Tensor) -> float:
    """1 / std of the latents, so that scaled latents have unit variance (LDM's scale_by_std)."""
    return float(1.0 / latents.std())


def psnr(restored: torch.Tensor, images: torch.Tensor) -> float:
    """Mean PSNR (dB, on 8-bit pixels) of restored uint8 images (N, 3, H, W) against the originals."""
    mse = (restored.float() - images.float()).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return float((10 * torch.log10(255.0**2 / mse)).mean())


def colour_kept(
    restored: torch.Tensor, images: torch.Tensor, block: int = 8, tolerance: float = 24.0
) -> float:
    """Share of images (N, 3, H, W) whose colours survive: every `block`-pixel cell's mean colour within
    `tolerance` (8-bit, largest channel error) of the original's. A hue drift fails it wherever it is."""
    cells = torch.nn.functional.avg_pool2d
    error = (cells(restored.float(), block) - cells(images.float(), block)).abs().amax(1)  # (N, H/b, W/b)
    return float((error.flatten(1).amax(1) <= tolerance).float().mean())
