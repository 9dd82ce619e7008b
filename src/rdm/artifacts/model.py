"""The trained model as one self-contained folder, laid out like a diffusers pipeline:

    unet/        UNet2DConditionModel (config.json + safetensors), EMA weights
    vae/         AutoencoderKL (config.json + safetensors), `scaling_factor` measured on the data
    scheduler/   the training noise schedule (scheduler_config.json)
    rdm.json     the card: context size, latent shape, the CLIP it was trained with, data versions

A model imported from a CompVis checkpoint (`rdm import ldm`) is the same folder, its `vae/` a VQModel
where the checkpoint's first stage is vector-quantised.

No pickled objects: everything loads from configs and safetensors, in any process with this package
(`rdm.models.pipeline.load_pipeline`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rdm.errors import UserError

CARD = "rdm.json"
UNET, VAE, NOISE_SCHEDULE = "unet", "vae", "scheduler"
RUN_FIELDS = ("run_id", "versions")
"""Card fields that tell which run made the model, not what it draws."""


class ModelError(UserError):
    pass


@dataclass(frozen=True)
class ModelCard:
    k: int
    """Neighbours in the training context; sampling may use another k."""
    context_dim: int
    latent_shape: tuple[int, int, int]
    image_size: int
    scale_factor: float
    clip_model: str
    clip_fingerprint: str
    """Contexts must come from this CLIP: vectors of another mean nothing to the model."""
    steps: int
    versions: dict[str, str] = field(default_factory=dict)
    """DVC hashes of the data it was trained on, and the git commit."""
    run_id: str | None = None
    """The MLflow run that trained it (evaluations are logged there too); None when untracked."""
    context_vectors: str = "unit"
    """`unit`: context vectors L2-normalised (knn2img's models, ours); `raw`: CLIP's vectors as they
    come, text and image alike (the RDM repo's ImageNet model)."""
    source: str | None = None
    """For an imported model, the checkpoint it came from: `<file name> sha256:<digest>`."""


def save_model(folder: Path, unet: Any, vae: Any, noise_schedule: Any, card: ModelCard) -> None:
    """The diffusers parts (anything with `save_pretrained`) and the card, into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    unet.save_pretrained(folder / UNET)
    vae.save_pretrained(folder / VAE)
    noise_schedule.save_pretrained(folder / NOISE_SCHEDULE)
    (folder / CARD).write_text(json.dumps(asdict(card), indent=2) + "\n")


def read_card(folder: Path) -> ModelCard:
    path = folder / CARD
    if not path.is_file():
        raise ModelError(
            f"{folder}: no trained model here (no {CARD}); run `dvc repro train` (or `rdm train`)"
        )
    data = json.loads(path.read_text())
    data["latent_shape"] = tuple(data["latent_shape"])
    return ModelCard(**data)


def content_digest(folder: Path) -> str:
    """SHA-256 of what the model in `folder` draws, so that a rerun or a copy of the same model is
    recognised: the files of its diffusers parts (weights and configs; safetensors are byte-stable for
    the same tensors) and its card without the fields naming the run that made it (`RUN_FIELDS`).
    Left out: where a part was loaded from (`_name_or_path` in its config) and the sample grid."""
    card = {k: v for k, v in asdict(read_card(folder)).items() if k not in RUN_FIELDS}
    digest = hashlib.sha256(json.dumps(card, sort_keys=True).encode())
    for part in (UNET, VAE, NOISE_SCHEDULE):
        if not (folder / part).is_dir():
            raise ModelError(f"{folder}: no {part}/ beside {CARD}; run `dvc repro train` (or `rdm train`)")
        for path in sorted(p for p in (folder / part).rglob("*") if p.is_file()):
            digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
            digest.update(_file_digest(path))
    return digest.hexdigest()


def _file_digest(path: Path) -> bytes:
    """A JSON config without `_name_or_path`, any other file as its bytes."""
    if path.suffix == ".json":
        config = json.loads(path.read_text())
        config.pop("_name_or_path", None)
        return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).digest()
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").digest()
