"""Qdrant Edge: the Qdrant engine in-process, one shard folder per collection version.

Layout: `<store.path>/<collection>/<version>/shard/` (the engine's files) with `collection.json`
beside it (dimension and the CLIP the vectors came from), and `<collection>/CURRENT` naming the
published version. A revision copies the current version's folder, changes the copy, and replaces
CURRENT in one rename; the version it replaces stays for readers still holding it, all others are removed.
A shard folder is opened by one handle at a time (the engine locks its WAL), and by another once closed.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from qdrant_edge import (
    CountRequest,
    Distance,
    EdgeConfig,
    EdgeOptimizersConfig,
    EdgeShard,
    EdgeVectorParams,
    HnswIndexConfig,
    Point,
    Query,
    QueryBatchRequest,
    QueryRequest,
    ScrollRequest,
    SearchParams,
    UpdateOperation,
)

from rdm.artifacts.clip import ClipCard
from rdm.config import StoreParams
from rdm.retrieval.store import CollectionError, CollectionInfo, Hit, VectorStore, ids_digest, point_id

META = "collection.json"
CURRENT = "CURRENT"
UPSERT_BATCH = 5000
COPY_ATTEMPTS = 3


class EdgeStore(VectorStore):
    backend = "edge"

    def __init__(self, params: StoreParams) -> None:
        super().__init__(params)
        self.root = Path(params.path)
        self._shards: dict[str, EdgeShard] = {}
        self._counts: dict[str, int] = {}

    def list_collections(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / CURRENT).is_file())

    def _folder(self, name: str) -> Path:
        """The folder of a version: `name` is a collection (its published version) or a draft
        (`collection/version`, as `_begin` names it)."""
        if "/" in name:
            return self.root / name
        pointer = self.root / name / CURRENT
        if not pointer.is_file():
            raise CollectionError(f"no collection {name!r} in the edge store ({self.root})")
        return self.root / name / pointer.read_text().strip()

    def _meta(self, name: str) -> dict[str, Any]:
        meta: dict[str, Any] = json.loads((self._folder(name) / META).read_text())
        return meta

    def _points(self, name: str) -> int:
        """Point count, cached between writes: asking the shard costs more than a query."""
        if name not in self._counts:
            self._counts[name] = self._shard(name).info().points_count
        return self._counts[name]

    def info(self, name: str) -> CollectionInfo:
        meta = self._meta(name)
        points = self._shard(name).count(CountRequest(exact=True))
        return CollectionInfo(
            name=name,
            backend=self.backend,
            points=points,
            dim=meta["dim"],
            clip_model=meta["clip_model"],
            clip_fingerprint=meta["clip_fingerprint"],
        )

    def _config(self, dim: int) -> EdgeConfig:
        # Qdrant sizes its thresholds in KiB of vectors: index once a segment outgrows `exact_below` points.
        threshold_kb = max(1, self.params.exact_below * dim * 4 // 1024)
        return EdgeConfig(
            vectors={"": EdgeVectorParams(size=dim, distance=Distance.Cosine)},
            hnsw_config=HnswIndexConfig(
                m=self.params.hnsw_m,
                ef_construct=self.params.hnsw_ef_construct,
                full_scan_threshold=threshold_kb,
            ),
            optimizers=EdgeOptimizersConfig(indexing_threshold=threshold_kb),
        )

    def indexed_points(self, name: str) -> int:
        """Points reachable through the HNSW graph (0 while the collection is searched exactly)."""
        indexed: int = self._shard(name).info().indexed_vectors_count
        return indexed

    def _create(self, name: str, dim: int, card: ClipCard) -> None:
        self._publish(name, self._begin(name, card, fresh=True))

    def _new_version(self, name: str) -> str:
        versions = [int(p.name[1:]) for p in (self.root / name).glob("v[0-9]*") if p.name[1:].isdigit()]
        return f"{name}/v{max(versions, default=0) + 1:06d}"

    def built_with(self, name: str) -> tuple[int, str, str]:
        meta = self._meta(name)
        return meta["dim"], meta["clip_model"], meta["clip_fingerprint"]

    def _begin(self, name: str, card: ClipCard, fresh: bool) -> str:
        draft = self._new_version(name)
        folder = self.root / draft
        if fresh:
            folder.mkdir(parents=True)
            EdgeShard.create(str(folder / "shard"), self._config(card.embed_dim)).close()
            meta = {"dim": card.embed_dim, "clip_model": card.model, "clip_fingerprint": card.fingerprint}
            (folder / META).write_text(json.dumps(meta, indent=2) + "\n")
            return draft
        current = self._folder(name)
        self._close_folder(current)
        expected = self._meta(name).get("points")
        for attempt in range(COPY_ATTEMPTS):
            # A published version's points never change, but the engine rewrites a few small files
            # whenever a reader opens it: a copy made at that moment is checked, and made again.
            shutil.copytree(current, folder)
            try:
                if expected is None or self._shard(draft).count(CountRequest(exact=True)) == expected:
                    return draft
            except Exception:
                if attempt == COPY_ATTEMPTS - 1:
                    raise
            self._discard(draft)
            time.sleep(0.2 * (attempt + 1))
        raise CollectionError(f"{current}: could not copy a consistent version of {name!r}; try again")

    def _publish(self, name: str, draft: str) -> None:
        """Seal `draft` (its point count and ids digest in its metadata), point CURRENT at it in one
        rename, and remove every version but it and the one it replaces (drafts left by killed runs too)."""
        folder = self.root / draft
        meta = json.loads((folder / META).read_text())
        meta |= {
            "points": self._shard(draft).count(CountRequest(exact=True)),
            "ids_sha256": ids_digest(self.ids(draft)),
        }
        (folder / META).write_text(json.dumps(meta, indent=2) + "\n")
        self._close_folder(folder)
        pointer = self.root / name / CURRENT
        previous = pointer.read_text().strip() if pointer.is_file() else None
        staged = pointer.with_suffix(".next")
        staged.write_text(folder.name + "\n")
        os.replace(staged, pointer)
        self._written(name)
        for version in (self.root / name).glob("v[0-9]*"):
            if version.is_dir() and version.name not in (folder.name, previous):
                self._close_folder(version)
                shutil.rmtree(version, ignore_errors=True)
        # an unversioned collection of an earlier release, which no reader can see any more
        shutil.rmtree(self.root / name / "shard", ignore_errors=True)
        (self.root / name / META).unlink(missing_ok=True)

    def published_digest(self, name: str) -> str | None:
        digest = self._meta(name).get("ids_sha256")
        return str(digest) if digest else None

    def _discard(self, draft: str) -> None:
        self._close_folder(self.root / draft)
        shutil.rmtree(self.root / draft, ignore_errors=True)

    def _shard(self, name: str) -> EdgeShard:
        """The open shard of `name`'s published version (or of a draft). A reader asking again after
        a publish gets the new version, and the old shard is closed."""
        folder = self._folder(name)
        key = str(folder)
        if key not in self._shards:
            if "/" not in name:
                stale = [k for k in self._shards if Path(k).parent == folder.parent]
                for old in stale:
                    self._shards.pop(old).close()
            self._shards[key] = EdgeShard.load(str(folder / "shard"))
            self._written(name)
        return self._shards[key]

    def _close_folder(self, folder: Path) -> None:
        shard = self._shards.pop(str(folder), None)
        if shard is not None:
            shard.close()

    def _written(self, name: str) -> None:
        self._counts.pop(name, None)

    def upsert(
        self, name: str, ids: Sequence[str], vectors: np.ndarray, payloads: Sequence[dict[str, Any]]
    ) -> None:
        self._unseal(name)
        shard = self._shard(name)
        for start in range(0, len(ids), UPSERT_BATCH):
            points = [
                Point(point_id(image_id), vector.tolist(), payload)
                for image_id, vector, payload in zip(
                    ids[start : start + UPSERT_BATCH],
                    vectors[start : start + UPSERT_BATCH],
                    payloads[start : start + UPSERT_BATCH],
                    strict=True,
                )
            ]
            shard.update(UpdateOperation.upsert_points(points))
        shard.flush()
        self._written(name)

    def _unseal(self, name: str) -> None:
        """A published version written in place (`ensure` then `upsert`, outside a revision) no longer
        matches its sealed count and digest: forget them."""
        if "/" not in name:
            path = self._folder(name) / META
            meta = json.loads(path.read_text())
            if meta.keys() & {"points", "ids_sha256"}:
                path.write_text(
                    json.dumps({k: v for k, v in meta.items() if k not in ("points", "ids_sha256")}, indent=2)
                    + "\n"
                )

    def delete(self, name: str, ids: Sequence[str]) -> None:
        if ids:
            self._unseal(name)
            shard = self._shard(name)
            shard.update(UpdateOperation.delete_points([point_id(i) for i in ids]))
            shard.flush()
            self._written(name)

    def ids(self, name: str) -> set[str]:
        shard = self._shard(name)
        found: set[str] = set()
        offset = None
        while True:
            records, offset = shard.scroll(ScrollRequest(offset=offset, limit=10_000, with_payload=True))
            found.update(str(r.payload["id"]) for r in records if r.payload)
            if offset is None:
                return found

    def query(self, name: str, vectors: np.ndarray, k: int, with_vectors: bool = False) -> list[list[Hit]]:
        shard = self._shard(name)
        search = SearchParams(hnsw_ef=max(self.params.hnsw_ef, k), exact=self._exact(self._points(name)))
        requests = [
            QueryRequest(
                limit=k,
                query=Query.Nearest(v.tolist()),
                with_payload=True,
                with_vector=with_vectors,
                params=search,
            )
            for v in np.asarray(vectors, dtype=np.float32)
        ]
        results = (
            shard.query_batch(QueryBatchRequest(requests))
            if len(requests) > 1
            else [shard.query(requests[0])]
            if requests
            else []
        )
        return [[_hit(p, with_vectors) for p in points] for points in results]

    def finish(self, name: str) -> None:
        shard = self._shard(name)
        shard.optimize()
        shard.flush()

    def drop(self, name: str) -> None:
        for key in [k for k in self._shards if Path(k).parent == self.root / name]:
            self._shards.pop(key).close()
        self._written(name)
        shutil.rmtree(self.root / name, ignore_errors=True)

    def close(self) -> None:
        for shard in self._shards.values():
            shard.close()
        self._shards.clear()


def _hit(point: Any, with_vectors: bool) -> Hit:
    payload = dict(point.payload or {})
    vector = np.asarray(point.vector, dtype=np.float32) if with_vectors and point.vector is not None else None
    return Hit(id=str(payload.get("id", point.id)), score=float(point.score), payload=payload, vector=vector)
