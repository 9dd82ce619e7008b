"""What every source lists: items, a way to read their bytes, and the error of a source that
cannot be listed."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from rdm.errors import UserError


class SourceError(UserError, ValueError):
    """A source that cannot be listed at all (missing, empty, malformed manifest)."""


@dataclass(frozen=True)
class SourceItem:
    location: str
    """A local path or an s3:// URI: where the bytes are, as the user would name it."""
    caption: str | None = None
    style: str | None = None
    content: str | None = None


@dataclass(frozen=True)
class Part:
    """A piece of a source ingested as one unit. With an `identity` (what changes when its contents
    change: size and mtime, an S3 ETag), its outcome is journaled and a rerun skips it unchanged."""

    name: str
    identity: str | None
    items: Callable[[], Iterator[SourceItem]]


class Source(ABC):
    """Lists items and reads their bytes. Subclasses know one layout."""

    def __init__(self, spec: str) -> None:
        self.spec = spec

    @abstractmethod
    def items(self) -> Iterator[SourceItem]:
        """Every file of the source, in a stable order."""

    def read(self, location: str) -> bytes:
        return Path(location).read_bytes()

    def parts(self) -> list[Part]:
        """The units ingestion may resume by: the whole source, never journaled, unless a layout
        knows better (webdataset shards: one part each)."""
        return [Part(self.spec, None, self.items)]

    def reader(self, items: list[SourceItem]) -> Source:
        """What a worker elsewhere (a Ray task) needs to read `items`: the source itself, unless it
        holds state for everything listed so far (shard offsets) that need not travel."""
        return self
