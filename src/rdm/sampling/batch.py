"""Batches of samples: prompts x styles x seeds, each drawn by one method (`rdm.artifacts.samples`
names them), written as PNGs with one JSONL line per image.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from rdm.artifacts.model import ModelError
from rdm.artifacts.samples import (
    FLOORS,
    IMAGES,
    METHODS,
    NULL,
    OTHER_STYLE,
    POSTFIX,
    POSTFIX_TEXT,
    write_samples,
)
from rdm.config import Config, SampleParams
from rdm.diffusion.context import QueryMode
from rdm.errors import UserError
from rdm.models.pipeline import RdmPipeline
from rdm.retrieval.store import D_TRAIN, Hit, style_collection
from rdm.sampling.context import ContextBuilder


@dataclass(frozen=True)
class Request:
    prompt: str
    """The text query; for an image query its path, for a pseudo-query the D_train image id (what the
    record and the grid show)."""
    style: str | None
    """The target style (for other_style, not the collection's); None for unconditional from D_train."""
    method: str
    seed: int
    image: str | None = None
    """An image file as the query instead of the prompt's text (retrieval method only)."""
    query_id: str | None = None
    """A D_train image whose CLIP vector is the query (unconditional: a pseudo-query)."""
    collection: str | None = None
    """Where the neighbours come from, when not the method's own (other_style, unconditional)."""


def other_style(style: str, styles: Sequence[str]) -> str:
    """The other_style floor's collection style: the one after `style` in sorted `styles`, wrapping."""
    ordered = sorted(styles)
    return ordered[(ordered.index(style) + 1) % len(ordered)]


def plan(
    prompts: Sequence[str],
    styles: Sequence[str],
    methods: Sequence[str],
    per_style: int,
    seed: int,
    floor_per_style: int = 0,
    known: Sequence[str] | None = None,
) -> list[Request]:
    """`per_style` requests for every style and method, then `floor_per_style` of each floor. Request i
    of every (style, method) has the same prompt (cycled) and seed, so a grid's columns differ by style
    alone and the evaluation can pair sample i of two methods. other_style retrieves from the next of
    `known` (every style with a collection; default `styles`); with a single style there is none."""
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; use {METHODS} (floors come with floor_per_style)")
    pool = list(known or styles)
    counts = {m: per_style for m in methods} | {m: floor_per_style for m in FLOORS}
    if len(pool) < 2:
        del counts[OTHER_STYLE]
    return [
        Request(
            prompts[i % len(prompts)],
            style,
            method,
            seed + i,
            collection=style_collection(other_style(style, pool)) if method == OTHER_STYLE else None,
        )
        for style in styles
        for method, count in counts.items()
        for i in range(count)
    ]


class StylizedSampler:
    """One model and one retriever, drawing batches of requests with the settings of `sample`."""

    def __init__(
        self,
        model: RdmPipeline,
        contexts: ContextBuilder,
        params: SampleParams,
        model_info: dict[str, Any],
        query_vectors: Callable[[Sequence[str]], np.ndarray] | None = None,
    ) -> None:
        self.model = model
        self.contexts = contexts
        self.params = params
        self.model_info = model_info
        """What the JSONL records as the model: its URI, registry version, run and steps."""
        self.query_vectors = query_vectors
        """D_train image ids -> their (B, D) CLIP vectors, for pseudo-queries."""

    def query_text(self, request: Request) -> str:
        if request.method in (POSTFIX, POSTFIX_TEXT):
            style = self.params.style_text(str(request.style))
            return f"{request.prompt} {self.params.postfix.format(style=style)}"
        return request.prompt

    @staticmethod
    def collection(request: Request) -> str | None:
        """Where the request's neighbours come from; None for the methods without any."""
        if request.collection is not None or request.method in (POSTFIX_TEXT, NULL):
            return request.collection
        return D_TRAIN if request.method == POSTFIX else style_collection(str(request.style))

    @staticmethod
    def query_mode(request: Request) -> QueryMode | None:
        """The context's tokens when not `sample.query`'s: postfix_text is its text alone."""
        return "query_only" if request.method == POSTFIX_TEXT else None

    def context_kind(self, request: Request) -> str:
        """What the record says the context held: `zero` (null) or a `sample.query` mode."""
        if request.method == NULL:
            return "zero"
        return "query_only" if self.contexts.k == 0 else self.query_mode(request) or self.contexts.query

    @property
    def null_tokens(self) -> int:
        """Tokens of the null method's all-zero context: as many as the builder's (its guidance null)."""
        query, k = self.contexts.query, self.contexts.k
        return 1 if query == "query_only" or k == 0 else k + (query == "with_neighbors")

    def check_styles(self, styles: Sequence[str]) -> None:
        """Refuse styles with no collection, naming the ones there are."""
        prefix = style_collection("")
        names = self.contexts.retriever.store.list_collections()
        known = sorted(n.removeprefix(prefix) for n in names if n.startswith(prefix))
        unknown = [s for s in styles if s not in known]
        if unknown:
            raise UserError(f"no collection for style(s) {unknown}; the styles are {known} (rdm collections)")

    def _queries(self, kind: str, requests: Sequence[Request]) -> np.ndarray:
        """(B, D) query vectors of requests of one kind: image files, D_train ids or texts; unit
        vectors, or as CLIP embeds them for a raw-context model."""
        retriever, unit = self.contexts.retriever, not self.contexts.raw
        if kind == "image":
            return retriever.embed_images([Path(str(r.image)) for r in requests], normalize=unit)
        if kind == "id":
            if not unit:
                raise UserError("pseudo-queries are stored as unit vectors; a raw-context model needs texts")
            if self.query_vectors is None:
                raise UserError(
                    "pseudo-queries need the D_train embeddings; open the sampler with open_sampler"
                )
            return self.query_vectors([str(r.query_id) for r in requests])
        return retriever.embed_texts([self.query_text(r) for r in requests], normalize=unit)

    def condition(self, requests: Sequence[Request]) -> tuple[list[torch.Tensor], list[list[Hit]]]:
        """Each request's context (T, D) and neighbours, retrieved a group at a time (one query kind,
        collection and token mode); T differs between methods, so contexts are not stacked here."""
        null = torch.zeros(self.null_tokens, self.model.card.context_dim)  # (T, D), shared
        contexts = [null] * len(requests)
        hits: list[list[Hit]] = [[] for _ in requests]
        groups: dict[tuple[str, str | None, QueryMode | None], list[int]] = {}
        for n, request in enumerate(requests):
            if request.method != NULL:
                kind = "image" if request.image else "id" if request.query_id else "text"
                groups.setdefault((kind, self.collection(request), self.query_mode(request)), []).append(n)
        for (kind, collection, query), members in groups.items():
            queries = self._queries(kind, [requests[n] for n in members])
            found = self.contexts.for_vectors(queries, collection, query)
            for row, n in enumerate(members):
                contexts[n], hits[n] = found.context[row], found.hits[row]
        return contexts, hits

    def draw(self, requests: Sequence[Request], out: Path, progress: bool = True) -> list[dict[str, Any]]:
        """Sample every request into `out/images/`; returns the records (also in `out/samples.jsonl`).
        Batches hold contexts of one token count; a null sample is drawn once per seed (it depends on
        nothing else) and saved for every style."""
        if not requests:
            raise UserError("nothing to sample: no prompts, styles or images were asked for")
        (out / IMAGES).mkdir(parents=True, exist_ok=True)
        contexts, hits = self.condition(requests)
        drawings: dict[Hashable, list[int]] = {}  # one image each, for these requests
        for n, request in enumerate(requests):
            drawings.setdefault((NULL, request.seed) if request.method == NULL else n, []).append(n)
        by_tokens: dict[int, list[list[int]]] = {}
        for members in drawings.values():
            by_tokens.setdefault(contexts[members[0]].shape[0], []).append(members)
        size = self.params.batch_size
        records: list[dict[str, Any]] = [{} for _ in requests]
        with tqdm(total=len(drawings), desc="sample", unit="img", disable=not progress) as bar:
            for same_tokens in by_tokens.values():
                for start in range(0, len(same_tokens), size):
                    batch = same_tokens[start : start + size]
                    images = self.model.generate(
                        torch.stack([contexts[members[0]] for members in batch]),  # (B, T, D)
                        steps=self.params.steps,
                        guidance_scale=self.params.guidance_scale,
                        seed=[requests[members[0]].seed for members in batch],
                        sampler=self.params.sampler,
                    )
                    for members, image in zip(batch, images, strict=True):
                        for n in members:
                            records[n] = self._save(n, requests[n], image, hits[n], out)
                    bar.update(len(batch))
        write_samples(out, records)
        return records

    def _save(
        self, n: int, request: Request, image: np.ndarray, hits: list[Hit], out: Path
    ) -> dict[str, Any]:
        collection = self.collection(request)
        file = f"{IMAGES}/{n:05d}-{request.style or collection}-{request.method}-s{request.seed}.png"
        Image.fromarray(image).save(out / file)
        query = (
            None if request.method == NULL else request.image or request.query_id or self.query_text(request)
        )
        return {
            "file": file,
            **asdict(request),
            "query": query,
            "collection": collection,
            "context": self.context_kind(request),
            "sampler": self.params.sampler,
            "steps": self.params.steps,
            "guidance_scale": self.params.guidance_scale,
            "k": len(hits),
            "neighbors": [
                {"id": hit.id, "score": round(float(hit.score), 5), "style": hit.payload.get("style")}
                for hit in hits
            ],
            "model": self.model_info,
        }


@contextmanager
def open_sampler(
    config: Config, model: RdmPipeline, model_info: dict[str, Any], k: int
) -> Iterator[StylizedSampler]:
    """A sampler over the pipeline's CLIP and store; refuses a CLIP other than the model's."""
    from rdm.artifacts.embeddings import read_vectors
    from rdm.embedding.model import load as load_clip
    from rdm.retrieval.backends import open_store
    from rdm.retrieval.search import Retriever

    clip = load_clip(Path(config.clip.out), config.sample.device)
    if clip.card.fingerprint != model.card.clip_fingerprint:
        raise ModelError(
            f"the model was trained with CLIP {model.card.clip_model} [{model.card.clip_fingerprint}] but "
            f"{config.clip.out} holds {clip.card.model} [{clip.card.fingerprint}]; sample with the CLIP "
            "the model was trained with, or retrain it (`dvc repro train`)"
        )

    def d_train_vectors(ids: Sequence[str]) -> np.ndarray:
        """(B, D) CLIP vectors of D_train images."""
        return read_vectors(Path(config.embed.out) / "d_train", clip.card, ids)

    with open_store(config.store) as store:
        raw = model.card.context_vectors == "raw"
        builder = ContextBuilder(Retriever(store, clip), k, config.sample.query, raw=raw)
        yield StylizedSampler(model, builder, config.sample, model_info, d_train_vectors)
