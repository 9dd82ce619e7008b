"""A Qdrant server or cluster through qdrant-client (URL and API key from params or environment).

Each collection name is an alias of a physical collection (`<name>__v<n>`): a revision fills a new
physical collection and publishes it by swapping the alias in one call; the version before stays for
readers still searching it, all others are removed. The CLIP a collection was built with is kept in
its metadata.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, cast

import numpy as np
from qdrant_client import QdrantClient, models

from rdm.artifacts.clip import ClipCard
from rdm.config import StoreParams
from rdm.retrieval.store import CollectionError, CollectionInfo, Hit, VectorStore, point_id

UPSERT_BATCH = 1000


class ServerStore(VectorStore):
    backend = "server"

    def __init__(self, params: StoreParams, url: str, api_key: str | None) -> None:
        super().__init__(params)
        self.url = url
        self.client = (
            QdrantClient(location=":memory:") if url == ":memory:" else QdrantClient(url=url, api_key=api_key)
        )

    @property
    def location(self) -> str:
        return self.url

    def _aliases(self) -> dict[str, str]:
        return {a.alias_name: a.collection_name for a in self.client.get_aliases().aliases}

    def list_collections(self) -> list[str]:
        return sorted(self._aliases())

    def info(self, name: str) -> CollectionInfo:
        if name not in self._aliases() and not self._is_draft(name):
            raise CollectionError(f"no collection {name!r} on the Qdrant server {self.url}")
        described = self.client.get_collection(name)
        meta = described.config.metadata or {}
        vectors = described.config.params.vectors
        assert isinstance(vectors, models.VectorParams)
        points = self.client.count(name, exact=True).count
        return CollectionInfo(
            name=name,
            backend=self.backend,
            points=points,
            dim=vectors.size,
            clip_model=str(meta.get("clip_model")),
            clip_fingerprint=str(meta.get("clip_fingerprint")),
        )

    def _is_draft(self, name: str) -> bool:
        return "__v" in name and self.client.collection_exists(name)

    def _new_physical(self, name: str, dim: int, card: ClipCard) -> str:
        physical = f"{name}__v{time.time_ns()}"
        self.client.create_collection(
            physical,
            vectors_config=models.VectorParams(size=dim, distance=models.Distance.COSINE),
            hnsw_config=models.HnswConfigDiff(
                m=self.params.hnsw_m,
                ef_construct=self.params.hnsw_ef_construct,
                full_scan_threshold=self.params.exact_below,
            ),
            metadata={"clip_model": card.model, "clip_fingerprint": card.fingerprint},
        )
        if self.url != ":memory:":  # the local stand-in ignores payload indexes (and warns)
            self.client.create_payload_index(physical, "style", models.PayloadSchemaType.KEYWORD)
        return physical

    def _create(self, name: str, dim: int, card: ClipCard) -> None:
        self._publish(name, self._new_physical(name, dim, card))

    def built_with(self, name: str) -> tuple[int, str, str]:
        info = self.info(name)
        return info.dim, info.clip_model, info.clip_fingerprint

    def _begin(self, name: str, card: ClipCard, fresh: bool) -> str:
        draft = self._new_physical(name, card.embed_dim, card)
        offset = None
        while not fresh:
            records, offset = self.client.scroll(
                name, limit=UPSERT_BATCH, offset=offset, with_payload=True, with_vectors=True
            )
            if records:
                self.client.upsert(
                    draft,
                    points=[
                        models.PointStruct(id=r.id, vector=cast(list[float], r.vector), payload=r.payload)
                        for r in records
                    ],
                    wait=True,
                )
            fresh = offset is None
        return draft

    def _publish(self, name: str, draft: str) -> None:
        swap: list[Any] = []
        if name in self._aliases():
            swap.append(models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=name)))
        swap.append(
            models.CreateAliasOperation(
                create_alias=models.CreateAlias(collection_name=draft, alias_name=name)
            )
        )
        previous = self._aliases().get(name)
        self.client.update_collection_aliases(change_aliases_operations=swap)  # one atomic change
        for collection in self.client.get_collections().collections:
            if collection.name.startswith(f"{name}__v") and collection.name not in (draft, previous):
                self.client.delete_collection(collection.name)  # older versions, drafts of killed runs

    def _discard(self, draft: str) -> None:
        self.client.delete_collection(draft)

    def upsert(
        self, name: str, ids: Sequence[str], vectors: np.ndarray, payloads: Sequence[dict[str, Any]]
    ) -> None:
        for start in range(0, len(ids), UPSERT_BATCH):
            points = [
                models.PointStruct(id=point_id(image_id), vector=vector.tolist(), payload=payload)
                for image_id, vector, payload in zip(
                    ids[start : start + UPSERT_BATCH],
                    vectors[start : start + UPSERT_BATCH],
                    payloads[start : start + UPSERT_BATCH],
                    strict=True,
                )
            ]
            self.client.upsert(name, points=points, wait=True)

    def delete(self, name: str, ids: Sequence[str]) -> None:
        if ids:
            selector = models.PointIdsList(points=[point_id(i) for i in ids])
            self.client.delete(name, points_selector=selector, wait=True)

    def ids(self, name: str) -> set[str]:
        found: set[str] = set()
        offset = None
        while True:
            records, offset = self.client.scroll(name, limit=10_000, offset=offset, with_payload=["id"])
            found.update(str(r.payload["id"]) for r in records if r.payload)
            if offset is None:
                return found

    def query(self, name: str, vectors: np.ndarray, k: int, with_vectors: bool = False) -> list[list[Hit]]:
        search = models.SearchParams(
            hnsw_ef=max(self.params.hnsw_ef, k), exact=self._exact(self.client.count(name, exact=False).count)
        )
        requests = [
            models.QueryRequest(
                query=v.tolist(), limit=k, with_payload=True, with_vector=with_vectors, params=search
            )
            for v in np.asarray(vectors, dtype=np.float32)
        ]
        responses = self.client.query_batch_points(name, requests=requests) if requests else []
        return [[_hit(p, with_vectors) for p in response.points] for response in responses]

    def drop(self, name: str) -> None:
        if name in self._aliases():
            self.client.update_collection_aliases(
                change_aliases_operations=[
                    models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=name))
                ]
            )
        for collection in self.client.get_collections().collections:
            if collection.name.startswith(f"{name}__v"):
                self.client.delete_collection(collection.name)

    def finish(self, name: str) -> None:
        """The server indexes in the background; nothing to wait for."""

    def close(self) -> None:
        self.client.close()


def _hit(point: models.ScoredPoint, with_vectors: bool) -> Hit:
    payload = dict(point.payload or {})
    vector = None
    if with_vectors and point.vector is not None:
        vector = np.asarray(point.vector, dtype=np.float32)
    return Hit(id=str(payload.get("id", point.id)), score=float(point.score), payload=payload, vector=vector)
