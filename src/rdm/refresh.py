"""Refresh of the style collections from their sources (`prepare.sources.styles`: folders or s3://
prefixes of `<style>/<image>`), as the scheduled `refresh-style-collections` flow runs it.

It is the pipeline's own way of building collections, the styles side of `prepare` then of `embed`, run
on the sources as they are now: every file is hashed, only images never embedded go through CLIP, and
each collection whose images changed is published as a new version in one atomic step. The training
side (train, D_train, their embeddings, CLIP, the autoencoder, the model) is never read for writing, so
a refresh never makes a training stale. A refresh and `dvc repro` build the same collections from the
same source and neither undoes the other (the flow then records the new data version with
`dvc commit prepare-styles embed-styles`). One refresh runs at a time per store.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd

from rdm.artifacts.manifest import manifest_path, read_manifest, read_rejections, styles_side_lock
from rdm.config import Config
from rdm.evaluation.split import classifier_share
from rdm.files import exclusive, write_json
from rdm.retrieval.store import style_collection
from rdm.stages import embed, prepare


def _sources_by_style(manifest: Path) -> dict[str, dict[str, str]]:
    """style -> {source location: image id} of the last prepared style manifest."""
    if not manifest.is_file():
        return {}
    table = read_manifest(manifest)
    return {
        str(style): dict(zip(rows["source"].astype(str), rows["id"].astype(str), strict=True))
        for style, rows in table.groupby("style", sort=True)
    }


def _rejected_by_style(rejected: Path) -> dict[str, int]:
    """How many images of each style the last ingestion of the styles side rejected."""
    rows = read_rejections(rejected)
    return dict(
        Counter(str(row["style"]) for row in rows if row.get("split") == "styles" and row.get("style"))
    )


def compare(before: dict[str, str], after: dict[str, str]) -> dict[str, int]:
    """Counts of one style's images added, changed (same location, new bytes) and removed, from
    {location: image id} before and after. Counted by content: an image whose file only moved (a
    renamed folder, a source moved elsewhere) is none of these, as it costs the collection nothing."""
    changed = {location for location, image in after.items() if before.get(location, image) != image}
    before_ids, after_ids = set(before.values()), set(after.values())
    return {
        "added": len(after_ids - before_ids - {after[location] for location in changed}),
        "changed": len(changed),
        "removed": len(before_ids - after_ids - {before[location] for location in changed}),
    }


def run(config: Config, progress: bool = True) -> dict[str, Any]:
    """Bring every style collection up to date with the styles source; returns the summary that is
    also written to `refresh.metrics`."""
    started = time.perf_counter()
    manifest = manifest_path(Path(config.prepare.out), "styles")
    with exclusive(styles_side_lock(config.store.path), "the style collections"):
        before = _sources_by_style(manifest)
        prepare.run_side(config.prepare, config.s3, "styles", progress)
        keep_out = classifier_share(config)
        clip_dir, prepared = Path(config.clip.out), Path(config.prepare.out)
        embedded = embed.run(config.embed, config.store, clip_dir, prepared, progress, keep_out, ["styles"])
        after = _sources_by_style(manifest)
        rejected = _rejected_by_style(prepare.rejections_path(config.prepare, "styles"))
    styles: dict[str, dict[str, int]] = {}
    for style in sorted(set(before) | set(after) | set(rejected)):
        collection = embedded["collections"].get(style_collection(style), {"points": 0})
        styles[style] = compare(before.get(style, {}), after.get(style, {})) | {
            "rejected": rejected.get(style, 0),
            "points": collection["points"],
        }
    summary = {
        "source": ", ".join(prepare.style_sources(config.prepare)),
        "styles": styles,
        "added": sum(s["added"] for s in styles.values()),
        "changed": sum(s["changed"] for s in styles.values()),
        "removed": sum(s["removed"] for s in styles.values()),
        "rejected": sum(s["rejected"] for s in styles.values()),
        "embedded": embedded["embedded"]["styles"],
        "seconds": round(time.perf_counter() - started, 2),
    }
    write_json(Path(config.refresh.metrics), summary)
    print(format_summary(summary))
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    table = pd.DataFrame.from_dict(summary["styles"], orient="index")
    return (
        f"refresh: {summary['source']}: +{summary['added']} added, {summary['changed']} changed, "
        f"-{summary['removed']} removed, {summary['rejected']} rejected; {summary['embedded']} images "
        f"embedded in {summary['seconds']:.1f} s\n{table.to_string()}"
    )
