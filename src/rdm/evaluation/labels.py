"""Does a sample show what its prompt asked for? Content and colour labels, and their hit rates.

A style gain is worth little if the image lost the prompt's "yellow circle". Two small classifiers
(the style classifier's perceptron) learn content and colour from CLIP features of labelled training
images: the content from the manifest's `content` column, the colour from the caption word that names
one of the prompts' colours. A sample is a hit when the classifier's label equals its prompt's
(`prompts.parquet`: prompt, content, color).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import numpy as np

WORD = re.compile(r"[a-z]+")


def colour_from_caption(caption: str | None, colours: Iterable[str]) -> str | None:
    """The one colour word among `colours` that `caption` contains ("a yellow circle" -> "yellow");
    None when it names none, or more than one (ambiguous: left out of the training set)."""
    if not caption:
        return None
    named = set(WORD.findall(caption.lower())) & {c.lower() for c in colours}
    return named.pop() if len(named) == 1 else None


def hits(predicted: Sequence[str], expected: Sequence[str | None]) -> np.ndarray:
    """(N,) 1.0 where the predicted label is the expected one, 0.0 where not, NaN where nothing is
    expected (a prompt outside prompts.parquet)."""
    if len(predicted) != len(expected):
        raise ValueError(f"{len(predicted)} predictions for {len(expected)} expected labels")
    return np.array(
        [np.nan if e is None else float(p == e) for p, e in zip(predicted, expected, strict=True)]
    )
