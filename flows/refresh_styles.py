"""`refresh-style-collections`: on the cron schedule of `refresh.schedule`, bring every style
collection up to date with its source (a folder or an s3:// prefix), record the new data version
with DVC, and report what changed to the flow run and to MLflow. The deployment runs one at a time,
and the refresh itself holds a lock, so two refreshes never change the collections at once."""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.artifacts import create_table_artifact

from flows.tasks import config, log_line, project, retry_if_transient
from rdm import dvc_repo, refresh
from rdm.tracking.runs import log_refresh


@task(retries=2, retry_delay_seconds=30, retry_condition_fn=retry_if_transient)
def update_collections() -> dict[str, Any]:
    return refresh.run(config(), progress=False)


@task(retries=2, retry_delay_seconds=15, retry_condition_fn=retry_if_transient)
def record_version() -> None:
    """dvc.lock takes the refreshed style manifest and embeddings, so `dvc repro` sees them as current
    (and reruns only what reads the styles side: reconstruct, sample, evaluate)."""
    dvc_repo.record(project(), ["prepare-styles", "embed-styles"], log_line)


@task
def report(summary: dict[str, Any]) -> str | None:
    create_table_artifact(
        key="style-refresh",
        table=[{"style": style} | counts for style, counts in summary["styles"].items()],
        description=refresh.format_summary(summary).splitlines()[0],
    )
    cfg = config()
    return log_refresh(cfg.tracking, summary) if cfg.tracking.enabled else None


@flow(name="refresh-style-collections", log_prints=True)
def refresh_style_collections(record: bool = True) -> dict[str, Any]:
    with dvc_repo.pipeline_lock(project()):  # a train-rdm running meanwhile finishes first
        summary = update_collections()
        if record:
            record_version()
    report(summary)
    return summary


if __name__ == "__main__":
    refresh_style_collections()
