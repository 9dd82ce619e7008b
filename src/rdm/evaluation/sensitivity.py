"""Conditioning sensitivity: does swapping the database change the image more than noise does?

For the retrieval method, request i of every style has the same prompt and seed, so the images of one
(prompt, seed) across styles differ by the collection alone; the images of one (prompt, style) across
seeds differ by the starting noise alone. The ratio of the mean distances,

    across collections / across seeds,

is about 0 for a model that ignores its neighbours (the same seed draws the same image whatever the
collection), about 1 when a collection swap matters as much as a new seed, and large when the image
follows the collection and ignores the seed. Measured on pixels (mean absolute difference of the 8-bit
images) and in CLIP space (1 - cosine similarity of the image features).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from itertools import combinations

import numpy as np

GOAL = 0.5
"""The ratio we want at least: a collection swap moves an image at least half as far as a new seed."""


def pairs_within(keys: Sequence[Hashable], differ: Sequence[Hashable]) -> np.ndarray:
    """(P, 2) index pairs that share a key and differ in `differ` (e.g. key (prompt, seed), differ style)."""
    groups: dict[Hashable, list[int]] = {}
    for n, key in enumerate(keys):
        groups.setdefault(key, []).append(n)
    found = [
        (i, j) for members in groups.values() for i, j in combinations(members, 2) if differ[i] != differ[j]
    ]
    return np.array(found, dtype=int).reshape(-1, 2)


def pixel_distance(images: np.ndarray, pairs: np.ndarray, chunk: int = 256) -> np.ndarray:
    """(N, H, W, C) uint8 images, (P, 2) pairs -> (P,) mean absolute difference on the 0-255 scale."""
    out = np.empty(len(pairs))
    for start in range(0, len(pairs), chunk):
        i, j = pairs[start : start + chunk].T
        difference = images[i].astype(np.int16) - images[j].astype(np.int16)  # (p, H, W, C)
        out[start : start + chunk] = np.abs(difference).mean(axis=(1, 2, 3))
    return out


def clip_distance(features: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """(N, D) features, (P, 2) pairs -> (P,) 1 - cosine similarity."""
    unit = features / np.linalg.norm(features, axis=1, keepdims=True).clip(min=1e-12)
    return 1.0 - np.einsum("pd,pd->p", unit[pairs[:, 0]], unit[pairs[:, 1]])


def conditioning_sensitivity(
    prompts: Sequence[str],
    styles: Sequence[str],
    seeds: Sequence[int],
    images: np.ndarray,
    features: np.ndarray,
) -> dict[str, object]:
    """Retrieval samples (N prompts, styles and seeds; (N, H, W, C) uint8 images; (N, D) CLIP features)
    -> per space, the mean distance across collections and across seeds, and their ratio (None where
    there are no pairs of a kind: one style, or every prompt drawn with a single seed)."""
    if not len(images) == len(features) == len(prompts) == len(styles) == len(seeds):
        raise ValueError(
            f"sensitivity: {len(prompts)} records, {len(images)} images and {len(features)} features"
        )
    across_collections = pairs_within(list(zip(prompts, seeds, strict=True)), styles)
    across_seeds = pairs_within(list(zip(prompts, styles, strict=True)), seeds)
    report: dict[str, object] = {
        "pairs": {"across_collections": len(across_collections), "across_seeds": len(across_seeds)},
        "goal": GOAL,
    }
    spaces: dict[str, Callable[[np.ndarray], np.ndarray]] = {
        "pixels": lambda pairs: pixel_distance(images, pairs),
        "clip": lambda pairs: clip_distance(features, pairs),
    }
    for space, distance in spaces.items():
        collections = float(distance(across_collections).mean()) if len(across_collections) else None
        noise = float(distance(across_seeds).mean()) if len(across_seeds) else None
        ratio = collections / noise if collections is not None and noise else None
        report[space] = {"across_collections": collections, "across_seeds": noise, "ratio": ratio}
    return report
