"""Which torch device a `device: auto | cpu | cuda` setting means on this machine."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rdm.errors import UserError

if TYPE_CHECKING:
    import torch


def resolve_device(name: str) -> torch.device:
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device is 'cuda' but no CUDA device is visible; set it to 'auto' or 'cpu'")
    return torch.device(name)
