"""Throughput of ingestion (read, decode, check, store) on webdataset shards, as img2dataset writes
LAION: threads in this process against `prepare.executor: ray`, same shards, same run.

    python benchmarks/ingest.py [--images 2000] [--shards 4] [--side 384] [--workers 2] [--rounds 3]

Each sample is a JPEG of `side` x `side` (smooth noise, quality 90, about LAION's 256 to 512 px), a
caption and a json. Every round ingests into a fresh folder (a shard journal would otherwise replay).
Ray is the cluster RAY_ADDRESS names, else one started in this process, once, before the timed rounds
(its start-up is reported apart). Prints one JSON object as the last line: images, local_img_per_s,
ray_img_per_s, ray_nodes, ray_cpus, ray_start_s.
"""

from __future__ import annotations

import argparse
import io
import json
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from rdm.data.images import Limits
from rdm.data.ingest import ingest
from rdm.data.sources import open_source
from rdm.ray_cluster import connected


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_shards(root / "shards", args.images, args.shards, args.side)
        local = [ingest_once(root, "local", args.workers, r) for r in range(args.rounds)]
        print(f"local ({args.workers} threads): {np.median(local):.1f} img/s")
        started = time.perf_counter()
        with connected("prepare.executor") as cluster:
            start_s = time.perf_counter() - started
            on_ray = [ingest_once(root, "ray", args.workers, r) for r in range(args.rounds)]
        print(f"ray ({cluster.nodes} nodes, {cluster.cpus:g} CPUs): {np.median(on_ray):.1f} img/s")
    result: dict[str, Any] = {
        "images": args.images,
        "side": args.side,
        "local_img_per_s": round(float(np.median(local)), 1),
        "ray_img_per_s": round(float(np.median(on_ray)), 1),
        "ray_nodes": cluster.nodes,
        "ray_cpus": cluster.cpus,
        "ray_start_s": round(start_s, 1),
    }
    print(json.dumps(result))


def write_shards(folder: Path, images: int, shards: int, side: int) -> None:
    """`images` samples (jpg, txt, json) spread over `shards` .tar files."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    per_shard = -(-images // shards)
    for shard in range(shards):
        with tarfile.open(folder / f"{shard:05d}.tar", "w") as tar:
            for key in range(shard * per_shard, min(images, (shard + 1) * per_shard)):
                coarse = rng.integers(0, 256, (side // 16, side // 16, 3), dtype=np.uint8)
                image = Image.fromarray(coarse).resize((side, side), Image.Resampling.BICUBIC)
                jpeg = io.BytesIO()
                image.save(jpeg, format="JPEG", quality=90)
                members = {
                    f"{key:09d}.jpg": jpeg.getvalue(),
                    f"{key:09d}.txt": f"sample {key}".encode(),
                    f"{key:09d}.json": json.dumps({"key": f"{key:09d}"}).encode(),
                }
                for name, data in members.items():
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))


def ingest_once(root: Path, executor: Literal["local", "ray"], workers: int, round_: int) -> float:
    """One ingestion of every shard into a fresh folder: img/s."""
    started = time.perf_counter()
    result = ingest(
        open_source(str(root / "shards")),
        "d_train",
        root / f"out-{executor}-{round_}",
        Limits(min_side=32, max_side=512),
        workers=workers,
        executor=executor,
        progress=False,
    )
    elapsed = time.perf_counter() - started
    if result.rejections:
        raise RuntimeError(f"{len(result.rejections)} samples rejected: {result.rejections[0]}")
    return len(result.records) / elapsed


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--side", type=int, default=384)
    parser.add_argument("--workers", type=int, default=2, help="threads of the local path")
    parser.add_argument("--rounds", type=int, default=3)
    return parser.parse_args()


if __name__ == "__main__":
    main()
