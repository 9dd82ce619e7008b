"""The paper's LAION-RDM through the user's path at full size, with random weights at the real shapes:
a ViT-L-14-quickgelu weights file (as downloaded) through `rdm import clip`, a 768-d retrieval database
through `rdm collections import`, a checkpoint in the released layout (768x768.yaml: a 1.34
G-parameter UNet, its EMA twin, the KL-f16 first stage; about 11 GB in float32) through `rdm import
ldm`, then `rdm sample` of one 768x768 image with DDIM at 1 and at 5 steps (guided, scale 5), whose
difference gives the time of a step, and from it an estimate for the paper's 50. Each command is timed as a
separate process with its peak memory.

    python benchmarks/import_ldm.py --work /tmp/ldm-full    # needs ~25 GB of disk, ~12 GB of memory

Prints each command's wall time and peak resident memory (which counts the pages of memory-mapped
files it read) and the written folder's size; the last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests import ldm_reference as ref


def full_size_checkpoint(path: Path) -> None:
    """Random weights at the released shapes: the reference UNet is built on the meta device (no memory)
    and each of its tensors drawn for real, twice (weights and EMA)."""
    config = ref.rdm_config()
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in ref.reference_unet_uninitialised(config).state_dict().items()}
    unet = {f"model.diffusion_model.{k}": torch.randn(shape) * 0.02 for k, shape in shapes.items()}
    ema = {
        f"model_ema.diffusion_model{k.replace('.', '')}": torch.randn(shape) * 0.02
        for k, shape in shapes.items()
    }
    first_stage = ref.reference_first_stage(config).state_dict()
    state = unet | ema | {f"first_stage_model.{k}": v for k, v in first_stage.items()}
    state["unconditional_guidance_vex"] = torch.randn(768)
    torch.save({"state_dict": state, "global_step": 0}, path)


def timed(command: list[str]) -> dict[str, float]:
    """Wall seconds and peak resident GB of one command, run in its own process."""
    run = subprocess.run(["/usr/bin/time", "-v", *command], capture_output=True, text=True)
    if run.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{run.stdout}\n{run.stderr}")
    print(run.stdout.strip())
    report = dict(line.strip().split(": ", 1) for line in run.stderr.splitlines() if ": " in line)
    minutes, seconds = report["Elapsed (wall clock) time (h:mm:ss or m:ss)"].rsplit(":", 1)
    wall = float(seconds) + 60 * sum(int(p) * 60**i for i, p in enumerate(reversed(minutes.split(":"))))
    peak = int(report["Maximum resident set size (kbytes)"]) / 1e6
    return {"wall_s": round(wall, 1), "peak_rss_gb": round(peak, 2)}


def size_gb(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return round(sum(p.stat().st_size for p in files) / 1e9, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="a folder with ~25 GB free")
    args = parser.parse_args()
    work: Path = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    checkpoint, config = work / "model.ckpt", ref.write_config(ref.rdm_config(), work / "768x768.yaml")
    if not checkpoint.is_file():
        started = time.perf_counter()
        full_size_checkpoint(checkpoint)
        seconds = time.perf_counter() - started
        print(f"wrote {checkpoint} ({size_gb(checkpoint):.2f} GB) in {seconds:.0f} s")
    weights = work / "open_clip_model.safetensors"  # the name of OpenAI's ViT-L/14 on the HF hub
    if not weights.is_file():
        from safetensors.torch import save_file

        from rdm.embedding.model import create

        torch.manual_seed(0)
        save_file(
            {k: v.contiguous() for k, v in create("ViT-L-14-quickgelu")[0].state_dict().items()}, weights
        )
    database = work / "databases" / "artbench-surrealism" / "5000x768-part_1.npz"
    database.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    np.savez(database, embedding=rng.normal(size=(5000, 768)).astype(np.float32), img_id=np.arange(5000))
    params = work / "params.yaml"
    params.write_text(
        f"clip:\n  out: {work / 'clip'}\nstore:\n  path: {work / 'qdrant'}\n"
        f"tracking:\n  tracking_uri: sqlite:///{work / 'mlflow.db'}\n"
    )
    rdm = ["rdm", "--params", str(params)]
    clip = [*rdm, "import", "clip", str(weights), "--model", "ViT-L-14-quickgelu", "--resize", "squash"]
    model = work / "model"
    imported = [*rdm, "import", "ldm", str(checkpoint), "--config", str(config), "--out", str(model)]
    drawn = [*rdm, "sample", "--model", str(model), "--prompt", "a lighthouse at dusk", "--style"]
    drawn += ["artbench-surrealism", "-n", "1", "-k", "10", "--sampler", "ddim", "--scale", "5"]
    result: dict[str, Any] = {"checkpoint_gb": size_gb(checkpoint), "clip_weights_gb": size_gb(weights)}
    result["import_clip"] = timed(clip)
    result["collections_import"] = timed([*rdm, "collections", "import", str(database.parent.parent)])
    result["import_ldm"] = timed(imported) | {"folder_gb": size_gb(model)}
    for steps in (1, 5):  # the difference is the time of 4 guided steps; the rest loads, encodes, decodes
        result[f"sample_ddim{steps}"] = timed([*drawn, "--steps", str(steps), "--out", str(work / "drawn")])
    step = (result["sample_ddim5"]["wall_s"] - result["sample_ddim1"]["wall_s"]) / 4
    result["s_per_guided_step"] = round(step, 2)
    result["sample_ddim50_estimate_s"] = round(result["sample_ddim1"]["wall_s"] + 49 * step)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
