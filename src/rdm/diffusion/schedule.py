"""The noise schedule the model trains on, and the samplers that walk it back.

LDM's "linear" schedule of the reference RDMs (diffusers' `scaled_linear`: betas = linspace(sqrt(b0),
sqrt(b1), T)**2), 1000 steps, epsilon prediction.
"""

from __future__ import annotations

from typing import Any

BETA_START, BETA_END, TRAIN_TIMESTEPS = 0.0015, 0.0195, 1000
SAMPLERS = ("ddim", "dpm")


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
