"""A Qdrant server or cluster through qdrant-client (URL and API key from params or environment).

Each collection name is an alias of a physical collection (`<name>__v<n>`): a revision fills a new
physical collection and publishes it by swapping the alias in one call; the version before stays for
readers still searching it, all others are removed. The CLIP a collection was built with is kept in
its metadata.

The server is shared by every host, so the lock that lets one revision (or `ensure`, `drop`) change a
collection at a time is held in the server itself: a marker collection `<name>__lock`, which the server
creates for one caller only, naming its holder and when the lock expires. The holder renews it while
it works and deletes it when done; another host breaks it once expired (a crashed holder), and a
holder whose lock was broken publishes nothing.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, cast

import numpy as np
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import UnexpectedResponse

from rdm.artifacts.clip import ClipCard
from rdm.config import StoreParams
from rdm.retrieval.store import CollectionBusy, CollectionError, CollectionInfo, Hit, VectorStore, point_id

UPSERT_BATCH = 1000
LOCK_SUFFIX = "__lock"
LOCK_ATTEMPTS = 3


class ServerStore(VectorStore):
    backend = "server"

    def __init__(
        self, params: StoreParams, url: str, api_key: str | None, client: QdrantClient | None = None
    ) -> None:
        """`client`: one already connected to `url` (shared, and left open by `close`)."""
        super().__init__(params)
        self.url = url
        self._owns_client = client is None
        self.client = client or (
            QdrantClient(location=":memory:") if url == ":memory:" else QdrantClient(url=url, api_key=api_key)
        )
        self._held: dict[str, str] = {}
        """The token of each collection lock this store holds."""

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
            quantization_config=(
                models.ScalarQuantization(
                    scalar=models.ScalarQuantizationConfig(
                        type=models.ScalarType.INT8, quantile=0.99, always_ram=True
                    )
                )
                if self.params.quantization == "int8"
                else None
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
        self._check_held(name)
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

    def _upsert(
        self, draft: str, ids: Sequence[str], vectors: np.ndarray, payloads: Sequence[dict[str, Any]]
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
            self.client.upsert(draft, points=points, wait=True)

    def _delete(self, draft: str, ids: Sequence[str]) -> None:
        selector = models.PointIdsList(points=[point_id(i) for i in ids])
        self.client.delete(draft, points_selector=selector, wait=True)

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
            hnsw_ef=max(self.params.hnsw_ef, k),
            exact=self._exact(self.client.count(name, exact=False).count),
            quantization=(
                models.QuantizationSearchParams(
                    rescore=True, oversampling=self.params.quantization_oversampling
                )
                if self.params.quantization == "int8"
                else None
            ),
        )
        requests = [
            models.QueryRequest(
                query=v.tolist(), limit=k, with_payload=True, with_vector=with_vectors, params=search
            )
            for v in np.asarray(vectors, dtype=np.float32)
        ]
        responses = self.client.query_batch_points(name, requests=requests) if requests else []
        return [[_hit(p, with_vectors) for p in response.points] for response in responses]

    def _drop(self, name: str) -> None:
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
        if self._owns_client:
            self.client.close()

    @contextmanager
    def _lock(self, name: str) -> Iterator[None]:
        """Hold the server-side lock on `name` for the block, renewing it every third of
        `store.lock_ttl_s`. Raises CollectionBusy while another holder's lock is live."""
        marker, token = f"{name}{LOCK_SUFFIX}", uuid.uuid4().hex
        self._acquire(name, marker, token)
        self._held[name] = token
        stop = threading.Event()
        renewal = threading.Thread(target=self._renew, args=(marker, token, stop), daemon=True)
        renewal.start()
        try:
            yield
        finally:
            stop.set()
            renewal.join()
            del self._held[name]
            if self._lock_token(marker) == token:
                self.client.delete_collection(marker)

    def _acquire(self, name: str, marker: str, token: str) -> None:
        """Create the marker collection, which succeeds for one caller only; break an expired one."""
        for _ in range(LOCK_ATTEMPTS):
            try:
                self.client.create_collection(
                    marker,
                    vectors_config=models.VectorParams(size=1, distance=models.Distance.COSINE),
                    metadata={
                        "holder": f"pid {os.getpid()} on {socket.gethostname()}",
                        "token": token,
                        "expires": time.time() + self.params.lock_ttl_s,
                    },
                )
                return
            except (ValueError, UnexpectedResponse) as error:
                if not _already_exists(error):
                    raise
            held = self._lock_meta(marker)
            if held is None:
                continue  # released meanwhile
            holder, expires = held.get("holder", "another host"), float(held.get("expires", 0))
            if expires > time.time():
                raise CollectionBusy(
                    f"collection {name!r} is being changed by {holder} (lock {marker} on the Qdrant server "
                    f"{self.url}, for {expires - time.time():.0f} s more unless renewed); wait for it, "
                    f"then try again"
                )
            late = time.time() - expires
            print(f"breaking the lock on collection {name!r} of {holder}: it expired {late:.0f} s ago")
            self._break(marker, held.get("token"))
        raise CollectionBusy(
            f"collection {name!r}: its lock {marker} on {self.url} keeps changing hands; try again"
        )

    def _break(self, marker: str, token: object) -> None:
        """Delete an expired lock if it is still the one found expired. The server has no
        compare-and-delete, so two hosts breaking the same lock at the same instant could both win:
        the expiry is the margin, and a holder checks its lock before publishing."""
        if self._lock_token(marker) == token:
            self.client.delete_collection(marker)

    def _renew(self, marker: str, token: str, stop: threading.Event) -> None:
        """Push the lock's expiry on while the block runs; stop if another host has broken it."""
        while not stop.wait(self.params.lock_ttl_s / 3):
            try:
                if self._lock_token(marker) != token:
                    return
                self.client.update_collection(
                    marker, metadata={"expires": time.time() + self.params.lock_ttl_s}
                )
            except Exception as error:  # a network blip: the next renewal tries again
                print(f"could not renew the lock {marker} on {self.url}: {error}")

    def _check_held(self, name: str) -> None:
        """Refuse to publish once this store's lock on `name` is gone (broken after it expired)."""
        marker = f"{name}{LOCK_SUFFIX}"
        if name not in self._held or self._lock_token(marker) != self._held[name]:
            raise CollectionError(
                f"lost the lock on collection {name!r} ({marker} on {self.url}): another host broke it "
                f"once it expired. Nothing was published. Raise store.lock_ttl_s if this host stalls "
                f"that long, then run again."
            )

    def _lock_meta(self, marker: str) -> dict[str, Any] | None:
        """The holder, token and expiry of a lock; None when nobody holds it."""
        try:
            return dict(self.client.get_collection(marker).config.metadata or {})
        except (ValueError, UnexpectedResponse) as error:
            if isinstance(error, UnexpectedResponse) and error.status_code != 404:
                raise
            return None

    def _lock_token(self, marker: str) -> object:
        held = self._lock_meta(marker)
        return None if held is None else held.get("token")


def _already_exists(error: Exception) -> bool:
    """Whether creating a collection failed because it exists: 409 from a server (400 before 1.8),
    ValueError from qdrant-client's local mode."""
    if isinstance(error, UnexpectedResponse):
        return error.status_code == 409 or (error.status_code == 400 and b"already exists" in error.content)
    return "already exists" in str(error)


def _hit(point: models.ScoredPoint, with_vectors: bool) -> Hit:
    payload = dict(point.payload or {})
    vector = None
    if with_vectors and point.vector is not None:
        vector = np.asarray(point.vector, dtype=np.float32)
    return Hit(id=str(payload.get("id", point.id)), score=float(point.score), payload=payload, vector=vector)
