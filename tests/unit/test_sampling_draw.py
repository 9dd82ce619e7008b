"""Drawing a plan of every method with a stand-in model and retriever (the real ContextBuilder): each
method's context and record, batches of one token count, the null floor drawn once per seed."""

import zlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from rdm.artifacts.samples import METHODS, NULL, OTHER_STYLE, POSTFIX, POSTFIX_TEXT, RETRIEVAL
from rdm.config import SampleParams
from rdm.errors import UserError
from rdm.retrieval.store import Hit
from rdm.sampling.batch import StylizedSampler, plan
from rdm.sampling.context import ContextBuilder
from rdm.sampling.grid import write_grids
from rdm.sampling.unconditional import unconditional_requests

D, K = 8, 3
COLLECTIONS = ["d_train", "style-hatching", "style-mosaic", "style-neon"]


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=-1, keepdims=True)).astype(np.float32)


class FakeStore:
    def require(self, name: str) -> None:
        if name not in COLLECTIONS:
            raise UserError(f"no collection {name}")

    def list_collections(self) -> list[str]:
        return COLLECTIONS


class FakeRetriever:
    """Six random images per collection; a text's vector is seeded by its checksum."""

    def __init__(self) -> None:
        rng = np.random.default_rng(0)
        self.images = {name: unit(rng.normal(size=(6, D))) for name in COLLECTIONS}
        self.store = FakeStore()

    def embed_texts(self, texts: list[str], normalize: bool = True) -> np.ndarray:
        """Unit vectors, or as a CLIP makes them: of length 7."""
        vectors = unit(
            np.stack([np.random.default_rng(zlib.crc32(t.encode())).normal(size=D) for t in texts])
        )
        return vectors if normalize else 7 * vectors

    def by_vectors(self, vectors: np.ndarray, collection: str, k: int, with_vectors: bool = False) -> list:
        self.store.require(collection)
        images = self.images[collection]
        sims = vectors @ images.T  # (B, 6)
        style = collection.removeprefix("style-") if collection.startswith("style-") else None
        return [
            [
                Hit(f"{collection}/{j}", float(row[j]), {"style": style, "norm": 2.0 + j}, images[j])
                for j in np.argsort(-row)[:k]
            ]
            for row in sims
        ]


class FakeModel:
    """Images (4, 4, 3) whose grey level depends on the context and the seed alone."""

    card = SimpleNamespace(context_dim=D)

    def __init__(self) -> None:
        self.batches: list[tuple[tuple[int, ...], list[int]]] = []

    def generate(self, context: torch.Tensor, steps: int, guidance_scale: float, seed: Any, sampler: str):
        self.batches.append((tuple(context.shape), list(seed)))
        levels = [
            (s * 31 + int(1000 * float(c.abs().sum()))) % 256 for c, s in zip(context, seed, strict=True)
        ]
        return np.stack([np.full((4, 4, 3), level, np.uint8) for level in levels])


def sampler(query: str = "with_neighbors", **kwargs: Any) -> StylizedSampler:
    builder = ContextBuilder(FakeRetriever(), K, query)
    params = SampleParams(batch_size=4, query=query)
    return StylizedSampler(FakeModel(), builder, params, {"uri": "fake"}, **kwargs)


def pixels(root: Path, record: dict[str, Any]) -> np.ndarray:
    return np.asarray(Image.open(root / record["file"]))


def test_every_method_is_drawn_with_its_own_context_and_recorded(tmp_path: Path) -> None:
    known = ["neon", "mosaic", "hatching"]
    requests = plan(["a red star", "a blue moon"], ["neon", "mosaic"], METHODS, 2, 0, 2, known)
    drawer = sampler()
    records = drawer.draw(requests, tmp_path, progress=False)

    assert [(r["style"], r["method"], r["seed"]) for r in records] == [
        (q.style, q.method, q.seed) for q in requests
    ]
    shapes = [shape for shape, _ in drawer.model.batches]
    assert {shape[1:] for shape in shapes} == {(1 + K, D), (1, D)} and max(s[0] for s in shapes) <= 4
    assert sum(s[0] for s in shapes) == len(requests) - 2  # null: one image per seed, not per style

    def one(style: str, method: str) -> dict[str, Any]:
        return next(r for r in records if (r["style"], r["method"], r["seed"]) == (style, method, 0))

    retrieval, postfix, text = one("neon", RETRIEVAL), one("neon", POSTFIX), one("neon", POSTFIX_TEXT)
    assert retrieval["collection"] == "style-neon" and retrieval["query"] == "a red star"
    assert retrieval["context"] == "with_neighbors" and retrieval["k"] == K
    assert {n["style"] for n in retrieval["neighbors"]} == {"neon"}
    assert postfix["collection"] == "d_train" and postfix["query"] == "a red star in the style of neon"
    assert len(postfix["neighbors"]) == K
    assert text["query"] == "a red star in the style of neon" and text["collection"] is None
    assert text["neighbors"] == [] and text["k"] == 0 and text["context"] == "query_only"
    null = one("neon", NULL)
    assert null["query"] is None and null["collection"] is None and null["neighbors"] == []
    assert null["context"] == "zero" and null["prompt"] == "a red star"
    for style, other in [("neon", "hatching"), ("mosaic", "neon")]:
        floor = one(style, OTHER_STYLE)
        assert floor["collection"] == f"style-{other}" and floor["query"] == "a red star"
        assert {n["style"] for n in floor["neighbors"]} == {other}

    assert np.array_equal(pixels(tmp_path, null), pixels(tmp_path, one("mosaic", NULL)))
    assert not np.array_equal(pixels(tmp_path, null), pixels(tmp_path, retrieval))
    assert not np.array_equal(pixels(tmp_path, postfix), pixels(tmp_path, text))
    grids = write_grids(records, tmp_path, max_rows=2)
    assert sorted(p.name for p in grids) == sorted(f"grid-{m}.png" for m in {r.method for r in requests})


def test_the_null_context_has_the_tokens_of_the_builders_contexts(tmp_path: Path) -> None:
    requests = plan(["a red star"], ["neon"], [RETRIEVAL], 2, 0, 2)
    for query, tokens in [("with_neighbors", 1 + K), ("neighbors_only", K), ("query_only", 1)]:
        drawer = sampler(query)
        drawer.draw(requests, tmp_path / query, progress=False)
        assert {shape[1] for shape, _ in drawer.model.batches} == {tokens}, query


def test_pseudo_queries_retrieve_by_their_d_train_vectors(tmp_path: Path) -> None:
    vectors = {"q0": unit(np.ones(D)), "q1": unit(np.arange(D) - 3.0)}
    asked: list[list[str]] = []

    def d_train_vectors(ids: list[str]) -> np.ndarray:
        asked.append(list(ids))
        return np.stack([vectors[i] for i in ids])

    requests = unconditional_requests(["q0", "q1"], [], seed=7) + unconditional_requests(
        ["q0"], ["mosaic"], 7
    )
    records = sampler(query_vectors=d_train_vectors).draw(requests, tmp_path, progress=False)
    assert [(r["style"], r["collection"], r["query"], r["seed"]) for r in records] == [
        (None, "d_train", "q0", 7),
        (None, "d_train", "q1", 8),
        ("mosaic", "style-mosaic", "q0", 7),
    ]
    assert sorted(map(sorted, asked)) == [["q0"], ["q0", "q1"]]
    expected = FakeRetriever().by_vectors(vectors["q1"][None], "d_train", K)[0]
    assert [n["id"] for n in records[1]["neighbors"]] == [hit.id for hit in expected]
    assert records[0]["file"].endswith("-d_train-unconditional-s7.png")
    assert write_grids(records, tmp_path, max_rows=2)[0].name == "grid-unconditional.png"
    with pytest.raises(UserError, match="pseudo-queries need the D_train embeddings"):
        sampler().draw(requests, tmp_path / "refused", progress=False)


def test_a_raw_context_model_gets_each_tokens_own_length() -> None:
    """The RDM repo's models read CLIP's vectors as they come: the query as embedded (length 7 here),
    each neighbour at the length its collection recorded (2 + its index here)."""
    raw = ContextBuilder(FakeRetriever(), K, raw=True)
    found = raw.for_texts(["a red star", "a blue circle"], "style-neon")
    lengths = found.context.norm(dim=-1)  # (B, 1 + K)
    assert torch.allclose(lengths[:, 0], torch.full((2,), 7.0))
    expected = torch.tensor([[float(hit.payload["norm"]) for hit in row] for row in found.hits])
    assert torch.allclose(lengths[:, 1:], expected)
    unit_found = ContextBuilder(FakeRetriever(), K).for_texts(["a red star", "a blue circle"], "style-neon")
    assert torch.allclose(unit_found.context.norm(dim=-1), torch.ones(2, 1 + K))
    directions = torch.nn.functional.normalize(found.context, dim=-1)
    assert torch.allclose(directions, unit_found.context, atol=1e-6)  # the same tokens, only longer


def test_a_raw_context_model_refuses_a_collection_without_raw_lengths() -> None:
    retriever = FakeRetriever()
    plain = retriever.by_vectors
    retriever.by_vectors = lambda *args, **kwargs: [  # type: ignore[method-assign]
        [Hit(h.id, h.score, {"style": h.payload["style"]}, h.vector) for h in row]
        for row in plain(*args, **kwargs)
    ]
    with pytest.raises(UserError, match=r"raw CLIP vectors.*no raw length.*rdm collections import"):
        ContextBuilder(retriever, K, raw=True).for_texts(["a red star"], "style-neon")
