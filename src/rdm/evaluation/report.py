"""The style evaluation's tables and charts (the paper's Fig. 4): per style and method, the classifier's
top-1 accuracy and mean logit for the target style, the Frechet distance to the style's collection in
CLIP space, and the CLIP similarity of each sample to its prompt (does the content survive?)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rdm.evaluation.classifier import FittedClassifier
from rdm.evaluation.metrics import cosine_similarity, frechet_distance
from rdm.sampling.batch import POSTFIX, RETRIEVAL, on_style_share

METRICS = ("accuracy", "target_logit", "frechet", "clip_score", "on_style_neighbors")


def score_samples(
    records: Sequence[dict[str, Any]],
    features: np.ndarray,
    prompt_vectors: dict[str, np.ndarray],
    fitted: FittedClassifier,
    collections: dict[str, np.ndarray],
    held_out: set[str],
) -> pd.DataFrame:
    """Samples (records and their (N, D) CLIP features) -> one row per style and method."""
    styles = fitted.classifier.styles
    unknown = sorted({r["style"] for r in records} - set(styles))
    if unknown:
        raise ValueError(f"samples of style(s) {unknown} that the classifier was not trained on ({styles})")
    logits = fitted.classifier.logits(features)  # (N, styles)
    target = np.array([styles.index(r["style"]) for r in records])
    samples = pd.DataFrame(
        {
            "style": [r["style"] for r in records],
            "method": [r["method"] for r in records],
            "correct": logits.argmax(1) == target,
            "target_logit": logits[np.arange(len(records)), target],
            "clip_score": cosine_similarity(
                features, np.stack([prompt_vectors[r["prompt"]] for r in records])
            ),
            "on_style_neighbors": [on_style_share(r["neighbors"], r["style"]) for r in records],
        }
    )
    rows = []
    for (style, method), group in samples.groupby(["style", "method"], sort=False):
        rows.append(
            {
                "style": style,
                "method": method,
                "held_out": style in held_out,
                "samples": len(group),
                "accuracy": float(group["correct"].mean()),
                "target_logit": float(group["target_logit"].mean()),
                "frechet": frechet_distance(features[group.index.to_numpy()], collections[str(style)]),
                "clip_score": float(group["clip_score"].mean()),
                "on_style_neighbors": float(group["on_style_neighbors"].mean()),
            }
        )
    return pd.DataFrame(rows)


def compare_methods(table: pd.DataFrame) -> pd.DataFrame:
    """One row per style: each metric for both methods, and the relative improvement in accuracy of
    retrieval over postfix, (acc_retrieval - acc_postfix) / acc_postfix (Fig. 4a; NaN where postfix is 0)."""
    wide = table.pivot(index="style", columns="method", values=list(METRICS))
    wide.columns = [f"{metric}_{method}" for metric, method in wide.columns]
    wide["relative_improvement"] = (wide[f"accuracy_{RETRIEVAL}"] - wide[f"accuracy_{POSTFIX}"]) / wide[
        f"accuracy_{POSTFIX}"
    ].replace(0.0, np.nan)
    held = table.groupby("style")["held_out"].first()
    return wide.assign(held_out=held).reset_index()


def summary(table: pd.DataFrame, fitted: FittedClassifier) -> dict[str, Any]:
    """The report's metrics: the classifier, both methods averaged over the styles seen in training,
    the held-out styles on their own, and every style and method."""

    def averaged(rows: pd.DataFrame) -> dict[str, Any]:
        means = {
            m: {k: _number(v) for k, v in rows[rows["method"] == m][list(METRICS)].mean().items()}
            for m in (RETRIEVAL, POSTFIX)
        }
        retrieval, postfix = means[RETRIEVAL]["accuracy"], means[POSTFIX]["accuracy"]
        gain = None if retrieval is None or not postfix else round((retrieval - postfix) / postfix, 4)
        return {**means, "relative_improvement": gain}

    seen = table[~table["held_out"]]
    held = table[table["held_out"]]
    return {
        "classifier": {
            "holdout_top1": round(fitted.holdout_accuracy, 4),
            "chance": round(1 / len(fitted.classifier.styles), 4),
            "train_images": fitted.train_size,
            "holdout_images": fitted.holdout_size,
        },
        "seen_styles": averaged(seen),
        **({"held_out_styles": averaged(held)} if len(held) else {}),
        "styles": {
            str(style): {
                str(row["method"]): {m: _number(row[m]) for m in METRICS} for _, row in rows.iterrows()
            }
            for style, rows in table.groupby("style")
        },
    }


def _number(value: Any) -> float | None:
    """Rounded for the JSON report; None where there is no number (JSON has no NaN)."""
    return None if pd.isna(value) else round(float(value), 4)


def format_table(comparison: pd.DataFrame) -> str:
    """The style table people read: accuracy and target logit of both methods, and the gain."""
    lines = [
        f"{'style':16s} {'retrieval':>9s} {'postfix':>8s} {'rel.gain':>8s}   {'logit r':>7s} {'logit p':>7s}"
        f"   {'FD r':>6s} {'FD p':>6s}   {'CLIP r':>6s} {'CLIP p':>6s}   {'style nn p':>10s}"
    ]
    for _, row in comparison.iterrows():
        name = f"{row['style']}{' (held out)' if row['held_out'] else ''}"
        gain = row["relative_improvement"]
        lines.append(
            f"{name:16s} {row['accuracy_retrieval']:9.0%} {row['accuracy_postfix']:8.0%} "
            f"{'n/a' if pd.isna(gain) else f'{gain:+.0%}':>8s}   "
            f"{row['target_logit_retrieval']:7.2f} {row['target_logit_postfix']:7.2f}   "
            f"{row['frechet_retrieval']:6.3f} {row['frechet_postfix']:6.3f}   "
            f"{row['clip_score_retrieval']:6.3f} {row['clip_score_postfix']:6.3f}   "
            f"{row['on_style_neighbors_postfix']:10.0%}"
        )
    seen = comparison[~comparison["held_out"].astype(bool)]
    if len(seen):
        retrieval, postfix = seen["accuracy_retrieval"].mean(), seen["accuracy_postfix"].mean()
        gain = f"{(retrieval - postfix) / postfix:+.0%}" if postfix else "n/a"
        lines.append(f"{'seen styles':16s} {retrieval:9.0%} {postfix:8.0%} {gain:>8s}   (mean over styles)")
    return "\n".join(lines)


def draw_charts(comparison: pd.DataFrame, folder: Path) -> list[Path]:
    """PNG charts: per-style accuracy of both methods with the relative improvement (Fig. 4a), and
    the mean logit of the target style (Fig. 4b)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [
        f"{s}\n(held out)" if h else s
        for s, h in zip(comparison["style"], comparison["held_out"], strict=True)
    ]
    x = np.arange(len(labels))
    folder.mkdir(parents=True, exist_ok=True)

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(6, 1.1 * len(labels)), 7), sharex=True)
    top.bar(x - 0.2, comparison[f"accuracy_{RETRIEVAL}"], 0.4, label="retrieval (style database)")
    top.bar(x + 0.2, comparison[f"accuracy_{POSTFIX}"], 0.4, label='postfix ("in the style of")')
    top.set_ylabel("style classifier top-1")
    top.set_ylim(0, 1)
    top.legend(loc="upper right", fontsize=8)
    gains = comparison["relative_improvement"]
    known = gains.notna().to_numpy()
    colors = ["tab:green" if g >= 0 else "tab:red" for g in gains[known]]
    bottom.bar(x[known], gains[known], 0.5, color=colors)
    for position in x[~known]:  # postfix at 0 %: no ratio to draw
        bottom.text(position, 0, "n/a", ha="center", va="bottom", fontsize=8)
    bottom.axhline(0, color="black", linewidth=0.8)
    bottom.set_ylabel("relative improvement\nof retrieval over postfix")
    bottom.set_xticks(x, labels, fontsize=8)
    fig.tight_layout()
    accuracy = folder / "style_accuracy.png"
    fig.savefig(accuracy, dpi=120)
    plt.close(fig)

    fig, axis = plt.subplots(figsize=(max(6, 1.1 * len(labels)), 3.5))
    axis.bar(x - 0.2, comparison[f"target_logit_{RETRIEVAL}"], 0.4, label="retrieval")
    axis.bar(x + 0.2, comparison[f"target_logit_{POSTFIX}"], 0.4, label="postfix")
    axis.axhline(0, color="black", linewidth=0.8)
    axis.set_ylabel("mean logit of the target style")
    axis.set_xticks(x, labels, fontsize=8)
    axis.legend(fontsize=8)
    fig.tight_layout()
    logits = folder / "target_logits.png"
    fig.savefig(logits, dpi=120)
    plt.close(fig)
    return [accuracy, logits]
