"""A batch of samples: PNGs under `images/` and one JSON line per image in `samples.jsonl`, written by
`rdm sample` and the `sample` stage, read by the evaluation.

Methods (`sample.methods`), each the prompt drawn in a style:
    retrieval     the prompt's CLIP text vector and its k neighbours from the collection `style-<style>`
    postfix       the prompt plus "in the style of <style>", its k neighbours from D_train
    postfix_text  the prompt plus "in the style of <style>" alone (query_only: knn2img's text-only mode)
Floors (`sample.floor_per_style` of each), what a style score must beat:
    null          the all-zero context: what the model draws with no conditioning at all
    other_style   retrieval as above, but from another style's collection (the next in sorted order)
And `rdm sample --unconditional` (rdm.sampling.unconditional):
    unconditional a D_train image's CLIP vector as a pseudo-query, its k neighbours from a collection
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rdm.errors import UserError
from rdm.files import write_jsonl

RETRIEVAL, POSTFIX, POSTFIX_TEXT = "retrieval", "postfix", "postfix_text"
NULL, OTHER_STYLE = "null", "other_style"
UNCONDITIONAL = "unconditional"
METHODS = (RETRIEVAL, POSTFIX, POSTFIX_TEXT)
"""What `sample.methods` may list: ways to draw a prompt in a style."""
FLOORS = (NULL, OTHER_STYLE)
"""Drawn `sample.floor_per_style` times per style: the scores a method must beat."""
RECORDS = "samples.jsonl"
IMAGES = "images"


def write_samples(folder: Path, records: list[dict[str, Any]]) -> None:
    """The records of the images already saved under `folder/images/`."""
    write_jsonl(folder / RECORDS, records)


def read_samples(folder: Path) -> list[dict[str, Any]]:
    path = folder / RECORDS
    if not path.is_file():
        raise UserError(f"{path}: no samples to evaluate; run `dvc repro sample` (or `rdm sample-styles`)")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def on_style_share(neighbors: Sequence[dict[str, Any]], style: str) -> float:
    """The share of a sample's recorded neighbours that belong to `style` (NaN with no neighbours)."""
    return sum(n.get("style") == style for n in neighbors) / len(neighbors) if neighbors else float("nan")
