"""Ingestion: list a source, read and check every file in parallel, store the good images by
content hash and account for every other file with its reason.

Nothing is dropped silently: for each call, accepted + rejected = files listed.
"""

from __future__ import annotations

import json
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from hashlib import sha256
from io import BytesIO
from pathlib import Path
from typing import Any

from tqdm import tqdm

from rdm.artifacts.manifest import Record
from rdm.data.images import DUPLICATE, NO_STYLE, UNREADABLE, CheckedImage, Limits, Rejected, check_image
from rdm.data.listing import Source, SourceItem
from rdm.files import atomic_write_bytes


@dataclass(frozen=True)
class Rejection:
    source: str
    split: str
    reason: str
    detail: str
    style: str | None = None
    """The style the source files it under, if any: what a refresh counts its rejections by."""

    @classmethod
    def of(cls, item: SourceItem, split: str, reason: str, detail: str) -> Rejection:
        return cls(item.location, split, reason, detail, item.style)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class IngestResult:
    records: list[Record] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)

    @property
    def seen(self) -> int:
        return len(self.records) + len(self.rejections)

    def reasons(self) -> dict[str, int]:
        return dict(sorted(Counter(r.reason for r in self.rejections).items()))

    def counts(self) -> dict[str, Any]:
        return {"seen": self.seen, "accepted": len(self.records), "rejected": self.reasons()}


def image_relpath(image_id: str, suffix: str, split: str) -> str:
    """`images/<split>/<2 hex>/<id><suffix>`: one folder per split, so each side's images are a DVC
    output of their own."""
    return f"images/{split}/{image_id[:2]}/{image_id}{suffix}"


JOURNAL = ".shards"
"""Under the prepared folder, `<split>/<digest>.json` per shard ingested: what it gave, so that an
interrupted `prepare` resumes shard by shard."""

Outcome = Record | Rejection


def ingest(
    source: Source,
    split: str,
    out_dir: Path,
    limits: Limits,
    *,
    seen: dict[str, str] | None = None,
    require_style: bool = False,
    workers: int = 4,
    progress: bool = True,
) -> IngestResult:
    """Ingest every item of `source` into `out_dir/images/<split>/`.

    `seen` maps ids already ingested (possibly from other splits) to their source, so a file whose
    bytes were met before becomes a `duplicate` rejection; it is updated in place.
    `require_style` rejects items with no style (style collections need one).
    A source in parts that have an identity (webdataset shards) is journaled part by part: a part
    unchanged since a run that finished it, under the same checks, is replayed, not read again.
    """
    seen = {} if seen is None else seen
    result = IngestResult()
    settings = f"{limits}, require_style={require_style}"

    def process(item: SourceItem) -> Outcome:
        return _process(source, item, split, out_dir, limits, require_style)

    with (
        ThreadPoolExecutor(max_workers=workers) as pool,
        tqdm(desc=f"ingest {split}", unit="file", disable=not progress) as bar,
    ):
        for part in source.parts():
            journal = _journal_path(out_dir, split, part.name, settings) if part.identity else None
            outcomes = _replay(journal, part.identity, settings, out_dir) if journal else None
            if outcomes is None:
                items = list(part.items())
                bar.total = (bar.total or 0) + len(items)
                outcomes = []
                for outcome in pool.map(process, items):
                    outcomes.append(outcome)
                    bar.update(1)
                if journal:
                    _record(journal, part.name, part.identity, settings, outcomes)
            else:
                bar.total = (bar.total or 0) + len(outcomes)
                bar.update(len(outcomes))
            for outcome in outcomes:
                if isinstance(outcome, Record) and outcome.id in seen:
                    detail = f"same bytes as {seen[outcome.id]}"
                    outcome = Rejection(outcome.source, split, DUPLICATE, detail, outcome.style)
                if isinstance(outcome, Record):
                    seen[outcome.id] = outcome.source
                    result.records.append(outcome)
                else:
                    result.rejections.append(outcome)
    return result


def _journal_path(out_dir: Path, split: str, part: str, settings: str) -> Path:
    """One journal per part and checks: a run under other limits keeps its own."""
    return out_dir / JOURNAL / split / f"{sha256(f'{part}|{settings}'.encode()).hexdigest()[:24]}.json"


def _replay(journal: Path, identity: str | None, settings: str, out_dir: Path) -> list[Outcome] | None:
    """The journaled outcomes of a part, or None where they cannot stand: no journal, the part
    changed, the checks changed, or an accepted image is no longer on disk."""
    if not journal.is_file():
        return None
    entry = json.loads(journal.read_text())
    if (entry["identity"], entry["settings"]) != (identity, settings):
        return None
    outcomes: list[Outcome] = [
        Record(**o["record"]) if "record" in o else Rejection(**o["rejection"]) for o in entry["outcomes"]
    ]
    if any(isinstance(o, Record) and not (out_dir / o.path).is_file() for o in outcomes):
        return None
    return outcomes


def _record(journal: Path, part: str, identity: str | None, settings: str, outcomes: list[Outcome]) -> None:
    entry = {
        "part": part,
        "identity": identity,
        "settings": settings,
        "outcomes": [
            {"record": asdict(o)} if isinstance(o, Record) else {"rejection": o.as_dict()} for o in outcomes
        ],
    }
    atomic_write_bytes(journal, json.dumps(entry).encode())


def _process(
    source: Source, item: SourceItem, split: str, out_dir: Path, limits: Limits, require_style: bool
) -> Record | Rejection:
    if require_style and not item.style:
        return Rejection.of(item, split, NO_STYLE, "style collections need a folder (or column) per style")
    try:
        data = source.read(item.location)
    except Exception as exc:  # missing file, permission, S3 error: one bad item never stops the batch
        return Rejection.of(item, split, UNREADABLE, f"{type(exc).__name__}: {exc}")
    try:
        checked = check_image(data, limits)
    except Rejected as exc:
        return Rejection.of(item, split, exc.reason, exc.detail)
    image_id = sha256(data).hexdigest()
    rel = image_relpath(image_id, checked.suffix, split)
    target = out_dir / rel
    if not target.exists():
        atomic_write_bytes(target, data if checked.unchanged else _png_bytes(checked))
    return Record(
        id=image_id,
        split=split,
        path=rel,
        source=item.location,
        caption=item.caption,
        style=item.style,
        content=item.content,
        width=checked.image.width,
        height=checked.image.height,
    )


def _png_bytes(checked: CheckedImage) -> bytes:
    buffer = BytesIO()
    checked.image.save(buffer, format="PNG")
    return buffer.getvalue()
