"""How well a CLIP finds the right image for a caption: the `clip` stage's metrics.

For each held-out caption, all held-out images are ranked by cosine similarity; a hit at k means
one of the top k shows the caption's content (or, for captions that name a style, is in that style).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import numpy as np


def names_style(caption: str, style: str | None, style_text: Callable[[str], str]) -> bool:
    """Whether the caption names the style: by its name, with spaces for underscores, or its words."""
    if not style:
        return False
    words = {style.lower(), style.lower().replace("_", " "), style_text(style).lower()}
    return any(re.search(rf"\b{re.escape(w)}\b", caption.lower()) for w in words)


def hit_rate(
    similarity: np.ndarray, query_labels: Sequence[object], item_labels: Sequence[object], k: int
) -> float:
    """Share of queries (rows) whose top-k items (columns) include one with the query's label."""
    top = np.argsort(-similarity, axis=1)[:, :k]
    items = np.asarray(item_labels, dtype=object)
    hits = [label in set(items[row]) for label, row in zip(query_labels, top, strict=True)]
    return float(np.mean(hits)) if hits else float("nan")


def text_to_image_metrics(
    text_vectors: np.ndarray,
    image_vectors: np.ndarray,
    captions: Sequence[str],
    contents: Sequence[str | None],
    styles: Sequence[str | None],
    style_text: Callable[[str], str],
) -> dict[str, float | int | None]:
    """text (N, D) and image (N, D) vectors of the same N held-out images."""
    similarity = text_vectors @ image_vectors.T
    metrics: dict[str, float | int | None] = {"holdout_images": len(captions)}
    if all(contents):
        for k in (1, 5):
            metrics[f"content_top{k}"] = round(hit_rate(similarity, contents, contents, k), 4)
        metrics["content_chance_top1"] = round(1 / len(set(contents)), 4)
    styled = [
        i for i, (c, s) in enumerate(zip(captions, styles, strict=True)) if names_style(c, s, style_text)
    ]
    metrics["style_named_captions"] = len(styled)
    if styled:
        rows = similarity[styled]
        for k in (1, 5):
            metrics[f"style_top{k}"] = round(hit_rate(rows, [styles[i] for i in styled], styles, k), 4)
        metrics["style_chance_top1"] = round(1 / len({s for s in styles if s}), 4)
    return metrics
