"""The MLflow run of a training: where it is tracked, what it records about its inputs (every param,
the DVC hashes of its data, the git commit), and the run id kept beside the checkpoints so that a
resumed training logs into the same run."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from rdm.config import TrackingParams

RUN_FILE = "mlflow_run.json"
VERSIONED_OUTPUTS = {
    "data/prepared/train.parquet": "prepared.train",
    "data/prepared/d_train.parquet": "prepared.d_train",
    "data/prepared/images/train": "prepared.images.train",
    "data/prepared/images/d_train": "prepared.images.d_train",
    "data/embeddings/train": "embeddings.train",
    "data/embeddings/d_train": "embeddings.d_train",
    "data/neighbors": "neighbors",
    "models/clip": "clip",
    "models/autoencoder": "autoencoder",
    "data/latents": "latents",
}
"""DVC outputs a training depends on, by the name their version is logged under (`data.<name>.md5`)."""


def tracking_uri(params: TrackingParams) -> str:
    """MLFLOW_TRACKING_URI if set (e.g. the server of `make services`), else `tracking.tracking_uri`."""
    return absolute_uri(os.environ.get("MLFLOW_TRACKING_URI") or params.tracking_uri)


def absolute_uri(uri: str) -> str:
    """A relative SQLite store (`sqlite:///mlflow.db`) made absolute against the current folder. MLflow
    caches one store per URI string, so a relative one would keep writing to the folder it was first
    opened in, whatever the process's folder is later."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str(Path.cwd() / uri.removeprefix(prefix))
    return uri


@contextmanager
def tracking_at(uri: str) -> Iterator[None]:
    """MLflow's fluent API (`mlflow.start_run`, `log_model`) pointed at `uri` for one block.
    `mlflow.set_tracking_uri` also exports MLFLOW_TRACKING_URI, which would outlive the block and send
    every later run of this process (and its children) to this store; the variable is put back."""
    import mlflow

    exported = os.environ.get("MLFLOW_TRACKING_URI")
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)
        if exported is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = exported


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"train": {"unet": {"layers_per_block": 1}}} -> {"train.unet.layers_per_block": 1}."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat |= flatten(value, f"{name}.")
        else:
            flat[name] = value
    return flat


def data_versions(lock_file: Path = Path("dvc.lock")) -> dict[str, str]:
    """The md5 DVC recorded for each versioned input (`data.<name>.md5`): a folder's ends in `.dir`, a
    file's is the file's own; none for inputs DVC has not recorded (a run outside `dvc repro`)."""
    if not lock_file.is_file():
        return {}
    stages = (yaml.safe_load(lock_file.read_text()) or {}).get("stages", {})
    versions = {}
    for stage in stages.values():
        for out in stage.get("outs", []):
            name = VERSIONED_OUTPUTS.get(str(out.get("path", "")).rstrip("/"))
            if name and "md5" in out:
                versions[f"data.{name}.md5"] = out["md5"]
    return versions


def git_state(cwd: Path = Path(".")) -> dict[str, str]:
    """The commit checked out and whether the working tree differs from it."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout

    try:
        commit = git("rev-parse", "HEAD").strip()
        dirty = bool(git("status", "--porcelain", "--untracked-files=no").strip())
    except (OSError, subprocess.CalledProcessError):
        return {}
    return {"mlflow.source.git.commit": commit, "git.dirty": str(dirty).lower()}


def saved_run_id(checkpoints: Path, uri: str) -> str | None:
    """The run a checkpointed training logged into, if it was tracked at the same URI."""
    path = checkpoints / RUN_FILE
    if not path.is_file():
        return None
    saved = json.loads(path.read_text())
    return saved["run_id"] if absolute_uri(saved.get("tracking_uri", "")) == uri else None


def save_run_id(checkpoints: Path, uri: str, run_id: str) -> None:
    checkpoints.mkdir(parents=True, exist_ok=True)
    (checkpoints / RUN_FILE).write_text(json.dumps({"tracking_uri": uri, "run_id": run_id}) + "\n")


def open_logger(params: TrackingParams, checkpoints: Path, run_name: str, resume: bool) -> tuple[Any, bool]:
    """Lightning's MLFlowLogger on the training's run, and whether that run is new: the checkpointed
    one when resuming, if it is still in this store; else a new one (a fresh training, or the saved run
    deleted or tracked elsewhere), which the caller must give the params. Metrics are sent
    asynchronously, so logging costs the loop nothing."""
    from lightning.pytorch.loggers import MLFlowLogger
    from lightning.pytorch.utilities import rank_zero_only

    uri = tracking_uri(params)
    run_id = _reopened(uri, saved_run_id(checkpoints, uri)) if resume else None
    logger = MLFlowLogger(
        experiment_name=params.experiment,
        run_name=run_name,
        tracking_uri=uri,
        run_id=run_id,
        synchronous=False,
    )
    if getattr(rank_zero_only, "rank", 0) == 0 and logger.run_id:  # other DDP ranks log nothing
        save_run_id(checkpoints, uri, logger.run_id)
    return logger, run_id is None


def _reopened(uri: str, run_id: str | None) -> str | None:
    """`run_id` marked running again, or None when there is no such active run in the store at `uri`."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    if run_id is None:
        return None
    try:
        MlflowClient(uri).update_run(run_id, status="RUNNING")
    except MlflowException:  # deleted meanwhile
        return None
    return run_id


def log_results(
    params: TrackingParams,
    run_id: str | None,
    metrics: dict[str, float],
    artifacts: dict[str, list[Path]],
    run_name: str,
    tags: dict[str, str] | None = None,
) -> str:
    """Log metrics and files (by artifact folder) to the run `run_id`, the training run of the model
    they describe, or to a new run `run_name` when that run is unknown here. Returns the run id."""
    import time

    from mlflow import MlflowClient
    from mlflow.entities import Metric
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri(params))
    created = False
    if run_id is not None:
        try:
            client.get_run(run_id)
        except MlflowException:
            run_id = None
    if run_id is None:
        experiment = client.get_experiment_by_name(params.experiment)
        experiment_id = (
            experiment.experiment_id if experiment else client.create_experiment(params.experiment)
        )
        run_id = client.create_run(experiment_id, run_name=run_name, tags=tags or {}).info.run_id
        created = True
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(key, float(value), now, 0) for key, value in metrics.items()])
    for folder, paths in artifacts.items():
        for path in paths:
            client.log_artifact(run_id, str(path), folder)
    if created:
        client.set_terminated(run_id)
    return run_id


def log_refresh(params: TrackingParams, summary: dict[str, Any]) -> str:
    """A run `refresh-style-collections` with the refresh's counts (in total and per style) and its
    summary file; returns the run id."""
    import tempfile

    totals = {
        f"refresh/{key}": summary[key] for key in ("added", "changed", "removed", "rejected", "seconds")
    }
    per_style = {
        f"refresh/{style}/{key}": value
        for style, counts in summary["styles"].items()
        for key, value in counts.items()
    }
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "refresh.json"
        path.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
        return log_results(
            params, None, totals | per_style, {"refresh": [path]}, run_name="refresh-style-collections"
        )


def log_import(params: TrackingParams, run_name: str, logged: dict[str, Any]) -> str:
    """A finished run `run_name` with `logged` as its params, for a model imported rather than trained
    (its registry version is logged to it); returns the run id."""
    import mlflow

    with tracking_at(tracking_uri(params)):
        mlflow.set_experiment(params.experiment)
        with mlflow.start_run(run_name=run_name) as run:
            mlflow.log_params(logged)
            return str(run.info.run_id)
