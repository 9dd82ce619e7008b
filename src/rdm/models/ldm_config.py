"""A CompVis latent-diffusion config (`configs/retrieval-augmented-diffusion/768x768.yaml`, the RDM
repo's `imagenet.yaml`) read into what diffusers builds: the UNet's and first stage's configs, the noise
schedule and the latent scale.

Each diffusers setting is derived from the LDM setting that decides it, and an LDM setting diffusers
cannot express is refused by name rather than approximated. In particular the head count: LDM's
`num_head_channels` (channels per head) becomes diffusers' heads per level (which diffusers calls
`attention_head_dim`), where diffusers' own converter leaves the default, which loads and is wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from rdm.artifacts.model import ModelError

UNET_TARGET = "ldm.modules.diffusionmodules.openaimodel.UNetModel"
FIRST_STAGES: dict[str, Literal["kl", "vq"]] = {
    "ldm.models.autoencoder.AutoencoderKL": "kl",
    "ldm.models.autoencoder.VQModelInterface": "vq",
    "ldm.models.autoencoder.VQModel": "vq",
}
PREDICTIONS = {"eps": "epsilon", "v": "v_prediction", "x0": "sample"}
BETA_SCHEDULES = {"linear": "scaled_linear"}
"""LDM's "linear" is linear in sqrt(beta): diffusers' `scaled_linear`."""


@dataclass(frozen=True)
class LdmSpec:
    """What an LDM config says about the model, in diffusers' terms."""

    unet: dict[str, Any]
    """UNet2DConditionModel's config."""
    first_stage: Literal["kl", "vq"]
    first_stage_config: dict[str, Any]
    """AutoencoderKL's or VQModel's config."""
    first_stage_attention: tuple[int, ...]
    """Encoder levels (0 = full resolution) with self-attention after each ResNet block."""
    schedule: dict[str, Any]
    """DDPMScheduler's config: the schedule the model was trained on."""
    scale_factor: float
    latent_shape: tuple[int, int, int]
    image_size: int
    context_dim: int
    conditioning: str
    """LDM's `conditioning_key`: `crossattn` (knn2img's models) or `retro_only` (the RDM repo's)."""
    k: int
    """Neighbours in the training context (`k_nn`); knn2img's text models name none, and sample 10."""


def read_ldm_config(path: Path) -> LdmSpec:
    """The spec of the LDM config file at `path`; errors name the file and the setting."""
    if not path.is_file():
        raise ModelError(f"{path}: no such LDM config; give the model's .yaml (e.g. 768x768.yaml)")
    try:
        config = yaml.safe_load(path.read_text())
        model = config["model"]["params"]
    except (yaml.YAMLError, KeyError, TypeError) as exc:
        raise ModelError(f"{path}: not an LDM model config (no model.params: {exc})") from None
    where = f"{path}: model.params"
    unet_params = _target_params(model, "unet_config", UNET_TARGET, where)
    first_stage_target = model.get("first_stage_config", {}).get("target")
    if first_stage_target not in FIRST_STAGES:
        raise ModelError(
            f"{where}.first_stage_config.target is {first_stage_target!r}; importable first stages are "
            f"{sorted(FIRST_STAGES)}"
        )
    first_stage = FIRST_STAGES[first_stage_target]
    first = model["first_stage_config"]["params"]
    levels = len(first["ddconfig"]["ch_mult"])
    latent_size = int(unet_params["image_size"])
    factor = 2 ** (levels - 1)
    unet = unet_config(unet_params, f"{where}.unet_config.params")
    return LdmSpec(
        unet=unet,
        first_stage=first_stage,
        first_stage_config=first_stage_config(first, first_stage, latent_size * factor, where),
        first_stage_attention=_attention_levels(first["ddconfig"]),
        schedule=schedule_config(model, where),
        scale_factor=float(model.get("scale_factor", 1.0)),
        latent_shape=(int(unet["in_channels"]), latent_size, latent_size),
        image_size=latent_size * factor,
        context_dim=int(unet["cross_attention_dim"]),
        conditioning=str(model.get("conditioning_key", "crossattn")),
        k=int(model.get("k_nn", 10)),
    )


def unet_config(params: dict[str, Any], where: str) -> dict[str, Any]:
    """UNet2DConditionModel's config for LDM UNetModel `params`."""
    for name, supported in {"resblock_updown": False, "use_new_attention_order": False}.items():
        if params.get(name, supported) != supported:
            raise ModelError(
                f"{where}.{name}: {params[name]} has no diffusers UNet2DConditionModel equivalent"
            )
    if not params.get("use_spatial_transformer") or params.get("context_dim") is None:
        raise ModelError(f"{where}: not a cross-attention UNet (use_spatial_transformer and context_dim)")
    if params.get("num_classes") is not None:
        raise ModelError(f"{where}.num_classes: class-conditional UNets are not RDMs; not importable")
    channels = [int(params["model_channels"]) * int(m) for m in params["channel_mult"]]
    attention = {int(r) for r in params["attention_resolutions"]}
    factors = [2**level for level in range(len(channels))]
    crossed = [factor in attention for factor in factors]
    return {
        "sample_size": int(params["image_size"]),
        "in_channels": int(params["in_channels"]),
        "out_channels": int(params["out_channels"]),
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in crossed],
        "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(crossed)],
        "block_out_channels": channels,
        "layers_per_block": int(params["num_res_blocks"]),
        "cross_attention_dim": int(params["context_dim"]),
        # diffusers' `attention_head_dim` is the number of heads (a historical misnomer)
        "attention_head_dim": [heads(c, params, where) for c in channels],
        "transformer_layers_per_block": int(params.get("transformer_depth", 1)),
        "use_linear_projection": bool(params.get("use_linear_in_transformer", False)),
        "resnet_time_scale_shift": "scale_shift" if params.get("use_scale_shift_norm") else "default",
        "flip_sin_to_cos": True,
        "freq_shift": 0,
    }


def heads(channels: int, params: dict[str, Any], where: str) -> int:
    """Attention heads at a level of `channels`, as LDM's UNetModel counts them: `num_head_channels`
    channels each, or a fixed `num_heads`."""
    per_head = int(params.get("num_head_channels", -1))
    if per_head == -1:
        count = int(params.get("num_heads", -1))
        if count < 1:
            raise ModelError(f"{where}: neither num_head_channels nor num_heads is set")
        return count
    if channels % per_head:
        raise ModelError(
            f"{where}.num_head_channels: {per_head} does not divide a level's {channels} channels"
        )
    return channels // per_head


def first_stage_config(params: dict[str, Any], kind: str, image_size: int, where: str) -> dict[str, Any]:
    """AutoencoderKL's (kind `kl`) or VQModel's (`vq`) config for the LDM first stage `params`."""
    dd = params["ddconfig"]
    levels = len(dd["ch_mult"])
    attention = _attention_levels(dd)
    down = [
        "AttnDownEncoderBlock2D" if level in attention else "DownEncoderBlock2D" for level in range(levels)
    ]
    up = [
        "AttnUpDecoderBlock2D" if level in attention else "UpDecoderBlock2D"
        for level in reversed(range(levels))
    ]
    config: dict[str, Any] = {
        "in_channels": int(dd["in_channels"]),
        "out_channels": int(dd["out_ch"]),
        "down_block_types": down,
        "up_block_types": up,
        "block_out_channels": [int(dd["ch"]) * int(m) for m in dd["ch_mult"]],
        "layers_per_block": int(dd["num_res_blocks"]),
        "latent_channels": int(dd["z_channels"]),
        "sample_size": image_size,
        "scaling_factor": 1.0,  # the card holds the model's scale factor; the VAE's own is unused
    }
    if kind == "kl":
        if int(params["embed_dim"]) != int(dd["z_channels"]):
            raise ModelError(
                f"{where}.first_stage_config: embed_dim {params['embed_dim']} differs from z_channels "
                f"{dd['z_channels']}; diffusers' AutoencoderKL needs them equal"
            )
        return config
    return config | {"num_vq_embeddings": int(params["n_embed"]), "vq_embed_dim": int(params["embed_dim"])}


def schedule_config(model: dict[str, Any], where: str) -> dict[str, Any]:
    """DDPMScheduler's config for the LDM's training schedule."""
    schedule = model.get("beta_schedule", "linear")
    prediction = model.get("parameterization", "eps")
    if schedule not in BETA_SCHEDULES:
        raise ModelError(f"{where}.beta_schedule: {schedule!r} is not importable; LDM's linear is")
    if prediction not in PREDICTIONS:
        raise ModelError(f"{where}.parameterization: {prediction!r} is not one of {sorted(PREDICTIONS)}")
    return {
        "num_train_timesteps": int(model.get("timesteps", 1000)),
        "beta_start": float(model.get("linear_start", 1e-4)),
        "beta_end": float(model.get("linear_end", 2e-2)),
        "beta_schedule": BETA_SCHEDULES[schedule],
        "prediction_type": PREDICTIONS[prediction],
        "clip_sample": False,
    }


def _target_params(model: dict[str, Any], key: str, target: str, where: str) -> dict[str, Any]:
    section = model.get(key) or {}
    if section.get("target") != target:
        raise ModelError(f"{where}.{key}.target is {section.get('target')!r}; importable: {target}")
    return dict(section["params"])


def _attention_levels(ddconfig: dict[str, Any]) -> tuple[int, ...]:
    """Levels of LDM's Encoder/Decoder whose resolution (from `resolution`, halved per level) is in
    `attn_resolutions`: they attend after each ResNet block."""
    resolution = int(ddconfig["resolution"])
    wanted = {int(r) for r in ddconfig.get("attn_resolutions", [])}
    return tuple(level for level in range(len(ddconfig["ch_mult"])) if resolution // 2**level in wanted)
