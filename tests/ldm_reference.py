"""CompVis' own latent-diffusion code (the `ldm` package of stable-diffusion-sdkit) building RDMs from
configs laid out like the released ones, and checkpoints written in the released layout: what the
import is checked against.

`rdm_config` is `configs/retrieval-augmented-diffusion/768x768.yaml` (knn2img's LAION-RDM) with every
architectural setting kept and the widths as given; `imagenet_config` the RDM repo's ImageNet model
(VQ-f4 first stage, `retro_only` conditioning).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import yaml

KL_LOSS = {"target": "torch.nn.Identity"}


def rdm_config(
    model_channels: int = 448,
    head_channels: int = 32,
    context_dim: int = 768,
    latent_size: int = 48,
    first_stage_channels: int = 128,
) -> dict[str, Any]:
    """The LAION-RDM's config (768x768.yaml); the defaults are its real sizes."""
    return {
        "model": {
            "base_learning_rate": 1.0e-4,
            "target": "ldm.models.diffusion.ddpm.LatentDiffusion",
            "params": {
                "linear_start": 0.0015,
                "linear_end": 0.015,
                "num_timesteps_cond": 1,
                "log_every_t": 200,
                "timesteps": 1000,
                "first_stage_key": "jpg",
                "cond_stage_key": "nix",
                "image_size": latent_size,
                "channels": 16,
                "cond_stage_trainable": False,
                "conditioning_key": "crossattn",
                "monitor": "val/loss_simple_ema",
                "scale_by_std": False,
                "scale_factor": 0.22765929,
                "unet_config": {
                    "target": "ldm.modules.diffusionmodules.openaimodel.UNetModel",
                    "params": {
                        "image_size": latent_size,
                        "in_channels": 16,
                        "out_channels": 16,
                        "model_channels": model_channels,
                        "attention_resolutions": [4, 2, 1],
                        "num_res_blocks": 2,
                        "channel_mult": [1, 2, 3, 4],
                        "use_scale_shift_norm": False,
                        "resblock_updown": False,
                        "num_head_channels": head_channels,
                        "use_spatial_transformer": True,
                        "transformer_depth": 1,
                        "context_dim": context_dim,
                        "use_checkpoint": True,
                        "legacy": True,
                    },
                },
                "first_stage_config": {
                    "target": "ldm.models.autoencoder.AutoencoderKL",
                    "params": {
                        "embed_dim": 16,
                        "monitor": "val/rec_loss",
                        "ddconfig": {
                            "double_z": True,
                            "z_channels": 16,
                            "resolution": 256,
                            "in_channels": 3,
                            "out_ch": 3,
                            "ch": first_stage_channels,
                            "ch_mult": [1, 1, 2, 2, 4],
                            "num_res_blocks": 2,
                            "attn_resolutions": [16],
                            "dropout": 0.0,
                        },
                        "lossconfig": KL_LOSS,
                    },
                },
                "cond_stage_config": {"target": "torch.nn.Identity"},
            },
        }
    }


def imagenet_config(
    model_channels: int = 192, context_dim: int = 512, latent_size: int = 64
) -> dict[str, Any]:
    """The RDM repo's ImageNet model (configs/rdm/imagenet.yaml); the defaults are its real sizes."""
    config = rdm_config(model_channels, 32, context_dim, latent_size)
    params = config["model"]["params"]
    params |= {"linear_end": 0.0195, "conditioning_key": "retro_only", "k_nn": 4, "scale_factor": 1.0}
    params["channels"] = 3
    params["unet_config"]["params"] |= {
        "in_channels": 3,
        "out_channels": 3,
        "attention_resolutions": [8, 4, 2],
        "channel_mult": [1, 2, 3, 5],
    }
    params["first_stage_config"] = {
        "target": "ldm.models.autoencoder.VQModelInterface",
        "params": {
            "embed_dim": 3,
            "n_embed": 8192,
            "ddconfig": {
                "double_z": False,
                "z_channels": 3,
                "resolution": 256,
                "in_channels": 3,
                "out_ch": 3,
                "ch": 128,
                "ch_mult": [1, 2, 4],
                "num_res_blocks": 2,
                "attn_resolutions": [],
                "dropout": 0.0,
            },
            "lossconfig": KL_LOSS,
        },
    }
    return config


def write_config(config: dict[str, Any], path: Path) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def reference_unet(config: dict[str, Any]) -> torch.nn.Module:
    """LDM's UNetModel of the config, every weight random (LDM zero-initialises its output layers, which
    would hide a misplaced weight)."""
    return _randomised(reference_unet_uninitialised(config))


def reference_unet_uninitialised(config: dict[str, Any]) -> torch.nn.Module:
    from ldm.modules.diffusionmodules.openaimodel import UNetModel

    return UNetModel(**config["model"]["params"]["unet_config"]["params"])


def reference_first_stage(config: dict[str, Any]) -> torch.nn.Module:
    """LDM's AutoencoderKL of the config (random weights); for a VQ config, `ReferenceVQ`."""
    from ldm.models.autoencoder import AutoencoderKL

    params = config["model"]["params"]["first_stage_config"]["params"]
    if "n_embed" in params:
        return _randomised(ReferenceVQ(params))
    return _randomised(AutoencoderKL(params["ddconfig"], KL_LOSS, params["embed_dim"]))


class ReferenceVQ(torch.nn.Module):
    """LDM's VQModel at inference (the SD package ships its Encoder and Decoder, not the class):
    encoder, quant_conv, nearest-codebook quantisation (VectorQuantizer2, legacy), post_quant_conv,
    decoder; state dict names as in the released checkpoints."""

    def __init__(self, params: dict[str, Any]) -> None:
        from ldm.modules.diffusionmodules.model import Decoder, Encoder

        super().__init__()
        dd, embed = params["ddconfig"], params["embed_dim"]
        self.encoder, self.decoder = Encoder(**dd), Decoder(**dd)
        self.quant_conv = torch.nn.Conv2d(dd["z_channels"], embed, 1)
        self.post_quant_conv = torch.nn.Conv2d(embed, dd["z_channels"], 1)
        self.quantize = torch.nn.Module()
        self.quantize.embedding = torch.nn.Embedding(params["n_embed"], embed)

    def decode(self, h: torch.Tensor) -> torch.Tensor:
        flat = h.permute(0, 2, 3, 1).reshape(-1, h.shape[1])  # (B*h*w, C)
        codes = torch.cdist(flat, self.quantize.embedding.weight).argmin(1)
        quant = (
            self.quantize.embedding(codes).view(h.shape[0], h.shape[2], h.shape[3], -1).permute(0, 3, 1, 2)
        )
        return self.decoder(self.post_quant_conv(quant))


def ema_of(unet: torch.nn.Module) -> dict[str, torch.Tensor]:
    """LitEma's buffers for a LatentDiffusion holding `unet`, with weights that differ from the UNet's
    (as a trained model's average does): `model_ema.diffusion_model<path without dots>`."""
    from ldm.modules.ema import LitEma

    wrapper = torch.nn.Module()
    wrapper.diffusion_model = unet
    ema = LitEma(wrapper, decay=0.9999)
    with torch.no_grad():
        for name, buffer in ema.named_buffers():
            if name not in ("decay", "num_updates"):
                buffer.add_(torch.randn_like(buffer) * 0.05)
    return {f"model_ema.{name}": buffer for name, buffer in ema.state_dict().items()}


def write_checkpoint(
    path: Path, unet: torch.nn.Module, first_stage: torch.nn.Module, ema: dict[str, torch.Tensor] | None
) -> Path:
    """A checkpoint in the released layout: Lightning's `state_dict` with the UNet, its EMA, the first
    stage, the schedule's buffers and knn2img's unused `unconditional_guidance_vex`."""
    state = {f"model.diffusion_model.{k}": v for k, v in unet.state_dict().items()}
    state |= ema or {}
    state |= {f"first_stage_model.{k}": v for k, v in first_stage.state_dict().items()}
    betas = torch.linspace(0.0015**0.5, 0.015**0.5, 1000, dtype=torch.float64) ** 2
    state |= {"betas": betas.float(), "alphas_cumprod": torch.cumprod(1 - betas, 0).float()}
    state["unconditional_guidance_vex"] = torch.randn(
        unet.context_dim if hasattr(unet, "context_dim") else 768
    )
    torch.save({"state_dict": state, "global_step": 123, "epoch": 1}, path)
    return path


def _randomised(module: torch.nn.Module) -> torch.nn.Module:
    """Every weight drawn at the scale that keeps activations of order one: 1 / sqrt(fan-in) for
    weight matrices and kernels, 1 + noise for norm scales, noise for biases."""
    generator = torch.Generator().manual_seed(0)
    norms = (torch.nn.GroupNorm, torch.nn.LayerNorm)
    with torch.no_grad():
        for layer in module.modules():
            for name, parameter in layer.named_parameters(recurse=False):
                noise = torch.randn(parameter.shape, generator=generator)
                if isinstance(layer, norms) and name == "weight":
                    parameter.copy_(1.0 + 0.1 * noise)
                elif parameter.ndim > 1:
                    parameter.copy_(noise / parameter[0].numel() ** 0.5)
                else:
                    parameter.copy_(0.1 * noise)
    return module.eval()
