"""The style classifier of the paper's evaluation: a 2-layer perceptron on CLIP image features, trained
on the style collections, that judges which style a sample was drawn in (the paper's: 77 % top-1 on
ArtBench's validation split)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rdm.config import ClassifierParams


class StyleClassifier(nn.Module):
    def __init__(self, dim: int, hidden: int, styles: Sequence[str]) -> None:
        super().__init__()
        self.styles = list(styles)
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, len(self.styles)))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(N, D) CLIP image features -> (N, styles) logits."""
        return self.net(features)

    @torch.inference_mode()
    def logits(self, features: np.ndarray) -> np.ndarray:
        device = next(self.parameters()).device
        return self.net(torch.as_tensor(features, dtype=torch.float32, device=device)).cpu().numpy()


@dataclass(frozen=True)
class FittedClassifier:
    classifier: StyleClassifier
    holdout_accuracy: float
    """Top-1 on the held-out share of every style collection."""
    per_style_accuracy: dict[str, float]
    train_size: int
    holdout_size: int


def holdout_split(labels: Sequence[str], fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, held out), the same `fraction` of every style held out (at least one each)."""
    rng = np.random.default_rng(seed)
    train: list[int] = []
    held: list[int] = []
    names = np.asarray(labels)
    for style in sorted(set(labels)):
        members = rng.permutation(np.flatnonzero(names == style))
        cut = max(1, round(len(members) * fraction))
        held.extend(members[:cut])
        train.extend(members[cut:])
    return np.sort(train), np.sort(held)


def fit_classifier(
    features: np.ndarray, labels: Sequence[str], params: ClassifierParams, device: str = "cpu"
) -> FittedClassifier:
    """Train on (N, D) features of the style collections; measure top-1 on a held-out share."""
    styles = sorted(set(labels))
    if len(styles) < 2:
        raise ValueError(f"a style classifier needs at least two styles; the collections hold {styles}")
    target = torch.tensor([styles.index(s) for s in labels])
    x = torch.as_tensor(features, dtype=torch.float32)
    train, held = holdout_split(labels, params.holdout_fraction, params.seed)

    torch.manual_seed(params.seed)
    classifier = StyleClassifier(x.shape[1], params.hidden, styles).to(device)
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=params.lr, weight_decay=params.weight_decay)
    x_train, y_train = x[train].to(device), target[train].to(device)
    classifier.train()
    for _ in range(params.epochs):  # full batch: the collections are small
        optimizer.zero_grad()
        F.cross_entropy(classifier(x_train), y_train).backward()
        optimizer.step()
    classifier.eval()

    predicted = classifier.logits(x[held].numpy()).argmax(1)
    correct = predicted == target[held].numpy()
    held_labels = np.asarray(labels)[held]
    return FittedClassifier(
        classifier=classifier,
        holdout_accuracy=float(correct.mean()),
        per_style_accuracy={s: float(correct[held_labels == s].mean()) for s in styles},
        train_size=len(train),
        holdout_size=len(held),
    )
