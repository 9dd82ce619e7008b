"""The CLIP folder the `clip` stage writes: an open_clip "local-dir" folder (`open_clip_config.json`
plus `open_clip_model.safetensors`), loadable by any open_clip user, and its card (`rdm_clip.json`).

The card names the model, where its weights came from, how images are resized to its input, and a
fingerprint of the vectors it makes: embeddings, collections, neighbours and trained models record it,
so vectors of two different CLIPs (or of one CLIP fed differently resized images) are never mixed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from rdm.errors import UserError

CARD = "rdm_clip.json"
WEIGHTS = "open_clip_model.safetensors"
CONFIG = "open_clip_config.json"
RESIZE_MODES = ("crop", "squash")
"""`rdm.embedding.encode.to_uint8`'s ways of making an image the square input of the CLIP."""


class ClipError(UserError):
    pass


@dataclass(frozen=True)
class ClipCard:
    model: str
    """The open_clip model name the architecture came from."""
    source: str
    """`trained` or the pretrained tag / file the weights came from."""
    embed_dim: int
    fingerprint: str
    """sha256 (first 16 hex digits) of the saved weights and, unless `crop`, the resize mode."""
    resize: str = "crop"
    """How every stage resizes images for this CLIP (`clip.resize`); cards written before the
    setting existed were made with `crop`."""


def write_card(folder: Path, model: str, source: str, embed_dim: int, resize: str = "crop") -> ClipCard:
    """The card of the weights already saved in `folder`, fingerprinted and written beside them."""
    check_resize(resize, str(folder / CARD))
    card = ClipCard(model, source, embed_dim, fingerprint(folder / WEIGHTS, resize), resize)
    (folder / CARD).write_text(json.dumps(asdict(card), indent=2) + "\n")
    return card


def fingerprint(weights: Path, resize: str) -> str:
    """What tells this CLIP's vectors apart: the weights, and the resize mode, since the same weights
    fed squashed instead of cropped images make other vectors. `crop` adds nothing, so folders
    written before the mode existed keep their fingerprint (and their embeddings stay valid)."""
    with weights.open("rb") as file:  # in chunks: ViT-L/14's weights are 1.7 GB
        digest = hashlib.file_digest(file, "sha256")
    if resize != "crop":
        digest.update(f"\nresize={resize}".encode())
    return digest.hexdigest()[:16]


def read_card(folder: Path) -> ClipCard:
    path = folder / CARD
    if not path.is_file():
        raise ClipError(f"{folder}: no CLIP model here; run `dvc repro clip` (or `rdm clip`) first")
    card = ClipCard(**json.loads(path.read_text()))
    check_resize(card.resize, str(path))
    return card


def check_resize(resize: str, where: str) -> None:
    if resize not in RESIZE_MODES:
        raise ClipError(
            f"{where}: clip.resize {resize!r} is not one of {', '.join(RESIZE_MODES)}; "
            "set clip.resize in params.yaml and run `dvc repro clip` (or `rdm clip`) again"
        )
