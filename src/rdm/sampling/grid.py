"""Sample grids with styles as columns (the paper's Fig. 3): one row per prompt and seed, so every
column shows the same prompt and starting noise, and differs only by the collection retrieved from.
A record with no style (an unconditional sample from D_train) has its collection as its column."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

HEADER, LABEL, PAD = 22, 150, 4


def column_of(record: dict[str, Any]) -> str:
    """A record's column: its style, or its collection where it has none (unconditional, D_train)."""
    return str(record["style"] or record["collection"])


def style_grid(
    records: Sequence[dict[str, Any]], root: Path, max_rows: int = 8, upscale: int = 2
) -> Image.Image:
    """Records (from one method) -> a labelled grid: a column per style, a row per (prompt, seed)."""
    styles = list(dict.fromkeys(column_of(r) for r in records))
    rows = list(dict.fromkeys((r["prompt"], r["seed"]) for r in records))[:max_rows]
    cells = {(r["prompt"], r["seed"], column_of(r)): r["file"] for r in records}
    with Image.open(root / records[0]["file"]) as first:
        side = first.width * upscale
    font = ImageFont.load_default(size=12)
    grid = Image.new("RGB", (LABEL + len(styles) * (side + PAD), HEADER + len(rows) * (side + PAD)), "white")
    draw = ImageDraw.Draw(grid)
    for column, style in enumerate(styles):
        draw.text((LABEL + column * (side + PAD) + 2, 4), style, fill="black", font=font)
    for row, (prompt, seed) in enumerate(rows):
        top = HEADER + row * (side + PAD)
        draw.text((4, top + side // 2 - 12), f"{prompt[:22]}\nseed {seed}", fill="black", font=font)
        for column, style in enumerate(styles):
            file = cells.get((prompt, seed, style))
            if file is None:
                continue
            with Image.open(root / file) as image:
                cell = image.convert("RGB").resize((side, side), Image.Resampling.NEAREST)
            grid.paste(cell, (LABEL + column * (side + PAD), top))
    return grid


def write_grids(records: Sequence[dict[str, Any]], out: Path, max_rows: int) -> list[Path]:
    """One grid per method in `records` (floors and unconditional too): `out/grid-<method>.png`."""
    paths = []
    for method in dict.fromkeys(r["method"] for r in records):
        path = out / f"grid-{method}.png"
        style_grid([r for r in records if r["method"] == method], out, max_rows).save(path)
        paths.append(path)
    return paths
