"""Scoring the samples: per sample, then per style and method, with bootstrap intervals.

Methods (the `method` field of `samples.jsonl`):
    retrieval     the prompt, k neighbours from the target style's collection
    postfix       prompt + "in the style of X", k neighbours from D_train (the paper's baseline)
    postfix_text  the postfix text alone, no neighbours
    null          the all-zero context: a floor (what the model draws with no style information)
    other_style   retrieval from another style's collection: a floor for the target style, and a check
                  that the image follows the collection it was given (`collection_accuracy`)
Records from before the baselines and floors (retrieval and postfix only) score the same way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from rdm.artifacts.samples import FLOORS, POSTFIX, POSTFIX_TEXT, RETRIEVAL, on_style_share
from rdm.evaluation.bootstrap import Interval, bootstrap_mean
from rdm.evaluation.classifier import FittedClassifier
from rdm.evaluation.labels import hits
from rdm.evaluation.metrics import cosine_similarity, frechet_distance
from rdm.retrieval.store import style_collection

BASELINES = (POSTFIX, POSTFIX_TEXT)
"""What retrieval is compared with, pair by pair."""
METHOD_ORDER = (RETRIEVAL, *BASELINES, *FLOORS)
WITH_INTERVALS = ("accuracy", "target_logit")
PLAIN_MEANS = (
    "clip_score",
    "on_style_neighbors",
    "content_hits",
    "colour_hits",
    "context_content_hits",
    "context_colour_hits",
    "collection_accuracy",
)
"""Per style and method, means without intervals (NaN where no sample has a value). `context_*_hits`:
the share of a sample's retrieved neighbours that the judge labels as its prompt asks, what the
context offered beside what the sample shows (`*_hits`)."""
METRICS = (*WITH_INTERVALS, "frechet", *PLAIN_MEANS)
"""Per style and method; `accuracy` and `target_logit` also with `_low` / `_high` (95 % interval)."""
PAIR_KEY = ["prompt", "seed"]
"""What makes request i of one (style, method) the pair of request i of another (`plan`'s guarantee)."""


def sample_scores(
    records: Sequence[dict[str, Any]],
    features: np.ndarray,
    prompt_vectors: Mapping[str, np.ndarray],
    fitted: FittedClassifier,
    judges: Mapping[str, tuple[FittedClassifier, Mapping[str, str]]] | None = None,
) -> pd.DataFrame:
    """One row per sample (records and their (N, D) CLIP features): whether the style classifier names
    the target style, its logit, the CLIP similarity to the prompt, the share of on-style neighbours,
    for `other_style` whether it names the collection's style, and for each judge
    (name -> (classifier, expected label per prompt), e.g. "content") a `<name>_hits` column
    (NaN for prompts with no expected label)."""
    styles = fitted.classifier.styles
    for n, record in enumerate(records):
        missing = [f for f in ("style", "method", "prompt", "seed") if f not in record]
        if missing:
            raise ValueError(f"samples.jsonl line {n + 1} ({record.get('file')}): no field {missing}")
    unknown = sorted({r["style"] for r in records} - set(styles))
    if unknown:
        raise ValueError(f"samples of style(s) {unknown} that the classifier was not trained on ({styles})")
    logits = fitted.classifier.logits(features)  # (N, styles)
    rows = np.arange(len(records))
    target = np.array([styles.index(r["style"]) for r in records])
    given = [_collection_style(r.get("collection")) for r in records]
    given_index = np.array([styles.index(s) if s in styles else -1 for s in given])
    predicted = logits.argmax(1)
    samples = pd.DataFrame(
        {
            "style": [r["style"] for r in records],
            "method": [r["method"] for r in records],
            "prompt": [r["prompt"] for r in records],
            "seed": [r["seed"] for r in records],
            "correct": (predicted == target).astype(float),
            "target_logit": logits[rows, target],
            "clip_score": cosine_similarity(
                features, np.stack([prompt_vectors[r["prompt"]] for r in records])
            ),
            "on_style_neighbors": [on_style_share(r.get("neighbors", []), r["style"]) for r in records],
            "collection_correct": np.where(
                (given_index >= 0) & (given_index != target), (predicted == given_index).astype(float), np.nan
            ),
        }
    )
    for name, (judge, expected) in (judges or {}).items():
        samples[f"{name}_hits"] = hits(
            judge.classifier.predict(features), [expected.get(r["prompt"]) for r in records]
        )
    return samples


def context_hits(
    records: Sequence[dict[str, Any]],
    neighbor_vectors: Mapping[str, np.ndarray],
    judges: Mapping[str, tuple[FittedClassifier, Mapping[str, str]]],
) -> dict[str, np.ndarray]:
    """Per judge, `context_<name>_hits` (N,): the share of each sample's neighbours (their (D,) vectors
    by id) that the judge labels as the sample's prompt expects; NaN for a sample without neighbours,
    with a neighbour of unknown vector, or whose prompt expects nothing."""
    columns: dict[str, np.ndarray] = {}
    for name, (judge, expected) in judges.items():
        shares = np.full(len(records), np.nan)
        for n, record in enumerate(records):
            ids = [str(m["id"]) for m in record.get("neighbors", [])]
            wanted = expected.get(record["prompt"])
            if ids and wanted is not None and all(i in neighbor_vectors for i in ids):
                labels = judge.classifier.predict(np.stack([neighbor_vectors[i] for i in ids]))
                shares[n] = float(np.mean([label == wanted for label in labels]))
        columns[f"context_{name}_hits"] = shares
    return columns


def _collection_style(collection: str | None) -> str | None:
    """The style whose collection this is ("style-neon" -> "neon"); None for D_train, no collection, or
    an old record without the field."""
    prefix = style_collection("")
    return collection.removeprefix(prefix) if collection and collection.startswith(prefix) else None


def score_table(
    samples: pd.DataFrame,
    features: np.ndarray,
    references: Mapping[str, np.ndarray],
    held_out: set[str],
    resamples: int,
    seed: int,
) -> pd.DataFrame:
    """One row per style and method (METHOD_ORDER first): the means of `sample_scores` with 95 %
    intervals of accuracy and target logit, and the Frechet distance of the samples' (N, D) features
    to the style's (M, D) reference features in `references` (NaN for fewer than 2 on either side)."""
    rows = []
    for (style, method), group in samples.groupby(["style", "method"], sort=True):
        row: dict[str, Any] = {
            "style": style,
            "method": method,
            "held_out": style in held_out,
            "samples": len(group),
        }
        for metric in WITH_INTERVALS:
            interval = bootstrap_mean(group[_column(metric)].to_numpy(), resamples=resamples, seed=seed)
            row |= {metric: interval.estimate, f"{metric}_low": interval.low, f"{metric}_high": interval.high}
        members = features[group.index.to_numpy()]
        reference = references.get(str(style))
        row["frechet"] = (
            frechet_distance(members, reference)
            if reference is not None and len(members) >= 2 and len(reference) >= 2
            else np.nan
        )
        for metric in PLAIN_MEANS:
            column = _column(metric)
            row[metric] = (
                float(np.nanmean(group[column]))
                if column in group and group[column].notna().any()
                else np.nan
            )
        rows.append(row)
    table = pd.DataFrame(rows)
    order = {m: n for n, m in enumerate(METHOD_ORDER)}
    table["order"] = table["method"].map(lambda m: order.get(m, len(order)))
    return table.sort_values(["style", "order"]).drop(columns="order").reset_index(drop=True)


def _column(metric: str) -> str:
    """The per-sample column behind a per-style metric."""
    return {"accuracy": "correct", "collection_accuracy": "collection_correct"}.get(metric, metric)


def paired_differences(
    samples: pd.DataFrame, baseline: str, styles: Sequence[str] | None, resamples: int, seed: int
) -> Interval | None:
    """Accuracy of retrieval minus `baseline` over pairs (same style, prompt and seed), with its 95 %
    interval. styles: one style, or several (then the mean over them of each style's mean difference,
    resampled within each style); None: every style. None when no sample has its pair."""
    pairs = _pairs(samples, baseline)
    if styles is not None:
        pairs = pairs[pairs["style"].isin(styles)]
    if pairs.empty:
        return None
    difference = (pairs["correct_a"] - pairs["correct_b"]).to_numpy()  # (P,) in {-1, 0, 1}
    return bootstrap_mean(difference, pairs["style"].to_numpy(), resamples, seed)


def _pairs(samples: pd.DataFrame, baseline: str) -> pd.DataFrame:
    keep = ["style", *PAIR_KEY, "correct"]
    a = samples.loc[samples["method"] == RETRIEVAL, keep].drop_duplicates(["style", *PAIR_KEY])
    b = samples.loc[samples["method"] == baseline, keep].drop_duplicates(["style", *PAIR_KEY])
    return a.merge(b, on=["style", *PAIR_KEY], suffixes=("_a", "_b"))


def mean_over_styles(
    samples: pd.DataFrame, method: str, metric: str, styles: Sequence[str], resamples: int, seed: int
) -> Interval | None:
    """A metric of one method averaged over `styles` (each style once), with its stratified interval;
    None when the method has no samples of those styles."""
    rows = samples[(samples["method"] == method) & samples["style"].isin(styles)]
    if rows.empty:
        return None
    return bootstrap_mean(rows[_column(metric)].to_numpy(), rows["style"].to_numpy(), resamples, seed)


def ceiling(
    fitted: FittedClassifier,
    reconstructions: np.ndarray,
    styles: Sequence[str],
    originals: np.ndarray | None,
    resamples: int,
    seed: int,
) -> dict[str, Any]:
    """The best a sample can score: the classifier's top-1 on (R, D) CLIP features of autoencoder
    reconstructions of collection images it never trained on (every image goes through the autoencoder
    before it becomes a sample), beside its top-1 on those images' originals ((R, D), where known)."""
    names = fitted.classifier.styles
    unknown = sorted(set(styles) - set(names))
    if unknown:
        raise ValueError(f"reconstructions of style(s) {unknown} that the classifier does not know")
    target = np.array([names.index(s) for s in styles])
    report: dict[str, Any] = {"images": len(styles)}
    for name, features in (("reconstructions", reconstructions), ("originals", originals)):
        if features is not None:
            correct = (fitted.classifier.logits(features).argmax(1) == target).astype(float)
            report[name] = bootstrap_mean(correct, np.asarray(styles), resamples, seed).as_dict()
    return report
