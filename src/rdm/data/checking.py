"""Reading, checking and storing one listed item, and the executors that run it over a part's items:
threads in this process, or tasks on a Ray cluster (`prepare.executor`, `rdm.data.on_ray`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import partial
from hashlib import sha256
from io import BytesIO
from pathlib import Path
from typing import Any

from rdm.artifacts.manifest import Record
from rdm.data.images import NO_STYLE, UNREADABLE, CheckedImage, Limits, Rejected, check_image
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


Outcome = Record | Rejection


@dataclass(frozen=True)
class Checks:
    """What every item of an ingestion is held to, and where the good ones are stored."""

    split: str
    out_dir: Path
    limits: Limits
    require_style: bool = False

    @property
    def settings(self) -> str:
        """The checks an outcome depends on: a journaled outcome stands only under the same ones."""
        return f"{self.limits}, require_style={self.require_style}"


Check = Callable[[Source, list[SourceItem]], Iterator[Outcome]]
"""(the source that reads them, a part's items) -> their outcomes, in the items' order."""


def image_relpath(image_id: str, suffix: str, split: str) -> str:
    """`images/<split>/<2 hex>/<id><suffix>`: one folder per split, so each side's images are a DVC
    output of their own."""
    return f"images/{split}/{image_id[:2]}/{image_id}{suffix}"


def ingest_item(source: Source, item: SourceItem, checks: Checks) -> Outcome:
    """Read, decode and check one item; store it by content hash if it passes."""
    if checks.require_style and not item.style:
        return Rejection.of(
            item, checks.split, NO_STYLE, "style collections need a folder (or column) per style"
        )
    try:
        data = source.read(item.location)
    except Exception as exc:  # missing file, permission, S3 error: one bad item never stops the batch
        return Rejection.of(item, checks.split, UNREADABLE, f"{type(exc).__name__}: {exc}")
    try:
        checked = check_image(data, checks.limits)
    except Rejected as exc:
        return Rejection.of(item, checks.split, exc.reason, exc.detail)
    image_id = sha256(data).hexdigest()
    rel = image_relpath(image_id, checked.suffix, checks.split)
    target = checks.out_dir / rel
    if not target.exists():
        atomic_write_bytes(target, data if checked.unchanged else _png_bytes(checked))
    return Record(
        id=image_id,
        split=checks.split,
        path=rel,
        source=item.location,
        caption=item.caption,
        style=item.style,
        content=item.content,
        width=checked.image.width,
        height=checked.image.height,
    )


@contextmanager
def checked_here(checks: Checks, workers: int) -> Iterator[Check]:
    """Items checked by `workers` threads of this process (reading is I/O, decoding releases the GIL)."""
    with ThreadPoolExecutor(max_workers=workers) as pool:

        def check(source: Source, items: list[SourceItem]) -> Iterator[Outcome]:
            return pool.map(partial(ingest_item, source, checks=checks), items)

        yield check


def _png_bytes(checked: CheckedImage) -> bytes:
    buffer = BytesIO()
    checked.image.save(buffer, format="PNG")
    return buffer.getvalue()
