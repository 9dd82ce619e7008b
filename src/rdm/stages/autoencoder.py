"""`autoencoder` stage: the latent space the diffusion model works in.

Loads a pretrained diffusers AutoencoderKL (`autoencoder.pretrained`) or trains a small one on the
training images; measures the latent scale factor on those images, and on images it never saw (D_train)
the reconstruction PSNR and whether colours survive; writes the autoencoder to `autoencoder.out` (a
diffusers folder whose `scaling_factor` is the measured one) and, if `autoencoder.latents` is set,
caches the training images' latents (posterior mode), mirrored and not, for the `train` stage.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rdm.artifacts.autoencoder import AutoencoderCard, save_latents, write_card
from rdm.artifacts.manifest import read_manifest
from rdm.config import AutoencoderParams
from rdm.devices import resolve_device
from rdm.embedding.encode import load_images
from rdm.files import write_json
from rdm.models import autoencoder as ae

PSNR_IMAGES = 256


def run(params: AutoencoderParams, prepared: Path, progress: bool = True) -> dict[str, Any]:
    started = time.perf_counter()
    device = resolve_device(params.device)
    train = read_manifest(prepared / "train.parquet")
    images = load_images([prepared / p for p in train["path"]], params.image_size)  # (N, 3, S, S) uint8
    report: dict[str, Any] = {"source": params.pretrained or "trained", "image_size": params.image_size}
    if params.pretrained is not None:
        vae = ae.load_pretrained(params.pretrained)
    else:
        torch.manual_seed(params.seed)
        vae = ae.build(params)
        history = ae.train(vae, images, params, device, progress)
        report |= {"steps": params.steps, "final_loss": round(float(np.mean(history[-20:])), 4)}
    vae.to(device).eval()

    latents = ae.encode(vae, images, device)  # (N, C, h, w) posterior mode
    scale = ae.scale_factor(latents)
    vae.register_to_config(scaling_factor=scale)
    vae.cpu().save_pretrained(params.out)
    vae.to(device)
    latent_shape = list(latents.shape[1:])
    report |= {"scale_factor": round(scale, 6), "latent_shape": latent_shape}
    report |= reconstruction_report(vae, params, prepared, device)
    channels, height, width = latent_shape
    card = AutoencoderCard(
        report["source"], params.image_size, report["scale_factor"], (channels, height, width)
    )
    write_card(Path(params.out), card)
    if params.latents is not None:
        flipped = ae.encode(vae, images.flip(-1), device)
        save_latents(Path(params.latents), list(train["id"]), latents, flipped)
    write_json(Path(params.metrics), report)
    print(
        f"autoencoder: {report['source']}, latents {latent_shape} (x{params.image_size // latent_shape[-1]} "
        f"smaller), scale factor {scale:.4f}, held-out PSNR {report['psnr_db']} dB, colour kept in "
        f"{report['colour_kept']:.0%} (D_train), in {time.perf_counter() - started:.0f} s -> {params.out}"
    )
    return report


def reconstruction_report(
    vae: ae.AutoencoderKL, params: AutoencoderParams, prepared: Path, device: torch.device
) -> dict[str, Any]:
    """How much of the images survives the latent, on images the autoencoder never saw: PSNR and the
    colour check on D_train (the style collections' are the `reconstruct` stage's)."""
    d_train = read_manifest(prepared / "d_train.parquet").head(PSNR_IMAGES)
    unseen = load_images([prepared / p for p in d_train["path"]], params.image_size)
    restored = ae.reconstruct(vae, unseen, device)
    return {
        "psnr_db": round(ae.psnr(restored, unseen), 2),
        "colour_kept": round(ae.colour_kept(restored, unseen), 4),
        "psnr_images": len(unseen),
    }
