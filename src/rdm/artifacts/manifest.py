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

SIDES: dict[str, tuple[str, ...]] = {"training": ("train", "d_train"), "styles": ("styles",)}
"""What trains the model (its images and the database D_train its neighbours come from), and what it
is sampled and judged with (the style collections and the evaluation prompts). Each side is prepared,
embedded and versioned on its own, so a style refresh never makes the training side stale."""
SPLITS = tuple(split for splits in SIDES.values() for split in splits)
PROMPTS = "prompts.parquet"
"""The evaluation prompts, on the styles side."""


def side_of(split: str) -> str:
    return next(side for side, splits in SIDES.items() if split in splits)


def styles_side_lock(store_path: str | Path) -> Path:
    """The lock a refresh holds while it rewrites the styles side (manifest, vectors, collections) in
    turn: a reader of the styles manifest and its vectors together takes it to see them agree."""
    return Path(store_path) / ".locks" / "refresh.lock"


def manifest_path(prepared: Path, split: str) -> Path:
    """`<prepared>/<split>.parquet`: one manifest per split."""
    return prepared / f"{split}.parquet"


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
        side = side_of(path.stem) if path.stem in SPLITS else None
        stage = f"prepare-{side}` (or `rdm prepare {side}`)" if side else "prepare-training prepare-styles`"
        raise FileNotFoundError(f"{path}: no manifest; run `dvc repro {stage} first")
    return pq.read_table(path, schema=SCHEMA).to_pandas()


def write_rejections(path: Path, rejections: Iterable[dict[str, Any]]) -> None:
    write_jsonl(path, rejections)


def read_rejections(path: Path) -> list[dict[str, Any]]:
    """Every rejected file's row (split, source, reason, ...); none where nothing was rejected yet."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]
