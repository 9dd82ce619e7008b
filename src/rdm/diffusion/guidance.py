"""The denoising loop with classifier-free guidance against the all-zero context.

The null context is zeros of the context's shape, as in the reference's knn2img (`uc =
torch.zeros_like(c)`), and as the model was trained with for `train.p_uncond` of its examples.
"""

from __future__ import annotations

from typing import Any

import torch


def seeded_noise(latent_shape: tuple[int, int, int], seeds: list[int]) -> torch.Tensor:
    """Starting noise (B, C, h, w), row i drawn on the CPU from `seeds[i]` alone: an image depends on
    its seed, not on its batch or device."""
    return torch.stack(
        [torch.randn(latent_shape, generator=torch.Generator().manual_seed(seed)) for seed in seeds]
    )


@torch.inference_mode()
def denoise(
    unet: Any,
    sampler: Any,
    context: torch.Tensor,
    noise: torch.Tensor,
    steps: int = 50,
    guidance_scale: float = 5.0,
) -> torch.Tensor:
    """Sample scaled latents (B, C, h, w) from starting noise (B, C, h, w) for contexts (B, T, D).
    A guidance scale of 1 skips the unconditional pass."""
    device, dtype = unet.device, unet.dtype
    context = context.to(device, dtype)  # (B, T, D)
    guided = guidance_scale != 1.0
    if guided:
        context = torch.cat([torch.zeros_like(context), context])  # (2B, T, D): [null, cond]

    # 1. starting noise, scaled for the sampler
    latents = noise.to(device, torch.float32) * sampler.init_noise_sigma
    sampler.set_timesteps(steps, device=device)

    # 2. walk the timesteps down, guiding each noise prediction
    for t in sampler.timesteps:
        model_input = torch.cat([latents, latents]) if guided else latents
        model_input = sampler.scale_model_input(model_input, t)
        predicted = unet(model_input.to(dtype), t, encoder_hidden_states=context).sample.float()
        if guided:
            uncond, cond = predicted.chunk(2)
            predicted = uncond + guidance_scale * (cond - uncond)  # e_u + s (e_c - e_u)
        latents = sampler.step(predicted, t, latents).prev_sample
    return latents
