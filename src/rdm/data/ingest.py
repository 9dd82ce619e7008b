"""Ingestion: list a source, read and check every file in parallel, store the good images by
content hash and account for every other file with its reason.

Nothing is dropped silently: for each call, accepted + rejected = files listed.
"""

from __future__ import annotations

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
    """
    seen = {} if seen is None else seen
    result = IngestResult()
    items = list(source.items())

    def process(item: SourceItem) -> Record | Rejection:
        return _process(source, item, split, out_dir, limits, require_style)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        outcomes = pool.map(process, items)
        for item, outcome in tqdm(
            zip(items, outcomes, strict=True),
            total=len(items),
            desc=f"ingest {split}",
            unit="file",
            disable=not progress,
        ):
            if isinstance(outcome, Record) and outcome.id in seen:
                outcome = Rejection.of(item, split, DUPLICATE, f"same bytes as {seen[outcome.id]}")
            if isinstance(outcome, Record):
                seen[outcome.id] = item.location
                result.records.append(outcome)
            else:
                result.rejections.append(outcome)
    return result


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
