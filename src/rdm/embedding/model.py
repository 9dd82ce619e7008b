"""One way to hold, save and load the pipeline's CLIP model.

The `clip` stage always writes an open_clip "local-dir" folder (`open_clip_config.json` plus
`open_clip_model.safetensors`), whatever the weights came from, so every later stage (and any
open_clip user: `create_model_and_transforms("local-dir:models/clip")`) loads it one way. A card
(`rdm_clip.json`) names the model, where its weights came from and a fingerprint of them: the
collections record it, so vectors from two different CLIPs are never mixed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rdm.errors import UserError

if TYPE_CHECKING:
    import torch

BUILTIN_CONFIGS = Path(__file__).parent
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


@dataclass
class Clip:
    """A CLIP model ready to encode: model in eval mode, its image transform and tokenizer."""

    model: Any
    preprocess: Any
    tokenizer: Any
    card: ClipCard
    device: torch.device

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """(B,) strings -> (B, D) L2-normalised float32 embeddings."""
        import torch

        with torch.inference_mode(), _autocast(self.device):
            tokens = self.tokenizer(texts).to(self.device)
            return self.model.encode_text(tokens, normalize=True).float()

    @property
    def image_size(self) -> int:
        return image_size(self.model)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return normalize_images(images, self.model, self.device)

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) preprocessed images -> (B, D) L2-normalised float32 embeddings."""
        import torch

        with torch.inference_mode(), _autocast(self.device):
            return self.model.encode_image(pixels.to(self.device), normalize=True).float()


def image_size(model: Any) -> int:
    """The square input side of a CLIP's image tower."""
    size = model.visual.image_size
    return int(size[0] if isinstance(size, tuple | list) else size)


def normalize_images(images: torch.Tensor, model: Any, device: torch.device) -> torch.Tensor:
    """(B, 3, H, W) uint8 -> the model's float input, exactly as open_clip's ToTensor + Normalize."""
    import torch

    visual = model.visual
    mean = torch.tensor(getattr(visual, "image_mean", None) or _clip_mean(), device=device).view(1, 3, 1, 1)
    std = torch.tensor(getattr(visual, "image_std", None) or _clip_std(), device=device).view(1, 3, 1, 1)
    pixels = images.to(device, non_blocking=True).float().div_(255)
    return pixels.sub_(mean).div_(std)


def _autocast(device: torch.device) -> Any:
    import torch

    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def resolve_device(name: str) -> torch.device:
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ClipError("device is 'cuda' but no CUDA device is visible; set it to 'auto' or 'cpu'")
    return torch.device(name)


def register_builtin_configs() -> None:
    import open_clip

    if "rdm-tiny" not in open_clip.list_models():
        open_clip.add_model_config(BUILTIN_CONFIGS)


def model_config(name: str) -> dict[str, Any]:
    """The architecture of an open_clip model name; a clear error for an unknown one."""
    import open_clip

    register_builtin_configs()
    config = open_clip.get_model_config(name)
    if config is None:
        known = ", ".join(sorted(open_clip.list_models())[:12])
        raise ClipError(
            f"clip.model: {name!r} is not an open_clip model; use one of open_clip.list_models() "
            f"(e.g. {known}, ...) or rdm-tiny"
        )
    return dict(config)


def create(name: str, pretrained: str | None = None) -> tuple[Any, Any]:
    """Build `name` with weights from a pretrained tag, a local file, or random init (None).

    Returns (model, preprocess).
    """
    import open_clip

    model_config(name)  # validates the name first
    if pretrained and not Path(pretrained).is_file() and not open_clip.get_pretrained_cfg(name, pretrained):
        raise ClipError(
            f"clip.pretrained: {pretrained!r} is neither a local weights file nor a pretrained tag of "
            f"{name} (tags: {open_clip.list_pretrained_tags_by_model(name) or 'none'})"
        )
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=pretrained)
    except RuntimeError as exc:
        raise ClipError(f"clip: cannot load {name} with weights {pretrained!r}: {exc}") from None
    return model, preprocess


def save(model: Any, name: str, source: str, out: Path) -> ClipCard:
    """Write `model` as an open_clip local-dir folder plus the card; returns the card."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    config = model_config(name)
    visual = model.visual
    preprocess_cfg = {
        "size": visual.image_size,
        "mean": list(getattr(visual, "image_mean", None) or _clip_mean()),
        "std": list(getattr(visual, "image_std", None) or _clip_std()),
    }
    (out / CONFIG).write_text(json.dumps({"model_cfg": config, "preprocess_cfg": preprocess_cfg}, indent=2))
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(out / WEIGHTS))
    digest = hashlib.sha256((out / WEIGHTS).read_bytes()).hexdigest()[:16]
    card = ClipCard(model=name, source=source, embed_dim=int(config["embed_dim"]), fingerprint=digest)
    (out / CARD).write_text(json.dumps(asdict(card), indent=2) + "\n")
    return card


def read_card(folder: Path) -> ClipCard:
    path = folder / CARD
    if not path.is_file():
        raise ClipError(f"{folder}: no CLIP model here; run `dvc repro clip` (or `rdm clip`) first")
    return ClipCard(**json.loads(path.read_text()))


def load(folder: Path, device: str = "auto") -> Clip:
    """Load the CLIP written by the `clip` stage."""
    import open_clip

    card = read_card(folder)
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
    torch_device = resolve_device(device)
    return Clip(
        model=model.to(torch_device).eval(),
        preprocess=preprocess,
        tokenizer=tokenizer,
        card=card,
        device=torch_device,
    )


def _clip_mean() -> tuple[float, ...]:
    from open_clip.constants import OPENAI_DATASET_MEAN

    return tuple(OPENAI_DATASET_MEAN)


def _clip_std() -> tuple[float, ...]:
    from open_clip.constants import OPENAI_DATASET_STD

    return tuple(OPENAI_DATASET_STD)
