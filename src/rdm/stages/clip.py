"""`clip` stage: the CLIP model every embedding comes from, and how well it retrieves.

With `clip.pretrained` set, the weights come from that tag or file; otherwise a small CLIP is
trained on the captioned training images. Either way the model is written to `clip.out` as an
open_clip local-dir folder, and held-out text-to-image retrieval is reported in `clip.metrics`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from rdm.artifacts.clip import ClipError
from rdm.artifacts.manifest import read_manifest
from rdm.config import ClipParams
from rdm.devices import resolve_device
from rdm.embedding import model as clip_model
from rdm.embedding.encode import encode_paths
from rdm.embedding.evaluate import text_to_image_metrics
from rdm.files import write_json


def holdout_split(manifest: pd.DataFrame, fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Captioned rows split into (train, holdout), the same for the same ids and seed."""
    captioned = manifest[manifest["caption"].notna()].sort_values("id").reset_index(drop=True)
    if len(captioned) < 4:
        raise ClipError(f"only {len(captioned)} captioned training images; CLIP needs at least 4")
    order = np.random.default_rng(seed).permutation(len(captioned))
    n_holdout = max(2, round(len(captioned) * fraction))
    return captioned.iloc[order[n_holdout:]], captioned.iloc[order[:n_holdout]]


def run(
    params: ClipParams, prepared: Path, style_text: Callable[[str], str], progress: bool = True
) -> dict[str, Any]:
    """Train (or load) the CLIP, save it to `clip.out`, and measure its held-out text-to-image retrieval;
    a caption names a style in `style_text(style)`, the words prompts use (`sample.style_words`)."""
    started = time.perf_counter()
    manifest = read_manifest(prepared / "train.parquet")
    train_rows, holdout_rows = holdout_split(manifest, params.holdout_fraction, params.seed)
    model, report = clip_weights(params, train_rows, prepared, progress)
    card = clip_model.save(model.cpu(), params.model, report["source"], Path(params.out), params.resize)

    clip = clip_model.load(Path(params.out), params.device)
    image_vectors = np.concatenate(
        list(encode_paths(clip, [prepared / p for p in holdout_rows["path"]], 256, 0, "eval clip", progress))
    )
    text_vectors = clip.encode_text(list(holdout_rows["caption"])).cpu().numpy()
    report |= text_to_image_metrics(
        text_vectors,
        image_vectors,
        list(holdout_rows["caption"]),
        list(holdout_rows["content"]),
        list(holdout_rows["style"]),
        style_text,
    )
    report |= {"embed_dim": card.embed_dim, "fingerprint": card.fingerprint, "resize": card.resize}
    write_json(Path(params.metrics), report)
    shown = {k: v for k, v in report.items() if "top" in k}
    print(
        f"clip: {card.model} ({card.source}), {card.embed_dim}-d, {card.resize}, saved to {params.out}/ "
        f"in {time.perf_counter() - started:.0f} s; held-out text->image: {shown}"
    )
    return report


def clip_weights(
    params: ClipParams, train_rows: pd.DataFrame, prepared: Path, progress: bool
) -> tuple[Any, dict[str, Any]]:
    """The pretrained CLIP `clip.pretrained` names, or one trained on the training images' captions;
    with what the report says of it."""
    from rdm.embedding.encode import load_images
    from rdm.embedding.train import train_clip

    torch.manual_seed(params.seed)  # the initial weights, when training
    model, _ = clip_model.create(params.model, params.pretrained)
    report: dict[str, Any] = {"model": params.model, "source": params.pretrained or "trained"}
    if params.pretrained is None:
        device = resolve_device(params.device)
        paths = [prepared / p for p in train_rows["path"]]
        images = load_images(paths, clip_model.image_size(model), resize=params.resize)
        tokenizer = _tokenizer(params.model)
        history = train_clip(model, tokenizer, images, list(train_rows["caption"]), params, device, progress)
        report |= {
            "train_images": len(train_rows),
            "epochs": params.epochs,
            "final_loss": round(history[-1], 4),
        }
    return model, report


def _tokenizer(name: str) -> Any:
    import open_clip

    return open_clip.get_tokenizer(name)
