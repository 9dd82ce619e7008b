"""Training a small CLIP on captioned images, with open_clip's own model and contrastive loss.

For sites with no pretrained weights (air-gapped, a domain of their own, our tests and demo).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from diffusers.optimization import get_cosine_schedule_with_warmup
from open_clip.loss import ClipLoss
from tqdm import tqdm

from rdm.config import ClipParams
from rdm.embedding.model import normalize_images


def train_clip(
    model: Any,
    tokenizer: Any,
    images: torch.Tensor,
    captions: Sequence[str],
    params: ClipParams,
    device: torch.device,
    progress: bool = True,
) -> list[float]:
    """Contrastive training in place; returns the mean loss of each epoch."""
    tokens = tokenizer(list(captions))  # (N, context_length)
    generator = torch.Generator().manual_seed(params.seed)
    model.to(device).train()
    # fused: one kernel over all parameters, the 6M-row token table included
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=params.lr, weight_decay=params.weight_decay, fused=True
    )
    batch = min(params.batch_size, len(captions))
    steps_per_epoch = max(1, len(captions) // batch)
    total = params.epochs * steps_per_epoch
    schedule = get_cosine_schedule_with_warmup(optimizer, max(1, total // 20), total)
    loss_fn = ClipLoss()
    history: list[float] = []
    with tqdm(total=total, desc="train clip", unit="step", disable=not progress) as bar:
        for _ in range(params.epochs):
            order = torch.randperm(len(captions), generator=generator)
            losses = []
            for step in range(steps_per_epoch):
                index = order[step * batch : (step + 1) * batch]
                image_features, text_features, logit_scale = model(
                    normalize_images(images[index], model, device), tokens[index].to(device)
                )
                loss = loss_fn(image_features, text_features, logit_scale)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                with torch.no_grad():  # as in CLIP: the temperature is clamped at 100
                    model.logit_scale.clamp_(0, math.log(100))
                losses.append(loss.item())
                bar.update()
            history.append(sum(losses) / len(losses))
            bar.set_postfix(loss=f"{history[-1]:.3f}")
    model.eval()
    return history
