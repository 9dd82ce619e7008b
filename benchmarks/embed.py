"""Throughput of the whole embed stage (decode, resize, encode, store) against the model's forward
pass alone on ready tensors: same model, same images, same batch size, same run.

    python benchmarks/embed.py [--model rdm-tiny|ViT-B-32] [--images 2000] [--workers 2] [--ray]

--ray also runs the stage on Ray (`embed.executor: ray`): the cluster RAY_ADDRESS names, else a Ray
started in this process, once, before the timed rounds (its start-up is reported apart).

With no pretrained weights reachable, the model keeps its random initial weights: throughput does
not depend on them. Prints progress, then one JSON object as the last line:
model, pipeline_img_per_s, model_only_img_per_s, ratio, and with --ray ray_img_per_s, ray_nodes,
ray_actors and ray_start_s.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from rdm.artifacts.embeddings import VectorChunks
from rdm.artifacts.manifest import read_manifest
from rdm.config import EmbedParams, GenerateParams, PrepareParams, S3Params, SampleParams, StoreParams
from rdm.data.demo.generate import generate_demo
from rdm.embedding import model as clip_model
from rdm.embedding.on_ray import encoder_actors
from rdm.ray_cluster import connected
from rdm.retrieval.backends import open_store
from rdm.stages import prepare
from rdm.stages.embed import embed_split, fill_collection


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        prepared = prepare_demo(root, args.images)
        manifest = read_manifest(prepared / "train.parquet")
        clip = random_clip(root, args.model)
        params = EmbedParams(
            out=str(root / "emb"),
            batch_size=args.batch_size,
            workers=args.workers if args.workers == "auto" else int(args.workers),
            chunk_size=len(manifest),
        )

        from rdm.embedding.encode import load_images

        ready = clip.normalize(load_images([prepared / p for p in manifest["path"]], clip.image_size))
        pipeline, model_only = alternated_rounds(clip, manifest, prepared, params, root, ready, args.rounds)
        print(
            f"{args.model}: whole embed stage {pipeline:.1f} img/s ({len(manifest)} images, {args.workers} "
            f"workers, batch {args.batch_size}, device {clip.device}); model forward alone on ready "
            f"{tuple(ready.shape[1:])} tensors {model_only:.1f} img/s (medians of {args.rounds} rounds)"
        )

        on_ray = ray_rounds(clip, manifest, prepared, params, root, args.rounds) if args.ray else {}
        if on_ray:
            print(
                f"{args.model}: whole embed stage on Ray {on_ray['ray_img_per_s']} img/s "
                f"({on_ray['ray_nodes']} nodes, {on_ray['ray_actors']} CLIP actors; Ray started in "
                f"{on_ray['ray_start_s']} s, not counted)"
            )

    print(json.dumps(summary(args.model, pipeline, model_only) | on_ray))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="rdm-tiny")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", default="auto", help="decoding processes, or auto (embed.workers)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ray", action="store_true", help="also the stage on Ray (embed.executor: ray)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    return parser.parse_args()


def prepare_demo(root: Path, images: int) -> Path:
    """`images` generated demo training images, run through the prepare stage: its output folder."""
    generate_demo(
        GenerateParams(train_images=images, d_train_images=1, style_images=1, eval_prompts=1),
        SampleParams().style_text,
        root / "raw",
        progress=False,
    )
    prep = PrepareParams.model_validate(
        {
            "out": str(root / "prepared"),
            "metrics": str(root / "prepare"),
            "rejected": str(root / "rejected"),
            "sources": {
                "train": str(root / "raw/train/manifest.csv"),
                "d_train": str(root / "raw/d_train/manifest.csv"),
                "styles": str(root / "raw/styles"),
                "prompts": None,
            },
        }
    )
    prepare.run(prep, S3Params(), progress=False)
    return Path(prep.out)


def random_clip(root: Path, name: str) -> clip_model.Clip:
    """The CLIP model `name` with its (seeded) random initial weights, saved and loaded as the stages do."""
    torch.manual_seed(0)
    model, _ = clip_model.create(name)
    clip_model.save(model, name, "random", root / "clip")
    return clip_model.load(root / "clip", "auto")


def alternated_rounds(
    clip: clip_model.Clip,
    manifest: pd.DataFrame,
    prepared: Path,
    params: EmbedParams,
    root: Path,
    ready: torch.Tensor,
    rounds: int,
) -> tuple[float, float]:
    """Median img/s of the whole stage and of the model alone, measured in turns: same conditions."""
    model_once(clip, ready, params.batch_size)  # warm-up
    measured = [
        (pipeline_once(clip, manifest, prepared, params, root, r), model_once(clip, ready, params.batch_size))
        for r in range(rounds)
    ]
    return float(np.median([p for p, _ in measured])), float(np.median([m for _, m in measured]))


def pipeline_once(
    clip: clip_model.Clip,
    manifest: pd.DataFrame,
    prepared: Path,
    params: EmbedParams,
    root: Path,
    round_: int,
) -> float:
    """The embed stage's own functions, into fresh outputs: img/s."""
    started = time.perf_counter()
    chunks = VectorChunks(root / f"emb-{params.executor}{round_}" / "train", clip.card)
    embed_split(clip, manifest, prepared, chunks, params, "train", progress=False)
    with open_store(StoreParams(path=str(root / f"qdrant-{params.executor}{round_}"))) as store:
        fill_collection(store, "train", manifest, chunks, clip.card, prepared)
    return len(manifest) / (time.perf_counter() - started)


def ray_rounds(
    clip: clip_model.Clip,
    manifest: pd.DataFrame,
    prepared: Path,
    params: EmbedParams,
    root: Path,
    rounds: int,
) -> dict[str, Any]:
    """Median img/s of the whole stage on Ray, connected once before the rounds."""
    started = time.perf_counter()
    with connected("embed.executor") as cluster:
        start_s = time.perf_counter() - started
        on_ray = params.model_copy(update={"executor": "ray"})
        speeds = [pipeline_once(clip, manifest, prepared, on_ray, root, r) for r in range(rounds)]
    return {
        "ray_img_per_s": round(float(np.median(speeds)), 1),
        "ray_nodes": cluster.nodes,
        "ray_actors": encoder_actors(on_ray, cluster)[0],
        "ray_start_s": round(start_s, 1),
    }


def model_once(clip: clip_model.Clip, ready: torch.Tensor, batch_size: int) -> float:
    """The model's forward pass alone on ready tensors: img/s."""
    started = time.perf_counter()
    for start in range(0, len(ready), batch_size):
        clip.encode_images(ready[start : start + batch_size])
    return len(ready) / (time.perf_counter() - started)


def summary(model: str, pipeline: float, model_only: float) -> dict[str, Any]:
    """The last line's JSON."""
    return {
        "model": model,
        "pipeline_img_per_s": round(pipeline, 1),
        "model_only_img_per_s": round(model_only, 1),
        "ratio": round(pipeline / model_only, 3),
    }


if __name__ == "__main__":
    main()
