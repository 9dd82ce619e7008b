"""`autoencoder` stage: the latent space the diffusion model works in.

Loads a pretrained diffusers AutoencoderKL (`autoencoder.pretrained`) or trains a small one on the
training images; measures the latent scale factor on those images and the reconstruction PSNR on
D_train images it never saw; writes the autoencoder to `autoencoder.out` (a diffusers folder whose
`scaling_factor` is the measured one) and, if `autoencoder.latents` is set, caches the training
images' latent posteriors, mirrored and not, for the `train` stage.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rdm.config import AutoencoderParams
from rdm.data.manifest import read_manifest
from rdm.embedding.encode import load_images
from rdm.embedding.model import resolve_device
from rdm.files import atomic_write_bytes, write_json
from rdm.models import autoencoder as ae
from rdm.models.autoencoder import AutoencoderError

CARD = "rdm_autoencoder.json"
PSNR_IMAGES = 256
LATENT_FIELDS = ("mean", "std", "mean_flipped", "std_flipped")


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

    mean, std = ae.encode(vae, images, device)
    sample = slice(0, params.scale_batches * params.batch_size)
    scale = ae.scale_factor(mean[sample], std[sample], params.seed)
    vae.register_to_config(scaling_factor=scale)
    vae.cpu().save_pretrained(params.out)
    vae.to(device)

    d_train = read_manifest(prepared / "d_train.parquet").head(PSNR_IMAGES)
    unseen = load_images([prepared / p for p in d_train["path"]], params.image_size)
    latent_shape = list(mean.shape[1:])
    report |= {
        "scale_factor": round(scale, 6),
        "latent_shape": latent_shape,
        "psnr_db": round(ae.psnr(vae, unseen, device), 2),
        "psnr_images": len(unseen),
    }
    card = {k: report[k] for k in ("source", "image_size", "scale_factor", "latent_shape")}
    (Path(params.out) / CARD).write_text(json.dumps(card, indent=2) + "\n")
    if params.latents is not None:
        mean_flipped, std_flipped = ae.encode(vae, images.flip(-1), device)
        save_latents(Path(params.latents), list(train["id"]), mean, std, mean_flipped, std_flipped)
    write_json(Path(params.metrics), report)
    print(
        f"autoencoder: {report['source']}, latents {latent_shape} (x{params.image_size // latent_shape[-1]} "
        f"smaller), scale factor {scale:.4f}, held-out PSNR {report['psnr_db']} dB, "
        f"in {time.perf_counter() - started:.0f} s -> {params.out}"
    )
    return report


def read_card(folder: Path) -> dict[str, Any]:
    path = folder / CARD
    if not path.is_file():
        raise AutoencoderError(
            f"{folder}: no autoencoder here; run `dvc repro autoencoder` (or `rdm autoencoder`) first"
        )
    card: dict[str, Any] = json.loads(path.read_text())
    return card


def save_latents(path: Path, ids: list[str], *tensors: torch.Tensor) -> None:
    """ids (N,) and the posterior's mean, std, mean_flipped, std_flipped, each (N, C, h, w) float32."""
    buffer = io.BytesIO()
    arrays: dict[str, Any] = {n: t.numpy() for n, t in zip(LATENT_FIELDS, tensors, strict=True)}
    np.savez(buffer, ids=np.asarray(ids, dtype=str), **arrays)
    atomic_write_bytes(path, buffer.getvalue())


def load_latents(path: Path, ids: list[str]) -> dict[str, torch.Tensor]:
    """The cached posteriors of `ids`, in that order; a missing id names the stage to rerun."""
    if not path.is_file():
        raise AutoencoderError(
            f"{path}: no cached latents; run `dvc repro autoencoder` (or `rdm autoencoder`)"
        )
    with np.load(path) as data:
        row = {str(i): n for n, i in enumerate(data["ids"])}
        missing = [i for i in ids if i not in row]
        if missing:
            raise AutoencoderError(
                f"{path}: no latents for {len(missing)} training image(s) (e.g. {missing[0]}); the cache is "
                "older than the training manifest: run `dvc repro autoencoder`"
            )
        index = np.asarray([row[i] for i in ids])
        return {n: torch.from_numpy(data[n][index]) for n in LATENT_FIELDS}


def main() -> int:
    from rdm.cli import main as cli_main

    return cli_main(["autoencoder"])


if __name__ == "__main__":
    raise SystemExit(main())
