"""Ingestion: list a source, read and check every file in parallel (threads here, or tasks on a Ray
cluster), store the good images by content hash and account for every other file with its reason.

Nothing is dropped silently: for each call, accepted + rejected = files listed.
"""

from __future__ import annotations

import json
from collections import Counter
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from hashlib import sha256
from pathlib import Path
from typing import Any, Literal

from tqdm import tqdm

from rdm.artifacts.manifest import Record
from rdm.data.checking import Check, Checks, Outcome, Rejection, checked_here
from rdm.data.images import DUPLICATE, Limits
from rdm.data.listing import Source
from rdm.data.on_ray import checked_on_ray
from rdm.files import atomic_write_bytes

__all__ = ["JOURNAL", "IngestResult", "Rejection", "ingest"]


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


JOURNAL = ".shards"
"""Under the prepared folder, `<split>/<digest>.json` per shard ingested: what it gave, so that an
interrupted `prepare` resumes shard by shard."""


def ingest(
    source: Source,
    split: str,
    out_dir: Path,
    limits: Limits,
    *,
    seen: dict[str, str] | None = None,
    require_style: bool = False,
    workers: int = 4,
    executor: Literal["local", "ray"] = "local",
    progress: bool = True,
) -> IngestResult:
    """Ingest every item of `source` into `out_dir/images/<split>/`.

    `seen` maps ids already ingested (possibly from other splits) to their source, so a file whose
    bytes were met before becomes a `duplicate` rejection; it is updated in place.
    `require_style` rejects items with no style (style collections need one).
    `executor`: `local` checks with `workers` threads, `ray` with tasks on a Ray cluster; the result
    is the same.
    A source in parts that have an identity (webdataset shards) is journaled part by part: a part
    unchanged since a run that finished it, under the same checks, is replayed, not read again.
    """
    seen = {} if seen is None else seen
    result = IngestResult()
    checks = Checks(split, out_dir, limits, require_style)
    with (
        _executor(executor, checks, workers) as check,
        tqdm(desc=f"ingest {split}", unit="file", disable=not progress) as bar,
    ):
        for part in source.parts():
            journal = _journal_path(checks, part.name) if part.identity else None
            outcomes = _replay(journal, part.identity, checks) if journal else None
            if outcomes is None:
                items = list(part.items())
                bar.total = (bar.total or 0) + len(items)
                outcomes = []
                for outcome in check(source, items):
                    outcomes.append(outcome)
                    bar.update(1)
                if journal:
                    _record(journal, part.name, part.identity, checks, outcomes)
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


def _executor(executor: str, checks: Checks, workers: int) -> AbstractContextManager[Check]:
    if executor == "ray":
        return checked_on_ray(checks, desc=f"ingest {checks.split}")
    return checked_here(checks, workers)


def _journal_path(checks: Checks, part: str) -> Path:
    """One journal per part and checks: a run under other limits keeps its own."""
    digest = sha256(f"{part}|{checks.settings}".encode()).hexdigest()[:24]
    return checks.out_dir / JOURNAL / checks.split / f"{digest}.json"


def _replay(journal: Path, identity: str | None, checks: Checks) -> list[Outcome] | None:
    """The journaled outcomes of a part, or None where they cannot stand: no journal, the part
    changed, the checks changed, or an accepted image is no longer on disk."""
    if not journal.is_file():
        return None
    entry = json.loads(journal.read_text())
    if (entry["identity"], entry["settings"]) != (identity, checks.settings):
        return None
    outcomes: list[Outcome] = [
        Record(**o["record"]) if "record" in o else Rejection(**o["rejection"]) for o in entry["outcomes"]
    ]
    if any(isinstance(o, Record) and not (checks.out_dir / o.path).is_file() for o in outcomes):
        return None
    return outcomes


def _record(journal: Path, part: str, identity: str | None, checks: Checks, outcomes: list[Outcome]) -> None:
    entry = {
        "part": part,
        "identity": identity,
        "settings": checks.settings,
        "outcomes": [
            {"record": asdict(o)} if isinstance(o, Record) else {"rejection": o.as_dict()} for o in outcomes
        ],
    }
    atomic_write_bytes(journal, json.dumps(entry).encode())
