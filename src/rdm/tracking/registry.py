"""Logging the trained model folder to its MLflow run as a pyfunc model, registering it, and pointing
the alias (`latest` by default) at the version. Registration is idempotent: each version is tagged
with the digest of the model's content (`content_sha256`), and the same content is never registered
twice."""

from __future__ import annotations

import warnings
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rdm.artifacts.model import ModelCard, content_digest, read_card
from rdm.config import Config, TrackingParams
from rdm.errors import UserError
from rdm.tracking.runs import tracking_at, tracking_uri

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

REQUIREMENTS = ("torch", "diffusers", "safetensors", "numpy", "pillow", "pydantic", "PyYAML", "mlflow")
"""What the model's code imports, pinned to the versions it was trained with."""
DIGEST_TAG = "content_sha256"
"""The model version tag holding `content_digest` of the folder it was registered from."""


def register_model(params: TrackingParams, run_id: str, folder: Path, card: ModelCard) -> dict[str, Any]:
    """The registry version of the model in `folder`, with the alias pointed at it: the version that
    already holds this content (a rerun, or a copy tracked under another run), else a new one logged
    to the run `run_id`. Returns the version's URI, number, alias URI and run."""
    import mlflow
    from mlflow import MlflowClient

    mlflow.flush_async_logging()  # the training's metrics first
    uri = tracking_uri(params)
    client = MlflowClient(uri)
    digest = content_digest(folder)
    found = same_content(client, params.registered_model, digest)
    model_version = found or _log_and_register(params, uri, run_id, folder, card, digest)
    # `latest` is MLflow's own alias, always the newest version: it can't be pointed at an older one
    if params.alias.lower() != "latest":
        client.set_registered_model_alias(params.registered_model, params.alias, model_version.version)
    return {
        "model_uri": f"models:/{params.registered_model}/{model_version.version}",
        "registered_model": params.registered_model,
        "version": str(model_version.version),
        "alias_uri": f"models:/{params.registered_model}@{params.alias}",
        "run_id": model_version.run_id,
    }


def same_content(client: MlflowClient, name: str, digest: str) -> ModelVersion | None:
    """The newest version of the registered model `name` tagged with this content digest, or None."""
    found = client.search_model_versions(f"name='{name}' and tags.{DIGEST_TAG}='{digest}'")
    return max(found, key=lambda v: int(v.version)) if found else None


def _log_and_register(
    params: TrackingParams, uri: str, run_id: str, folder: Path, card: ModelCard, digest: str
) -> ModelVersion:
    """Log `folder` to the run as a pyfunc model and register it as a new version tagged `digest`."""
    import mlflow
    from mlflow.models import infer_signature

    import rdm
    from rdm.tracking import pyfunc_model

    contexts = np.zeros((1, 1 + card.k, card.context_dim), dtype=np.float32)
    images = np.zeros((1, card.image_size, card.image_size, 3), dtype=np.uint8)
    signature = infer_signature(contexts, images, params={"steps": 50, "guidance_scale": 5.0, "seed": 0})
    with tracking_at(uri), mlflow.start_run(run_id=run_id), warnings.catch_warnings():
        # the signature is given; an input example would sample at logging time
        warnings.filterwarnings("ignore", message=".*input example was not provided")
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=pyfunc_model.__file__,
            artifacts={"model": str(folder)},
            code_paths=[str(Path(rdm.__file__).parent)],
            signature=signature,
            pip_requirements=[f"{name}=={version(name)}" for name in REQUIREMENTS],
        )
        return mlflow.register_model(info.model_uri, params.registered_model, tags={DIGEST_TAG: digest})


def registered_version(config: Config) -> dict[str, Any]:
    """The registry entry of the model in `train.out`: the version holding its content (registered by
    its training, a rerun or a copy), or a new registration to its training run when there is none (a
    training tracked elsewhere, or registered since deleted)."""
    folder = Path(config.train.out)
    card = read_card(folder)
    if not card.run_id:
        raise UserError(
            f"{folder}: the model card names no MLflow run (trained with tracking.enabled false); "
            "enable tracking and run `dvc repro train`"
        )
    return register_model(config.tracking, card.run_id, folder, card)
