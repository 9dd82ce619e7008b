"""The style evaluation's report (the paper's Fig. 4, with intervals, floors and a ceiling): the wide
per-style table (`style_accuracy.csv`), the JSON summary (`evaluate.json`) and the printed table.

Every number a claim rests on has a 95 % bootstrap interval; retrieval's gain over a baseline is the
paired difference in accuracy (`scores.paired_differences`). Means over styles weigh every style once,
the styles seen in training apart from the held-out (zero-shot) ones.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from rdm.artifacts.samples import FLOORS, NULL, OTHER_STYLE, POSTFIX, POSTFIX_TEXT, RETRIEVAL
from rdm.evaluation.bootstrap import Interval
from rdm.evaluation.classifier import FittedClassifier
from rdm.evaluation.scores import (
    BASELINES,
    METHOD_ORDER,
    METRICS,
    WITH_INTERVALS,
    mean_over_styles,
    paired_differences,
)

HELD_OUT_MARK = "*"


def style_differences(samples: pd.DataFrame, resamples: int, seed: int) -> pd.DataFrame:
    """Per style and baseline: retrieval's accuracy minus the baseline's over pairs, with its interval
    (columns style, baseline, estimate, low, high, n; no row where a baseline has no pairs)."""
    rows = []
    for style in sorted(samples["style"].unique()):
        for baseline in BASELINES:
            interval = paired_differences(samples, baseline, [style], resamples, seed)
            if interval is not None:
                rows.append({"style": style, "baseline": baseline, **interval.as_dict()})
    return pd.DataFrame(rows, columns=["style", "baseline", "estimate", "low", "high", "n"])


def compare_methods(table: pd.DataFrame, differences: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per style: each metric for every method (`<metric>_<method>`), retrieval minus each
    baseline with its interval (`difference_<baseline>`, `_low`, `_high`), and the relative improvement
    of retrieval over postfix, (acc_retrieval - acc_postfix) / acc_postfix (Fig. 4a; NaN where postfix
    is 0)."""
    columns = [c for c in table.columns if c not in ("style", "method", "held_out")]
    wide = table.pivot(index="style", columns="method", values=columns)
    wide.columns = [_wide_name(metric, method) for metric, method in wide.columns]
    retrieval, postfix = wide.get(f"accuracy_{RETRIEVAL}"), wide.get(f"accuracy_{POSTFIX}")
    wide["relative_improvement"] = (
        (retrieval - postfix) / postfix.replace(0.0, np.nan)
        if retrieval is not None and postfix is not None
        else np.nan
    )
    for _, row in (differences if differences is not None else pd.DataFrame()).iterrows():
        for part, suffix in (("estimate", ""), ("low", "_low"), ("high", "_high")):
            wide.loc[row["style"], f"difference_{row['baseline']}{suffix}"] = row[part]
    held = table.groupby("style")["held_out"].first()
    return wide.assign(held_out=held).reset_index()


def _wide_name(metric: str, method: str) -> str:
    """("accuracy", "retrieval") -> "accuracy_retrieval"; ("accuracy_low", "retrieval") ->
    "accuracy_retrieval_low", so an interval's columns sit beside its estimate's name."""
    for side in ("_low", "_high"):
        if metric.endswith(side):
            return f"{metric.removesuffix(side)}_{method}{side}"
    return f"{metric}_{method}"


def summary(
    samples: pd.DataFrame, table: pd.DataFrame, fitted: FittedClassifier, resamples: int, seed: int
) -> dict[str, Any]:
    """The report's metrics: the style classifier; every method averaged over the seen styles and over
    the held-out styles (with intervals and retrieval's paired differences); the floors over all
    styles; and every style and method."""
    held_styles = sorted(table.loc[table["held_out"].astype(bool), "style"].unique())
    seen_styles = sorted(set(table["style"]) - set(held_styles))
    everything = sorted(table["style"].unique())
    report: dict[str, Any] = {
        "classifier": classifier_report(fitted),
        "seen_styles": _averaged(samples, table, seen_styles, resamples, seed),
    }
    if held_styles:
        report["held_out_styles"] = _averaged(samples, table, held_styles, resamples, seed)
    floors: dict[str, dict[str, Any]] = {}
    for method in FLOORS:
        accuracy = mean_over_styles(samples, method, "accuracy", everything, resamples, seed)
        if accuracy is not None:
            floors[method] = {"accuracy": _interval(accuracy)}
    # does other_style draw the collection it was given? (the floor's other side)
    followed = mean_over_styles(samples, OTHER_STYLE, "collection_accuracy", everything, resamples, seed)
    if followed is not None and followed.n:
        floors[OTHER_STYLE]["collection_accuracy"] = _interval(followed)
    if floors:
        report["floors"] = floors
    report["styles"] = {}
    for style, rows in table.groupby("style"):
        block: dict[str, Any] = {str(r["method"]): _metrics(r) for _, r in rows.iterrows()}
        for baseline in BASELINES:
            difference = paired_differences(samples, baseline, [str(style)], resamples, seed)
            if difference is not None:
                block[f"{RETRIEVAL}_minus_{baseline}"] = _interval(difference)
        report["styles"][str(style)] = block
    return report


def classifier_report(fitted: FittedClassifier) -> dict[str, Any]:
    """A classifier's top-1 on its held-out images, chance, and how many images it rests on."""
    return {
        "holdout_top1": round(fitted.holdout_accuracy, 4),
        "chance": round(1 / len(fitted.classifier.styles), 4),
        "train_images": fitted.train_size,
        "holdout_images": fitted.holdout_size,
    }


def _averaged(
    samples: pd.DataFrame, table: pd.DataFrame, styles: Sequence[str], resamples: int, seed: int
) -> dict[str, Any]:
    """Every method's metrics averaged over `styles` (each style once); accuracy and target logit from
    the stratified bootstrap, with `_low` / `_high`."""
    rows = table[table["style"].isin(styles)]
    block: dict[str, Any] = {"styles": len(styles)}
    for method in [m for m in METHOD_ORDER if m in set(rows["method"])]:
        mine = rows[rows["method"] == method]
        means = {m: _number(mine[m].mean()) for m in METRICS if m in mine}
        for metric in WITH_INTERVALS:
            interval = mean_over_styles(samples, method, metric, styles, resamples, seed)
            if interval is not None:
                means |= {
                    metric: _number(interval.estimate),
                    f"{metric}_low": _number(interval.low),
                    f"{metric}_high": _number(interval.high),
                }
        block[method] = means
    retrieval = block.get(RETRIEVAL, {}).get("accuracy")
    postfix = block.get(POSTFIX, {}).get("accuracy")
    block["relative_improvement"] = (
        None if retrieval is None or not postfix else round((retrieval - postfix) / postfix, 4)
    )
    for baseline in BASELINES:
        difference = paired_differences(samples, baseline, styles, resamples, seed)
        if difference is not None:
            block[f"{RETRIEVAL}_minus_{baseline}"] = _interval(difference)
    return block


def _metrics(row: pd.Series) -> dict[str, Any]:
    names = [*METRICS, *(f"{m}_{side}" for m in WITH_INTERVALS for side in ("low", "high"))]
    return {"samples": int(row["samples"])} | {m: _number(row[m]) for m in names if m in row}


def _interval(interval: Interval) -> dict[str, Any]:
    return {k: v if k == "n" else _number(v) for k, v in interval.as_dict().items()}


def _number(value: Any) -> float | None:
    """Rounded for the JSON report; None where there is no number (JSON has no NaN)."""
    return None if value is None or pd.isna(value) else round(float(value), 4)


# --- the printed table -------------------------------------------------------------------------------


def format_table(comparison: pd.DataFrame, metrics: Mapping[str, Any] | None = None) -> str:
    """The table people read (under 110 characters wide): per style the accuracy of retrieval, postfix
    and postfix_text, retrieval - postfix with its 95 % interval, target logits, and the share of
    samples showing the prompt's content and colour (retrieval / postfix). With the JSON `metrics`, the
    means over seen and held-out styles with intervals, the floors, the ceiling, the conditioning
    sensitivity and the classifiers follow; without, the plain mean over the seen styles."""
    header = (
        f"{'style':15s} {'retr':>5s} {'post':>5s} {'ptxt':>5s}  {'retr-post [95% CI]':>19s}  "
        f"{'logit r':>7s} {'logit p':>7s}  {'content r/p':>11s}  {'colour r/p':>11s}"
    )
    lines = [header]
    for _, row in comparison.iterrows():
        name = f"{row['style']}{HELD_OUT_MARK if _flag(row.get('held_out')) else ''}"
        lines.append(
            _row(
                name,
                {m: row.get(f"accuracy_{m}") for m in (RETRIEVAL, POSTFIX, POSTFIX_TEXT)},
                [row.get(f"difference_{POSTFIX}{s}") for s in ("", "_low", "_high")],
                [row.get(f"target_logit_{m}") for m in (RETRIEVAL, POSTFIX)],
                [row.get(f"content_hits_{m}") for m in (RETRIEVAL, POSTFIX)],
                [row.get(f"colour_hits_{m}") for m in (RETRIEVAL, POSTFIX)],
            )
        )
    if metrics is None:
        seen = comparison[~comparison["held_out"].map(_flag)]
        if len(seen):
            means = {
                m: seen[f"accuracy_{m}"].mean()
                for m in (RETRIEVAL, POSTFIX, POSTFIX_TEXT)
                if f"accuracy_{m}" in seen
            }
            lines.append(_row("seen styles", means, [None] * 3, [None] * 2, [None] * 2, [None] * 2))
    else:
        lines.extend(_summary_lines(metrics))
    if comparison["held_out"].map(_flag).any():
        lines.append(f"{HELD_OUT_MARK} held out of training, D_train and captions (zero-shot)")
    return "\n".join(lines)


def _summary_lines(metrics: Mapping[str, Any]) -> list[str]:
    lines = []
    for key, label in (("seen_styles", "seen styles"), ("held_out_styles", "held-out styles")):
        block = metrics.get(key)
        if not block:
            continue
        difference = block.get(f"{RETRIEVAL}_minus_{POSTFIX}") or {}
        lines.append(
            _row(
                f"{label} ({block['styles']})"[:15] if "styles" in block else label,
                {m: (block.get(m) or {}).get("accuracy") for m in (RETRIEVAL, POSTFIX, POSTFIX_TEXT)},
                [difference.get(k) for k in ("estimate", "low", "high")],
                [(block.get(m) or {}).get("target_logit") for m in (RETRIEVAL, POSTFIX)],
                [(block.get(m) or {}).get("content_hits") for m in (RETRIEVAL, POSTFIX)],
                [(block.get(m) or {}).get("colour_hits") for m in (RETRIEVAL, POSTFIX)],
            )
        )
        intervals = [
            f"{short} {_pct(block[m].get('accuracy'))} [{_pct(block[m].get('accuracy_low'))},"
            f"{_pct(block[m].get('accuracy_high'))}]"
            for m, short in ((RETRIEVAL, "retr"), (POSTFIX, "post"), (POSTFIX_TEXT, "ptxt"))
            if isinstance(block.get(m), dict) and "accuracy_low" in block[m]
        ]
        if intervals:  # reports from before the intervals have none
            lines.append(f"{'':15s} accuracy 95% CI: " + "  ".join(intervals))
        offered = block.get(RETRIEVAL) or {}
        if offered.get("context_content_hits") is not None:  # what retrieval's neighbours showed
            content, colour = (_pct(offered.get(f"context_{n}_hits")) for n in ("content", "colour"))
            lines.append(f"{'':15s} retr's neighbours show the prompt's content {content}, colour {colour}")
    floors = metrics.get("floors", {})
    if NULL in floors:
        lines.append(f"{'floor':15s} null context: target style {_ci(floors[NULL]['accuracy'])}")
    if OTHER_STYLE in floors:
        followed = floors[OTHER_STYLE].get("collection_accuracy")
        lines.append(
            f"{'floor':15s} another collection: target style {_ci(floors[OTHER_STYLE]['accuracy'])}"
            + (f"; the collection's style {_ci(followed)}" if followed else "")
        )
    top = metrics.get("ceiling")
    if top:
        originals = top.get("originals")
        lines.append(
            f"{'ceiling':15s} AE reconstructions {_ci(top['reconstructions'])}"
            + (f", originals {_ci(originals)}" if originals else "")
            + f" ({top['images']} unseen collection images)"
        )
    else:
        lines.append(f"{'ceiling':15s} no autoencoder reconstructions to score")
    sensitivity = metrics.get("sensitivity")
    if sensitivity:
        ratios = ", ".join(
            f"{space} {_fixed((sensitivity.get(space) or {}).get('ratio'))}" for space in ("pixels", "clip")
        )
        lines.append(
            f"{'sensitivity':15s} retrieval, across collections / across seeds: {ratios} "
            f"(goal >= {sensitivity.get('goal', 0.5)})"
        )
    judged = [
        f"{name} {_pct(metrics[key]['holdout_top1'])}"
        for name, key in (
            ("style", "classifier"),
            ("content", "content_classifier"),
            ("colour", "colour_classifier"),
        )
        if key in metrics
    ]
    if judged:
        chance = metrics.get("classifier", {}).get("chance")
        lines.append(
            f"{'classifiers':15s} held-out top-1: " + ", ".join(judged) + f" (style chance {_pct(chance)})"
        )
    return lines


def _row(
    name: str,
    accuracy: Mapping[str, Any],
    difference: Sequence[Any],
    logits: Sequence[Any],
    content: Sequence[Any],
    colour: Sequence[Any],
) -> str:
    estimate, low, high = difference
    interval = "n/a" if _missing(estimate) else f"{_pct(estimate, '+')} [{_pct(low, '+')},{_pct(high, '+')}]"
    return (
        f"{name:15s} {_pct(accuracy.get(RETRIEVAL)):>5s} {_pct(accuracy.get(POSTFIX)):>5s} "
        f"{_pct(accuracy.get(POSTFIX_TEXT)):>5s}  {interval:>19s}  "
        f"{_fixed(logits[0]):>7s} {_fixed(logits[1]):>7s}  "
        f"{_pct(content[0]) + '/' + _pct(content[1]):>11s}  {_pct(colour[0]) + '/' + _pct(colour[1]):>11s}"
    )


def _missing(value: Any) -> bool:
    return value is None or bool(pd.isna(value))


def _pct(value: Any, sign: str = "") -> str:
    return "-" if _missing(value) else f"{float(value):{sign}.0%}"


def _fixed(value: Any) -> str:
    return "-" if _missing(value) else f"{float(value):.2f}"


def _ci(interval: Mapping[str, Any]) -> str:
    return f"{_pct(interval.get('estimate'))} [{_pct(interval.get('low'))},{_pct(interval.get('high'))}]"


def _flag(value: Any) -> bool:
    """held_out as written (bool) or read back from CSV ("True"/"False", or bool)."""
    return str(value).strip().lower() == "true"
