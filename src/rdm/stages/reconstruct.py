"""`reconstruct` stage: style-collection images through the autoencoder's latent, the evaluation's ceiling.

The style classifier scores these reconstructions as it scores samples: no sample can look more "in
style" than the latent lets an image stay. The stage sits on the styles side (it reads the style
manifest, never trains anything), so a refresh of the collections reruns it without touching the
autoencoder. Writes each style's first images by id, reconstructed, to `autoencoder.reconstructions`
and their PSNR and colour check to `autoencoder.reconstruction_metrics`.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from PIL import Image

from rdm.artifacts.autoencoder import write_reconstructions
from rdm.artifacts.manifest import manifest_path, read_manifest
from rdm.config import AutoencoderParams
from rdm.devices import resolve_device
from rdm.embedding.encode import load_images
from rdm.files import write_json
from rdm.models import autoencoder as ae

RECONSTRUCTED_PER_STYLE = 40


def run(params: AutoencoderParams, prepared: Path) -> dict[str, Any]:
    device = resolve_device(params.device)
    vae = ae.load_pretrained(params.out).to(device).eval()
    styles = read_manifest(manifest_path(prepared, "styles")).sort_values("id")
    chosen = styles.groupby("style", sort=True).head(RECONSTRUCTED_PER_STYLE)
    originals = load_images([prepared / p for p in chosen["path"]], params.image_size)  # (N, 3, S, S)
    restored = ae.reconstruct(vae, originals, device)
    folder = Path(params.reconstructions)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    records = []
    for n, (image_id, style) in enumerate(zip(chosen["id"], chosen["style"], strict=True)):
        file = f"{style}-{image_id[:12]}.png"
        Image.fromarray(restored[n].permute(1, 2, 0).numpy()).save(folder / file)
        records.append({"file": file, "style": str(style), "id": str(image_id)})
    write_reconstructions(folder, records)
    labels = chosen["style"].to_numpy()
    per_style = {
        str(style): {
            "psnr_db": round(ae.psnr(restored[labels == style], originals[labels == style]), 2),
            "colour_kept": round(ae.colour_kept(restored[labels == style], originals[labels == style]), 4),
        }
        for style in sorted(set(labels))
    }
    report = {
        "psnr_db": round(ae.psnr(restored, originals), 2),
        "colour_kept": round(ae.colour_kept(restored, originals), 4),
        "images": len(originals),
        "per_style": per_style,
    }
    write_json(Path(params.reconstruction_metrics), report)
    print(
        f"reconstruct: {len(originals)} style images through the latent, PSNR {report['psnr_db']} dB, "
        f"colour kept in {report['colour_kept']:.0%} -> {folder}/"
    )
    return report
