"""`prepare` stage: ingest each split's source into checked, content-addressed images and manifests.

It runs one side at a time (`rdm.artifacts.manifest.SIDES`), each a DVC stage of its own:
`training` (train and D_train) and `styles` (the style collections and the evaluation prompts).
Outputs (under `prepare.out`): `images/<split>/`, one manifest per split (`train.parquet`,
`d_train.parquet`, `styles.parquet`; a style collection is the rows of one style) and `prompts.parquet`.
Every rejected file is listed in `prepare.rejected/<side>.jsonl` and counted in `prepare.metrics/<side>.json`.
Splits are disjoint: a file met in an earlier split (the training side comes first) is a duplicate in a
later one.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd

from rdm.artifacts.manifest import (
    PROMPTS,
    SIDES,
    manifest_path,
    read_manifest,
    write_manifest,
    write_rejections,
)
from rdm.config import PrepareParams, S3Params
from rdm.data.images import Limits
from rdm.data.ingest import IngestResult, ingest
from rdm.data.sources import SourceError, open_source, read_table
from rdm.errors import UserError
from rdm.files import atomic_write_bytes, write_json


def limits_of(params: PrepareParams) -> Limits:
    return Limits(min_side=params.min_side, max_side=params.max_side, max_pixels=params.max_pixels)


def metrics_path(params: PrepareParams, side: str) -> Path:
    return Path(params.metrics) / f"{side}.json"


def rejections_path(params: PrepareParams, side: str) -> Path:
    return Path(params.rejected) / f"{side}.jsonl"


def style_sources(params: PrepareParams) -> list[str]:
    """`prepare.sources.styles` as a list: one source, or several gathered into the same collections."""
    styles = params.sources.styles
    return [styles] if isinstance(styles, str) else list(styles)


def read_prompts(spec: str) -> pd.DataFrame:
    """Evaluation prompts from a CSV, JSONL or parquet file with a `prompt` column."""
    path = Path(spec)
    if not path.is_file():
        raise SourceError(f"{spec}: no prompts file; fix prepare.sources.prompts or set it to null")
    table = read_table(path, path.suffix.lower(), spec, required="prompt")
    return table.astype(str)


def run(params: PrepareParams, s3: S3Params, progress: bool = True) -> dict[str, dict[str, Any]]:
    """Both sides, training first (what `rdm prepare` with no side does); metrics by side."""
    return {side: run_side(params, s3, side, progress) for side in SIDES}


def run_side(params: PrepareParams, s3: S3Params, side: str, progress: bool = True) -> dict[str, Any]:
    """Ingest the splits of one side; returns the counts also written to `prepare.metrics/<side>.json`."""
    started = time.perf_counter()
    out = Path(params.out)
    seen = {} if side == "training" else _training_ids(out)
    results: dict[str, IngestResult] = {}
    for split in SIDES[side]:
        results[split] = IngestResult()
        for spec in style_sources(params) if split == "styles" else [getattr(params.sources, split)]:
            part = ingest(
                open_source(spec, s3),
                split,
                out,
                limits_of(params),
                seen=seen,
                require_style=split == "styles",
                workers=params.workers,
                executor=params.executor,
                progress=progress,
            )
            results[split].records += part.records
            results[split].rejections += part.rejections
        write_manifest(results[split].records, manifest_path(out, split))
        _remove_unlisted_images(out, split, {r.path for r in results[split].records})
    prompts = None
    if side == "styles" and params.sources.prompts:
        prompts = read_prompts(params.sources.prompts)
        atomic_write_bytes(out / PROMPTS, prompts.to_parquet(index=False))

    write_rejections(
        rejections_path(params, side), (r.as_dict() for result in results.values() for r in result.rejections)
    )
    metrics = _metrics(results, prompts)
    write_json(metrics_path(params, side), metrics)
    _print_summary(metrics, side, out, params, time.perf_counter() - started)
    return metrics


def _training_ids(out: Path) -> dict[str, str]:
    """id -> source of every training-side image: the styles side rejects their duplicates."""
    seen: dict[str, str] = {}
    for split in SIDES["training"]:
        path = manifest_path(out, split)
        if not path.is_file():
            raise UserError(
                f"{path}: the training side is not prepared; run `rdm prepare training` "
                "(or `dvc repro prepare-training`) before the styles side"
            )
        table = read_manifest(path)
        seen |= dict(zip(table["id"], table["source"], strict=True))
    return seen


def _remove_unlisted_images(out: Path, split: str, listed: set[str]) -> None:
    """Images of files gone from the source (a refresh runs outside DVC, which would clear them)."""
    folder = out / "images" / split
    for path in folder.rglob("*") if folder.is_dir() else []:
        if path.is_file() and str(path.relative_to(out)) not in listed:
            path.unlink()


def _metrics(results: dict[str, IngestResult], prompts: pd.DataFrame | None) -> dict[str, Any]:
    """Counts only (no timings), so the same inputs give the same metrics file and dvc.lock."""
    rejected: Counter[str] = Counter()
    for result in results.values():
        rejected.update(result.reasons())
    total = {
        "seen": sum(r.seen for r in results.values()),
        "accepted": sum(len(r.records) for r in results.values()),
        "rejected": dict(sorted(rejected.items())),
    }
    metrics: dict[str, Any] = {split: result.counts() for split, result in results.items()}
    metrics["total"] = total
    if "styles" in results:
        collections = Counter(str(rec.style) for rec in results["styles"].records)
        metrics["collections"] = dict(sorted(collections.items()))
        metrics["prompts"] = 0 if prompts is None else len(prompts)
    return metrics


def _print_summary(
    metrics: dict[str, Any], side: str, out: Path, params: PrepareParams, seconds: float
) -> None:
    for split in SIDES[side]:
        m = metrics[split]
        reasons = ", ".join(f"{n} {reason}" for reason, n in m["rejected"].items()) or "none"
        print(f"prepare: {split:8s} {m['accepted']:6d} accepted of {m['seen']:6d} seen; rejected: {reasons}")
    if "collections" in metrics:
        print(
            f"prepare: {len(metrics['collections'])} style collections: "
            + ", ".join(f"{style} ({n})" for style, n in metrics["collections"].items())
        )
    print(
        f"prepare: {side} side done in {seconds:.1f} s; manifests and images in {out}/, metrics in "
        f"{metrics_path(params, side)}, rejections in {rejections_path(params, side)}"
    )
