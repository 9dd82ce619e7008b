"""One way to hold, save and load the pipeline's CLIP model.

The `clip` stage always writes an open_clip "local-dir" folder (`rdm.artifacts.clip`), whatever the
weights came from, so every later stage (and any open_clip user:
`create_model_and_transforms("local-dir:models/clip")`) loads it one way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rdm.artifacts.clip import CONFIG, WEIGHTS, ClipCard, ClipError, read_card, write_card
from rdm.devices import resolve_device

if TYPE_CHECKING:
    import torch

BUILTIN_CONFIGS = Path(__file__).parent


@dataclass
class Clip:
    """A CLIP model ready to encode: model in eval mode, its image transform and tokenizer.

    `preprocess` is open_clip's transform (a centre crop); images for this pipeline's vectors go
    through `rdm.embedding.encode.to_uint8` with `card.resize` and then `normalize` instead."""

    model: Any
    preprocess: Any
    tokenizer: Any
    card: ClipCard
    device: torch.device
    folder: Path
    """Where it was loaded from: what a Ray actor loads it again from."""

    def encode_text(self, texts: list[str], normalize: bool = True) -> torch.Tensor:
        """(B,) strings -> (B, D) float32 embeddings, L2-normalised unless `normalize` is False (the
        raw vectors the ImageNet RDM was trained on)."""
        import torch

        with torch.inference_mode(), _autocast(self.device):
            tokens = self.tokenizer(texts).to(self.device)
            return self.model.encode_text(tokens, normalize=normalize).float()

    @property
    def image_size(self) -> int:
        return image_size(self.model)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return normalize_images(images, self.model, self.device)

    def encode_images(self, pixels: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """(B, 3, H, W) preprocessed images -> (B, D) float32 embeddings, L2-normalised unless
        `normalize` is False."""
        import torch

        with torch.inference_mode(), _autocast(self.device):
            return self.model.encode_image(pixels.to(self.device), normalize=normalize).float()


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
        if "TorchScript" in str(exc):  # OpenAI's own .pt files: loading one means running its code
            raise ClipError(
                f"clip.pretrained: {pretrained} is a TorchScript archive (OpenAI's original release), "
                "which is never loaded because it runs code; use the same weights as safetensors, e.g. "
                "open_clip_model.safetensors of huggingface.co/timm/vit_large_patch14_clip_224.openai "
                "for ViT-L-14-quickgelu"
            ) from None
        raise ClipError(f"clip: cannot load {name} with weights {pretrained!r}: {exc}") from None
    return model, preprocess


def save(model: Any, name: str, source: str, out: Path, resize: str = "crop") -> ClipCard:
    """Write `model` as an open_clip local-dir folder plus the card, which records how images are
    resized for it (`clip.resize`); returns the card."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    config = model_config(name)
    visual = model.visual
    preprocess_cfg = {
        "size": visual.image_size,
        "mean": list(getattr(visual, "image_mean", None) or _clip_mean()),
        "std": list(getattr(visual, "image_std", None) or _clip_std()),
    }
    if resize == "squash":  # open_clip's nearest mode (it antialiases), for users of the folder outside rdm
        preprocess_cfg["resize_mode"] = "squash"
    (out / CONFIG).write_text(json.dumps({"model_cfg": config, "preprocess_cfg": preprocess_cfg}, indent=2))
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(out / WEIGHTS))
    return write_card(out, name, source, int(config["embed_dim"]), resize)


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
        folder=folder.resolve(),
    )


def _clip_mean() -> tuple[float, ...]:
    from open_clip.constants import OPENAI_DATASET_MEAN

    return tuple(OPENAI_DATASET_MEAN)


def _clip_std() -> tuple[float, ...]:
    from open_clip.constants import OPENAI_DATASET_STD

    return tuple(OPENAI_DATASET_STD)
