"""The prepared data's account of every file: the manifest (one parquet row per accepted image, the contract
between stages) and the rejections (one JSON line per file turned away, with its source and reason)."""

from __future__ import annotations

import io
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from rdm.files import atomic_write_bytes, write_jsonl


@dataclass(frozen=True)
class Record:
    id: str
    """sha256 of the original file's bytes: the image's identity everywhere downstream."""
    split: str
    path: str
    """Where the checked image is stored, relative to the prepared folder."""
    source: str
    """Where it came from (local path or s3:// URI)."""
    caption: str | None
    style: str | None
    content: str | None
    width: int
    height: int


SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("split", pa.string()),
        ("path", pa.string()),
        ("source", pa.string()),
        ("caption", pa.string()),
        ("style", pa.string()),
        ("content", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
    ]
)
assert [f.name for f in fields(Record)] == SCHEMA.names


def write_manifest(records: Iterable[Record], path: Path) -> None:
    table = pa.Table.from_pylist([asdict(r) for r in records], schema=SCHEMA)
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def read_manifest(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no manifest; run `dvc repro prepare` (or `rdm prepare`) first")
    return pq.read_table(path, schema=SCHEMA).to_pandas()


def write_rejections(path: Path, rejections: Iterable[dict[str, Any]]) -> None:
    write_jsonl(path, rejections)


def read_rejections(path: Path) -> list[dict[str, Any]]:
    """Every rejected file's row (split, source, reason, ...); none where nothing was rejected yet."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]
