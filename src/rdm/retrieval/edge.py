"""Qdrant Edge: the Qdrant engine in-process, one shard folder per collection version.

Layout: `<store.path>/<collection>/<version>/shard/` (the engine's files) with `collection.json`
beside it (dimension, the CLIP the vectors came from and, once published, the sealed point count and
ids digest), and `<collection>/CURRENT` naming the published version.

The engine locks a shard's WAL, so only one handle at a time can open a shard folder, and opening one
rewrites a few of its files. So a published version is never opened: a reader copies its segments to
a private temporary folder and opens the copy, holding a lease (a shared lock on the version's folder)
while it copies. A reader's copy leaves the WAL out: a shard flushed and closed before it was published
holds all its points in its segments. A revision's copy (a draft, opened in place and changed) keeps
it: the engine numbers operations on from the WAL and ignores one numbered below a point's version, so
in a fresh WAL deleting or replacing a point written before would silently do nothing. The revision
then replaces CURRENT in one rename, and removes every version but the new one and the one before,
except one a reader is copying.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
import time
import uuid
import weakref
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
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
    QuantizationSearchParams,
    Query,
    QueryBatchRequest,
    QueryRequest,
    ScalarQuantizationConfig,
    ScalarType,
    ScrollRequest,
    SearchParams,
    UpdateOperation,
)

from rdm.artifacts.clip import ClipCard
from rdm.config import StoreParams
from rdm.files import atomic_write_bytes, claim, lease, write_json
from rdm.retrieval.store import CollectionError, CollectionInfo, Hit, VectorStore, ids_digest, point_id

META = "collection.json"
CURRENT = "CURRENT"
RETIRED = ".retired"
"""Marks a superseded version a reader held when it was to be removed: its age counts from then."""
COPIES = "rdm-edge-"
"""How the temporary folders of readers' private copies are named."""
UPSERT_BATCH = 5000
COPY_ATTEMPTS = 3
READ_ATTEMPTS = 5


@dataclass
class _Copy:
    """A reader's private copy of one published version, open."""

    version: Path
    """The published version it was copied from."""
    folder: Path
    """The temporary folder the copy is in."""
    shard: EdgeShard
    meta: dict[str, Any]
    remove: weakref.finalize
    """Removes the copy's folder: when released, or at exit if the store was never closed."""
    owned: ExitStack
    """Holds a lease on the copy's folder while it lives: one no process leases is an orphan."""


class EdgeStore(VectorStore):
    backend = "edge"

    def __init__(self, params: StoreParams) -> None:
        super().__init__(params)
        self.root = Path(params.path)
        self._drafts: dict[str, EdgeShard] = {}
        self._copies: dict[str, _Copy] = {}
        self._counts: dict[str, int] = {}
        self._swept = False

    def list_collections(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / CURRENT).is_file())

    def _is_draft(self, name: str) -> bool:
        """Drafts are named `collection/version`, as `_begin` names them."""
        return "/" in name

    def _version(self, name: str) -> Path:
        """The folder of the version CURRENT names."""
        pointer = self.root / name / CURRENT
        try:
            return self.root / name / pointer.read_text().strip()
        except FileNotFoundError:
            raise CollectionError(f"no collection {name!r} in the edge store ({self.root})") from None

    def _meta(self, name: str) -> dict[str, Any]:
        """The metadata of a draft, or of `name`'s published version, read without opening its points."""
        if self._is_draft(name):
            return _read_meta(self.root / name)
        for _ in range(READ_ATTEMPTS):
            try:
                return _read_meta(self._version(name))
            except FileNotFoundError:
                continue  # removed since CURRENT was read (two publishes since): read CURRENT again
        raise CollectionError(
            f"{self.root / name}: the version CURRENT names has no {META}; the collection is damaged: "
            f"rebuild it (`rdm collections drop {name}`, then `rdm embed`)"
        )

    def _points(self, name: str, shard: EdgeShard) -> int:
        """Point count of `name`'s open `shard`, cached between writes: asking costs more than a query."""
        if name not in self._counts:
            self._counts[name] = shard.info().points_count
        return self._counts[name]

    def info(self, name: str) -> CollectionInfo:
        """A published version's count is the one it was sealed with, so asking (as `ensure`, `require`
        and `rdm collections` do) copies nothing; a draft, or a version an earlier release published
        unsealed, is counted."""
        meta = self._meta(name)
        points = None if self._is_draft(name) else meta.get("points")
        if points is None:
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
            quantization_config=(
                ScalarQuantizationConfig(type=ScalarType.Int8, quantile=0.99, always_ram=True)
                if self.params.quantization == "int8"
                else None
            ),
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
        """A new version: empty, or a copy of the current one checked against its sealed count and ids
        digest. No lease is needed to copy it: only the holder of the collection's lock (this
        revision) removes versions."""
        self._sweep(self.root / name)
        draft = self._new_version(name)
        folder = self.root / draft
        if fresh:
            folder.mkdir(parents=True)
            EdgeShard.create(str(folder / "shard"), self._config(card.embed_dim)).close()
            meta = {"dim": card.embed_dim, "clip_model": card.model, "clip_fingerprint": card.fingerprint}
            write_json(folder / META, meta)
            return draft
        current = self._version(name)
        sealed = _read_meta(current)
        failure = "its copies did not match"
        for attempt in range(COPY_ATTEMPTS):
            try:
                _copy_version(current, folder, wal=True)
                if self._matches_seal(draft, sealed):
                    return draft
            except FileNotFoundError as error:  # a file that vanished while being copied
                failure = str(error)
            except OSError as error:
                self._discard(draft)
                raise CollectionError(
                    f"{folder}: could not copy version {current.name} of collection {name!r} into it "
                    f"({error}). Nothing was published: the published version is intact. Free space "
                    f"under {self.root} (or fix the cause), then run again."
                ) from error
            except Exception as error:  # the engine refused the copy
                failure = f"{type(error).__name__}: {error}"
            self._discard(draft)
            time.sleep(0.2 * (attempt + 1))
        raise CollectionError(
            f"{current}: {COPY_ATTEMPTS} copies of collection {name!r} into {folder} did not give its "
            f"sealed points ({failure}). Nothing was published: the published version is as it was. "
            f"Run again; if this persists, rebuild it (`rdm collections drop {name}`, then `rdm embed`)."
        )

    def _matches_seal(self, draft: str, sealed: dict[str, Any]) -> bool:
        """Whether the copied `draft` holds the points its source was sealed with (a version sealed by
        an earlier release, with no seal, is taken as it is)."""
        shard = self._draft(draft)
        if "points" in sealed and shard.count(CountRequest(exact=True)) != sealed["points"]:
            return False
        return "ids_sha256" not in sealed or ids_digest(self.ids(draft)) == sealed["ids_sha256"]

    def _publish(self, name: str, draft: str) -> None:
        """Seal `draft` (its point count and ids digest in its metadata), point CURRENT at it in one
        rename, and remove what no reader can reach any more (`_collect`)."""
        folder = self.root / draft
        meta = _read_meta(folder) | {
            "points": self._draft(draft).count(CountRequest(exact=True)),
            "ids_sha256": ids_digest(self.ids(draft)),
        }
        write_json(folder / META, meta)
        self._close_draft(draft)
        pointer = self.root / name / CURRENT
        previous = pointer.read_text().strip() if pointer.is_file() else None
        atomic_write_bytes(pointer, f"{folder.name}\n".encode())
        self._written(name)
        self._collect(self.root / name, keep={folder.name, previous})

    def _collect(self, collection: Path, keep: set[str | None]) -> None:
        """Remove every version but `keep` that no reader is copying (`_retire`, drafts of killed runs
        too), and whatever else the collection's folder holds: the debris `_sweep` removes, and the
        unversioned layout of an earlier release."""
        for entry in collection.iterdir():
            if entry.name == CURRENT or entry.name in keep:
                continue
            if entry.is_dir() and entry.name.startswith("v") and entry.name[1:].isdigit():
                self._retire(entry)
            else:
                _remove(entry)

    def _sweep(self, collection: Path) -> None:
        """Remove what runs killed while the lock was theirs left under hidden names (versions killed
        half-removed, the pointer's staging files), so that a revision starts with that room free."""
        if collection.is_dir():
            for entry in collection.glob(".*"):
                _remove(entry)

    def _retire(self, version: Path) -> None:
        """Remove a superseded version unless a reader holds its lease, and then only once it has held
        it for over `store.version_max_age_s`. It is renamed away first, under the lock, so a reader
        arriving meanwhile finds it gone and reads CURRENT again."""
        with claim(version) as free:
            if not free and not self._held_too_long(version):
                print(f"keeping {version}: a reader is copying it (it goes at a later publish)")
                return
            trash = version.with_name(f".trash-{version.name}-{uuid.uuid4().hex[:8]}")
            version.rename(trash)
        shutil.rmtree(trash, ignore_errors=True)

    def _held_too_long(self, version: Path) -> bool:
        """Whether a reader has held `version` since an attempt to remove it over
        `store.version_max_age_s` ago (the first such attempt marks it)."""
        marker = version / RETIRED
        try:
            held = time.time() - marker.stat().st_mtime
        except FileNotFoundError:
            marker.touch()
            return False
        if held < self.params.version_max_age_s:
            return False
        print(f"removing {version}: a reader has held it for over {held:.0f} s (store.version_max_age_s)")
        return True

    def published_digest(self, name: str) -> str | None:
        digest = self._meta(name).get("ids_sha256")
        return str(digest) if digest else None

    def _discard(self, draft: str) -> None:
        self._close_draft(draft)
        shutil.rmtree(self.root / draft, ignore_errors=True)

    def _shard(self, name: str) -> EdgeShard:
        """The open shard of a draft, or of a private copy of `name`'s published version."""
        return self._draft(name) if self._is_draft(name) else self._copy(name).shard

    def _draft(self, draft: str) -> EdgeShard:
        """A draft's shard, opened in place: only its revision ever opens it."""
        if draft not in self._drafts:
            self._drafts[draft] = EdgeShard.load(str(self.root / draft / "shard"))
            self._written(draft)
        return self._drafts[draft]

    def _copy(self, name: str) -> _Copy:
        """The private copy of `name`'s published version. A reader asking again after a publish gets
        a copy of the new version, and the old copy is removed. A version removed between reading
        CURRENT and taking its lease (or, stuck past `version_max_age_s`, while being copied) is
        given up for the version CURRENT names then."""
        version = self._version(name)
        held = self._copies.get(name)
        if held is not None and held.version == version:
            return held
        self._release(name)
        failure = ""
        for attempt in range(READ_ATTEMPTS):
            try:
                self._copies[name] = self._copy_published(version)
            except (FileNotFoundError, BlockingIOError) as error:  # removed, or being removed
                failure = str(error) or "being removed"
                time.sleep(0.01 * attempt)
                version = self._version(name)
                continue
            self._written(name)
            return self._copies[name]
        raise CollectionError(
            f"{self.root / name}: could not copy its published version {READ_ATTEMPTS} times ({failure}): "
            f"it keeps being replaced, or is damaged. Try again; if this persists, rebuild it "
            f"(`rdm collections drop {name}`, then `rdm embed`)."
        )

    def _copy_published(self, version: Path) -> _Copy:
        """Copy `version` into a new temporary folder under its lease, and open the copy."""
        self._sweep_orphans()
        folder = Path(tempfile.mkdtemp(prefix=f"{COPIES}{version.parent.name}-{version.name}-"))
        remove, owned = weakref.finalize(self, shutil.rmtree, folder, True), ExitStack()
        try:
            owned.enter_context(lease(folder))
            with lease(version):
                _copy_version(version, folder, wal=False)
            shard = EdgeShard.load(str(folder / "shard"))
        except BaseException as error:
            owned.close()
            remove()
            if isinstance(error, OSError) and not isinstance(error, FileNotFoundError | BlockingIOError):
                raise CollectionError(
                    f"could not copy {version} to {folder} to read it ({error}); "
                    f"free space there, or point TMPDIR at a folder with room"
                ) from error
            raise
        return _Copy(version, folder, shard, _read_meta(folder), remove, owned)

    def _sweep_orphans(self) -> None:
        """Once per store, remove the private copies of readers that died without closing them
        (killed): a live reader leases its copy, and a lease dies with its holder."""
        if self._swept:
            return
        self._swept = True
        for orphan in Path(tempfile.gettempdir()).glob(f"{COPIES}*"):
            try:
                with claim(orphan) as free:
                    if free:
                        shutil.rmtree(orphan, ignore_errors=True)
            except OSError:
                continue  # removed meanwhile, or another user's

    def _release(self, name: str) -> None:
        """Close and remove the private copy of `name`, if any."""
        copy = self._copies.pop(name, None)
        if copy is not None:
            copy.shard.close()
            copy.owned.close()
            copy.remove()

    def _close_draft(self, draft: str) -> None:
        shard = self._drafts.pop(draft, None)
        if shard is not None:
            shard.close()

    def _written(self, name: str) -> None:
        self._counts.pop(name, None)

    def _upsert(
        self, draft: str, ids: Sequence[str], vectors: np.ndarray, payloads: Sequence[dict[str, Any]]
    ) -> None:
        shard = self._draft(draft)
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
        self._written(draft)

    def _delete(self, draft: str, ids: Sequence[str]) -> None:
        shard = self._draft(draft)
        shard.update(UpdateOperation.delete_points([point_id(i) for i in ids]))
        shard.flush()
        self._written(draft)

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
        search = SearchParams(
            hnsw_ef=max(self.params.hnsw_ef, k),
            exact=self._exact(self._points(name, shard)),
            quantization=(
                QuantizationSearchParams(rescore=True, oversampling=self.params.quantization_oversampling)
                if self.params.quantization == "int8"
                else None
            ),
        )
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
        """Build a draft's index; a published version was finished before it was published."""
        if self._is_draft(name):
            shard = self._draft(name)
            shard.optimize()
            shard.flush()

    def _drop(self, name: str) -> None:
        """Unpublish `name` in one step (CURRENT goes first), then remove its folder: a reader copying
        it meanwhile finds it gone and says so."""
        self._release(name)
        for draft in [d for d in self._drafts if d.startswith(f"{name}/")]:
            self._close_draft(draft)
        self._written(name)
        (self.root / name / CURRENT).unlink(missing_ok=True)
        shutil.rmtree(self.root / name, ignore_errors=True)

    def close(self) -> None:
        for draft in list(self._drafts):
            self._close_draft(draft)
        for name in list(self._copies):
            self._release(name)


def _remove(entry: Path) -> None:
    if entry.is_dir():
        shutil.rmtree(entry, ignore_errors=True)
    else:
        entry.unlink(missing_ok=True)


def _read_meta(folder: Path) -> dict[str, Any]:
    meta: dict[str, Any] = json.loads((folder / META).read_text())
    return meta


def _copy_version(version: Path, to: Path, wal: bool) -> None:
    """Copy a version's metadata and its shard's files into `to`, but the engine's half-written
    `.atomicwrite*` files (which may vanish mid-copy) and, unless `wal`, the WAL (which only a copy
    to be written needs: see the module's docstring)."""
    source = version / "shard"
    for folder, subfolders, files in os.walk(source, onerror=_raise):
        here = Path(folder)
        if here == source and not wal:
            subfolders[:] = [s for s in subfolders if s != "wal"]
        target = to / "shard" / here.relative_to(source)
        target.mkdir(parents=True, exist_ok=True)
        for file in files:
            if not file.startswith(".atomicwrite"):
                _copy_file(here / file, target / file)
    _copy_file(version / META, to / META)


def _raise(error: OSError) -> None:
    """Make `os.walk` fail on a folder it cannot list (one removed mid-copy) instead of skipping it."""
    raise error


def _copy_file(source: Path, target: Path) -> None:
    """Copy `source`'s data only, leaving its holes holes: the engine preallocates 32 MiB files that its
    points fill slowly, so a copy costs what the points weigh, not what the files claim."""
    with source.open("rb", buffering=0) as src, target.open("wb", buffering=0) as dst:
        size = os.fstat(src.fileno()).st_size
        for start, end in _data_ranges(src.fileno(), size):
            os.lseek(dst.fileno(), start, os.SEEK_SET)
            while start < end:
                sent = os.sendfile(dst.fileno(), src.fileno(), start, end - start)
                if sent == 0:
                    raise FileNotFoundError(errno.ENOENT, "shrank while being copied", str(source))
                start += sent
        dst.truncate(size)


def _data_ranges(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """(start, end) of each run of data in the open file `fd`; the whole file where the filesystem
    cannot tell data from holes."""
    offset = 0
    while offset < size:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError as error:
            if error.errno != errno.ENXIO:  # ENXIO: nothing but a hole from `offset` on
                yield offset, size
            return
        end = os.lseek(fd, start, os.SEEK_HOLE)
        yield start, end
        offset = end


def _hit(point: Any, with_vectors: bool) -> Hit:
    payload = dict(point.payload or {})
    vector = np.asarray(point.vector, dtype=np.float32) if with_vectors and point.vector is not None else None
    return Hit(id=str(payload.get("id", point.id)), score=float(point.score), payload=payload, vector=vector)
