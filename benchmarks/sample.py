"""Sampling throughput: images/s by DDIM in 50 steps and by DPM-Solver++ in 20, at batch sizes 1 and
16, with the retrieval that builds the contexts timed apart.

    python benchmarks/sample.py [--size demo|paper] [--batches 1 16] [--repeats 3] [--points 1000]

The model is built at the chosen size with random weights (speed does not depend on them) and run
exactly as `rdm sample` runs it: `RdmPipeline.generate`, classifier-free guidance on (two
UNet passes per step), latents decoded by the VAE, float32. On a GPU the same is also measured with the
UNet in bfloat16. Retrieval is `ContextBuilder.for_texts` (the path `rdm sample` takes): a CLIP of the
size embeds the prompts, and the embedded Qdrant store returns k=19 neighbours with their vectors from
a collection of --points vectors.

`demo` is params.yaml's model (4M UNet, 4x16x16 latents, 64 px, CLIP 128-d); `paper` is the reference's
400M UNet on 3x64x64 latents (256 px) with 512-d contexts (README "Model sizes"), meant for a GPU.

Prints a table, then one JSON object as the last line: device, size, ddim50_img_per_s and
dpm20_img_per_s (at the largest batch), retrieval_ms (per prompt batch, at the largest batch), and
every measurement under `batches`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rdm.artifacts.clip import ClipCard
from rdm.artifacts.model import ModelCard
from rdm.config import AutoencoderParams, StoreParams, UNetParams, load_config
from rdm.diffusion.noise_schedule import noise_schedule
from rdm.embedding.model import Clip, create
from rdm.models import autoencoder, unet
from rdm.models.pipeline import RdmPipeline
from rdm.retrieval.backends import open_store
from rdm.retrieval.search import Retriever
from rdm.sampling.context import ContextBuilder

PAPER = {
    "unet": UNetParams(
        block_out_channels=[192, 384, 576, 960], cross_attention=[False, True, True, True], layers_per_block=2
    ),
    "autoencoder": AutoencoderParams(image_size=256, block_out_channels=[128, 256, 512], latent_channels=3),
    "clip": "ViT-B-32",
}
RUNS = {"ddim50": ("ddim", 50), "dpm20": ("dpm", 20)}
K = 19


def build_model(size: str, device: torch.device) -> tuple[RdmPipeline, str]:
    config = load_config(Path(__file__).resolve().parents[1] / "params.yaml")
    if size == "paper":
        unet_params, ae_params, clip_name = PAPER["unet"], PAPER["autoencoder"], PAPER["clip"]
    else:
        unet_params, ae_params, clip_name = config.train.unet, config.autoencoder, config.clip.model
    assert isinstance(unet_params, UNetParams) and isinstance(ae_params, AutoencoderParams)
    factor = 2 ** (len(ae_params.block_out_channels) - 1)
    latent_shape = (ae_params.latent_channels, ae_params.image_size // factor, ae_params.image_size // factor)
    clip_model, _ = create(str(clip_name))
    dim = int(clip_model.text_projection.shape[1])
    card = ModelCard(
        k=K, context_dim=dim, latent_shape=latent_shape, image_size=ae_params.image_size,
        scale_factor=1.0, clip_model=str(clip_name), clip_fingerprint="bench", steps=0,
    )  # fmt: skip
    model = RdmPipeline(
        unet=unet.build(unet_params, latent_shape[0], latent_shape[1], dim).to(device).eval(),
        vae=autoencoder.build(ae_params).to(device).eval(),
        noise_schedule_config=noise_schedule().config,
        card=card,
    )
    return model, str(clip_name)


def timed(run: Callable[[], Any], repeats: int, device: torch.device) -> float:
    """Median seconds of `run` over `repeats` calls, after one warm-up call."""
    times = []
    for attempt in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if attempt:
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    args = parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, clip_name = build_model(args.size, device)
    if args.compile:
        model.compile()
    clip = build_clip(clip_name, model.card.context_dim, device)
    print(
        f"{args.size}: UNet {sum(p.numel() for p in model.unet.parameters()) / 1e6:.1f}M, latents "
        f"{model.card.latent_shape}, {model.card.image_size} px, k={K}, guidance on, device "
        f"{torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}"
    )
    dtypes = [torch.float32, torch.bfloat16] if device.type == "cuda" else [torch.float32]
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp, open_store(StoreParams(path=f"{tmp}/qdrant")) as store:
        fill_bench_collection(store, args.points, clip.card)
        contexts = ContextBuilder(Retriever(store, clip), K)
        for batch in args.batches:
            results[str(batch)] = measure_batch(model, contexts, batch, dtypes, args.repeats, device)

    print(json.dumps(summary(args, device, results)))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", choices=["demo", "paper"], default="demo")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--points", type=int, default=1000, help="vectors in the collection searched")
    parser.add_argument("--compile", action="store_true", help="torch.compile the UNet (CUDA graphs on GPU)")
    return parser.parse_args()


def build_clip(clip_name: str, dim: int, device: torch.device) -> Clip:
    """A CLIP of the model's size with random weights, to embed the prompts as `rdm sample` does."""
    clip_model, preprocess = create(clip_name)
    import open_clip

    card = ClipCard(model=clip_name, source="random", embed_dim=dim, fingerprint="bench")
    return Clip(clip_model.to(device).eval(), preprocess, open_clip.get_tokenizer(clip_name), card, device)


def fill_bench_collection(store: Any, points: int, card: ClipCard) -> None:
    """The collection `bench` of `points` random unit vectors, searched by the retrieval."""
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(points, card.embed_dim)).astype(np.float32)
    ids = [f"{i:064x}" for i in range(points)]
    store.ensure("bench", card)
    store.upsert(
        "bench", ids, vectors / np.linalg.norm(vectors, axis=1, keepdims=True), [{"id": i} for i in ids]
    )
    store.finish("bench")


def measure_batch(
    model: RdmPipeline,
    contexts: ContextBuilder,
    batch: int,
    dtypes: list[torch.dtype],
    repeats: int,
    device: torch.device,
) -> dict[str, float]:
    """One row of the table: retrieval ms for `batch` prompts, then images/s of each run in each dtype."""
    prompts = [f"a red circle number {i}" for i in range(batch)]
    row = {"retrieval_ms": timed(lambda: contexts.for_texts(prompts, "bench"), repeats * 5, device) * 1e3}
    context = contexts.for_texts(prompts, "bench").context
    for dtype in dtypes:
        if model.unet.dtype != dtype:
            model.unet.to(dtype)
        suffix = "" if dtype == torch.float32 else "_bf16"
        for name, (sampler, steps) in RUNS.items():
            seconds = timed(
                lambda s=sampler, n=steps: model.generate(context, n, 5.0, 0, s),
                repeats,
                device,
            )
            row[f"{name}_img_per_s{suffix}"] = batch / seconds
        print(f"batch {batch:3d}: " + ", ".join(f"{k} {v:.2f}" for k, v in row.items()))
    if model.unet.dtype != torch.float32:
        model.unet.to(torch.float32)
    return {k: round(v, 3) for k, v in row.items()}


def summary(
    args: argparse.Namespace, device: torch.device, results: dict[str, dict[str, float]]
) -> dict[str, Any]:
    """The last line's JSON: the headline numbers at the largest batch, then every batch's."""
    largest = results[str(max(args.batches))]
    return {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "size": args.size,
        "compiled": args.compile,
        "ddim50_img_per_s": largest["ddim50_img_per_s"],
        "dpm20_img_per_s": largest["dpm20_img_per_s"],
        "retrieval_ms": largest["retrieval_ms"],
        "batches": results,
    }


if __name__ == "__main__":
    main()
