"""Logging the trained model folder to its MLflow run as a pyfunc model, registering it, and pointing
the alias (`latest` by default) at the new version."""

from __future__ import annotations

import warnings
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np

from rdm.artifacts.model import ModelCard, read_card
from rdm.config import Config, TrackingParams
from rdm.errors import UserError
from rdm.tracking.runs import tracking_at, tracking_uri

REQUIREMENTS = ("torch", "diffusers", "safetensors", "numpy", "pillow", "pydantic", "PyYAML", "mlflow")
"""What the model's code imports, pinned to the versions it was trained with."""


def register_model(params: TrackingParams, run_id: str, folder: Path, card: ModelCard) -> dict[str, Any]:
    """Log `folder` to the run and register it; returns the model URI, version and alias URI."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.models import infer_signature

    import rdm
    from rdm.tracking import pyfunc_model

    uri = tracking_uri(params)
    mlflow.flush_async_logging()  # the training's metrics first
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
            registered_model_name=params.registered_model,
        )
    model_version = str(info.registered_model_version)
    if params.alias.lower() != "latest":  # MLflow's built-in alias for the newest version
        MlflowClient(uri).set_registered_model_alias(params.registered_model, params.alias, model_version)
    return {
        "model_uri": info.model_uri,
        "registered_model": params.registered_model,
        "version": model_version,
        "alias_uri": f"models:/{params.registered_model}@{params.alias}",
    }


def registered_version(config: Config) -> dict[str, Any]:
    """The registry entry of the model in `train.out`: the version its training run registered, or a
    new registration when there is none (a training tracked elsewhere, or registered since deleted)."""
    from mlflow import MlflowClient

    params = config.tracking
    folder = Path(config.train.out)
    card = read_card(folder)
    if not card.run_id:
        raise UserError(
            f"{folder}: the model card names no MLflow run (trained with tracking.enabled false); "
            "enable tracking and run `dvc repro train`"
        )
    client = MlflowClient(tracking_uri(params))
    found = client.search_model_versions(f"name='{params.registered_model}' and run_id='{card.run_id}'")
    if found:
        newest = max(found, key=lambda v: int(v.version))
        return {
            "model_uri": f"models:/{params.registered_model}/{newest.version}",
            "registered_model": params.registered_model,
            "version": str(newest.version),
            "alias_uri": f"models:/{params.registered_model}@{params.alias}",
            "run_id": card.run_id,
        }
    return register_model(params, card.run_id, folder, card) | {"run_id": card.run_id}
