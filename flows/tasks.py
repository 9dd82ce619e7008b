"""What the flows share: the project they run in, its config, and a retry rule for transient failures."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from prefect import get_run_logger

from rdm.config import Config, load_config
from rdm.dvc_repo import is_transient
from rdm.errors import UserError


def project() -> Path:
    """The DVC project the flow works on: RDM_PROJECT, else the flow run's working folder (the one
    `make services` served the deployments from; `infra/prefect.yaml` sets it for workers)."""
    root = Path(os.environ.get("RDM_PROJECT") or Path.cwd()).resolve()
    if not (root / "dvc.yaml").is_file():
        raise UserError(f"{root}: no dvc.yaml here; serve the flows from the project or set RDM_PROJECT")
    return root


def config() -> Config:
    return load_config(project() / "params.yaml")


def log_line(line: str) -> None:
    get_run_logger().info(line)


def retry_if_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect's retry_condition_fn: retry a failed task only when its error was transient."""
    try:
        state.result()
    except Exception as error:
        return is_transient(error)
    return False
