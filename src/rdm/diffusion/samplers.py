"""The samplers that walk the training noise schedule back: DDIM and DPM-Solver++ (diffusers), each
built from the schedule's config, so they share its betas and timesteps."""

from __future__ import annotations

from typing import Any

SAMPLERS = ("ddim", "dpm")


def ddim(noise_schedule_config: Any) -> Any:
    """A DDIM sampler (eta 0 by default) on the training schedule, with Stable Diffusion's step spacing."""
    from diffusers import DDIMScheduler

    return DDIMScheduler.from_config(noise_schedule_config, set_alpha_to_one=False, steps_offset=1)


def dpm_solver(noise_schedule_config: Any) -> Any:
    """DPM-Solver++ (2nd order, multistep) on the training schedule: as good in ~20 steps as DDIM in 50."""
    from diffusers import DPMSolverMultistepScheduler

    return DPMSolverMultistepScheduler.from_config(
        noise_schedule_config, algorithm_type="dpmsolver++", solver_order=2, steps_offset=1
    )


def make_sampler(name: str, noise_schedule_config: Any) -> Any:
    """A fresh sampler by name (`ddim` or `dpm`); samplers hold state, so one per batch."""
    if name == "ddim":
        return ddim(noise_schedule_config)
    if name == "dpm":
        return dpm_solver(noise_schedule_config)
    raise ValueError(f"unknown sampler {name!r}; use one of {SAMPLERS}")
