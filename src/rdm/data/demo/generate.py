"""The built-in demo dataset: small captioned artworks, written in the layouts real data arrives in.

Output (under `GenerateParams.out`):
    train/manifest.csv + train/images/*.png      training images (manifest: path, caption, style, content)
    d_train/manifest.csv + d_train/images/*.png  the training database D_train: general (mostly ordinary
                                                 renderings, each seen style a few percent), disjoint
                                                 from the training images, of the same distribution
    styles/<style>/*.png + *.txt                 one folder per style (ImageFolder, as ArtBench ships),
                                                 each image with a caption file beside it
    prompts.csv                                  evaluation prompts (prompt, content, color)

Held-out styles appear only under `styles/`: never in training images, D_train or any caption.
Every image has its own random stream derived from
(seed, split, index), so the bytes depend on the seed alone, not on order or parallelism.
"""

from __future__ import annotations

import csv
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from rdm.config import GenerateParams
from rdm.data.demo.contents import COLORS, CONTENTS, draw_scene
from rdm.data.demo.styles import RENDERERS, STYLE_WORDS

SPLIT_CODES = {"train": 1, "d_train": 2, "styles": 3, "prompts": 4}
CAPTION_TEMPLATES = ("{scene} in the style of {style}", "a {style} picture of {scene}", "{scene}, {style}")


@dataclass(frozen=True)
class Artwork:
    split: str
    index: int
    content: str
    color: str
    style: str
    names_style: bool

    @property
    def seed_key(self) -> list[int]:
        return [SPLIT_CODES[self.split], self.index, list(RENDERERS).index(self.style)]


def render(art: Artwork, image_size: int, seed: int) -> tuple[Image.Image, str]:
    """Draw one artwork; returns the image and its caption."""
    rng = np.random.default_rng([seed, *art.seed_key])
    scene = draw_scene(art.content, art.color, image_size * 2, rng)
    pixels = RENDERERS[art.style](scene, rng)
    image = Image.fromarray(pixels).resize((image_size, image_size), Image.Resampling.LANCZOS)
    caption = scene.caption
    if art.names_style:
        template = CAPTION_TEMPLATES[int(rng.integers(len(CAPTION_TEMPLATES)))]
        caption = template.format(scene=caption, style=STYLE_WORDS[art.style])
    return image, caption


def plan(params: GenerateParams) -> dict[str, list[Artwork]]:
    """Decide every artwork's content, colour and style: balanced, shuffled, deterministic."""
    trained_styles = [s for s in params.styles if s not in params.held_out_styles]
    return {
        "train": _mixed_split("train", params.train_images, trained_styles, params),
        "d_train": _mixed_split("d_train", params.d_train_images, trained_styles, params),
        "styles": [
            Artwork("styles", i, content, color, style, names_style=False)
            for s_index, style in enumerate(params.styles)
            for i, (content, color) in enumerate(
                _contents(params.style_images, np.random.default_rng([params.seed, 30, s_index])),
                start=s_index * params.style_images,
            )
        ],
    }


def _mixed_split(split: str, count: int, styles: list[str], params: GenerateParams) -> list[Artwork]:
    """`style_fraction` of `count` in each seen style, the rest in the general renderings, shuffled."""
    rng = np.random.default_rng([params.seed, SPLIT_CODES[split]])
    per_style = round(count * params.style_fraction)
    styled = [style for style in styles for _ in range(per_style)]
    general = [params.general[i % len(params.general)] for i in range(count - len(styled))]
    assigned = styled + general
    rng.shuffle(assigned)
    names_style = rng.random(count) < params.style_caption_fraction
    return [
        Artwork(split, i, content, color, style, bool(named and style not in params.general))
        for i, ((content, color), style, named) in enumerate(
            zip(_contents(count, rng), assigned, names_style, strict=True)
        )
    ]


def _contents(count: int, rng: np.random.Generator) -> Iterator[tuple[str, str]]:
    """Every content equally often (up to one), each with a random colour."""
    names = list(CONTENTS)
    order = [names[i % len(names)] for i in range(count)]
    rng.shuffle(order)
    colors = list(COLORS)
    for content in order:
        yield content, colors[int(rng.integers(len(colors)))]


def eval_prompts(params: GenerateParams) -> list[dict[str, str]]:
    """Content-only prompts (no style words): the style comes from the database or a postfix."""
    rng = np.random.default_rng([params.seed, SPLIT_CODES["prompts"]])
    pairs = [(content, color) for content in CONTENTS for color in COLORS]
    picks = rng.permutation(len(pairs))[: params.eval_prompts]
    return [
        {"prompt": f"a {pairs[i][1]} {pairs[i][0]}", "content": pairs[i][0], "color": pairs[i][1]}
        for i in sorted(picks)
    ]


@dataclass(frozen=True)
class DemoSummary:
    out: Path
    counts: dict[str, int]


def generate_demo(params: GenerateParams, out: Path | None = None, progress: bool = True) -> DemoSummary:
    """Write the demo dataset to `out` (default `params.out`), replacing it atomically."""
    out = Path(out or params.out)
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    planned = plan(params)
    total = sum(len(arts) for arts in planned.values())
    with tqdm(total=total, desc="generate", unit="img", disable=not progress) as bar:
        for split in ("train", "d_train"):
            rows = []
            for art in planned[split]:
                image, caption = render(art, params.image_size, params.seed)
                rel = f"images/{art.index:06d}.png"
                _save_png(image, staging / split / rel)
                rows.append({"path": rel, "caption": caption, "style": art.style, "content": art.content})
                bar.update()
            _write_csv(staging / split / "manifest.csv", rows)
        for art in planned["styles"]:
            image, caption = render(art, params.image_size, params.seed)
            stem = staging / "styles" / art.style / f"{art.index:06d}"
            _save_png(image, stem.with_suffix(".png"))
            stem.with_suffix(".txt").write_text(caption + "\n")
            bar.update()
    prompts = eval_prompts(params)
    _write_csv(staging / "prompts.csv", prompts)
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    counts = {split: len(arts) for split, arts in planned.items()} | {"prompts": len(prompts)}
    return DemoSummary(out=out, counts=counts)


def _save_png(image: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")


def _write_csv(path: Path, rows: list[dict[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
