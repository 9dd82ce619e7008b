"""Batches of stylized samples: prompts x styles x seeds, each drawn by retrieval from the style's
collection or by the postfix baseline, written as PNGs with one JSONL line per image.

Methods:
    retrieval  the prompt's CLIP text vector, its k neighbours from the collection `style-<style>`
    postfix    the prompt plus "in the style of <style>", its k neighbours from D_train
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from rdm.config import Config, SampleParams
from rdm.errors import UserError
from rdm.models.package import ModelError, RetrievalDiffusionModel
from rdm.retrieval.store import D_TRAIN, style_collection
from rdm.sampling.context import Conditioning, ContextBuilder

RETRIEVAL, POSTFIX = "retrieval", "postfix"
METHODS = (RETRIEVAL, POSTFIX)
RECORDS = "samples.jsonl"


@dataclass(frozen=True)
class Request:
    prompt: str
    """The text query; for an image query, a description recorded with the image (its path)."""
    style: str
    method: str
    seed: int
    image: str | None = None
    """An image file as the query instead of the prompt's text (retrieval method only)."""


def plan(
    prompts: Sequence[str], styles: Sequence[str], methods: Sequence[str], per_style: int, seed: int
) -> list[Request]:
    """`per_style` requests for every style and method. Request i of every (style, method) has the same
    prompt (cycled) and seed, so a grid's columns differ by style alone."""
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; use {METHODS}")
    return [
        Request(prompts[i % len(prompts)], style, method, seed + i)
        for style in styles
        for method in methods
        for i in range(per_style)
    ]


def on_style_share(neighbors: Sequence[dict[str, Any]], style: str) -> float:
    """The share of a sample's recorded neighbours that belong to `style` (NaN with no neighbours)."""
    return sum(n.get("style") == style for n in neighbors) / len(neighbors) if neighbors else float("nan")


class StylizedSampler:
    """One model and one retriever, drawing batches of requests with the settings of `sample`."""

    def __init__(
        self,
        model: RetrievalDiffusionModel,
        contexts: ContextBuilder,
        params: SampleParams,
        model_info: dict[str, Any],
    ) -> None:
        self.model = model
        self.contexts = contexts
        self.params = params
        self.model_info = model_info
        """What the JSONL records as the model: its URI, registry version, run and steps."""

    def query_text(self, request: Request) -> str:
        if request.method == POSTFIX:
            return (
                f"{request.prompt} {self.params.postfix.format(style=self.params.style_text(request.style))}"
            )
        return request.prompt

    @staticmethod
    def collection(request: Request) -> str:
        return D_TRAIN if request.method == POSTFIX else style_collection(request.style)

    def check_styles(self, styles: Sequence[str]) -> None:
        """Refuse styles with no collection, naming the ones there are."""
        prefix = style_collection("")
        names = self.contexts.retriever.store.list_collections()
        known = sorted(n.removeprefix(prefix) for n in names if n.startswith(prefix))
        unknown = [s for s in styles if s not in known]
        if unknown:
            raise UserError(f"no collection for style(s) {unknown}; the styles are {known} (rdm collections)")

    def condition(self, requests: Sequence[Request]) -> Conditioning:
        """Contexts for requests in their order, retrieved collection by collection."""
        groups: dict[tuple[str, bool], list[int]] = {}
        for n, request in enumerate(requests):
            groups.setdefault((self.collection(request), request.image is not None), []).append(n)
        contexts: list[torch.Tensor | None] = [None] * len(requests)
        hits: list[Any] = [None] * len(requests)
        for (collection, by_image), members in groups.items():
            if by_image:
                found = self.contexts.for_images([Path(str(requests[n].image)) for n in members], collection)
            else:
                found = self.contexts.for_texts([self.query_text(requests[n]) for n in members], collection)
            for row, n in enumerate(members):
                contexts[n], hits[n] = found.context[row], found.hits[row]
        return Conditioning(torch.stack([c for c in contexts if c is not None]), hits)

    def draw(self, requests: Sequence[Request], out: Path, progress: bool = True) -> list[dict[str, Any]]:
        """Sample every request into `out/images/`; returns the records (also in `out/samples.jsonl`)."""
        from rdm.files import write_jsonl

        if not requests:
            raise UserError("nothing to sample: no prompts, styles or images were asked for")
        (out / "images").mkdir(parents=True, exist_ok=True)
        conditioning = self.condition(requests)
        size = self.params.batch_size
        records: list[dict[str, Any]] = []
        with tqdm(total=len(requests), desc="sample", unit="img", disable=not progress) as bar:
            for start in range(0, len(requests), size):
                batch = list(requests[start : start + size])
                images = self.model.generate(
                    conditioning.context[start : start + size],
                    steps=self.params.steps,
                    guidance_scale=self.params.guidance_scale,
                    seed=[r.seed for r in batch],
                    sampler=self.params.sampler,
                )
                for offset, (request, image) in enumerate(zip(batch, images, strict=True)):
                    n = start + offset
                    records.append(self._save(n, request, image, conditioning.hits[n], out))
                bar.update(len(batch))
        write_jsonl(out / RECORDS, records)
        return records

    def _save(self, n: int, request: Request, image: np.ndarray, hits: Any, out: Path) -> dict[str, Any]:
        file = f"images/{n:05d}-{request.style}-{request.method}-s{request.seed}.png"
        Image.fromarray(image).save(out / file)
        return {
            "file": file,
            **asdict(request),
            "query": request.image or self.query_text(request),
            "collection": self.collection(request),
            "sampler": self.params.sampler,
            "steps": self.params.steps,
            "guidance_scale": self.params.guidance_scale,
            "k": self.contexts.k,
            "neighbors": [
                {"id": hit.id, "score": round(float(hit.score), 5), "style": hit.payload.get("style")}
                for hit in hits
            ],
            "model": self.model_info,
        }


@contextmanager
def open_sampler(
    config: Config, model: RetrievalDiffusionModel, model_info: dict[str, Any], k: int
) -> Iterator[StylizedSampler]:
    """A sampler over the pipeline's CLIP and store; refuses a CLIP other than the model's."""
    from rdm.embedding.model import load as load_clip
    from rdm.retrieval.search import Retriever
    from rdm.retrieval.store import open_store

    clip = load_clip(Path(config.clip.out), config.sample.device)
    if clip.card.fingerprint != model.card.clip_fingerprint:
        raise ModelError(
            f"the model was trained with CLIP {model.card.clip_model} [{model.card.clip_fingerprint}] but "
            f"{config.clip.out} holds {clip.card.model} [{clip.card.fingerprint}]; sample with the CLIP "
            "the model was trained with, or retrain it (`dvc repro train`)"
        )
    with open_store(config.store) as store:
        yield StylizedSampler(model, ContextBuilder(Retriever(store, clip), k), config.sample, model_info)
