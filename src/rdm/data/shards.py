"""img2dataset's webdataset output as a source: `.tar` shards in a folder or under an S3 prefix,
each sample a group of members sharing a key (`000000017.jpg`, `000000017.txt`, `000000017.json`).

Listing streams each shard's headers once and notes where every member's bytes lie; reading a
sample is then one seek (local) or one ranged GET (S3) of exactly its bytes, so a shard is never
unpacked to disk. The caption is the `.txt` member, else the `.json` member's `caption`; a
`style` in the `.json` files the sample under that style. Every other member (the image, or
anything else) is listed, so ingestion accounts for each one.
"""

from __future__ import annotations

import copy
import json
import tarfile
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING, Any

from rdm.data.listing import Part, Source, SourceError, SourceItem
from rdm.data.s3 import S3Access, is_s3_uri, split_s3_uri

if TYPE_CHECKING:
    from rdm.config import S3Params

SHARD_SUFFIX = ".tar"
SIDECARS = {"txt", "json"}
"""Members that describe a sample rather than being one."""


@dataclass(frozen=True)
class Member:
    shard: str
    offset: int
    size: int


def sample_key(member: str) -> tuple[str, str]:
    """'dir/000000017.jpg' -> ('dir/000000017', 'jpg'): webdataset's key is the name up to the
    first dot of its last part."""
    path = PurePosixPath(member)
    stem, _, extension = path.name.partition(".")
    return str(path.parent / stem) if str(path.parent) != "." else stem, extension.lower()


class ShardSource(Source, S3Access):
    """`.tar` shards: `spec` is one shard, a folder of them, or an s3:// prefix of them (read with
    `client`, made from the `s3` params)."""

    def __init__(self, spec: str, client: Any = None, s3: S3Params | None = None) -> None:
        super().__init__(spec)
        self.client = client
        self.s3 = s3
        self.members: dict[str, Member] = {}
        self.etags: dict[str, str] = {}

    def shards(self) -> list[str]:
        if is_s3_uri(self.spec):
            bucket, key = split_s3_uri(self.spec)
            if key.endswith(SHARD_SUFFIX):
                return [self.spec]
            prefix = key.rstrip("/") + "/" if key else ""
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            listed = {o["Key"]: o["ETag"] for page in pages for o in page.get("Contents", [])}
            self.etags |= {f"s3://{bucket}/{k}": tag for k, tag in listed.items()}
            found = sorted(f"s3://{bucket}/{k}" for k in listed if k.endswith(SHARD_SUFFIX))
        else:
            path = Path(self.spec)
            found = [str(path)] if path.is_file() else sorted(str(p) for p in path.glob(f"*{SHARD_SUFFIX}"))
        if not found:
            raise SourceError(f"{self.spec}: no {SHARD_SUFFIX} shards here; check prepare.sources")
        return found

    def items(self) -> Iterator[SourceItem]:
        for shard in self.shards():
            yield from self.shard_items(shard)

    def parts(self) -> list[Part]:
        """One part per shard, known by its S3 ETag or its size and modification time."""
        return [Part(s, self.identity(s), partial(self.shard_items, s)) for s in self.shards()]

    def identity(self, shard: str) -> str:
        if is_s3_uri(shard):
            if shard not in self.etags:
                bucket, key = split_s3_uri(shard)
                self.etags[shard] = self.client.head_object(Bucket=bucket, Key=key)["ETag"]
            return f"etag {self.etags[shard]}"
        stat = Path(shard).stat()
        return f"{stat.st_size} bytes, mtime {stat.st_mtime_ns}"

    def shard_items(self, shard: str) -> Iterator[SourceItem]:
        """One shard's samples, in the order of the shard, its headers streamed once."""
        samples: dict[str, dict[str, tarfile.TarInfo]] = defaultdict(dict)
        sidecars: dict[str, dict[str, bytes]] = defaultdict(dict)
        with self._open(shard) as stream:
            try:
                with tarfile.open(fileobj=stream, mode="r|") as tar:
                    for info in tar:
                        if not info.isfile():
                            continue
                        key, extension = sample_key(info.name)
                        if extension in SIDECARS:
                            member = tar.extractfile(info)
                            sidecars[key][extension] = member.read() if member else b""
                        else:
                            samples[key][info.name] = info
            except tarfile.TarError as exc:
                raise SourceError(f"{shard}: not a readable tar shard ({exc}); re-download it") from None
        for key, members in samples.items():
            caption, style = _describe(sidecars.get(key, {}), f"{shard}#{key}")
            for name, info in members.items():
                location = f"{shard}#{name}"
                self.members[location] = Member(shard, info.offset_data, info.size)
                yield SourceItem(location=location, caption=caption, style=style)

    def reader(self, items: list[SourceItem]) -> ShardSource:
        """A copy that knows only these items' offsets, not those of every shard listed so far."""
        reader = copy.copy(self)
        reader.members = {i.location: self.members[i.location] for i in items}
        return reader

    def read(self, location: str) -> bytes:
        member = self.members.get(location)
        if member is None:
            raise SourceError(f"{location}: not a member listed from {self.spec}")
        if is_s3_uri(member.shard):
            bucket, key = split_s3_uri(member.shard)
            ranged = f"bytes={member.offset}-{member.offset + member.size - 1}"
            body: bytes = self.client.get_object(Bucket=bucket, Key=key, Range=ranged)["Body"].read()
            return body
        with open(member.shard, "rb") as file:
            file.seek(member.offset)
            return file.read(member.size)

    def _open(self, shard: str) -> IO[bytes]:
        if is_s3_uri(shard):
            bucket, key = split_s3_uri(shard)
            stream: IO[bytes] = self.client.get_object(Bucket=bucket, Key=key)["Body"]
            return stream
        return open(shard, "rb")


def _describe(sidecars: dict[str, bytes], where: str) -> tuple[str | None, str | None]:
    """The caption and style of a sample from its `.txt` and `.json` members."""
    meta: dict[str, Any] = {}
    if "json" in sidecars:
        try:
            meta = json.loads(sidecars["json"] or b"{}")
        except json.JSONDecodeError:
            raise SourceError(f"{where}.json: not JSON; the shard is damaged, re-download it") from None
    text = sidecars["txt"].decode("utf-8", "replace").strip() if "txt" in sidecars else None
    caption = text or (str(meta["caption"]).strip() if meta.get("caption") else None)
    style = str(meta["style"]) if meta.get("style") else None
    return caption or None, style


def holds_shards(spec: str, client: Any = None) -> bool:
    """Whether a folder (or s3:// prefix, or file) is webdataset shards rather than image files."""
    if is_s3_uri(spec):
        bucket, key = split_s3_uri(spec)
        if key.endswith(SHARD_SUFFIX):
            return True
        prefix = key.rstrip("/") + "/" if key else ""
        listed = client.list_objects_v2(Bucket=bucket, Prefix=prefix, Delimiter="/", MaxKeys=1000)
        return any(o["Key"].endswith(SHARD_SUFFIX) for o in listed.get("Contents", []))
    path = Path(spec)
    return path.suffix == SHARD_SUFFIX if path.is_file() else any(path.glob(f"*{SHARD_SUFFIX}"))
