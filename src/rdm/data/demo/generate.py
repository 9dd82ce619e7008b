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
import os
import shutil
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from rdm.config import GenerateParams
from rdm.data.demo.contents import COLORS, CONTENTS, draw_scene
from rdm.data.demo.styles import RENDERERS
from rdm.errors import UserError

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


def render(art: Artwork, image_size: int, seed: int, style_words: dict[str, str]) -> tuple[Image.Image, str]:
    """Draw one artwork; returns the image and its caption."""
    rng = np.random.default_rng([seed, *art.seed_key])
    scene = draw_scene(art.content, art.color, image_size * 2, rng)
    pixels = RENDERERS[art.style](scene, rng)
    image = Image.fromarray(pixels).resize((image_size, image_size), Image.Resampling.LANCZOS)
    caption = scene.caption
    if art.names_style:
        template = CAPTION_TEMPLATES[int(rng.integers(len(CAPTION_TEMPLATES)))]
        caption = template.format(scene=caption, style=style_words[art.style])
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


def check_styles(params: GenerateParams) -> None:
    """Every style the params name must be one the generator can draw."""
    unknown = [s for s in [*params.styles, *params.held_out_styles, *params.general] if s not in RENDERERS]
    if unknown:
        raise UserError(f"generate: unknown style(s) {unknown}; the demo draws {list(RENDERERS)}")


def generate_demo(
    params: GenerateParams,
    style_text: Callable[[str], str],
    out: Path | None = None,
    progress: bool = True,
) -> DemoSummary:
    """Write the demo dataset to `out` (default `params.out`), replacing it atomically; captions name a
    style with `style_text(style)` (`sample.style_words`, the words prompts use)."""
    check_styles(params)
    style_words = {style: style_text(style) for style in RENDERERS}
    out = Path(out or params.out)
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    planned = plan(params)
    jobs = [
        (art, params.image_size, params.seed, style_words, staging / _file(split, art))
        for split in planned
        for art in planned[split]
    ]
    # each image is fixed by its own seed, so one process per core draws the same bytes
    with ProcessPoolExecutor(max_workers=os.cpu_count()) as pool:
        drawn = pool.map(_render_to, jobs, chunksize=64)
        texts = list(tqdm(drawn, total=len(jobs), desc="generate", unit="img", disable=not progress))
    caption = dict(zip((path for *_, path in jobs), texts, strict=True))  # PNG path -> caption
    for split in ("train", "d_train"):
        rows = []
        for art in planned[split]:
            path = _file(split, art)
            row = {"path": str(path.relative_to(split)), "caption": caption[staging / path]}
            rows.append(row | {"style": art.style, "content": art.content})
        _write_csv(staging / split / "manifest.csv", rows)
    for art in planned["styles"]:
        png = staging / _file("styles", art)
        png.with_suffix(".txt").write_text(caption[png] + "\n")
    prompts = eval_prompts(params)
    _write_csv(staging / "prompts.csv", prompts)
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    counts = {split: len(arts) for split, arts in planned.items()} | {"prompts": len(prompts)}
    return DemoSummary(out=out, counts=counts)


def _file(split: str, art: Artwork) -> Path:
    """An artwork's PNG below the output folder: `<split>/images/` (train and d_train, whose
    manifest.csv names it relative to the split), or `styles/<style>/` (beside its caption .txt)."""
    if split == "styles":
        return Path("styles", art.style, f"{art.index:06d}.png")
    return Path(split, "images", f"{art.index:06d}.png")


def _render_to(job: tuple[Artwork, int, int, dict[str, str], Path]) -> str:
    """Render one artwork into its PNG file; its caption."""
    art, image_size, seed, style_words, path = job
    image, caption = render(art, image_size, seed, style_words)
    _save_png(image, path)
    return caption


def _save_png(image: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")


def _write_csv(path: Path, rows: list[dict[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
