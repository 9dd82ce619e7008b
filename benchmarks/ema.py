"""What the EMA of the weights costs a training step: one fused update against Lightning's default.

    python benchmarks/ema.py [--size demo|paper|both] [--updates 30] [--steps 60]

Lightning's `EMAWeightAveraging` averages with `get_ema_avg_fn`, called once per parameter (a few
small kernels each); training uses `WeightAveraging` with `get_ema_multi_avg_fn`, one
`_foreach_lerp_` over all of them (`rdm.stages.train.ema_averaging`). Both are timed here as
`AveragedModel.update_parameters` on the real UNets (demo: params.yaml; paper: the reference's
400M, README "Model sizes"), and, for the demo model, as the median step of the real training loop
with each callback in place.

Prints progress, then one JSON object as the last line: per size, parameters (tensors and
millions), ms per update for each, and for the demo the training step in ms with each.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_avg_fn, get_ema_multi_avg_fn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train import PAPER, StepTimer, synthetic

from rdm.config import Config, load_config
from rdm.data.training import RetrievalDataModule
from rdm.models.lightning_module import RdmLightningModule
from rdm.stages.train import ema_averaging, trainer_for

DECAY = 0.995


def shapes(config: Config, size: str) -> tuple[Any, tuple[int, int, int], int]:
    if size == "paper":
        return PAPER["unet"], PAPER["latent_shape"], PAPER["context_dim"]
    c = config.autoencoder
    factor = 2 ** (len(c.block_out_channels) - 1)
    return config.train.unet, (c.latent_channels, c.image_size // factor, c.image_size // factor), 128


def update_ms(model: torch.nn.Module, fused: bool, updates: int) -> float:
    """Median milliseconds of one `update_parameters` after a warm-up update."""
    averaged = (
        AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(DECAY))
        if fused
        else AveragedModel(model, avg_fn=get_ema_avg_fn(DECAY))
    )
    averaged.update_parameters(model)  # the first call only copies
    averaged.update_parameters(model)
    times = []
    for _ in range(updates):
        with torch.no_grad():  # move the weights, as an optimiser step would
            for p in model.parameters():
                p.add_(1e-4)
        start = time.perf_counter()
        averaged.update_parameters(model)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def loop_step_ms(config: Config, fused: bool, steps: int, warmup: int = 10) -> float:
    """Median step of the real training loop on synthetic data, with one EMA callback or the other."""
    from lightning.pytorch.callbacks import EMAWeightAveraging, WeightAveraging

    unet, latent_shape, dim = shapes(config, "demo")
    batch, k = config.train.batch_size, config.train.k
    torch.manual_seed(0)
    module = RdmLightningModule(
        unet=unet.model_dump(), latent_shape=latent_shape, context_dim=dim, scale_factor=1.0
    )
    data = RetrievalDataModule(synthetic(batch * 16 + 1, latent_shape, k, dim), batch, 1)
    with tempfile.TemporaryDirectory() as tmp:
        params = config.train.model_copy(
            update={
                "max_steps": steps,
                "val_every_n_steps": 10**9,
                "checkpoint_every_n_steps": 10**9,
                "checkpoints": str(Path(tmp) / "ckpt"),
            }
        )
        timer = StepTimer()
        trainer = trainer_for(params, [timer], False, progress=False)
        ema = ema_averaging(DECAY) if fused else EMAWeightAveraging(decay=DECAY)
        trainer.callbacks = [ema if isinstance(c, WeightAveraging) else c for c in trainer.callbacks]
        trainer.fit(module, data)
    return statistics.median(timer.times[warmup:]) * 1e3


def main() -> None:
    args = parse_args()
    config = load_config(Path(__file__).resolve().parents[1] / "params.yaml")
    torch.set_grad_enabled(True)

    result: dict[str, Any] = {"device": "cpu", "threads": torch.get_num_threads()}
    for size in ("demo", "paper") if args.size == "both" else (args.size,):
        result[size] = measure_size(config, size, args.updates, args.steps)
    print(json.dumps(result))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", choices=["demo", "paper", "both"], default="both")
    parser.add_argument("--updates", type=int, default=30, help="timed EMA updates for each")
    parser.add_argument("--steps", type=int, default=60, help="training steps per loop run (demo)")
    return parser.parse_args()


def measure_size(config: Config, size: str, updates: int, steps: int) -> dict[str, Any]:
    """One size's row: its parameters, each EMA's update time, and for the demo each one's training step."""
    unet, latent_shape, dim = shapes(config, size)
    module = RdmLightningModule(
        unet=unet.model_dump(), latent_shape=latent_shape, context_dim=dim, scale_factor=1.0
    )
    model = copy.deepcopy(module.unet)
    tensors = len(list(model.parameters()))
    millions = sum(p.numel() for p in model.parameters()) / 1e6
    row: dict[str, Any] = {"parameter_tensors": tensors, "parameters_m": round(millions, 1)}
    for fused in (False, True):
        name = "fused" if fused else "per_parameter"
        row[f"update_ms_{name}"] = round(update_ms(model, fused, updates), 2)
        print(f"{size}: {tensors} tensors, {millions:.1f}M, EMA update {name}: {row[f'update_ms_{name}']} ms")
    if size == "demo":
        for fused in (False, True):
            name = "fused" if fused else "per_parameter"
            row[f"step_ms_{name}"] = round(loop_step_ms(config, fused, steps), 1)
            print(f"demo training step, EMA {name}: {row[f'step_ms_{name}']} ms")
    return row


if __name__ == "__main__":
    main()
