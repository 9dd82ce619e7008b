"""Training throughput of the diffusion model, and what MLflow tracking costs it.

    python benchmarks/train.py [--size demo|paper] [--steps 60] [--rounds 3] [--batch-size N]

Runs the real training loop (`rdm.stages.train.trainer_for`: EMA, gradient clipping, throughput
monitor) on synthetic latents and contexts of the configured shapes, alternating rounds with
MLflow logging on (asynchronous, as in training, to a temporary SQLite store) and off. Per-step
times come from a callback; the first steps of each round (warm-up) are dropped.

`demo` is the params.yaml model (4M UNet on 4x16x16 latents, CLIP 128-d). `paper` is the
reference's 400M UNet on 3x64x64 latents with 512-d CLIP contexts (README "Model sizes"), meant
for a GPU. On a GPU, model FLOP utilisation is the measured training FLOPs per second over the
device's peak for the precision (Lightning's table); on a CPU it is null.

Prints progress, then one JSON object as the last line:
device, size, samples_per_s, mfu, mlflow_overhead_frac, step_ms (off/on).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.throughput import get_available_flops, measure_flops

from rdm.config import Config, TrainParams, UNetParams, load_config
from rdm.data.training import RetrievalDataModule, TrainingTensors
from rdm.diffusion.context import neighbor_context
from rdm.models.lightning_module import RdmLightningModule
from rdm.stages.train import trainer_for

PAPER = {
    "unet": UNetParams(
        block_out_channels=[192, 384, 576, 960], cross_attention=[False, True, True, True], layers_per_block=2
    ),
    "latent_shape": (3, 64, 64),
    "context_dim": 512,
    "batch_size": 32,
}


class StepTimer(L.Callback):
    def __init__(self) -> None:
        self.times: list[float] = []
        self._start = 0.0

    def on_train_batch_start(self, *args: Any) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self._start = time.perf_counter()

    def on_train_batch_end(self, *args: Any) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.times.append(time.perf_counter() - self._start)


def synthetic(n: int, latent_shape: tuple[int, int, int], k: int, dim: int) -> TrainingTensors:
    latent = torch.randn((n, *latent_shape))
    return TrainingTensors([str(i) for i in range(n)], latent, latent.flip(-1), torch.randn(n, k, dim))


def one_round(
    module: RdmLightningModule, data: RetrievalDataModule, params: TrainParams, tracked: bool, tmp: Path
) -> list[float]:
    from lightning.pytorch.loggers import MLFlowLogger

    timer = StepTimer()
    logger: Any = False
    if tracked:
        logger = MLFlowLogger(
            experiment_name="bench", tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}", synchronous=False
        )
        logger.log_hyperparams({"bench": True})
    trainer = trainer_for(params, [timer], logger, progress=False)
    trainer.fit(module, data)
    if tracked:  # check that logging really happened: every point of train/loss reached the store
        import mlflow

        mlflow.flush_async_logging()
        history = logger.experiment.get_metric_history(logger.run_id, "train/loss")
        print(f"  mlflow received {len(history)} train/loss points over {len(timer.times)} steps")
    return timer.times


def main() -> None:
    args = parse_args()
    config: Config = load_config(Path(__file__).resolve().parents[1] / "params.yaml")
    unet, latent_shape, dim, batch = model_shapes(config, args.size)
    batch = args.batch_size or batch
    k = config.train.k

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        params = round_params(config, unet, batch, args.steps, tmp)
        data = RetrievalDataModule(synthetic(batch * 16 + 1, latent_shape, k, dim), batch, 1)
        module = RdmLightningModule(
            unet=unet.model_dump(), latent_shape=latent_shape, context_dim=dim, scale_factor=1.0
        )
        flops = flops_per_batch(module, batch, latent_shape, k, dim)
        available = peak_flops()
        print(
            f"{args.size}: UNet {sum(p.numel() for p in module.unet.parameters()) / 1e6:.1f}M, "
            f"latents {latent_shape}, batch {batch}, {flops / 1e9:.1f} GFLOPs per training step, "
            f"device {device_name()}"
        )
        step_times = alternated_rounds(module, data, params, tmp, args.rounds, args.warmup)

    print(json.dumps(summary(args.size, batch, flops, available, step_times)))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", choices=["demo", "paper"], default="demo")
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps per round")
    parser.add_argument("--warmup", type=int, default=10, help="steps dropped at the start of each round")
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds each with MLflow on and off, alternated"
    )
    parser.add_argument("--batch-size", type=int, default=None)
    return parser.parse_args()


def model_shapes(config: Config, size: str) -> tuple[Any, tuple[int, int, int], int, int]:
    """UNet, latent shape, context dimension and batch size of the benchmarked model."""
    if size == "paper":
        return PAPER["unet"], PAPER["latent_shape"], PAPER["context_dim"], PAPER["batch_size"]
    c = config.autoencoder
    factor = 2 ** (len(c.block_out_channels) - 1)
    latent_shape = (c.latent_channels, c.image_size // factor, c.image_size // factor)
    return config.train.unet, latent_shape, 128, config.train.batch_size


def round_params(config: Config, unet: UNetParams, batch: int, steps: int, tmp: Path) -> TrainParams:
    """params.yaml's training settings for one round: this model, no validation, no checkpoints."""
    return config.train.model_copy(
        update={
            "unet": unet,
            "batch_size": batch,
            "max_steps": steps,
            "val_every_n_steps": 10**9,
            "checkpoint_every_n_steps": 10**9,
            "checkpoints": str(tmp / "ckpt"),
        }
    )


def device_name() -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


def peak_flops() -> int | None:
    """The device's peak FLOP/s at the training precision (None where Lightning does not know it)."""
    on_gpu = torch.cuda.is_available()
    device = torch.device("cuda" if on_gpu else "cpu")
    return get_available_flops(device, torch.bfloat16 if on_gpu else torch.float32)


def alternated_rounds(
    module: RdmLightningModule,
    data: RetrievalDataModule,
    params: TrainParams,
    tmp: Path,
    rounds: int,
    warmup: int,
) -> dict[bool, list[float]]:
    """Step times after warm-up with MLflow off (False) and on (True), the order alternating each round."""
    step_times: dict[bool, list[float]] = {False: [], True: []}
    for round_ in range(rounds):
        for tracked in (False, True) if round_ % 2 == 0 else (True, False):
            times = one_round(module, data, params, tracked, tmp)[warmup:]
            step_times[tracked] += times
            state = "on " if tracked else "off"
            print(f"round {round_ + 1} mlflow {state}: {statistics.median(times) * 1e3:.1f} ms/step")
    return step_times


def summary(
    size: str, batch: int, flops: int, available: int | None, step_times: dict[bool, list[float]]
) -> dict[str, Any]:
    """The last line's JSON: throughput, MFU and MLflow's share of the step, from median step times."""
    off, on = statistics.median(step_times[False]), statistics.median(step_times[True])
    samples_per_s = batch / off
    mfu = (flops / off) / available if available else None
    return {
        "device": device_name(),
        "size": size,
        "batch_size": batch,
        "samples_per_s": round(samples_per_s, 2),
        "mfu": round(mfu, 4) if mfu is not None else None,
        "mlflow_overhead_frac": round((on - off) / off, 4),
        "step_ms": {"off": round(off * 1e3, 2), "on": round(on * 1e3, 2)},
    }


def flops_per_batch(
    module: RdmLightningModule, batch: int, latent_shape: tuple[int, int, int], k: int, dim: int
) -> int:
    """Forward plus backward FLOPs of one training step, counted on the meta device."""
    with torch.device("meta"):
        meta = RdmLightningModule(
            unet=module.hparams["unet"], latent_shape=latent_shape, context_dim=dim, scale_factor=1.0
        )
        x = torch.randn(batch, *latent_shape)
        t = torch.zeros(batch, dtype=torch.long)
        context = neighbor_context(torch.randn(batch, k, dim))
    return int(
        measure_flops(
            meta.unet, lambda: meta.unet(x, t, encoder_hidden_states=context).sample, torch.Tensor.sum
        )
    )


if __name__ == "__main__":
    main()
