"""The style evaluation's PNG charts, from the wide per-style table (`report.compare_methods`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from rdm.artifacts.samples import POSTFIX, POSTFIX_TEXT, RETRIEVAL

if TYPE_CHECKING:
    from matplotlib.axes import Axes

LABELS = {
    RETRIEVAL: "retrieval (style database)",
    POSTFIX: 'postfix ("in the style of", D_train)',
    POSTFIX_TEXT: "postfix text alone",
}


def draw_charts(comparison: pd.DataFrame, folder: Path) -> list[Path]:
    """`style_accuracy.png`: per-style accuracy of each method with its 95 % interval, and retrieval
    minus postfix over pairs with its interval (Fig. 4a, as a difference: a ratio to a near-zero
    postfix accuracy is unstable); `target_logits.png`: the mean logit of the target style (Fig. 4b)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    held = comparison["held_out"].astype(str).str.lower() == "true"
    labels = [f"{s}\n(held out)" if h else s for s, h in zip(comparison["style"], held, strict=True)]
    x = np.arange(len(labels))
    methods = [m for m in LABELS if f"accuracy_{m}" in comparison]
    width = 0.8 / max(1, len(methods))
    folder.mkdir(parents=True, exist_ok=True)

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(6, 1.1 * len(labels)), 7), sharex=True)
    for n, method in enumerate(methods):
        offset = (n - (len(methods) - 1) / 2) * width
        top.bar(x + offset, comparison[f"accuracy_{method}"], width, label=LABELS[method])
        _error_bars(top, x + offset, comparison, f"accuracy_{method}")
    top.set_ylabel("style classifier top-1")
    top.set_ylim(0, 1)
    top.legend(loc="upper right", fontsize=8)
    column = f"difference_{POSTFIX}"
    if column in comparison:
        difference = comparison[column]
        known = difference.notna().to_numpy()
        colors = ["tab:green" if d >= 0 else "tab:red" for d in difference[known]]
        bottom.bar(x[known], difference[known], 0.5, color=colors)
        _error_bars(bottom, x, comparison, column)
        bottom.set_ylabel("retrieval - postfix\n(paired, 95% CI)")
    else:
        bottom.text(0.5, 0.5, "no pairs of retrieval and postfix", ha="center", transform=bottom.transAxes)
    bottom.axhline(0, color="black", linewidth=0.8)
    bottom.set_xticks(x, labels, fontsize=8)
    fig.tight_layout()
    accuracy = folder / "style_accuracy.png"
    fig.savefig(accuracy, dpi=120)
    plt.close(fig)

    fig, axis = plt.subplots(figsize=(max(6, 1.1 * len(labels)), 3.5))
    for n, method in enumerate(methods):
        offset = (n - (len(methods) - 1) / 2) * width
        axis.bar(x + offset, comparison[f"target_logit_{method}"], width, label=method)
        _error_bars(axis, x + offset, comparison, f"target_logit_{method}")
    axis.axhline(0, color="black", linewidth=0.8)
    axis.set_ylabel("mean logit of the target style")
    axis.set_xticks(x, labels, fontsize=8)
    axis.legend(fontsize=8)
    fig.tight_layout()
    logits = folder / "target_logits.png"
    fig.savefig(logits, dpi=120)
    plt.close(fig)
    return [accuracy, logits]


def _error_bars(axis: Axes, x: np.ndarray, comparison: pd.DataFrame, column: str) -> None:
    """Draw the 95 % interval of `column` (its `_low` / `_high` columns) where the table has one."""
    low, high = comparison.get(f"{column}_low"), comparison.get(f"{column}_high")
    if low is None or high is None:
        return
    value = comparison[column].to_numpy(dtype=float)
    below = (value - low.to_numpy(dtype=float)).clip(min=0)
    above = (high.to_numpy(dtype=float) - value).clip(min=0)
    axis.errorbar(x, value, yerr=[below, above], fmt="none", ecolor="black", capsize=2, linewidth=0.8)
