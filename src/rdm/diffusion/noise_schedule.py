"""The noise schedule the model trains on (`rdm.diffusion.samplers` walk it back).

LDM's "linear" schedule of the reference RDMs (diffusers' `scaled_linear`: betas = linspace(sqrt(b0),
sqrt(b1), T)**2), 1000 steps, epsilon prediction.
"""

from __future__ import annotations

from typing import Any

BETA_START, BETA_END, TRAIN_TIMESTEPS = 0.0015, 0.0195, 1000


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
