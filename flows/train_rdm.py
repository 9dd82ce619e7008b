"""`train-rdm`: version the data, run every DVC stage as its own task, push the data, and end with the
trained model registered in MLflow. DVC decides what is stale, so a second run with nothing changed
skips every stage, and a changed param reruns only the stages that read it."""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.artifacts import create_table_artifact

from flows.tasks import config, log_line, project, retry_if_transient
from rdm import dvc_repo
from rdm.config import set_params
from rdm.tracking.registry import registered_version

RETRIES = {"retries": 2, "retry_delay_seconds": 15, "retry_condition_fn": retry_if_transient}


@task(**RETRIES)
def apply_params(changes: dict[str, Any]) -> list[str]:
    """Write dotted param changes (`{"train.max_steps": 3000}`) into params.yaml, like `dvc exp run -S`."""
    return set_params(project() / "params.yaml", changes)


@task(**RETRIES)
def version_data() -> list[str]:
    return dvc_repo.version_sources(project(), log_line)


@task(task_run_name="{stage}", **RETRIES)
def run_stage(stage: str) -> dvc_repo.StageRun:
    return dvc_repo.reproduce(project(), stage, log_line)


@task(**RETRIES)
def push_data() -> str | None:
    return dvc_repo.push(project(), log_line)


@task(**RETRIES)
def register_model() -> dict[str, Any]:
    """The registry version of the model in `train.out` (registered by its training; found, or
    registered now if that training ran without the registry)."""
    return registered_version(config())


@flow(name="train-rdm", log_prints=True)
def train_rdm(params: dict[str, Any] | None = None, push: bool = True) -> dict[str, Any]:
    """The whole pipeline, stage by stage. `params`: dotted changes to params.yaml before running;
    `push`: send the data to the default DVC remote at the end."""
    with dvc_repo.pipeline_lock(project()):  # a refresh running meanwhile finishes first
        if params:
            apply_params(params)
        version_data()
        runs = [run_stage(stage) for stage in dvc_repo.stages(project())]
        remote = push_data() if push else None
    model = register_model() if config().tracking.enabled else None
    create_table_artifact(
        key="train-rdm-stages",
        table=[{"stage": r.stage, "outcome": r.outcome, "seconds": r.seconds} for r in runs],
        description="What each DVC stage did in this run",
    )
    return {"stages": {r.stage: r.outcome for r in runs}, "remote": remote, "model": model}


if __name__ == "__main__":
    train_rdm()
