"""Embedding on a Ray cluster (`embed.executor: ray`): the manifest is read as a Ray dataset,
images are decoded in CPU tasks and embedded by CLIP actors (one per GPU where the cluster has GPUs),
and the vectors come back to this process, which writes them as the same resumable chunk files as the
in-process path: a killed job resumes from its last chunk.

The cluster is the one `RAY_ADDRESS` names, else a Ray started here (`rdm.ray_cluster`). Every node
needs this package installed and the prepared images at the same absolute path (a shared filesystem),
as Ray runs the decoding and the model where it schedules them.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from rdm.artifacts.embeddings import VectorChunks
from rdm.config import EmbedParams
from rdm.errors import UserError
from rdm.ray_cluster import Cluster, connected

Batch = dict[str, np.ndarray]


def embed_on_ray(
    clip_dir: Path,
    manifest_file: Path,
    prepared: Path,
    chunks: VectorChunks,
    params: EmbedParams,
    image_size: int,
    todo: int,
    desc: str = "embed",
    progress: bool = True,
) -> Cluster:
    """Embed the `todo` rows of `manifest_file` that `chunks` does not hold yet on the cluster
    (images made `image_size` square, the CLIP's input), appending a chunk every `params.chunk_size`
    vectors; returns the cluster it ran on."""
    import ray.data

    known = frozenset(chunks.known_ids())
    with connected("embed.executor") as cluster:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # one bar, below, over what is written
        actors, device = encoder_actors(params, cluster)
        print(f"{desc}: {todo} images on {cluster.describe()}: {actors} CLIP actors on {device}")
        vectors = (
            ray.data.read_parquet(str(manifest_file.resolve()))  # read on the workers
            .select_columns(["id", "path"])
            .map_batches(partial(drop_known, known=known), batch_format="numpy")
            # blocks of one batch: decoding spreads over tasks and vectors stream back as they come
            .repartition(target_num_rows_per_block=params.batch_size)
            .map_batches(
                partial(
                    decode_images,
                    prepared=str(prepared.resolve()),
                    size=image_size,
                    resize=chunks.card.resize,
                ),
                batch_size=params.batch_size,
                batch_format="numpy",
                num_cpus=0.5,  # unlike the actors: Ray would otherwise fuse decoding into them
            )
            .map_batches(
                ClipEncoder,
                fn_constructor_kwargs={"folder": str(clip_dir.resolve()), "device": device},
                batch_size=params.batch_size,
                batch_format="numpy",
                concurrency=actors,
                num_cpus=0 if device == "cuda" else 1,
                num_gpus=1 if device == "cuda" else 0,
            )
        )
        pending: list[Batch] = []
        with tqdm(
            total=todo, desc=f"{desc} (ray: {cluster.nodes} nodes)", unit="img", disable=not progress
        ) as bar:
            for batch in vectors.iter_batches(batch_size=None, batch_format="numpy"):
                pending.append(batch)
                bar.update(len(batch["id"]))
                while sum(len(b["id"]) for b in pending) >= params.chunk_size:
                    pending = _write_chunk(chunks, pending, params.chunk_size)
            if pending:
                _write_chunk(chunks, pending, params.chunk_size)
    return cluster


def encoder_actors(params: EmbedParams, cluster: Cluster) -> tuple[int, str]:
    """(CLIP actors, their device): one per GPU on a cluster with GPUs; on CPUs `embed.ray_actors`,
    by default half the cluster's cores (the other half decodes)."""
    device = params.device
    if device == "auto":
        device = "cuda" if cluster.gpus >= 1 else "cpu"
    if device == "cuda":
        if cluster.gpus < 1:
            raise UserError(
                f"embed.device is cuda but the Ray cluster at {cluster.address} has no GPU; "
                "set embed.device to auto or cpu"
            )
        return int(cluster.gpus), "cuda"
    if params.ray_actors != "auto":
        return int(params.ray_actors), "cpu"
    return max(1, int(cluster.cpus) // 2), "cpu"


def _write_chunk(chunks: VectorChunks, pending: list[Batch], size: int) -> list[Batch]:
    """Append the first `size` vectors of `pending` (all, if fewer) as one chunk; returns the rest."""
    ids = np.concatenate([b["id"] for b in pending])
    vectors = np.concatenate([b["vector"] for b in pending])  # (N, D)
    chunks.append([str(i) for i in ids[:size]], vectors[:size])
    return [{"id": ids[size:], "vector": vectors[size:]}] if len(ids) > size else []


def drop_known(batch: Batch, known: frozenset[str]) -> Batch:
    """The rows whose id has no vector yet."""
    keep = np.array([str(i) not in known for i in batch["id"]], dtype=bool)
    return {"id": batch["id"][keep], "path": batch["path"][keep]}


def decode_images(batch: Batch, prepared: str, size: int, resize: str) -> Batch:
    """Manifest rows -> {id (B,), pixels (B, 3, size, size) uint8}, made square the CLIP's way."""
    from PIL import Image

    from rdm.embedding.encode import to_uint8

    pixels = []
    for path in batch["path"]:
        with Image.open(Path(prepared) / str(path)) as image:
            pixels.append(to_uint8(image, size, resize).numpy())
    return {
        "id": batch["id"],
        "pixels": np.stack(pixels) if pixels else np.empty((0, 3, size, size), np.uint8),
    }


class ClipEncoder:
    """A Ray actor holding the CLIP model: decoded pixels -> {id (B,), vector (B, D) float32}."""

    def __init__(self, folder: str, device: str) -> None:
        from rdm.embedding import model

        self.clip = model.load(Path(folder), device)

    def __call__(self, batch: Batch) -> dict[str, Any]:
        import torch

        pixels = torch.from_numpy(batch["pixels"])  # (B, 3, S, S) uint8
        vectors = self.clip.encode_images(self.clip.normalize(pixels)).cpu().numpy()
        return {"id": batch["id"], "vector": vectors}
