"""Where images come from: a local folder, a manifest file, or an S3 prefix.

A source only lists items (a location plus what is known about it: caption, style, content);
bytes are read later, in parallel, by `Source.read`. Every file found is listed, images or not,
so that ingestion can account for each one.

Layouts understood:
- Folder (ImageFolder, as ArtBench ships): `root/<style>/<file>`; files directly under root have
  no style. A `name.txt` beside `name.png` is that image's caption.
- Manifest: a .csv, .jsonl or .parquet table with a `path` column and optional `caption`, `style`
  and `content` columns; relative paths are resolved against the manifest's own folder.
- S3: `s3://bucket/prefix` is read like a folder; `s3://bucket/key.csv` (or .jsonl, .parquet) like
  a manifest.
- Webdataset shards (img2dataset's output): a `.tar`, or a folder or S3 prefix holding `.tar` files
  (`rdm.data.shards`).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pandas as pd

from rdm.config import S3Params
from rdm.data.listing import Source, SourceError, SourceItem
from rdm.data.s3 import S3Access, is_s3_uri, make_client, split_s3_uri
from rdm.data.shards import ShardSource, holds_shards

__all__ = ["Source", "SourceError", "SourceItem", "open_source", "read_table"]

MANIFEST_SUFFIXES = (".csv", ".jsonl", ".json", ".parquet")
CAPTION_SUFFIX = ".txt"


def open_source(spec: str, s3: S3Params | None = None) -> Source:
    """Pick the source type from its spec: webdataset shards, s3:// URI, manifest file or folder."""
    if is_s3_uri(spec):
        s3 = s3 or S3Params()
        client = make_client(s3)
        return ShardSource(spec, client, s3) if holds_shards(spec, client) else S3Source(spec, s3)
    path = Path(spec)
    if path.exists() and holds_shards(spec):
        return ShardSource(spec)
    if path.is_file():
        if path.suffix.lower() not in MANIFEST_SUFFIXES:
            raise SourceError(f"{spec}: a file source must be a manifest ({', '.join(MANIFEST_SUFFIXES)})")
        return ManifestSource(spec)
    if path.is_dir():
        return FolderSource(spec)
    raise SourceError(f"{spec}: no such folder or manifest; check the path in params.yaml (prepare.sources)")


def _is_hidden(parts: tuple[str, ...]) -> bool:
    return any(part.startswith(".") for part in parts)


def _pair_captions(relpaths: list[PurePosixPath]) -> tuple[list[PurePosixPath], set[PurePosixPath]]:
    """Split listed files into candidates and caption sidecars (`x.txt` beside a non-txt `x.*`)."""
    stems = {p.with_suffix("") for p in relpaths if p.suffix.lower() != CAPTION_SUFFIX}
    captions = {p for p in relpaths if p.suffix.lower() == CAPTION_SUFFIX and p.with_suffix("") in stems}
    return [p for p in relpaths if p not in captions], captions


def _style_of(rel: PurePosixPath) -> str | None:
    return rel.parts[0] if len(rel.parts) > 1 else None


def _check_no_empty_styles(spec: str, dirs: set[str], styled: set[str]) -> None:
    empty = sorted(dirs - styled)
    if empty:
        raise SourceError(f"{spec}: style folder(s) {empty} hold no files; add images or remove the folder")


class FolderSource(Source):
    def items(self) -> Iterator[SourceItem]:
        root = Path(self.spec)
        rels = sorted(
            PurePosixPath(p.relative_to(root).as_posix())
            for p in root.rglob("*")
            if p.is_file() and not _is_hidden(p.relative_to(root).parts)
        )
        if not rels:
            raise SourceError(f"{self.spec}: the folder holds no files")
        top_dirs = {p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")}
        candidates, captions = _pair_captions(rels)
        _check_no_empty_styles(self.spec, top_dirs, {s for p in candidates if (s := _style_of(p))})
        for rel in candidates:
            caption_rel = rel.with_suffix(CAPTION_SUFFIX)
            caption = (root / caption_rel).read_text().strip() if caption_rel in captions else None
            yield SourceItem(location=str(root / rel), caption=caption, style=_style_of(rel))


def read_table(data: bytes | Path, suffix: str, name: str, required: str = "path") -> pd.DataFrame:
    """A .csv, .jsonl or .parquet table (from a file or bytes) that must have the `required` column."""
    if suffix not in MANIFEST_SUFFIXES:
        raise SourceError(f"{name}: tables must be {', '.join(MANIFEST_SUFFIXES)}")
    buffer = io.BytesIO(data) if isinstance(data, bytes) else data
    try:
        if suffix == ".csv":
            table = pd.read_csv(buffer, dtype=str, keep_default_na=False)
        elif suffix in (".jsonl", ".json"):
            table = pd.read_json(buffer, lines=True, dtype=False)
        else:
            table = pd.read_parquet(buffer)
    except Exception as exc:
        raise SourceError(f"{name}: cannot read manifest: {exc}") from None
    if required not in table.columns:
        raise SourceError(f"{name}: manifest has no '{required}' column (columns: {list(table.columns)})")
    return table


def _text(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return None
    text = str(value).strip()
    return text or None


def _manifest_items(table: pd.DataFrame, resolve: Any) -> Iterator[SourceItem]:
    columns = set(table.columns)
    for row in table.to_dict("records"):
        yield SourceItem(
            location=resolve(str(row["path"])),
            caption=_text(row.get("caption")) if "caption" in columns else None,
            style=_text(row.get("style")) if "style" in columns else None,
            content=_text(row.get("content")) if "content" in columns else None,
        )


class ManifestSource(Source):
    def items(self) -> Iterator[SourceItem]:
        path = Path(self.spec)
        table = read_table(path, path.suffix.lower(), self.spec)

        def resolve(p: str) -> str:
            return p if is_s3_uri(p) or Path(p).is_absolute() else str(path.parent / p)

        yield from _manifest_items(table, resolve)

    def read(self, location: str) -> bytes:
        if is_s3_uri(location):
            raise SourceError(f"{self.spec}: s3:// paths need the manifest on S3 too (got {location})")
        return super().read(location)


class S3Source(Source, S3Access):
    def __init__(self, spec: str, params: S3Params) -> None:
        super().__init__(spec)
        self.bucket, self.key = split_s3_uri(spec)
        self.s3 = params
        self.client = make_client(params)

    def read(self, location: str) -> bytes:
        bucket, key = split_s3_uri(location)
        body: bytes = self.client.get_object(Bucket=bucket, Key=key)["Body"].read()
        return body

    def items(self) -> Iterator[SourceItem]:
        suffix = PurePosixPath(self.key).suffix.lower()
        if suffix in MANIFEST_SUFFIXES:
            yield from self._manifest_items(suffix)
        else:
            yield from self._folder_items()

    def _manifest_items(self, suffix: str) -> Iterator[SourceItem]:
        table = read_table(self.read(self.spec), suffix, self.spec)
        folder = PurePosixPath(self.key).parent

        def resolve(p: str) -> str:
            return p if is_s3_uri(p) else f"s3://{self.bucket}/{(folder / p).as_posix().lstrip('./')}"

        yield from _manifest_items(table, resolve)

    def _folder_items(self) -> Iterator[SourceItem]:
        prefix = self.key.rstrip("/") + "/" if self.key else ""
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        rels = sorted(
            PurePosixPath(obj["Key"][len(prefix) :])
            for page in pages
            for obj in page.get("Contents", [])
            if not obj["Key"].endswith("/") and not _is_hidden(PurePosixPath(obj["Key"][len(prefix) :]).parts)
        )
        if not rels:
            raise SourceError(f"{self.spec}: no objects under this prefix; check the bucket and prefix")
        candidates, captions = _pair_captions(rels)
        for rel in candidates:
            caption_rel = rel.with_suffix(CAPTION_SUFFIX)
            caption = None
            if caption_rel in captions:
                caption = self.read(f"s3://{self.bucket}/{prefix}{caption_rel}").decode().strip()
            yield SourceItem(
                location=f"s3://{self.bucket}/{prefix}{rel}", caption=caption, style=_style_of(rel)
            )
