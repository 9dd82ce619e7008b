"""The denoising loop with classifier-free guidance against the all-zero context.

The null context is zeros of the context's shape, as in the reference's knn2img (`uc =
torch.zeros_like(c)`), and as the model was trained with for `train.p_uncond` of its examples.
"""

from __future__ import annotations

from typing import Any

import torch

from rdm.models.unet import UNet2DConditionModel

BETA_START, BETA_END, TRAIN_TIMESTEPS = 0.0015, 0.0195, 1000
"""LDM's "linear" schedule of the reference RDMs (diffusers' scaled_linear), 1000 steps."""


def noise_schedule() -> Any:
    """The training noise schedule: DDPM, scaled-linear betas 0.0015 to 0.0195, epsilon prediction."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=TRAIN_TIMESTEPS,
        beta_start=BETA_START,
        beta_end=BETA_END,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        clip_sample=False,
    )


SAMPLERS = ("ddim", "dpm")


def ddim(schedule_config: Any) -> Any:
    """A DDIM sampler (eta 0 by default) on the training schedule, with Stable Diffusion's step spacing."""
    from diffusers import DDIMScheduler

    return DDIMScheduler.from_config(schedule_config, set_alpha_to_one=False, steps_offset=1)


def dpm_solver(schedule_config: Any) -> Any:
    """DPM-Solver++ (2nd order, multistep) on the training schedule: as good in ~20 steps as DDIM in 50."""
    from diffusers import DPMSolverMultistepScheduler

    return DPMSolverMultistepScheduler.from_config(
        schedule_config, algorithm_type="dpmsolver++", solver_order=2, steps_offset=1
    )


def make_sampler(name: str, schedule_config: Any) -> Any:
    """A fresh sampler by name (`ddim` or `dpm`); samplers hold state, so one per batch."""
    if name == "ddim":
        return ddim(schedule_config)
    if name == "dpm":
        return dpm_solver(schedule_config)
    raise ValueError(f"unknown sampler {name!r}; use one of {SAMPLERS}")


def seeded_noise(latent_shape: tuple[int, int, int], seeds: list[int]) -> torch.Tensor:
    """Starting noise (B, C, h, w), row i drawn on the CPU from `seeds[i]` alone: an image depends on
    its seed, not on its batch or device."""
    return torch.stack(
        [torch.randn(latent_shape, generator=torch.Generator().manual_seed(seed)) for seed in seeds]
    )


@torch.inference_mode()
def denoise(
    unet: UNet2DConditionModel,
    sampler: Any,
    context: torch.Tensor,
    noise: torch.Tensor,
    steps: int = 50,
    guidance_scale: float = 5.0,
) -> torch.Tensor:
    """Sample scaled latents (B, C, h, w) from starting noise (B, C, h, w) for contexts (B, 1+k, D).
    A guidance scale of 1 skips the unconditional pass."""
    device, dtype = unet.device, unet.dtype
    context = context.to(device, dtype)  # (B, 1+k, D)
    guided = guidance_scale != 1.0
    if guided:
        context = torch.cat([torch.zeros_like(context), context])  # (2B, 1+k, D): [null, cond]

    # 1. starting noise, scaled for the sampler
    latents = noise.to(device, torch.float32) * sampler.init_noise_sigma
    sampler.set_timesteps(steps, device=device)

    # 2. walk the timesteps down, guiding each noise prediction
    for t in sampler.timesteps:
        model_input = torch.cat([latents, latents]) if guided else latents
        model_input = sampler.scale_model_input(model_input, t)
        noise = unet(model_input.to(dtype), t, encoder_hidden_states=context).sample.float()
        if guided:
            uncond, cond = noise.chunk(2)
            noise = uncond + guidance_scale * (cond - uncond)  # e_u + s (e_c - e_u)
        latents = sampler.step(noise, t, latents).prev_sample
    return latents
