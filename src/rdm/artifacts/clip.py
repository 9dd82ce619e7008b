"""The CLIP folder the `clip` stage writes: an open_clip "local-dir" folder (`open_clip_config.json`
plus `open_clip_model.safetensors`), loadable by any open_clip user, and its card (`rdm_clip.json`).

The card names the model, where its weights came from and a fingerprint of them: embeddings,
collections, neighbours and trained models record it, so vectors of two different CLIPs are never mixed.
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
    """sha256 (first 16 hex digits) of the saved weights."""


def write_card(folder: Path, model: str, source: str, embed_dim: int) -> ClipCard:
    """The card of the weights already saved in `folder`, fingerprinted and written beside them."""
    digest = hashlib.sha256((folder / WEIGHTS).read_bytes()).hexdigest()[:16]
    card = ClipCard(model=model, source=source, embed_dim=embed_dim, fingerprint=digest)
    (folder / CARD).write_text(json.dumps(asdict(card), indent=2) + "\n")
    return card


def read_card(folder: Path) -> ClipCard:
    path = folder / CARD
    if not path.is_file():
        raise ClipError(f"{folder}: no CLIP model here; run `dvc repro clip` (or `rdm clip`) first")
    return ClipCard(**json.loads(path.read_text()))
