"""`prepare` stage: ingest each split's source into checked, content-addressed images and manifests.

Outputs (under `prepare.out`): `images/`, one manifest per split (`train.parquet`, `d_train.parquet`,
`styles.parquet`; a style collection is the rows of one style) and `prompts.parquet`.
Every rejected file is listed in `prepare.rejected` and counted in `prepare.metrics`.
Splits are disjoint: a file met in an earlier split is a duplicate in a later one.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd

from rdm.artifacts.manifest import write_manifest, write_rejections
from rdm.config import PrepareParams, S3Params
from rdm.data.images import Limits
from rdm.data.ingest import IngestResult, ingest
from rdm.data.sources import SourceError, open_source, read_table
from rdm.files import atomic_write_bytes, write_json

SPLITS = ("train", "d_train", "styles")


def limits_of(params: PrepareParams) -> Limits:
    return Limits(min_side=params.min_side, max_side=params.max_side, max_pixels=params.max_pixels)


def read_prompts(spec: str) -> pd.DataFrame:
    """Evaluation prompts from a CSV, JSONL or parquet file with a `prompt` column."""
    path = Path(spec)
    if not path.is_file():
        raise SourceError(f"{spec}: no prompts file; fix prepare.sources.prompts or set it to null")
    table = read_table(path, path.suffix.lower(), spec, required="prompt")
    return table.astype(str)


def run(params: PrepareParams, s3: S3Params, progress: bool = True) -> dict[str, Any]:
    started = time.perf_counter()
    out = Path(params.out)
    sources = {split: open_source(getattr(params.sources, split), s3) for split in SPLITS}
    prompts = read_prompts(params.sources.prompts) if params.sources.prompts else None

    seen: dict[str, str] = {}
    results: dict[str, IngestResult] = {}
    for split, source in sources.items():
        results[split] = ingest(
            source,
            split,
            out,
            limits_of(params),
            seen=seen,
            require_style=split == "styles",
            workers=params.workers,
            progress=progress,
        )
        write_manifest(results[split].records, out / f"{split}.parquet")
    if prompts is not None:
        buffer = prompts.to_parquet(index=False)
        atomic_write_bytes(out / "prompts.parquet", buffer)

    write_rejections(
        Path(params.rejected), (r.as_dict() for result in results.values() for r in result.rejections)
    )
    metrics = _metrics(results, 0 if prompts is None else len(prompts))
    write_json(Path(params.metrics), metrics)
    _print_summary(metrics, out, params, time.perf_counter() - started)
    return metrics


def _metrics(results: dict[str, IngestResult], prompts: int) -> dict[str, Any]:
    """Counts only (no timings), so the same inputs give the same metrics file and dvc.lock."""
    rejected: Counter[str] = Counter()
    for result in results.values():
        rejected.update(result.reasons())
    total = {
        "seen": sum(r.seen for r in results.values()),
        "accepted": sum(len(r.records) for r in results.values()),
        "rejected": dict(sorted(rejected.items())),
    }
    collections = Counter(rec.style for rec in results["styles"].records)
    return {split: result.counts() for split, result in results.items()} | {
        "total": total,
        "collections": dict(sorted(collections.items())),
        "prompts": prompts,
    }


def _print_summary(metrics: dict[str, Any], out: Path, params: PrepareParams, seconds: float) -> None:
    for split in SPLITS:
        m = metrics[split]
        reasons = ", ".join(f"{n} {reason}" for reason, n in m["rejected"].items()) or "none"
        print(f"prepare: {split:8s} {m['accepted']:6d} accepted of {m['seen']:6d} seen; rejected: {reasons}")
    print(
        f"prepare: {len(metrics['collections'])} style collections: "
        + ", ".join(f"{style} ({n})" for style, n in metrics["collections"].items())
    )
    print(
        f"prepare: done in {seconds:.1f} s; manifests and images in {out}/, metrics in {params.metrics}, "
        f"rejections in {params.rejected}"
    )
