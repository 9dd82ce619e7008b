"""Ingestion's decode-and-check step on a Ray cluster (`prepare.executor: ray`): each part's items go
out in batches, one CPU task each, at most two tasks a core in flight; the outcomes come back in the
items' order, so journals, duplicates and manifests are the same as in-process.

Workers read the sources and write the checked images themselves, so every node needs the sources
(or S3) and the prepared folder at the driver's paths (a shared filesystem, as `rdm.ray_cluster`
says); relative paths are taken from the driver's working folder.
"""

from __future__ import annotations

import contextlib
import math
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rdm.data.checking import Check, Checks, Outcome, ingest_item
from rdm.data.listing import Source, SourceItem
from rdm.ray_cluster import connected

MAX_BATCH = 256
"""Items a task checks at most: enough to pay for a task's overhead, few enough to spread a part."""


@contextlib.contextmanager
def checked_on_ray(checks: Checks, desc: str) -> Iterator[Check]:
    """Items checked by CPU tasks on the cluster `RAY_ADDRESS` names (else a Ray started here)."""
    import ray

    with connected("prepare.executor") as cluster:
        print(f"{desc}: checks on {cluster.describe()}")
        task = ray.remote(num_cpus=1)(check_batch)
        cores = max(1, int(cluster.cpus))
        driver_folder = str(Path.cwd())

        def check(source: Source, items: list[SourceItem]) -> Iterator[Outcome]:
            reader = ray.put(source.reader(items))
            size = batch_size(len(items), cores)
            in_flight: deque[Any] = deque()
            for start in range(0, len(items), size):
                in_flight.append(task.remote(reader, items[start : start + size], checks, driver_folder))
                if len(in_flight) >= 2 * cores:
                    yield from ray.get(in_flight.popleft())
            while in_flight:
                yield from ray.get(in_flight.popleft())

        yield check


def batch_size(items: int, cores: int) -> int:
    """Four batches a core where the part is small, `MAX_BATCH` items where it is large."""
    return max(1, min(MAX_BATCH, math.ceil(items / (4 * cores))))


def check_batch(source: Source, items: list[SourceItem], checks: Checks, driver_folder: str) -> list[Outcome]:
    """On a worker: the items' outcomes, relative paths (of params and sources) read as the driver's."""
    with contextlib.chdir(driver_folder):
        return [ingest_item(source, item, checks) for item in items]
