"""The denoising network: diffusers' `UNet2DConditionModel`, its cross-attention reading the retrieved
context `[query, nn_1 .. nn_k]` of CLIP vectors, so `cross_attention_dim` is the CLIP dimension."""

from __future__ import annotations

from typing import Any, TypeAlias

from rdm.config import UNetParams

UNet2DConditionModel: TypeAlias = Any
"""A diffusers UNet2DConditionModel, typed loosely: diffusers' lazy modules hide torch's methods from mypy."""


def build(
    params: UNetParams, latent_channels: int, latent_size: int, context_dim: int
) -> UNet2DConditionModel:
    """A fresh UNet for latents (latent_channels, latent_size, latent_size) and context vectors of
    `context_dim`. Levels with `cross_attention` get a transformer block (self- and cross-attention)
    after each ResNet block, as in the reference's SpatialTransformer levels; `pooled_context` also feeds
    a pooled summary of the context into the timestep embedding; `context_projection` adds a learned
    map in front of the cross-attention, starting at sqrt(context_dim) times the identity."""
    import torch
    from diffusers import UNet2DConditionModel as UNet

    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in params.cross_attention)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(params.cross_attention))
    heads = tuple(c // params.head_channels for c in params.block_out_channels)
    pooled: dict[str, Any] = {}
    if params.pooled_context:
        pooled = {
            "addition_embed_type": "text",
            "addition_embed_type_num_heads": max(1, context_dim // params.head_channels),
        }
    projection: dict[str, Any] = {}
    if params.context_projection:
        projection = {"encoder_hid_dim": context_dim, "encoder_hid_dim_type": "text_proj"}
    unet: UNet2DConditionModel = UNet(
        sample_size=latent_size,
        in_channels=latent_channels,
        out_channels=latent_channels,
        down_block_types=down,
        up_block_types=up,
        block_out_channels=tuple(params.block_out_channels),
        layers_per_block=params.layers_per_block,
        # diffusers calls the number of heads `attention_head_dim` (a historical misnomer)
        attention_head_dim=heads,
        cross_attention_dim=context_dim,
        norm_num_groups=params.norm_groups,
        **pooled,
        **projection,
    )
    if params.context_projection:
        with torch.no_grad():
            unet.encoder_hid_proj.weight.copy_(torch.eye(context_dim) * context_dim**0.5)
            unet.encoder_hid_proj.bias.zero_()
    return unet
