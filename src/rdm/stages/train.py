"""`train` stage: the retrieval-conditioned diffusion model, trained with Lightning, tracked in MLflow.

Reads the cached latents (or encodes the training images), each image's CLIP embedding and its
neighbours' embeddings; trains with EMA weights, gradient clipping and checkpoints every
`train.checkpoint_every_n_steps` and at the last step; writes the EMA model to `train.out` as a
self-contained folder; logs it to the MLflow run and registers it (`rdm`, alias `latest`).

A killed run resumes from `train.checkpoints/last.ckpt` with its step count and its MLflow run. A
checkpoint made with other settings or data is never resumed: it is set aside and training starts over.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from rdm.artifacts import autoencoder as autoencoder_folder
from rdm.artifacts.autoencoder import AutoencoderCard
from rdm.artifacts.clip import ClipCard
from rdm.artifacts.clip import read_card as read_clip_card
from rdm.artifacts.embeddings import VectorChunks
from rdm.artifacts.manifest import read_manifest
from rdm.artifacts.model import ModelCard, save_model
from rdm.artifacts.neighbors import read_neighbors
from rdm.config import Config, TrainParams
from rdm.data.training import RetrievalDataModule, TrainingTensors
from rdm.devices import resolve_device
from rdm.diffusion.context import neighbor_context
from rdm.errors import UserError
from rdm.files import write_json
from rdm.models.lightning_module import RdmLightningModule

if TYPE_CHECKING:
    from rdm.tracking.samples import SampleGrid

GRID_IMAGES = 8
IDENTITY_FILE = "identity.json"
CONTINUABLE = {
    "max_steps",
    "val_every_n_steps",
    "sample_steps",
    "log_every_n_steps",
    "guidance_scale",
    "checkpoint_every_n_steps",
    "checkpoints",
    "out",
    "metrics",
    "precision",
    "accelerator",
    "devices",
    "num_nodes",
    "workers",
}
"""Train settings a checkpointed run may change and still be resumed; any other change starts over."""


class TrainError(UserError):
    pass


def training_tensors(config: Config, clip_card: ClipCard) -> TrainingTensors:
    """Latents and neighbour embeddings of every training image, checked against the params: the
    neighbours file must hold at least train.k neighbours from this CLIP."""
    prepared = Path(config.prepare.out)
    ids = list(read_manifest(prepared / "train.parquet")["id"])
    k = config.train.k
    table, meta = read_neighbors(Path(config.neighbors.out))
    if meta.clip_fingerprint != clip_card.fingerprint:
        raise TrainError(
            f"{config.neighbors.out} was made with CLIP weights {meta.clip_fingerprint}, but "
            f"{config.clip.out} holds {clip_card.model} [{clip_card.fingerprint}]: run `dvc repro neighbors` "
            "(or `rdm embed` then `rdm neighbors`)"
        )
    if meta.k < k:
        raise TrainError(
            f"{config.neighbors.out} holds {meta.k} neighbours per image but train.k is {k}: set "
            f"neighbors.k to at least {k} and run `dvc repro neighbors`, or lower train.k"
        )
    rows = {image_id: n for n, image_id in enumerate(table.column("id").to_pylist())}
    missing = [i for i in ids if i not in rows]
    if missing:
        raise TrainError(
            f"{config.neighbors.out} has no neighbours for {len(missing)} training image(s) "
            f"(e.g. {missing[0]}): it is older than the training manifest; run `dvc repro neighbors`"
        )
    neighbor_ids = table.column("neighbor_ids").to_pylist()
    chosen = [neighbor_ids[rows[i]][:k] for i in ids]  # (N, k) ids
    embeddings = Path(config.embed.out)
    flat = [n for row in chosen for n in row]
    database = VectorChunks(embeddings / "d_train", clip_card).vectors_for(flat)  # (N*k, D)
    neighbors = torch.from_numpy(database).reshape(len(ids), k, clip_card.embed_dim)
    latents = _latents(config, ids)
    return TrainingTensors(ids, **latents, neighbors=neighbors)


def _latents(config: Config, ids: list[str]) -> dict[str, torch.Tensor]:
    if config.autoencoder.latents is not None:
        return autoencoder_folder.load_latents(Path(config.autoencoder.latents), ids)
    from diffusers import AutoencoderKL

    from rdm.embedding.encode import load_images
    from rdm.models.autoencoder import encode

    prepared = Path(config.prepare.out)
    paths = [prepared / p for p in read_manifest(prepared / "train.parquet").set_index("id").loc[ids, "path"]]
    images = load_images(paths, config.autoencoder.image_size)
    device = resolve_device(config.autoencoder.device)
    vae = AutoencoderKL.from_pretrained(config.autoencoder.out, low_cpu_mem_usage=False).to(device).eval()
    return {"latent": encode(vae, images, device), "latent_flipped": encode(vae, images.flip(-1), device)}


def identity(config: Config, clip_card: ClipCard) -> str:
    """What a checkpoint must share with this run to be resumed: settings and inputs."""
    settings = {k: v for k, v in config.train.model_dump(mode="json").items() if k not in CONTINUABLE}
    inputs = [Path(config.neighbors.out), autoencoder_folder.card_path(Path(config.autoencoder.out))]
    if config.autoencoder.latents is not None:
        inputs.append(Path(config.autoencoder.latents))
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    digest.update(clip_card.fingerprint.encode())
    for path in inputs:
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:16]


def prepare_checkpoints(folder: Path, run_identity: str) -> bool:
    """True if `folder` holds checkpoints of this very training, to resume; otherwise clears them."""
    marker = folder / IDENTITY_FILE
    if marker.is_file() and json.loads(marker.read_text())["identity"] == run_identity:
        return (folder / "last.ckpt").is_file()
    if folder.exists() and any(folder.iterdir()):
        print(f"train: {folder} holds checkpoints of other settings or data; starting over")
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"identity": run_identity}) + "\n")
    return False


def ema_averaging(decay: float) -> L.Callback:
    """EMA of the weights after every optimiser step, as one fused `_foreach_lerp_` over all of them
    (Lightning's EMAWeightAveraging updates parameter by parameter: thousands of small kernels a step
    at paper size)."""
    from lightning.pytorch.callbacks import WeightAveraging
    from torch.optim.swa_utils import get_ema_multi_avg_fn

    return WeightAveraging(multi_avg_fn=get_ema_multi_avg_fn(decay))


class LastCheckpoint(ModelCheckpoint):
    """`last.ckpt` every `every_n_train_steps` and at the final step, always under that name.

    Lightning saves the last step only if no checkpoint was saved before, and then after the EMA
    callback has copied the averaged weights over the trained ones, so a rerun would resume from the
    EMA weights. A resume that changed the interval gets a callback of another state key, whose
    version counter would write `last-v1.ckpt`: the counter is off.
    """

    def __init__(self, dirpath: str, every_n_train_steps: int) -> None:
        super().__init__(
            dirpath=dirpath,
            every_n_train_steps=every_n_train_steps,
            save_last=True,
            save_top_k=0,
            enable_version_counter=False,
        )

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        super().on_train_batch_end(trainer, *args, **kwargs)
        if trainer.global_step == trainer.max_steps and self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


def trainer_for(params: TrainParams, callbacks: list[L.Callback], logger: Any, progress: bool) -> L.Trainer:
    from lightning.pytorch.callbacks import LearningRateMonitor, ThroughputMonitor

    on_gpu = params.accelerator == "gpu" or (params.accelerator == "auto" and torch.cuda.is_available())
    precision = params.precision if params.precision != "auto" else ("bf16-mixed" if on_gpu else "32-true")
    several = params.num_nodes > 1 or (params.devices != "auto" and params.devices > 1)
    return L.Trainer(
        accelerator=params.accelerator,
        devices=params.devices,
        num_nodes=params.num_nodes,
        strategy="ddp" if several else "auto",
        precision=precision,
        max_steps=params.max_steps,
        max_epochs=-1,
        gradient_clip_val=params.grad_clip,
        val_check_interval=params.val_every_n_steps,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        log_every_n_steps=params.log_every_n_steps,
        logger=logger,
        enable_progress_bar=progress,
        default_root_dir=params.checkpoints,
        callbacks=[
            ema_averaging(params.ema_decay),
            LastCheckpoint(dirpath=params.checkpoints, every_n_train_steps=params.checkpoint_every_n_steps),
            ThroughputMonitor(
                batch_size_fn=lambda batch: batch["latent"].shape[0], window_size=20, separator="/"
            ),
            *([LearningRateMonitor(logging_interval="step")] if logger else []),
            *callbacks,
        ],
    )


def run(config: Config, progress: bool = True) -> dict[str, Any]:
    """Train (or resume), save the EMA model to `train.out`, and log and register it in MLflow."""
    from rdm.tracking.runs import tracking_at, tracking_uri

    # MLflow (and Lightning's logger through it) exports the store as MLFLOW_TRACKING_URI: keep that
    # to this training, so that a later one in the same process goes to its own configured store
    with tracking_at(tracking_uri(config.tracking)):
        return _train(config, progress)


@dataclass(frozen=True)
class Inputs:
    """What the earlier stages left for this training."""

    clip: ClipCard
    autoencoder: AutoencoderCard
    tensors: TrainingTensors


def _train(config: Config, progress: bool) -> dict[str, Any]:
    started = time.perf_counter()
    params, checkpoints = config.train, Path(config.train.checkpoints)
    inputs = load_inputs(config)
    L.seed_everything(params.seed, workers=True, verbose=False)
    module = build_module(params, inputs)
    data = RetrievalDataModule(
        inputs.tensors, params.batch_size, params.val_images, params.workers, params.seed
    )
    grid = validation_grid(config, inputs, data)
    resume = prepare_checkpoints(checkpoints, identity(config, inputs.clip))
    logger = open_run(config, checkpoints, resume)
    trainer = trainer_for(params, [grid], logger, progress)
    start_step = fit(trainer, module, data, checkpoints, resume)
    if not trainer.is_global_zero:
        return {}
    seconds = time.perf_counter() - started
    card = export_model(
        config, inputs, module, grid, steps=max(trainer.global_step, start_step), logger=logger
    )
    grid.draw(trainer, module.eval())
    report = training_report(params, trainer, logger, module, data, card, start_step)
    if config.tracking.enabled:
        report["registered"] = _register(config, logger, Path(params.out), card)
    write_json(Path(params.metrics), {k: v for k, v in report.items() if k != "registered"})
    print(
        f"train: {card.steps} steps ({start_step} resumed) on {len(data.train.ids)} images "
        f"in {seconds:.0f} s; val/loss {report.get('val/loss')}; model -> {params.out}"
        + (f"; registered {report['registered']['alias_uri']}" if "registered" in report else "")
    )
    return report


def load_inputs(config: Config) -> Inputs:
    clip_card = read_clip_card(Path(config.clip.out))
    autoencoder_card = autoencoder_folder.read_card(Path(config.autoencoder.out))
    return Inputs(clip_card, autoencoder_card, training_tensors(config, clip_card))


def build_module(params: TrainParams, inputs: Inputs) -> RdmLightningModule:
    return RdmLightningModule(
        unet=params.unet.model_dump(),
        latent_shape=inputs.autoencoder.latent_shape,
        context_dim=inputs.clip.embed_dim,
        scale_factor=inputs.autoencoder.scale_factor,
        p_uncond=params.p_uncond,
        flip=params.flip,
        lr=params.lr,
        warmup_steps=params.warmup_steps,
        lr_schedule=params.lr_schedule,
        max_steps=params.max_steps,
        weight_decay=params.weight_decay,
        k_min=params.k_min,
        min_snr_gamma=params.min_snr_gamma,
        noise_offset=params.noise_offset,
    )


def validation_grid(config: Config, inputs: Inputs, data: RetrievalDataModule) -> SampleGrid:
    """The grid drawn at every validation: the first validation images beside samples for their
    neighbours, in the checkpoints folder (and, at the end, in the model folder)."""
    from diffusers import AutoencoderKL

    from rdm.models.autoencoder import decode
    from rdm.tracking.samples import SampleGrid

    scale = inputs.autoencoder.scale_factor
    vae = AutoencoderKL.from_pretrained(config.autoencoder.out, low_cpu_mem_usage=False).eval()
    shown = data.val.subset(torch.arange(min(GRID_IMAGES, len(data.val.ids))))
    references = decode(vae, shown.latent * scale, scale)
    return SampleGrid(
        vae,
        references,
        neighbor_context(shown.neighbors),
        Path(config.train.checkpoints) / "samples.png",
        config.train.sample_steps,
        config.train.guidance_scale,
    )


def open_run(config: Config, checkpoints: Path, resume: bool) -> Any:
    """The MLflow logger of this training (False when untracked): a resumed training's own run, or a
    new one (also when the saved run is gone), which gets the params. Params only go to a new run:
    MLflow refuses a param logged again with another value, as a resumed run that changed max_steps
    would. The data versions and commit are tags, set on every run: those the model is trained on."""
    from rdm.tracking import runs

    if not config.tracking.enabled:
        return False
    logger, created = runs.open_logger(config.tracking, checkpoints, run_name="train-rdm", resume=resume)
    if created:
        logger.log_hyperparams(runs.flatten(config.model_dump(mode="json")))
    for key, value in {**runs.data_versions(), **runs.git_state()}.items():
        logger.experiment.set_tag(logger.run_id, key, value)
    return logger


def fit(
    trainer: L.Trainer, module: RdmLightningModule, data: RetrievalDataModule, checkpoints: Path, resume: bool
) -> int:
    """Train, or resume the interrupted training; returns the step it resumed from."""
    start_step = _checkpoint_step(checkpoints / "last.ckpt") if resume else 0
    if start_step >= trainer.max_steps:
        # finished before its outputs were written: the checkpoint's state_dict holds the EMA weights
        state = torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
        module.load_state_dict(state)
    else:
        trainer.fit(module, data, ckpt_path=checkpoints / "last.ckpt" if resume else None)
    return start_step


def export_model(
    config: Config, inputs: Inputs, module: RdmLightningModule, grid: SampleGrid, steps: int, logger: Any
) -> ModelCard:
    """The EMA model as a self-contained folder at `train.out`; the grid is drawn there from now on."""
    from rdm.tracking import runs

    out = Path(config.train.out)
    if out.exists():
        shutil.rmtree(out)
    card = ModelCard(
        k=config.train.k,
        context_dim=inputs.clip.embed_dim,
        latent_shape=inputs.autoencoder.latent_shape,
        image_size=inputs.autoencoder.image_size,
        scale_factor=inputs.autoencoder.scale_factor,
        clip_model=inputs.clip.model,
        clip_fingerprint=inputs.clip.fingerprint,
        steps=steps,
        versions={**runs.data_versions(), **runs.git_state()},
        run_id=logger.run_id if logger else None,
    )
    save_model(out, module.unet, grid.vae, module.noise_schedule, card)
    grid.out = out / "samples.png"
    return card


def training_report(
    params: TrainParams,
    trainer: L.Trainer,
    logger: Any,
    module: RdmLightningModule,
    data: RetrievalDataModule,
    card: ModelCard,
    start_step: int,
) -> dict[str, Any]:
    """The losses, sizes and context gain that `train.metrics` records."""
    reported = ("train/loss", "val/loss", "val/loss_shuffled_context")
    metrics = {k: round(float(v), 5) for k, v in trainer.callback_metrics.items() if k in reported}
    if start_step >= params.max_steps and logger:  # trained earlier: the losses its run logged last
        logged = logger.experiment.get_run(logger.run_id).data.metrics
        metrics = {k: round(float(v), 5) for k, v in logged.items() if k in reported}
    report: dict[str, Any] = {
        "steps": card.steps,
        "resumed_from_step": start_step,
        "train_images": len(data.train.ids),
        "unet_parameters": sum(p.numel() for p in module.unet.parameters()),
        "k": params.k,
        **metrics,
    }
    if "val/loss_shuffled_context" in metrics and metrics["val/loss"] > 0:
        # how much worse the model denoises with another image's neighbours: it reads its context
        report["context_gain"] = round(metrics["val/loss_shuffled_context"] / metrics["val/loss"] - 1, 4)
    return report


def _checkpoint_step(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=True)["global_step"])


def _register(config: Config, logger: Any, out: Path, card: ModelCard) -> dict[str, Any]:
    """The final grid and the model's registry version on the training's run, which then ends: also
    when the version already existed (a rerun) and nothing was logged to the run as a model."""
    from rdm.tracking.registry import register_model

    run_id = logger.run_id
    logger.experiment.log_artifact(run_id, str(out / "samples.png"), "samples")
    registered = register_model(config.tracking, run_id, out, card)
    logger.experiment.set_tag(run_id, "model_version", registered["version"])
    logger.experiment.set_terminated(run_id)
    return registered
