"""The small interface every vector backend implements, and the choice of backend from params.

A collection holds one CLIP's vectors: it records the model name, weights fingerprint and
dimension when created, and refuses vectors from any other CLIP before writing anything.
Point ids are derived from the image id (the sha256 of its bytes), so writing is idempotent.

Collections are versioned: `revision()` changes a private copy and publishes it in one atomic step
(an alias swap on a server, a pointer file at the edge), so a reader sees the old collection or the
new one, never a mix; a per-collection lock lets one revision run at a time, and `ensure` and `drop`
take it too. A published version is never written in place: `upsert` or `delete` aimed at a
published collection runs a revision of its own.
"""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rdm.artifacts.clip import ClipCard
from rdm.config import StoreParams
from rdm.errors import UserError
from rdm.files import Busy, exclusive

POINT_NAMESPACE = uuid.UUID("5b0c8f0e-3f7a-4d7e-9a53-0c7f2f0e6a11")
D_TRAIN = "d_train"
"""The training database's collection: where training neighbours (and the postfix baseline's) come from."""


def style_collection(style: str) -> str:
    """The collection of one style's images: what sampling swaps in."""
    return f"style-{style}"


def ids_digest(ids: set[str]) -> str:
    """One sha256 for a set of image ids: equal digests, equal collections."""
    import hashlib

    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()


def point_id(image_id: str) -> str:
    return str(uuid.uuid5(POINT_NAMESPACE, image_id))


class CollectionError(UserError):
    pass


CollectionBusy = Busy
"""Raised while another process revises the collection."""


@dataclass(frozen=True)
class Hit:
    id: str
    """The image id (sha256 of its bytes)."""
    score: float
    """Cosine similarity to the query."""
    payload: dict[str, Any]
    vector: np.ndarray | None = None


@dataclass
class Revision:
    name: str
    """Where the new version is written (the store's name for a draft)."""
    changed: bool = False
    """Set when something was written: only a changed revision is published."""


@dataclass(frozen=True)
class CollectionInfo:
    name: str
    backend: str
    points: int
    dim: int
    clip_model: str
    clip_fingerprint: str


class VectorStore(ABC):
    """Collections of L2-normalised CLIP vectors with payloads, searched by cosine similarity."""

    backend: str

    def __init__(self, params: StoreParams) -> None:
        self.params = params

    @abstractmethod
    def list_collections(self) -> list[str]: ...

    @abstractmethod
    def info(self, name: str) -> CollectionInfo:
        """Raises CollectionError when `name` does not exist."""

    @abstractmethod
    def _create(self, name: str, dim: int, card: ClipCard) -> None: ...

    @abstractmethod
    def _upsert(
        self, draft: str, ids: Sequence[str], vectors: np.ndarray, payloads: Sequence[dict[str, Any]]
    ) -> None:
        """Insert or replace points of an unpublished version."""

    @abstractmethod
    def _delete(self, draft: str, ids: Sequence[str]) -> None: ...

    @abstractmethod
    def _is_draft(self, name: str) -> bool:
        """Whether `name` is an unpublished version (a `revision.name`), written in place."""

    @abstractmethod
    def ids(self, name: str) -> set[str]:
        """The image ids stored in `name`."""

    @abstractmethod
    def query(self, name: str, vectors: np.ndarray, k: int, with_vectors: bool = False) -> list[list[Hit]]:
        """(B, D) queries -> for each, the k nearest points, most similar first."""

    @abstractmethod
    def _drop(self, name: str) -> None:
        """Remove every version of `name` (the caller holds its lock)."""

    @abstractmethod
    def finish(self, name: str) -> None:
        """Make the collection fast to search once a batch of writes is done (build indexes)."""

    @abstractmethod
    def close(self) -> None:
        """Release files or connections."""

    @abstractmethod
    def built_with(self, name: str) -> tuple[int, str, str]:
        """(dimension, CLIP model, CLIP fingerprint) of the published `name`, read without opening
        its points (another process may be searching them)."""

    @abstractmethod
    def _begin(self, name: str, card: ClipCard, fresh: bool) -> str:
        """A new, unpublished version of `name`: empty when `fresh`, else a copy of the published
        points; returns the name to change it under."""

    @abstractmethod
    def _publish(self, name: str, draft: str) -> None:
        """Make `draft` what `name` means, in one atomic step."""

    @abstractmethod
    def _discard(self, draft: str) -> None: ...

    def upsert(
        self, name: str, ids: Sequence[str], vectors: np.ndarray, payloads: Sequence[dict[str, Any]]
    ) -> None:
        """Insert or replace points; `vectors` is (N, D), `payloads` carry at least `id`. `name` is a
        `revision.name`, or a published collection, changed then through a revision of its own."""
        if self._is_draft(name):
            self._upsert(name, ids, vectors, payloads)
            return
        with self._revised(name) as draft:
            self._upsert(draft, ids, vectors, payloads)

    def delete(self, name: str, ids: Sequence[str]) -> None:
        """Remove the points of these image ids, from a draft or (through a revision) a collection."""
        if not ids:
            return
        if self._is_draft(name):
            self._delete(name, ids)
            return
        with self._revised(name) as draft:
            self._delete(draft, ids)

    @contextmanager
    def _revised(self, name: str) -> Iterator[str]:
        """A revision of the published `name` for one write outside `revision()`, published when the
        write succeeds: readers never see a version half written."""
        self.require(name)
        dim, model, fingerprint = self.built_with(name)
        # a collection records no weights source, and a revision reads none
        card = ClipCard(model=model, source="as built", embed_dim=dim, fingerprint=fingerprint)
        with self.revision(name, card) as revision:
            yield revision.name
            revision.changed = True

    def drop(self, name: str) -> None:
        """Remove collection `name` and all its versions. Raises CollectionBusy while a revision of it
        runs."""
        with self._lock(name):
            self._drop(name)

    def exists(self, name: str) -> bool:
        return name in self.list_collections()

    def published_digest(self, name: str) -> str | None:
        """`ids_digest` of the published points of `name` (None when unknown), to skip a revision
        that would change nothing."""
        return ids_digest(self.ids(name))

    @contextmanager
    def revision(self, name: str, card: ClipCard, rebuild_mismatched: bool = False) -> Iterator[Revision]:
        """A private version of collection `name` to change through `revision.name`: a copy of the
        published points, or empty when the collection is new (or, with `rebuild_mismatched`, was
        built with another CLIP). When the block ends it is published in one atomic step if
        `revision.changed`, else dropped; if the block raises, it is dropped. The published version
        is never opened, so readers in other processes may keep searching it. Raises CollectionBusy
        while another revision of `name` runs, in any process."""
        with self._lock(name):
            fresh = not self.exists(name)
            built_with = None if fresh else self.built_with(name)
            if built_with is not None and built_with != (card.embed_dim, card.model, card.fingerprint):
                dim, model, fingerprint = built_with
                if not rebuild_mismatched:
                    self.check(CollectionInfo(name, self.backend, -1, dim, model, fingerprint), card)
                print(f"collection {name} holds vectors of CLIP {model} [{fingerprint}]; rebuilding it")
                fresh = True
            revision = Revision(self._begin(name, card, fresh), changed=fresh)
            try:
                yield revision
                if revision.changed:
                    self.finish(revision.name)
                    self._publish(name, revision.name)
            except BaseException:
                self._discard(revision.name)
                raise
            if not revision.changed:
                self._discard(revision.name)

    def _lock(self, name: str) -> AbstractContextManager[None]:
        """The lock that lets one process at a time change `name` (a host-local file lock here)."""
        return exclusive(Path(self.params.path) / ".locks" / f"{name}.lock", f"collection {name!r}")

    def ensure(self, name: str, card: ClipCard) -> CollectionInfo:
        """Create `name` for vectors of this CLIP, or check that the existing one holds them. Creating
        takes the collection's lock (CollectionBusy while a revision of it runs); checking does not."""
        if not self.exists(name):
            with self._lock(name):
                if not self.exists(name):  # another process may have created it meanwhile
                    self._create(name, card.embed_dim, card)
        info = self.info(name)
        self.check(info, card)
        return info

    @staticmethod
    def matches(info: CollectionInfo, card: ClipCard) -> bool:
        return (info.dim, info.clip_model, info.clip_fingerprint) == (
            card.embed_dim,
            card.model,
            card.fingerprint,
        )

    def check(self, info: CollectionInfo, card: ClipCard) -> None:
        if not self.matches(info, card):
            raise CollectionError(
                f"collection {info.name!r} ({self.backend}) holds {info.dim}-d vectors of CLIP "
                f"{info.clip_model} [{info.clip_fingerprint}], but the current CLIP is {card.model} "
                f"[{card.fingerprint}], {card.embed_dim}-d. Nothing was written. Re-embed into a new "
                f"collection (`rdm collections drop {info.name}`, then `rdm embed`), or point clip back "
                f"at the model it was built with."
            )

    def require(self, name: str) -> CollectionInfo:
        if not self.exists(name):
            known = ", ".join(self.list_collections()) or "none"
            raise CollectionError(
                f"no collection {name!r} in the {self.backend} store ({self.location}); "
                f"collections here: {known}. Run `dvc repro embed-training embed-styles` (or `rdm embed`) "
                "to build them."
            )
        return self.info(name)

    @property
    def location(self) -> str:
        return self.params.path

    def _exact(self, points: int) -> bool:
        return points < self.params.exact_below

    def __enter__(self) -> VectorStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
