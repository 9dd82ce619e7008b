"""Throughput of the whole embed stage (decode, resize, encode, store) against the model's forward
pass alone on ready tensors: same model, same images, same batch size, same run.

    python benchmarks/embed.py [--model rdm-tiny|ViT-B-32] [--images 2000] [--workers 2]

With no pretrained weights reachable, the model keeps its random initial weights: throughput does
not depend on them. Prints progress, then one JSON object as the last line:
model, pipeline_img_per_s, model_only_img_per_s, ratio.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from rdm.config import EmbedParams, GenerateParams, PrepareParams, S3Params, StoreParams
from rdm.data.demo.generate import generate_demo
from rdm.data.manifest import read_manifest
from rdm.embedding import model as clip_model
from rdm.embedding.vectors import VectorChunks
from rdm.retrieval.store import open_store
from rdm.stages import prepare
from rdm.stages.embed import embed_split, fill_collection


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="rdm-tiny")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", default="auto", help="decoding processes, or auto (embed.workers)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        generate_demo(
            GenerateParams(train_images=args.images, d_train_images=1, style_images=1, eval_prompts=1),
            root / "raw",
            progress=False,
        )
        prep = PrepareParams.model_validate(
            {
                "out": str(root / "prepared"),
                "metrics": str(root / "prepare.json"),
                "rejected": str(root / "rejected.jsonl"),
                "sources": {
                    "train": str(root / "raw/train/manifest.csv"),
                    "d_train": str(root / "raw/d_train/manifest.csv"),
                    "styles": str(root / "raw/styles"),
                    "prompts": None,
                },
            }
        )
        prepare.run(prep, S3Params(), progress=False)
        prepared = Path(prep.out)
        manifest = read_manifest(prepared / "train.parquet")

        torch.manual_seed(0)
        model, _ = clip_model.create(args.model)
        clip_model.save(model, args.model, "random", root / "clip")
        clip = clip_model.load(root / "clip", "auto")
        params = EmbedParams(
            out=str(root / "emb"),
            batch_size=args.batch_size,
            workers=args.workers if args.workers == "auto" else int(args.workers),
            chunk_size=len(manifest),
        )

        from rdm.embedding.encode import load_images

        ready = clip.normalize(load_images([prepared / p for p in manifest["path"]], clip.image_size))

        def pipeline_once(round_: int) -> float:
            """The embed stage's own functions, into fresh outputs: img/s."""
            started = time.perf_counter()
            chunks = VectorChunks(root / f"emb{round_}" / "train", clip.card)
            embed_split(clip, manifest, prepared, chunks, params, "train", progress=False)
            with open_store(StoreParams(path=str(root / f"qdrant{round_}"))) as store:
                fill_collection(store, "train", manifest, chunks, clip.card, prepared)
            return len(manifest) / (time.perf_counter() - started)

        def model_once() -> float:
            started = time.perf_counter()
            for start in range(0, len(ready), args.batch_size):
                clip.encode_images(ready[start : start + args.batch_size])
            return len(ready) / (time.perf_counter() - started)

        model_once()  # warm-up
        rounds = [(pipeline_once(r), model_once()) for r in range(args.rounds)]  # alternated: same conditions
        pipeline = float(np.median([p for p, _ in rounds]))
        model_only = float(np.median([m for _, m in rounds]))
        print(
            f"{args.model}: whole embed stage {pipeline:.1f} img/s ({len(manifest)} images, {args.workers} "
            f"workers, batch {args.batch_size}, device {clip.device}); model forward alone on ready "
            f"{tuple(ready.shape[1:])} tensors {model_only:.1f} img/s (medians of {args.rounds} rounds)"
        )

    print(
        json.dumps(
            {
                "model": args.model,
                "pipeline_img_per_s": round(pipeline, 1),
                "model_only_img_per_s": round(model_only, 1),
                "ratio": round(pipeline / model_only, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
