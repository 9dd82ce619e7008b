"""A CompVis latent-diffusion RDM checkpoint (knn2img's LAION-RDM, the RDM repo's ImageNet model) into
a model folder like the ones training writes, so that `rdm sample --model`, the registry and every
later stage use it as they use a trained one.

The models are built on PyTorch's meta device and take the checkpoint's (memory-mapped) tensors as
their own, so a full-size import never holds a second copy of the weights in memory.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from rdm.artifacts.clip import ClipCard
from rdm.artifacts.model import ModelCard, ModelError, save_model
from rdm.models.ldm_config import LdmSpec, read_ldm_config
from rdm.models.ldm_weights import first_stage_weights, load_checkpoint, unet_weights

RAW_CONTEXT = "retro_only"
"""The RDM repo's conditioning: raw CLIP vectors, never normalised (knn2img's `crossattn`: unit ones)."""


@dataclass(frozen=True)
class Imported:
    card: ModelCard
    ema: bool
    """Whether the UNet's weights are the checkpoint's EMA ones."""
    unet_parameters: int
    first_stage: str


def import_ldm(
    checkpoint: Path,
    config: Path,
    out: Path,
    clip: ClipCard,
    run_id: str | None = None,
    progress: bool = True,
) -> Imported:
    """Convert `checkpoint` (with its LDM `config`) into the model folder `out`; its contexts are to come
    from `clip`, whose vectors must have the model's context size. `run_id`: the MLflow run the card names."""
    spec = read_ldm_config(config)
    if clip.embed_dim != spec.context_dim:
        raise ModelError(
            f"{config}: the model reads {spec.context_dim}-d context vectors, but CLIP {clip.model} "
            f"[{clip.fingerprint}] makes {clip.embed_dim}-d ones; give the CLIP it was trained with "
            "(`--clip`; the LAION-RDM's is ViT-L-14-quickgelu with OpenAI weights)"
        )
    digest = file_sha256(checkpoint, progress)
    state, step = load_checkpoint(checkpoint)
    unet_state, ema = unet_weights(state, spec.unet)
    unet = _with_weights(_unet_class(), spec.unet, unet_state, f"{checkpoint}: the UNet")
    first_stage = _with_weights(
        _first_stage_class(spec.first_stage),
        spec.first_stage_config,
        first_stage_weights(state, spec.first_stage_config, spec.first_stage),
        f"{checkpoint}: the first stage",
    )
    card = ModelCard(
        k=spec.k,
        context_dim=spec.context_dim,
        latent_shape=spec.latent_shape,
        image_size=spec.image_size,
        scale_factor=spec.scale_factor,
        clip_model=clip.model,
        clip_fingerprint=clip.fingerprint,
        steps=step,
        context_vectors="raw" if spec.conditioning == RAW_CONTEXT else "unit",
        run_id=run_id,
        source=f"{checkpoint.name} sha256:{digest}",
    )
    save_model(out, unet, first_stage, _schedule(spec), card)
    parameters = sum(p.numel() for p in unet.parameters())
    return Imported(card=card, ema=ema, unet_parameters=parameters, first_stage=spec.first_stage)


def _with_weights(
    model_class: Any, config: dict[str, Any], weights: dict[str, torch.Tensor], what: str
) -> Any:
    """A `model_class` of `config` holding exactly `weights`: one missing, left over or misshapen fails."""
    with torch.device("meta"):
        model = model_class(**config)
    try:
        model.load_state_dict(weights, strict=True, assign=True)
    except RuntimeError as exc:
        first = str(exc).split("\n\t")[:3]
        raise ModelError(
            f"{what} does not match its config ({' '.join(first)}); is it this config's checkpoint?"
        ) from None
    return model.eval()


def _schedule(spec: LdmSpec) -> Any:
    from diffusers import DDPMScheduler

    return DDPMScheduler(**spec.schedule)


def _unet_class() -> Any:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel


def _first_stage_class(kind: str) -> Any:
    from diffusers import AutoencoderKL, VQModel

    return VQModel if kind == "vq" else AutoencoderKL


def file_sha256(path: Path, progress: bool = True) -> str:
    """SHA-256 of a (multi-gigabyte) file, read in 16 MiB blocks."""
    digest = hashlib.sha256()
    with (
        path.open("rb") as file,
        tqdm(
            total=path.stat().st_size, unit="B", unit_scale=True, desc="sha256", disable=not progress
        ) as bar,
    ):
        while block := file.read(1 << 24):
            digest.update(block)
            bar.update(len(block))
    return digest.hexdigest()
