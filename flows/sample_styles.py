"""`sample-styles`: a batch of prompts x styles from a registered model (by alias or version), each
style by every method of `sample.methods` (retrieval and the postfix baselines) and the floors
(`sample.floor_per_style` each of null and other_style), scored by the style evaluation and logged to
the model's MLflow run. Outputs go to `data/batches/<flow run name>/` (outside the DVC pipeline)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from flows.tasks import config, project, retry_if_transient
from rdm.config import Config
from rdm.evaluation.report import format_table
from rdm.stages import evaluate, sample


def batch_config(model: str, per_style: int | None, out: str) -> Config:
    """The project's config pointed at `model` and at this batch's own output folders."""
    base = config()
    changes: dict[str, Any] = {"model": model, "out": f"{out}/samples"}
    if per_style is not None:
        changes["per_style"] = per_style
    return base.model_copy(
        update={
            "sample": base.sample.model_copy(update=changes),
            "evaluate": base.evaluate.model_copy(
                update={"metrics": f"{out}/evaluate.json", "plots": f"{out}/evaluate"}
            ),
        }
    )


RETRIES = {"retries": 2, "retry_delay_seconds": 30, "retry_condition_fn": retry_if_transient}


@task(**RETRIES)
def draw(cfg: Config, prompts: list[str] | None, styles: list[str] | None) -> dict[str, Any]:
    return sample.run(cfg, progress=False, model=cfg.sample.model, prompts=prompts, styles=styles)


@task(**RETRIES)
def score(cfg: Config, run_name: str) -> dict[str, Any]:
    """The style evaluation, in an MLflow run of its own (the model's training run keeps the
    evaluation of the `evaluate` stage)."""
    return evaluate.run(cfg, progress=False, run_name=run_name)


@flow(name="sample-styles", log_prints=True)
def sample_styles(
    model: str | None = None,
    prompts: list[str] | None = None,
    styles: list[str] | None = None,
    per_style: int | None = None,
) -> dict[str, Any]:
    """`model`: models:/NAME@ALIAS, models:/NAME/VERSION or a model folder (default `sample.model`).
    `prompts`: the evaluation prompts when empty. `styles`: every style collection when empty.
    `per_style`: samples per style and method, default `sample.per_style` (the floors keep
    `sample.floor_per_style`)."""
    out = project() / "data" / "batches" / f"{flow_run.get_name()}-{str(flow_run.get_id())[:8]}"
    model = model or config().sample.model
    cfg = batch_config(model, per_style, str(out))
    drawn = draw(cfg, prompts, styles)
    metrics = score(cfg, f"sample-styles {out.name}")
    table = format_table(pd.read_csv(Path(cfg.evaluate.plots) / "style_accuracy.csv"))
    create_markdown_artifact(
        key="sample-styles-table",
        markdown=f"```\n{table}\n```",
        description=f"{drawn['images']} images from {model} in {out}",
    )
    return {"out": str(out), "images": drawn["images"], "seen_styles": metrics["seen_styles"]}


if __name__ == "__main__":
    sample_styles()
