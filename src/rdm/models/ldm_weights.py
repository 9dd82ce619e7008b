"""The weights of a CompVis latent-diffusion checkpoint, renamed for diffusers.

A checkpoint is loaded with `torch.load(weights_only=True)`: tensors and plain containers only, so
nothing in the file can run. The UNet's weights are the EMA ones where the checkpoint has them
(`model_ema.*`, LitEma's names: the parameter path without dots), as knn2img samples under
`ema_scope()`. Renaming reuses diffusers' LDM converters, plus the first stage's per-level attention
they leave out; the caller loads the result strictly, so a weight left over or missing fails the import.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch

from rdm.artifacts.model import ModelError

UNET_PREFIX = "model.diffusion_model."
EMA_PREFIX = "model_ema."
FIRST_STAGE_PREFIX = "first_stage_model."
LEVEL_ATTENTION = re.compile(r"^(?P<part>encoder\.down|decoder\.up)\.(?P<level>\d+)\.attn\.(?P<index>\d+)\.")


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], int]:
    """The `state_dict` of the checkpoint at `path` and the training step it was saved at (Lightning's
    `global_step`, 0 when it names none), memory-mapped where the file allows (a 5 GB
    checkpoint then costs pages, not a copy). Refuses a file that holds anything but tensors and plain
    containers, naming what it found."""
    if not path.is_file():
        raise ModelError(f"{path}: no such checkpoint")
    try:
        saved = _load(path)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL (\S+)", str(exc))
        what = f"an object of {found[1]}" if found else "objects other than tensors"
        raise ModelError(
            f"{path}: holds {what}, which loading would have to execute; refused. Only checkpoints of "
            "tensors and plain containers are imported (save one with torch.save(state_dict))"
        ) from None
    state = saved.get("state_dict", saved) if isinstance(saved, dict) else None
    if not isinstance(state, dict) or not any(k.startswith(UNET_PREFIX) for k in state):
        raise ModelError(f"{path}: no {UNET_PREFIX}* weights in its state_dict; not an LDM checkpoint")
    return state, int(saved.get("global_step", 0))


def _load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as exc:  # the legacy (pre-1.6) format cannot be memory-mapped
        if "mmap" not in str(exc):
            raise ModelError(f"{path}: not a readable PyTorch checkpoint ({exc})") from None
        return torch.load(path, map_location="cpu", weights_only=True)


def unet_weights(
    state: dict[str, torch.Tensor], config: dict[str, Any]
) -> tuple[dict[str, torch.Tensor], bool]:
    """The UNet's weights under diffusers' names, and whether they are the EMA ones."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    raw = {k: v for k, v in state.items() if k.startswith(UNET_PREFIX)}
    has_ema = any(k.startswith(EMA_PREFIX) for k in state)
    if has_ema:
        missing = [k for k in raw if ema_name(k) not in state]
        if missing:
            raise ModelError(
                f"the checkpoint has EMA weights ({EMA_PREFIX}*) but none for {len(missing)} UNet weights "
                f"(first: {missing[0]}); it is damaged or not an LDM checkpoint"
            )
        raw = {k: state[ema_name(k)] for k in raw}
    return _contiguous(convert_ldm_unet_checkpoint(raw, config)), has_ema


def ema_name(key: str) -> str:
    """LitEma's buffer for the weight `key`: `model.a.b.c` -> `model_ema.abc`."""
    return EMA_PREFIX + key.removeprefix("model.").replace(".", "")


def first_stage_weights(
    state: dict[str, torch.Tensor], config: dict[str, Any], kind: str
) -> dict[str, torch.Tensor]:
    """The autoencoder's weights (AutoencoderKL, or VQModel for `kind` vq) under diffusers' names."""
    from diffusers.loaders.single_file_utils import (
        convert_ldm_vae_checkpoint,
        update_vae_attentions_ldm_to_diffusers,
    )

    levels = len(config["block_out_channels"])
    part = {
        k.removeprefix(FIRST_STAGE_PREFIX): v for k, v in state.items() if k.startswith(FIRST_STAGE_PREFIX)
    }
    if not part:
        raise ModelError(f"the checkpoint has no {FIRST_STAGE_PREFIX}* weights: no autoencoder to import")
    level_attention = {k for k in part if LEVEL_ATTENTION.match(k)}
    converted = convert_ldm_vae_checkpoint(
        {k: v for k, v in part.items() if k not in level_attention}, config
    )
    for key in sorted(level_attention):
        match = LEVEL_ATTENTION.match(key)
        assert match is not None
        level = int(match["level"])
        block = (
            f"down_blocks.{level}" if match["part"] == "encoder.down" else f"up_blocks.{levels - 1 - level}"
        )
        new = f"{match['part'].split('.')[0]}.{block}.attentions.{match['index']}."
        update_vae_attentions_ldm_to_diffusers([key], converted, part, {"old": match[0], "new": new})
    if kind == "vq":
        converted["quantize.embedding.weight"] = part["quantize.embedding.weight"]
    return _contiguous(converted)


def _contiguous(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors writes contiguous tensors only; renaming left some as views (conv to linear)."""
    return {k: v.contiguous() for k, v in weights.items()}
