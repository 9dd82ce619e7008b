"""The style classifier of the paper's evaluation: a 2-layer perceptron on CLIP image features, trained
on the classifier's share of the style collections (`rdm.evaluation.split`), that judges which style a
sample was drawn in (the paper's: 77 % top-1 on ArtBench's validation split). The same perceptron,
trained on labelled training images, judges a sample's content and colour (`rdm.evaluation.labels`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rdm.config import ClassifierParams


class StyleClassifier(nn.Module):
    """CLIP features -> one logit per label (`styles`: the style names, or contents, or colours)."""

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

    def predict(self, features: np.ndarray) -> list[str]:
        """(N, D) features -> the N most likely labels."""
        return [self.styles[i] for i in self.logits(features).argmax(1)]


@dataclass(frozen=True)
class FittedClassifier:
    classifier: StyleClassifier
    holdout_accuracy: float
    """Top-1 on the held-out images (a share of every label's)."""
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
    features: np.ndarray,
    labels: Sequence[str],
    params: ClassifierParams,
    device: str = "cpu",
    held_out: np.ndarray | None = None,
) -> FittedClassifier:
    """Train on (N, D) features with their N labels; measure top-1 on the held-out images.

    held_out: (N,) bool, the images kept apart (e.g. by id, `classifier_holdout_ids`); by default
    `holdout_split` keeps `params.holdout_fraction` of every label apart."""
    styles = sorted(set(labels))
    if len(styles) < 2:
        raise ValueError(f"a classifier needs at least two labels (styles, contents, ...); got {styles}")
    target = torch.tensor([styles.index(s) for s in labels])
    x = torch.as_tensor(features, dtype=torch.float32)
    if held_out is None:
        train, held = holdout_split(labels, params.holdout_fraction, params.seed)
    else:
        mask = np.asarray(held_out, dtype=bool)
        train, held = np.flatnonzero(~mask), np.flatnonzero(mask)
    untrained = sorted(set(styles) - {labels[i] for i in train})
    if untrained:
        raise ValueError(f"no training images for {untrained}: every one of them was held out")
    if not len(held):
        raise ValueError("no held-out images to measure the classifier's top-1 on")

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
        per_style_accuracy={
            str(s): float(correct[held_labels == s].mean()) for s in sorted(set(held_labels))
        },
        train_size=len(train),
        holdout_size=len(held),
    )
