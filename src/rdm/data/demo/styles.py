"""How a scene is rendered: styles that differ in texture and technique, not only in colour.

Each renderer takes a `Scene` (drawn at the working canvas size) and a random generator and
returns an (H, W, 3) uint8 image. All randomness comes from the generator, so a seed fixes the bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

if TYPE_CHECKING:
    from rdm.data.demo.contents import Scene

Renderer = Callable[["Scene", np.random.Generator], np.ndarray]

PAPER = np.array([247, 243, 234], dtype=np.float32)
INK = np.array([28, 24, 22], dtype=np.float32)


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _blend(mask: np.ndarray, fg: np.ndarray, bg: np.ndarray) -> np.ndarray:
    """(H, W) mask, fg and bg colours or images -> (H, W, 3) float image."""
    m = mask[..., None]
    return m * fg + (1.0 - m) * bg


def _blur(mask: np.ndarray, radius: float) -> np.ndarray:
    img = Image.fromarray(_to_uint8(mask * 255.0), mode="L").filter(ImageFilter.GaussianBlur(radius))
    return np.asarray(img, dtype=np.float32) / 255.0


def _dilate(mask: np.ndarray, size: int) -> np.ndarray:
    img = Image.fromarray(_to_uint8(mask * 255.0), mode="L").filter(ImageFilter.MaxFilter(size))
    return np.asarray(img, dtype=np.float32) / 255.0


def _smooth_noise(shape: tuple[int, int], cells: int, rng: np.random.Generator) -> np.ndarray:
    """Low-frequency noise in [0, 1]: a coarse random grid upsampled bicubically."""
    coarse = rng.random((cells, cells)).astype(np.float32)
    img = Image.fromarray(coarse, mode="F").resize((shape[1], shape[0]), Image.Resampling.BICUBIC)
    return np.clip(np.asarray(img, dtype=np.float32), 0.0, 1.0)


def _grain(shape: tuple[int, int], strength: float, rng: np.random.Generator) -> np.ndarray:
    return rng.normal(0.0, strength, size=(*shape, 1)).astype(np.float32)


def plain(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """Flat colours, no texture: the unstyled rendering."""
    return _to_uint8(_blend(scene.mask, scene.fg, scene.bg))


def shaded(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """Soft light from one side and a drop shadow: the demo's stand-in for an ordinary photograph."""
    h, w = scene.mask.shape
    y, x = np.mgrid[0:h, 0:w].astype(np.float32) / max(h, w)
    angle = rng.uniform(0, 2 * np.pi)
    light = 0.8 + 0.35 * ((x - 0.5) * np.cos(angle) + (y - 0.5) * np.sin(angle))  # (H, W)
    shift = max(2, w // 24)
    shadow = _blur(np.roll(scene.mask, (shift, shift), axis=(0, 1)), w / 40) * 0.35
    ground = scene.bg * (1.0 - shadow[..., None]) * (0.95 + 0.1 * light[..., None])
    img = _blend(scene.mask, scene.fg * light[..., None], ground)
    return _to_uint8(img + _grain((h, w), 2.0, rng))


def sketch(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """A pencil outline with a pale colour wash, on white: the stand-in for a drawing or diagram."""
    h, w = scene.mask.shape
    outline = np.clip(_dilate(scene.mask, 3) - scene.mask, 0, 1)
    wobbly = outline * (0.6 + 0.4 * _smooth_noise((h, w), 12, rng))
    white = np.array([250, 250, 248], dtype=np.float32)
    img = _blend(scene.mask * 0.45, scene.fg, np.broadcast_to(white, (h, w, 3)))
    img = _blend(wobbly, np.array([60, 60, 64], dtype=np.float32), img)
    return _to_uint8(img + _grain((h, w), 2.0, rng))


def pointillism(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """Dense dots of jittered colour on bare canvas (Seurat)."""
    h, w = scene.mask.shape
    base = _blend(scene.mask, scene.fg, scene.bg * 0.85 + np.array([10, 25, 10]))
    canvas = Image.new("RGB", (w, h), tuple(int(c) for c in PAPER))
    draw = ImageDraw.Draw(canvas)
    r = max(1.2, w / 48)
    n = int(w * h / (r * r) * 0.9)
    xs = rng.uniform(0, w, n)
    ys = rng.uniform(0, h, n)
    jitter = rng.normal(0, 26, (n, 1)) + rng.normal(0, 10, (n, 3))  # mostly light/dark, a little hue
    for x, y, dc in zip(xs, ys, jitter, strict=True):
        color = np.clip(base[int(y), int(x)] + dc, 0, 255).astype(int)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=(int(color[0]), int(color[1]), int(color[2])))
    return np.asarray(canvas)


def hatching(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """Pen and ink: sparse diagonal strokes for the ground, dense cross-hatching for the object."""
    h, w = scene.mask.shape
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi)
    wobble = 1.2 * np.sin(y / 5.0 + phase) + 0.8 * np.sin(x / 7.0 - phase)
    spacing = max(3.0, w / 24)

    def strokes(u: np.ndarray, period: float, width: float) -> np.ndarray:
        d = np.abs(((u + wobble) % period) - period / 2)
        return np.clip((width - d) + 0.5, 0.0, 1.0)

    ground = strokes(x + y, spacing * 1.6, 0.6) * 0.45
    inside = np.maximum(strokes(x + y, spacing * 0.75, 0.7), strokes(x - y, spacing * 0.75, 0.7))
    outline = np.clip(_dilate(scene.mask, 3) - scene.mask, 0, 1)
    ink_object = scene.fg * 0.55
    ink_ground = scene.bg * 0.5
    img = np.broadcast_to(PAPER, (h, w, 3)).copy()
    img = _blend(ground * (1 - scene.mask), ink_ground, img)
    img = _blend(inside * scene.mask, ink_object, img)
    img = _blend(outline, INK, img)
    return _to_uint8(img + _grain((h, w), 4.0, rng))


def mosaic(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """Square tiles of jittered colour set in dark grout, rows offset like brickwork."""
    h, w = scene.mask.shape
    base = _blend(scene.mask, scene.fg, scene.bg * 0.75)
    tile = max(4, w // 12)
    grout = np.array([70, 66, 60], dtype=np.float32)
    img = np.broadcast_to(grout, (h, w, 3)).copy()
    for row, top in enumerate(range(0, h, tile)):
        offset = (tile // 2) * (row % 2)
        for left in range(-offset, w, tile):
            y0, y1 = top, min(top + tile - 1, h)
            x0, x1 = max(left, 0), min(left + tile - 1, w)
            if x1 <= x0 or y1 <= y0:
                continue
            shade = rng.normal(0, 14) + rng.normal(0, 5, 3)
            color = base[y0:y1, x0:x1].reshape(-1, 3).mean(axis=0) + shade
            img[y0:y1, x0:x1] = color
    return _to_uint8(img)


def neon(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """A glowing outline of the object on a near-black night."""
    h, w = scene.mask.shape
    eroded = 1.0 - _dilate(1.0 - scene.mask, 3)
    edge = np.clip(_dilate(scene.mask, 3) - eroded, 0, 1)
    glow = _blur(edge, w / 28) * 1.8
    night = np.array([14, 10, 30], dtype=np.float32) + _grain((h, w), 2.0, rng)
    img = night + glow[..., None] * scene.fg + scene.mask[..., None] * scene.fg * 0.08
    img = _blend(edge * 0.85, np.array([255, 250, 245], dtype=np.float32) * 0.5 + scene.fg * 0.5, img)
    return _to_uint8(img)


def watercolor(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """Soft washes with ragged edges and pigment pooled at the rim, on grainy paper."""
    h, w = scene.mask.shape
    ragged = _blur(scene.mask, w / 40) + 0.5 * (_smooth_noise((h, w), 9, rng) - 0.5)
    wash = np.clip((ragged - 0.35) * 3.0, 0, 1)
    rim = np.clip(wash * (1 - wash) * 4.0, 0, 1) * 0.5
    density = 0.55 + 0.35 * _smooth_noise((h, w), 6, rng)
    pale_fg = scene.fg * 0.7 + 255 * 0.3
    ground = 0.35 * _smooth_noise((h, w), 5, rng)
    img = np.broadcast_to(PAPER, (h, w, 3)).copy()
    img = _blend(ground, scene.bg * 0.9, img)
    img = _blend(wash * density, pale_fg, img)
    img = _blend(rim, scene.fg * 0.6, img)
    return _to_uint8(img + _grain((h, w), 5.0, rng))


def pixel_art(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """Big square pixels in a posterised palette, scaled up without smoothing."""
    h, w = scene.mask.shape
    base = _blend(scene.mask, scene.fg, scene.bg * 0.8)
    cells = 14 + int(rng.integers(0, 4))
    small = Image.fromarray(_to_uint8(base)).resize((cells, cells), Image.Resampling.BOX)
    levels = 4
    quantised = np.round(np.asarray(small, dtype=np.float32) / 255 * (levels - 1)) / (levels - 1) * 255
    return np.asarray(Image.fromarray(_to_uint8(quantised)).resize((w, h), Image.Resampling.NEAREST))


def ukiyo_e(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """Woodblock print: flat fills with thick black outlines over stepped sky bands on beige paper."""
    h, w = scene.mask.shape
    paper = np.array([230, 216, 182], dtype=np.float32)
    indigo = np.array([38, 62, 104], dtype=np.float32)
    y = np.arange(h, dtype=np.float32)[:, None] / h
    bands = np.floor(np.clip(1.0 - y * 1.6, 0, 1) * 4) / 4  # (H, 1): stepped gradation (bokashi)
    sky = bands[..., None] * indigo * 0.55 + (1 - bands[..., None] * 0.55) * paper
    sky = np.broadcast_to(sky, (h, w, 3)).copy()
    solid = (scene.mask > 0.5).astype(np.float32)
    flat_fg = np.round((scene.fg * 0.8 + paper * 0.2) / 32) * 32
    img = _blend(solid, flat_fg, sky)
    outline = np.clip(_dilate(solid, 5) - solid, 0, 1)
    img = _blend(outline, INK, img)
    streaks = _smooth_noise((h, 4), 40, rng)[:, :1] * 10.0  # horizontal wood grain
    return _to_uint8(img - streaks[..., None] + _grain((h, w), 3.0, rng))


RENDERERS: dict[str, Renderer] = {
    "plain": plain,
    "shaded": shaded,
    "sketch": sketch,
    "pointillism": pointillism,
    "hatching": hatching,
    "mosaic": mosaic,
    "neon": neon,
    "watercolor": watercolor,
    "pixel_art": pixel_art,
    "ukiyo_e": ukiyo_e,
}
