"""`embed` stage: every prepared image through CLIP, then into the collections.

It runs one side at a time (`rdm.artifacts.manifest.SIDES`), each a DVC stage of its own.
Embeddings go to `embed.out/<split>/` (resumable chunks: a rerun embeds only what is missing).
Collections: `d_train` (training side) and one `style-<name>` per style (styles side), each point
carrying the image id, path, caption, style and split. Writing a collection adds what is missing and
removes what is no longer in the manifest, so the collection always ends equal to the manifest.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rdm.artifacts.clip import ClipCard
from rdm.artifacts.embeddings import VectorChunks
from rdm.artifacts.manifest import SIDES, manifest_path, read_manifest
from rdm.config import EmbedParams, StoreParams
from rdm.embedding import model as clip_model
from rdm.embedding.encode import encode_paths
from rdm.embedding.on_ray import embed_on_ray
from rdm.files import write_json
from rdm.retrieval.backends import open_store
from rdm.retrieval.store import D_TRAIN, VectorStore, ids_digest, style_collection


def embed_split(
    clip: clip_model.Clip,
    manifest: pd.DataFrame,
    prepared: Path,
    chunks: VectorChunks,
    params: EmbedParams,
    split: str,
    progress: bool = True,
) -> int:
    """Embed the rows not embedded yet, checkpointing every `chunk_size` images; returns how many.
    With `embed.executor: ray` the work runs on a Ray cluster, whose actors load the CLIP from its folder."""
    known = chunks.known_ids()
    todo = manifest[~manifest["id"].isin(known)]
    if params.executor == "ray" and len(todo):
        embed_on_ray(
            clip.folder,
            manifest_path(prepared, split),
            prepared,
            chunks,
            params,
            clip.image_size,
            len(todo),
            desc=f"embed {split}",
            progress=progress,
        )
        return len(todo)
    for start in range(0, len(todo), params.chunk_size):
        rows = todo.iloc[start : start + params.chunk_size]
        batches = encode_paths(
            clip,
            [prepared / p for p in rows["path"]],
            params.batch_size,
            params.workers,
            desc=f"embed {split} {start}/{len(todo)}",
            progress=progress,
        )
        chunks.append(list(rows["id"]), np.concatenate(list(batches)))
    return len(todo)


def fill_collection(
    store: VectorStore,
    name: str,
    rows: pd.DataFrame,
    chunks: VectorChunks,
    card: ClipCard,
    prepared: Path,
    rebuild_mismatched: bool = False,
) -> dict[str, int]:
    """Make collection `name` hold exactly `rows`; returns counts of what changed.

    The change is published as a new version in one atomic step (readers see the old points or the
    new, never a mix); with nothing to change, no version is made. A collection built with another
    CLIP is refused before anything is written, or, with `rebuild_mismatched`, built again.
    """
    wanted = set(rows["id"])
    if (
        store.exists(name)
        and store.built_with(name) == (card.embed_dim, card.model, card.fingerprint)
        and store.published_digest(name) == ids_digest(wanted)
    ):
        return {"points": len(wanted), "added": 0, "removed": 0}  # up to date: no copy, no version
    with store.revision(name, card, rebuild_mismatched) as draft:
        stored = store.ids(draft.name)
        new = rows[~rows["id"].isin(stored)]
        if len(new):
            payloads = [
                {
                    "id": r.id,
                    "path": str(prepared / r.path),
                    "caption": None if pd.isna(r.caption) else r.caption,  # sources without captions
                    "style": None if pd.isna(r.style) else r.style,
                    "split": r.split,
                }
                for r in new.itertuples()
            ]
            store.upsert(draft.name, list(new["id"]), chunks.vectors_for(list(new["id"])), payloads)
        removed = sorted(stored - wanted)
        store.delete(draft.name, removed)
        draft.changed |= bool(len(new) or removed)
    return {"points": len(wanted), "added": len(new), "removed": len(removed)}


def run(
    params: EmbedParams,
    store_params: StoreParams,
    clip_dir: Path,
    prepared: Path,
    progress: bool = True,
    keep_out: Collection[str] = (),
    sides: Sequence[str] = tuple(SIDES),
) -> dict[str, Any]:
    """Embed the splits of each side (`rdm.artifacts.manifest.SIDES`, both by default) and fill its
    collections: D_train for the training side, one per style for the styles side. `keep_out`: style
    images that no collection may hold (the style classifier's share,
    `rdm.evaluation.split.classifier_ids`); they are still embedded. Returns what was embedded by split
    and the counts by collection."""
    clip = clip_model.load(clip_dir, "cpu" if params.executor == "ray" else params.device)
    report: dict[str, Any] = {"clip": clip.card.model, "fingerprint": clip.card.fingerprint}
    report |= {"executor": params.executor, "embedded": {}, "collections": {}}
    for side in sides:
        done = run_side(clip, params, store_params, prepared, side, progress, keep_out)
        report["embedded"] |= done["embedded"]
        report["collections"] |= done["collections"]
    return report


def run_side(
    clip: clip_model.Clip,
    params: EmbedParams,
    store_params: StoreParams,
    prepared: Path,
    side: str,
    progress: bool,
    keep_out: Collection[str],
) -> dict[str, Any]:
    splits = SIDES[side]
    manifests = {split: read_manifest(manifest_path(prepared, split)) for split in splits}
    chunks = {split: VectorChunks(Path(params.out) / split, clip.card) for split in splits}
    report: dict[str, Any] = {"embedded": {}}
    for split in splits:
        report["embedded"][split] = embed_split(
            clip, manifests[split], prepared, chunks[split], params, split, progress
        )
    collections = wanted_collections(manifests, chunks, keep_out)
    with open_store(store_params) as store:
        report["collections"] = fill_collections(store, collections, clip.card, prepared, params, side)
    # The metrics file holds only what the inputs determine (not what this particular run had to do).
    write_json(
        metrics_path(params, side),
        {
            "clip": clip.card.model,
            "fingerprint": clip.card.fingerprint,
            "vectors": {split: len(manifests[split]) for split in splits},
            "collections": {name: c["points"] for name, c in report["collections"].items()},
        },
    )
    _print_summary(report, params, store_params)
    return report


def metrics_path(params: EmbedParams, side: str) -> Path:
    return Path(params.metrics) / f"{side}.json"


def wanted_collections(
    manifests: dict[str, pd.DataFrame], chunks: dict[str, VectorChunks], keep_out: Collection[str]
) -> dict[str, tuple[pd.DataFrame, VectorChunks]]:
    """Every collection of the splits given and the rows it must hold: D_train, and one per style
    without `keep_out`."""
    wanted: dict[str, tuple[pd.DataFrame, VectorChunks]] = {}
    if "d_train" in manifests:
        wanted[D_TRAIN] = (manifests["d_train"], chunks["d_train"])
    if "styles" in manifests:
        retrievable = manifests["styles"][~manifests["styles"]["id"].isin(set(keep_out))]
        for style, rows in retrievable.groupby("style", sort=True):
            wanted[style_collection(str(style))] = (rows, chunks["styles"])
    return wanted


def fill_collections(
    store: VectorStore,
    collections: dict[str, tuple[pd.DataFrame, VectorChunks]],
    card: ClipCard,
    prepared: Path,
    params: EmbedParams,
    side: str,
) -> dict[str, dict[str, int]]:
    """Bring every wanted collection up to date and, on the styles side, drop the style collections
    no longer wanted (a style gone from its source: samplers would keep drawing it); counts per
    collection."""
    counts = {
        name: fill_collection(store, name, rows, split_chunks, card, prepared, params.rebuild_mismatched)
        for name, (rows, split_chunks) in collections.items()
    }
    for name in store.list_collections() if side == "styles" else []:
        if name.startswith(style_collection("")) and name not in collections:
            removed = len(store.ids(name))
            store.drop(name)
            counts[name] = {"points": 0, "added": 0, "removed": removed}
    return counts


def _print_summary(report: dict[str, Any], params: EmbedParams, store_params: StoreParams) -> None:
    embedded = ", ".join(f"{n} {s}" for s, n in report["embedded"].items())
    print(f"embed: embedded {embedded} (the rest were already done) into {params.out}/")
    for name, counts in report["collections"].items():
        print(
            f"embed: {store_params.backend} collection {name}: {counts['points']} points "
            f"(+{counts['added']} -{counts['removed']})"
        )
