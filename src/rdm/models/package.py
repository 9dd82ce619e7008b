"""The trained model as one self-contained folder, laid out like a diffusers pipeline:

    unet/        UNet2DConditionModel (config.json + safetensors), EMA weights
    vae/         AutoencoderKL (config.json + safetensors), `scaling_factor` measured on the data
    scheduler/   the training noise schedule (scheduler_config.json)
    rdm.json     the card: context size, latent shape, the CLIP it was trained with, data versions

No pickled objects: everything loads from configs and safetensors, in any process with this package.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rdm.diffusion.guidance import denoise, seeded_noise
from rdm.diffusion.schedule import make_sampler
from rdm.errors import UserError

CARD = "rdm.json"


class ModelError(UserError):
    pass


@dataclass(frozen=True)
class ModelCard:
    k: int
    """Neighbours in the training context; sampling may use another k."""
    context_dim: int
    latent_shape: tuple[int, int, int]
    image_size: int
    scale_factor: float
    clip_model: str
    clip_fingerprint: str
    """Contexts must come from this CLIP: vectors of another mean nothing to the model."""
    steps: int
    versions: dict[str, str] = field(default_factory=dict)
    """DVC hashes of the data it was trained on, and the git commit."""
    run_id: str | None = None
    """The MLflow run that trained it (evaluations are logged there too); None when untracked."""


@dataclass
class RetrievalDiffusionModel:
    """A trained RDM ready to sample: contexts of CLIP vectors in, images out."""

    unet: Any
    vae: Any
    schedule_config: Any
    card: ModelCard

    @property
    def device(self) -> torch.device:
        return torch.device(self.unet.device)

    def compile(self) -> None:
        """Compile the UNet with torch.compile, with CUDA graphs on a GPU, where the diffusers UNet's
        many small kernels otherwise leave it waiting on the host. Images change only by rounding."""
        self.unet = torch.compile(
            self.unet, mode="reduce-overhead" if self.device.type == "cuda" else "default"
        )

    def generate(
        self,
        context: torch.Tensor,
        steps: int = 50,
        guidance_scale: float = 5.0,
        seed: int | Sequence[int] = 0,
        sampler: str = "ddim",
    ) -> np.ndarray:
        """Contexts (B, T, D), L2-normalised (query first, then its neighbours) -> images (B, H, W, 3) uint8.
        Image i is drawn from `seed[i]` (or `seed + i`) and depends on nothing else in the batch."""
        from rdm.models.autoencoder import decode

        if context.shape[-1] != self.card.context_dim:
            raise ModelError(
                f"context vectors have {context.shape[-1]} dimensions but the model was trained on "
                f"{self.card.context_dim}-d vectors of CLIP {self.card.clip_model}"
            )
        seeds = [seed + i for i in range(len(context))] if isinstance(seed, int) else list(seed)
        if len(seeds) != len(context):
            raise ModelError(f"{len(seeds)} seeds for {len(context)} contexts; give one seed per context")
        noise = seeded_noise(self.card.latent_shape, seeds)
        schedule = make_sampler(sampler, self.schedule_config)
        latents = denoise(self.unet, schedule, context, noise, steps, guidance_scale)
        images = decode(self.vae, latents, self.card.scale_factor)  # (B, 3, H, W)
        return images.permute(0, 2, 3, 1).numpy()


def save_model(folder: Path, unet: Any, vae: Any, schedule: Any, card: ModelCard) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    unet.save_pretrained(folder / "unet")
    vae.save_pretrained(folder / "vae")
    schedule.save_pretrained(folder / "scheduler")
    (folder / CARD).write_text(json.dumps(asdict(card), indent=2) + "\n")


def read_card(folder: Path) -> ModelCard:
    path = folder / CARD
    if not path.is_file():
        raise ModelError(
            f"{folder}: no trained model here (no {CARD}); run `dvc repro train` (or `rdm train`)"
        )
    data = json.loads(path.read_text())
    data["latent_shape"] = tuple(data["latent_shape"])
    return ModelCard(**data)


def load_model(folder: Path, device: str = "auto", checkpoint: Path | None = None) -> RetrievalDiffusionModel:
    """Load a model folder written by the `train` stage (or downloaded from the MLflow registry).

    With `checkpoint`, a Lightning checkpoint of the same training (`models/checkpoints/*.ckpt`)
    supplies the UNet's weights instead: its EMA weights at that step, with the folder's autoencoder.
    """
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    from rdm.embedding.model import resolve_device

    card = read_card(folder)
    torch_device = resolve_device(device)
    unet = UNet2DConditionModel.from_pretrained(folder / "unet", low_cpu_mem_usage=False)
    if checkpoint is not None:
        unet, card = _checkpoint_weights(unet, card, checkpoint)
    unet = unet.to(torch_device).eval()
    vae = AutoencoderKL.from_pretrained(folder / "vae", low_cpu_mem_usage=False).to(torch_device).eval()
    schedule = DDPMScheduler.from_pretrained(folder / "scheduler")
    return RetrievalDiffusionModel(unet=unet, vae=vae, schedule_config=schedule.config, card=card)


def _checkpoint_weights(unet: Any, card: ModelCard, checkpoint: Path) -> tuple[Any, ModelCard]:
    if not checkpoint.is_file():
        raise ModelError(f"{checkpoint}: no such checkpoint (see models/checkpoints/ for the saved ones)")
    # Lightning's EMA callback saves the averaged weights as the checkpoint's state_dict
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    weights = {k.removeprefix("unet."): v for k, v in saved["state_dict"].items() if k.startswith("unet.")}
    try:
        unet.load_state_dict(weights)
    except RuntimeError as exc:
        raise ModelError(
            f"{checkpoint}: its UNet does not match the model folder's ({exc.args[0].splitlines()[0]}); "
            "use a checkpoint of the training that wrote the folder"
        ) from None
    return unet, replace(card, steps=int(saved["global_step"]))
