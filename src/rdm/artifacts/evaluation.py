"""The `evaluate` stage's report: the metrics (`evaluate.metrics`, JSON) and, under `evaluate.plots`,
the per-style table (`styles.csv`) and the method comparison (`style_accuracy.csv`) that the charts
and `rdm report` show."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from rdm.errors import UserError
from rdm.files import write_json

STYLES, COMPARISON = "styles.csv", "style_accuracy.csv"


def write_evaluation(
    plots: Path, metrics_path: Path, table: pd.DataFrame, comparison: pd.DataFrame, metrics: dict[str, Any]
) -> list[Path]:
    """Returns the files written."""
    plots.mkdir(parents=True, exist_ok=True)
    table.to_csv(plots / STYLES, index=False, float_format="%.4f")
    comparison.to_csv(plots / COMPARISON, index=False, float_format="%.4f")
    write_json(metrics_path, metrics)
    return [metrics_path, plots / STYLES, plots / COMPARISON]


def read_evaluation(plots: Path, metrics_path: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The method comparison and the metrics of the last evaluation."""
    comparison = plots / COMPARISON
    if not comparison.is_file() or not metrics_path.is_file():
        raise UserError(f"{comparison}: no evaluation yet; run `dvc repro evaluate` (or `rdm evaluate`)")
    return pd.read_csv(comparison), json.loads(metrics_path.read_text())
