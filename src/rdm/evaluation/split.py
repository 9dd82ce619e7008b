"""Which style-collection images belong to the style classifier and which to retrieval.

The classifier that judges samples must not have seen the images retrieval conditions them on: a sample
that copies its neighbours would otherwise look "in style" to a classifier that memorised those very
images. So each collection is split once, by image id alone, into a classifier part and a retrieval
part, and both sides compute the same split from the same settings:

    from rdm.evaluation.split import classifier_ids
    keep_out = classifier_ids(styles["id"], config.evaluate.classifier_share, config.evaluate.split_seed)
    # embed: leave `keep_out` out of every style collection; evaluate: train the classifier on them

An id's place depends on (id, seed) only, not on the other ids, their order or the style, so adding
images to a collection never moves an existing image from one side to the other.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rdm.config import Config


def id_position(image_id: str, seed: int) -> float:
    """A uniform number in [0, 1) fixed by (image id, seed): the first 8 bytes of sha256("seed:id")."""
    digest = hashlib.sha256(f"{seed}:{image_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def classifier_ids(ids: Iterable[str], share: float, seed: int) -> set[str]:
    """The ids (about `share` of them) kept for the style classifier; retrieval must never return them.

    ids: image ids (the manifests' `id`, a sha256 of the file). share: in [0, 1]
    (`evaluate.classifier_share`). seed: `evaluate.split_seed`; another seed draws another split."""
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"evaluate.classifier_share must be in [0, 1], not {share}")
    return {str(i) for i in ids if id_position(str(i), seed) < share}


def classifier_share(config: Config) -> set[str]:
    """The prepared style images kept for the classifier: what the embed stage leaves out of every
    collection (`evaluate.classifier_share`, `evaluate.split_seed`)."""
    from rdm.artifacts.manifest import read_manifest

    styles = read_manifest(Path(config.prepare.out) / "styles.parquet")
    return classifier_ids(styles["id"], config.evaluate.classifier_share, config.evaluate.split_seed)


def classifier_images(
    ids: Sequence[str], styles: Sequence[str], share: float, holdout_fraction: float, seed: int
) -> tuple[set[str], set[str], set[str]]:
    """The style classifier's (train, held out, borrowed) ids: `classifier_ids`, of which those whose
    position is below share * holdout_fraction (about `holdout_fraction` of them) are held out to measure
    its top-1, adjusted so that every style with two images or more has one to train on
    and one to hold out. A style with fewer than two classifier images (a tiny collection) borrows its
    lowest-positioned others from retrieval: `borrowed` names them, so the report can say so."""
    if len(ids) != len(styles):
        raise ValueError(f"{len(ids)} ids but {len(styles)} styles")
    mine = classifier_ids(ids, share, seed)
    train: set[str] = set()
    held: set[str] = set()
    borrowed: set[str] = set()
    members: dict[str, list[str]] = {}
    for image_id, style in zip(ids, styles, strict=True):
        members.setdefault(str(style), []).append(str(image_id))
    for group in members.values():
        ranked = sorted(group, key=lambda i: id_position(i, seed))
        chosen = [i for i in ranked if i in mine]
        if len(chosen) < 2:
            extra = [i for i in ranked if i not in mine][: 2 - len(chosen)]
            borrowed |= set(extra)
            chosen = sorted([*chosen, *extra], key=lambda i: id_position(i, seed))
        cut = share * holdout_fraction
        out = [i for i in chosen if id_position(i, seed) < cut] or chosen[:1]  # at least one held out
        if len(out) == len(chosen) and len(chosen) > 1:
            out = out[:-1]  # and at least one to train on
        held |= set(out)
        train |= set(chosen) - set(out)
    return train, held, borrowed
