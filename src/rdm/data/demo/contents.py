"""What the demo artworks depict: simple objects in named colours, as soft masks.

A scene is drawn once as an anti-aliased mask; the styles in `styles.py` then decide how the same
scene is rendered, so content and style vary independently.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

RGB = tuple[int, int, int]

COLORS: dict[str, RGB] = {
    "red": (214, 40, 40),
    "orange": (240, 136, 28),
    "yellow": (238, 204, 34),
    "green": (46, 150, 64),
    "blue": (36, 88, 206),
    "purple": (130, 56, 176),
    "pink": (236, 112, 168),
}

# Background tints a scene may sit on; styles use them as their paper or sky colour.
BACKGROUNDS: tuple[RGB, ...] = (
    (226, 232, 240),
    (238, 230, 214),
    (214, 230, 222),
    (236, 222, 228),
    (222, 222, 222),
    (206, 220, 236),
)

Box = tuple[float, float, float]  # centre x, centre y, radius (pixels)
Painter = Callable[[ImageDraw.ImageDraw, Box], None]


def _polygon(draw: ImageDraw.ImageDraw, points: list[tuple[float, float]]) -> None:
    draw.polygon(points, fill=255)


def _regular(cx: float, cy: float, r: float, n: int, phase: float) -> list[tuple[float, float]]:
    return [
        (cx + r * math.cos(phase + 2 * math.pi * i / n), cy + r * math.sin(phase + 2 * math.pi * i / n))
        for i in range(n)
    ]


def circle(draw: ImageDraw.ImageDraw, box: Box) -> None:
    cx, cy, r = box
    draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)


def square(draw: ImageDraw.ImageDraw, box: Box) -> None:
    cx, cy, r = box
    s = r * 0.85
    draw.rectangle((cx - s, cy - s, cx + s, cy + s), fill=255)


def triangle(draw: ImageDraw.ImageDraw, box: Box) -> None:
    cx, cy, r = box
    _polygon(draw, _regular(cx, cy + r * 0.15, r, 3, -math.pi / 2))


def diamond(draw: ImageDraw.ImageDraw, box: Box) -> None:
    cx, cy, r = box
    _polygon(draw, [(cx, cy - r), (cx + r * 0.7, cy), (cx, cy + r), (cx - r * 0.7, cy)])


def star(draw: ImageDraw.ImageDraw, box: Box) -> None:
    cx, cy, r = box
    outer = _regular(cx, cy, r, 5, -math.pi / 2)
    inner = _regular(cx, cy, r * 0.42, 5, -math.pi / 2 + math.pi / 5)
    _polygon(draw, [p for pair in zip(outer, inner, strict=True) for p in pair])


def heart(draw: ImageDraw.ImageDraw, box: Box) -> None:
    cx, cy, r = box
    ts = np.linspace(0, 2 * math.pi, 80)
    xs = 16 * np.sin(ts) ** 3
    ys = 13 * np.cos(ts) - 5 * np.cos(2 * ts) - 2 * np.cos(3 * ts) - np.cos(4 * ts)
    k = r / 16
    _polygon(draw, [(cx + k * x, cy - k * y) for x, y in zip(xs, ys, strict=True)])


def moon(draw: ImageDraw.ImageDraw, box: Box) -> None:
    cx, cy, r = box
    draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    off = r * 0.45
    draw.ellipse((cx - r + off, cy - r - off * 0.3, cx + r + off, cy + r - off * 0.3), fill=0)


def cross(draw: ImageDraw.ImageDraw, box: Box) -> None:
    cx, cy, r = box
    w = r * 0.32
    draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=255)
    draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=255)


def house(draw: ImageDraw.ImageDraw, box: Box) -> None:
    cx, cy, r = box
    draw.rectangle((cx - r * 0.7, cy - r * 0.1, cx + r * 0.7, cy + r), fill=255)
    _polygon(draw, [(cx - r * 0.95, cy - r * 0.05), (cx, cy - r), (cx + r * 0.95, cy - r * 0.05)])
    draw.rectangle((cx - r * 0.18, cy + r * 0.4, cx + r * 0.18, cy + r), fill=0)


def tree(draw: ImageDraw.ImageDraw, box: Box) -> None:
    cx, cy, r = box
    draw.rectangle((cx - r * 0.14, cy + r * 0.35, cx + r * 0.14, cy + r), fill=255)
    _polygon(draw, [(cx - r * 0.75, cy + r * 0.4), (cx, cy - r), (cx + r * 0.75, cy + r * 0.4)])


def ring(draw: ImageDraw.ImageDraw, box: Box) -> None:
    cx, cy, r = box
    draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    h = r * 0.55
    draw.ellipse((cx - h, cy - h, cx + h, cy + h), fill=0)


CONTENTS: dict[str, Painter] = {
    "circle": circle,
    "square": square,
    "triangle": triangle,
    "diamond": diamond,
    "star": star,
    "heart": heart,
    "moon": moon,
    "cross": cross,
    "house": house,
    "tree": tree,
    "ring": ring,
}


@dataclass(frozen=True)
class Scene:
    """One object on a background, before any style is applied."""

    content: str
    color: str
    mask: np.ndarray  # (H, W) float32 in [0, 1], 1 where the object is
    background: RGB

    @property
    def fg(self) -> np.ndarray:
        return np.asarray(COLORS[self.color], dtype=np.float32)

    @property
    def bg(self) -> np.ndarray:
        return np.asarray(self.background, dtype=np.float32)

    @property
    def caption(self) -> str:
        return f"a {self.color} {self.content}"


def draw_scene(content: str, color: str, size: int, rng: np.random.Generator) -> Scene:
    """Place `content` at a random position and scale on a `size` x `size` canvas."""
    supersample = 4
    big = size * supersample
    radius = big * rng.uniform(0.22, 0.34)
    margin = radius * 1.05
    cx = rng.uniform(margin, big - margin)
    cy = rng.uniform(margin, big - margin)
    canvas = Image.new("L", (big, big), 0)
    CONTENTS[content](ImageDraw.Draw(canvas), (cx, cy, radius))
    mask = np.asarray(canvas.resize((size, size), Image.Resampling.BOX), dtype=np.float32) / 255.0
    background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    return Scene(content=content, color=color, mask=mask, background=background)
