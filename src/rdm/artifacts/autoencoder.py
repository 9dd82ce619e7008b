"""The `autoencoder` stage's outputs: the diffusers folder with its card, the training images' cached
latents, and the reconstructions of style images that the evaluation's ceiling is measured on.

    <autoencoder.out>/             diffusers AutoencoderKL (its `scaling_factor` the measured one)
    <autoencoder.out>/rdm_autoencoder.json   the card: source, image size, scale factor, latent shape
    <autoencoder.latents>          npz: `ids` (N,), `latent` and `latent_flipped` (N, C, h, w) float32
    <autoencoder.reconstructions>/reconstructions.jsonl   {file (relative to the folder), style, id?}
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rdm.errors import UserError
from rdm.files import atomic_write_bytes, write_jsonl

CARD = "rdm_autoencoder.json"
RECONSTRUCTIONS = "reconstructions.jsonl"
LATENT_FIELDS = ("latent", "latent_flipped")


class AutoencoderError(UserError):
    pass


@dataclass(frozen=True)
class AutoencoderCard:
    source: str
    """`trained` or the pretrained folder the weights came from."""
    image_size: int
    scale_factor: float
    """1 / std of the training images' latents: what makes them unit variance for the diffusion model."""
    latent_shape: tuple[int, int, int]


def write_card(folder: Path, card: AutoencoderCard) -> None:
    data = asdict(card) | {"latent_shape": list(card.latent_shape)}
    (folder / CARD).write_text(json.dumps(data, indent=2) + "\n")


def card_path(folder: Path) -> Path:
    return folder / CARD


def read_card(folder: Path) -> AutoencoderCard:
    path = folder / CARD
    if not path.is_file():
        raise AutoencoderError(
            f"{folder}: no autoencoder here; run `dvc repro autoencoder` (or `rdm autoencoder`) first"
        )
    data = json.loads(path.read_text())
    return AutoencoderCard(**data | {"latent_shape": tuple(data["latent_shape"])})


def save_latents(path: Path, ids: list[str], *tensors: torch.Tensor) -> None:
    """ids (N,) and the latents of the images and of their mirror images, each (N, C, h, w) float32."""
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


def write_reconstructions(folder: Path, records: list[dict[str, str]]) -> None:
    """The manifest of the reconstruction PNGs already saved in `folder`."""
    write_jsonl(folder / RECONSTRUCTIONS, records)


def read_reconstructions(folder: Path) -> list[dict[str, Any]] | None:
    """The reconstructions manifest, checked, or None (with a note) where there is none."""
    path = folder / RECONSTRUCTIONS
    if not path.is_file():
        print(f"evaluate: no {path}, so no ceiling row (the autoencoder stage writes it)")
        return None
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for n, row in enumerate(rows):
        if "file" not in row or "style" not in row:
            raise UserError(f"{path} line {n + 1}: needs the fields file and style (and optionally id)")
        if not (folder / row["file"]).is_file():
            raise UserError(f"{path} line {n + 1}: {folder / row['file']} does not exist")
    return rows
