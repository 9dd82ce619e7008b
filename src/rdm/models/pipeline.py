"""A trained RDM ready to sample, as diffusers would call it a pipeline: UNet, autoencoder and the
noise schedule's config, loaded from a model folder (`rdm.artifacts.model`) or a Lightning checkpoint.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rdm.artifacts.model import NOISE_SCHEDULE, UNET, VAE, ModelCard, ModelError, read_card
from rdm.devices import resolve_device
from rdm.diffusion.guidance import denoise, seeded_noise
from rdm.diffusion.samplers import make_sampler


@dataclass
class RdmPipeline:
    """A trained RDM ready to sample: contexts of CLIP vectors in, images out."""

    unet: Any
    vae: Any
    noise_schedule_config: Any
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
        latents = denoise(
            self.unet,
            make_sampler(sampler, self.noise_schedule_config),
            context,
            noise,
            steps,
            guidance_scale,
        )
        images = decode(self.vae, latents, self.card.scale_factor)  # (B, 3, H, W)
        return images.permute(0, 2, 3, 1).numpy()


def load_pipeline(folder: Path, device: str = "auto", checkpoint: Path | None = None) -> RdmPipeline:
    """Load a model folder written by the `train` stage (or downloaded from the MLflow registry).

    With `checkpoint`, a Lightning checkpoint of the same training (`models/checkpoints/*.ckpt`)
    supplies the UNet's weights instead: its EMA weights at that step, with the folder's autoencoder.
    """
    from diffusers import DDPMScheduler, UNet2DConditionModel

    card = read_card(folder)
    torch_device = resolve_device(device)
    unet = UNet2DConditionModel.from_pretrained(folder / UNET, low_cpu_mem_usage=False)
    if checkpoint is not None:
        unet, card = _checkpoint_weights(unet, card, checkpoint)
    unet = unet.to(torch_device).eval()
    vae = _autoencoder_class(folder / VAE).from_pretrained(folder / VAE, low_cpu_mem_usage=False)
    vae = vae.to(torch_device).eval()
    noise_schedule = DDPMScheduler.from_pretrained(folder / NOISE_SCHEDULE)
    return RdmPipeline(unet=unet, vae=vae, noise_schedule_config=noise_schedule.config, card=card)


def _autoencoder_class(folder: Path) -> Any:
    """AutoencoderKL, or VQModel for a model imported with a vector-quantised first stage."""
    from diffusers import AutoencoderKL, VQModel

    config = folder / "config.json"
    if not config.is_file():
        raise ModelError(f"{folder}: no config.json; the model folder is incomplete")
    return VQModel if json.loads(config.read_text()).get("_class_name") == "VQModel" else AutoencoderKL


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
