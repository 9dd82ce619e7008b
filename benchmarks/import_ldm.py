"""`rdm import ldm` at the LAION-RDM's full size: a checkpoint in the released layout with random
weights at the real shapes (768x768.yaml: a 1.34 G-parameter UNet, its EMA twin, the KL-f16 first
stage; about 11 GB in float32), then the import as a separate process, timed, with its peak memory.

    python benchmarks/import_ldm.py --work /tmp/ldm-full    # needs ~25 GB of disk, ~12 GB of memory

Prints the checkpoint's size, the import's wall time and peak resident memory (which counts the
pages of the memory-mapped checkpoint it read), and the written folder's size; the last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="a folder with ~25 GB free")
    args = parser.parse_args()
    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)
    checkpoint, config = work / "model.ckpt", ref.write_config(ref.rdm_config(), work / "768x768.yaml")
    if not checkpoint.is_file():
        started = time.perf_counter()
        full_size_checkpoint(checkpoint)
        seconds = time.perf_counter() - started
        print(f"wrote {checkpoint} ({checkpoint.stat().st_size / 1e9:.2f} GB) in {seconds:.0f} s")
    clip = work / "clip"  # the card is all an import reads of its CLIP: ViT-L/14's 768-d vectors
    clip.mkdir(exist_ok=True)
    card = {"model": "ViT-L-14-quickgelu", "source": "openai", "embed_dim": 768, "fingerprint": "unmeasured"}
    (clip / "rdm_clip.json").write_text(json.dumps(card))
    command = ["rdm", "import", "ldm", str(checkpoint), "--config", str(config), "--out", str(work / "model")]
    timed = subprocess.run(
        ["/usr/bin/time", "-v", *command, "--clip", str(clip)], capture_output=True, text=True, check=True
    )
    print(timed.stdout.strip())
    report = dict(line.strip().split(": ", 1) for line in timed.stderr.splitlines() if ": " in line)
    folder = sum(p.stat().st_size for p in (work / "model").rglob("*") if p.is_file())
    result = {
        "checkpoint_gb": round(checkpoint.stat().st_size / 1e9, 2),
        "wall": report["Elapsed (wall clock) time (h:mm:ss or m:ss)"],
        "peak_rss_gb": round(int(report["Maximum resident set size (kbytes)"]) / 1e6, 2),
        "user_s": float(report["User time (seconds)"]),
        "folder_gb": round(folder / 1e9, 2),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
