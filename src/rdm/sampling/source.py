"""Where a sampler's model comes from: the MLflow registry (`models:/rdm@latest`, `models:/rdm/3`),
a model folder (`models/rdm`), or a Lightning checkpoint of its training (`models/checkpoints/last.ckpt`,
sampled with the EMA weights of that step).

Every way returns the model with a description of it, which every sample's JSONL line carries.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

from rdm.artifacts.model import CARD, ModelError
from rdm.config import Config
from rdm.models.pipeline import RdmPipeline, load_pipeline

REGISTRY_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))$")


def open_model(source: str, config: Config, device: str = "auto") -> tuple[RdmPipeline, dict[str, Any]]:
    """Load the model `source` names; returns (model, {uri, version, run_id, steps})."""
    if source.startswith("models:/"):
        return _from_registry(source, config, device)
    path = Path(source)
    if path.suffix == ".ckpt":
        model = load_pipeline(Path(config.train.out), device, checkpoint=path)
    elif path.is_dir():
        model = load_pipeline(path, device)
    else:
        raise ModelError(
            f"{source}: not a model; give a registry URI (models:/rdm@latest), a model folder "
            "(train.out, e.g. models/rdm) or a checkpoint (models/checkpoints/last.ckpt)"
        )
    return model, _describe(model, str(path), version=None)


def _from_registry(uri: str, config: Config, device: str) -> tuple[RdmPipeline, dict[str, Any]]:
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from rdm.tracking.runs import tracking_uri

    match = REGISTRY_URI.match(uri)
    if match is None:
        raise ModelError(f"{uri}: not a registry URI; write models:/NAME@ALIAS or models:/NAME/VERSION")
    store = tracking_uri(config.tracking)
    client = MlflowClient(store)
    name = match["name"]
    try:
        if match["version"]:
            version = client.get_model_version(name, match["version"])
        else:
            version = client.get_model_version_by_alias(name, match["alias"])
    except MlflowException as exc:
        raise ModelError(
            f"{uri}: not found in the MLflow registry at {store} ({exc.message.splitlines()[0]}); "
            "train one (`dvc repro train`) or check MLFLOW_TRACKING_URI"
        ) from None
    with tempfile.TemporaryDirectory() as tmp:
        model_uri = f"models:/{name}/{version.version}"
        local = Path(mlflow.artifacts.download_artifacts(model_uri, dst_path=tmp, tracking_uri=store))
        cards = sorted(local.glob(f"artifacts/*/{CARD}"))
        if not cards:
            raise ModelError(
                f"{uri}: version {version.version} holds no model folder (no artifacts/*/{CARD})"
            )
        model = load_pipeline(cards[0].parent, device)
    return model, _describe(model, uri, version=str(version.version))


def _describe(model: RdmPipeline, uri: str, version: str | None) -> dict[str, Any]:
    return {"uri": uri, "version": version, "run_id": model.card.run_id, "steps": model.card.steps}
