"""Many processes on one edge collection: readers searching while revisions publish, revisions killed
at random moments, a disk that fills up in the middle of a copy.

The child processes run functions of this module (`python -c "from tests.integration... import f"`),
so the parent and its children share the id sets, the vectors and the revision they make.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from qdrant_edge import EdgeShard, Query, QueryRequest, SearchParams

from rdm.artifacts.clip import ClipCard
from rdm.config import StoreParams
from rdm.retrieval.edge import EdgeStore
from rdm.retrieval.store import CollectionError
from tests.support import REPO_ROOT

pytestmark = pytest.mark.slow

DIM = 32
CARD = ClipCard(model="rdm-tiny", source="trained", embed_dim=DIM, fingerprint="aaaa")
K = 10
PHASES = ("copy", "upsert", "publish")


def universe(n: int) -> tuple[list[str], np.ndarray]:
    """`n` image ids and their unit vectors, the same in every process."""
    vectors = np.random.default_rng(0).normal(size=(n, DIM)).astype(np.float32)
    return [f"{i:064x}" for i in range(n)], vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def id_sets(n: int) -> dict[str, set[str]]:
    """The two contents a collection alternates between: overlapping, so a mix would show."""
    ids, _ = universe(n)
    return {"old": set(ids[: 2 * n // 3]), "new": set(ids[n // 3 :])}


def queries() -> np.ndarray:
    rows = np.random.default_rng(1).normal(size=(8, DIM)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def expected_hits(n: int) -> dict[str, list[list[str]]]:
    """For each content, the exact top K of every query (the collections are searched exactly)."""
    ids, vectors = universe(n)
    found = {}
    for name, members in id_sets(n).items():
        index = np.array([i for i, image in enumerate(ids) if image in members])
        order = np.argsort(-(queries() @ vectors[index].T), axis=1)[:, :K]
        found[name] = [[ids[index[j]] for j in row] for row in order]
    return found


def edge(root: Path) -> EdgeStore:
    return EdgeStore(StoreParams(backend="edge", path=str(root)))


def revise(store: EdgeStore, n: int, target: str, mark: Callable[[str], None] = print) -> None:
    """One revision of collection `c` to hold exactly the id set `target`, marking each phase."""
    ids, vectors = universe(n)
    wanted = id_sets(n)[target]
    mark("copy")
    with store.revision("c", CARD) as revision:
        mark("upsert")
        stored = store.ids(revision.name)
        store.delete(revision.name, sorted(stored - wanted))
        missing = wanted - stored
        add = [i for i, image in enumerate(ids) if image in missing]
        store.upsert(revision.name, [ids[i] for i in add], vectors[add], [{"id": ids[i]} for i in add])
        revision.changed = bool(add) or stored != wanted
        mark("publish")
    mark("done")


def create(root: Path, n: int, content: str = "old") -> None:
    with edge(root) as store:
        store.ensure("c", CARD)
        revise(store, n, content, mark=lambda _: None)


def content_of(store: EdgeStore, n: int) -> str:
    """Which id set the published collection holds; fails on anything else (a mix, a loss)."""
    found = store.ids("c")
    names = [name for name, members in id_sets(n).items() if found == members]
    assert names, f"the collection holds {len(found)} ids, neither set"
    return names[0]


def child(function: str, *args: object) -> subprocess.Popen[str]:
    """Run `function(*args)` of this module in a new interpreter (nothing inherited but files)."""
    call = f"from tests.integration.test_store_concurrency import {function}; {function}(*{args!r})"
    env = os.environ | {"PYTHONPATH": str(REPO_ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", call], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, text=True
    )


def reader_loop(root: str, n: int, stop: str) -> None:
    """Search collection `c` until the file `stop` appears; print what was seen, as JSON."""
    expected, sets = expected_hits(n), id_sets(n)
    seen: Counter[str] = Counter()
    versions, errors, mixed, announced = set(), [], 0, False
    with edge(Path(root)) as store:
        while True:
            done = Path(stop).exists()
            try:
                hits = [[h.id for h in row] for row in store.query("c", queries(), K)]
                contents = [name for name, rows in expected.items() if rows == hits]
                mixed += not contents
                seen.update(contents[:1])
                versions.add(store._copies["c"].version.name)
                mixed += store.ids("c") not in sets.values()
            except Exception as error:
                errors.append(f"{type(error).__name__}: {error}")
            if done:
                break
            if not announced:
                print("ready", flush=True)  # searched once: the writer may start
                announced = True
    print(json.dumps({"seen": seen, "versions": sorted(versions), "errors": errors[:5], "mixed": mixed}))


def writer_loop(root: str, n: int, rounds: int) -> None:
    """`rounds` revisions, each publishing the other id set."""
    with edge(Path(root)) as store:
        for i in range(rounds):
            revise(store, n, "new" if i % 2 == 0 else "old", mark=lambda _: None)
    print("done", flush=True)


def reviser_loop(root: str, n: int) -> None:
    """Revise collection `c` back and forth until killed, printing `<phase> <target> <monotonic time>`
    as it goes (the clock is the system's, so the parent can time this process's phases)."""
    with edge(Path(root)) as store:
        while True:
            target = "old" if content_of(store, n) == "new" else "new"

            def mark(phase: str, target: str = target) -> None:
                print(phase, target, time.monotonic(), flush=True)

            revise(store, n, target, mark)


def test_two_readers_search_while_a_third_process_publishes(tmp_path: Path) -> None:
    n, root, stop = 3000, tmp_path / "qdrant", tmp_path / "stop"
    create(root, n)
    readers = [child("reader_loop", str(root), n, str(stop)) for _ in range(2)]
    for reader in readers:
        assert reader.stdout is not None and reader.stdout.readline().strip() == "ready"
    writer = child("writer_loop", str(root), n, 10)
    assert writer.communicate(timeout=300)[0].splitlines()[-1] == "done" and writer.returncode == 0
    stop.touch()
    reports = [json.loads(reader.communicate(timeout=60)[0].splitlines()[-1]) for reader in readers]
    print(reports)
    for report in reports:
        assert report["errors"] == [] and report["mixed"] == 0
        assert set(report["seen"]) == {"old", "new"} and len(report["versions"]) >= 2
    with edge(root) as store:
        assert content_of(store, n) == "old"  # ten revisions: back where it began


def test_a_private_copy_costs_little_and_answers_like_the_published_version(tmp_path: Path) -> None:
    """At 20k x 128 points (the size the HNSW graph starts at): the time a reader takes to copy and open
    a published version against opening a version in place, and query latency on each."""
    n, dim = 20_000, 128
    vectors = np.random.default_rng(0).normal(size=(n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = [f"{i:064x}" for i in range(n)]
    card = ClipCard(model="rdm-tiny", source="trained", embed_dim=dim, fingerprint="aaaa")
    root = tmp_path / "qdrant"
    with edge(root) as store:
        store.ensure("c", card)
        store.upsert("c", ids, vectors, [{"id": i} for i in ids])
        version = store._version("c")
    probes = vectors[:200] + 0.05 * np.random.default_rng(1).normal(size=(200, dim)).astype(np.float32)
    search = SearchParams(hnsw_ef=64, exact=False)

    def latency_and_hits(shard: EdgeShard) -> tuple[float, list[list[str]]]:
        found, times = [], []
        for probe in probes:
            start = time.perf_counter()
            points = shard.query(QueryRequest(limit=19, query=Query.Nearest(probe.tolist()), params=search))
            times.append(time.perf_counter() - start)
            found.append([str(p.id) for p in points])
        return statistics.median(times) * 1e3, found

    in_place, private = [], []
    for attempt in range(5):
        elsewhere = tmp_path / f"in-place-{attempt}"
        shutil.copytree(version, elsewhere)  # a whole version (WAL too), to open it where it lies
        start = time.perf_counter()
        shard = EdgeShard.load(str(elsewhere / "shard"))
        in_place.append((time.perf_counter() - start) * 1e3)
        place_latency, place_hits = latency_and_hits(shard)
        shard.close()
        with edge(root) as reader:
            start = time.perf_counter()
            shard = reader._copy("c").shard
            private.append((time.perf_counter() - start) * 1e3)
            copy_latency, copy_hits = latency_and_hits(shard)
            assert shard.info().indexed_vectors_count == n
        assert copy_hits == place_hits
    print(
        f"open at {n} x {dim}: in place {statistics.median(in_place):.1f} ms, private copy (copy + open) "
        f"{statistics.median(private):.1f} ms; query median {place_latency:.3f} ms in place, "
        f"{copy_latency:.3f} ms on the copy"
    )
    assert statistics.median(private) < 1000
    assert copy_latency < 3 * place_latency + 0.5


def read_marks(reviser: subprocess.Popen[str], until: Callable[[list[str]], bool]) -> list[list[str]]:
    """The reviser's marks up to and including the first for which `until` holds."""
    assert reviser.stdout is not None
    marks: list[list[str]] = []
    while not marks or not until(marks[-1]):
        line = reviser.stdout.readline().split()
        assert line, f"the reviser died after {marks}"
        marks.append(line)
    return marks


def test_revisions_killed_at_random_moments_leave_old_or_new(tmp_path: Path) -> None:
    """Each kill lands at a moment drawn uniformly over one phase (copy, upsert, publish) of a revision,
    as long as that phase took in the same process's revision before (so the draw spans it all)."""
    n, root = 15_000, tmp_path / "qdrant"
    create(root, n)
    expected, rng = expected_hits(n), random.Random(0)
    hit: Counter[tuple[str, str]] = Counter()
    debris = 0
    for kill in range(20):
        reviser = child("reviser_loop", str(root), n)
        first = read_marks(reviser, lambda mark: mark[0] == "done")
        took = {a[0]: float(b[2]) - float(a[2]) for a, b in itertools.pairwise(first)}
        wanted = PHASES[kill % 3]
        marks = read_marks(reviser, lambda mark, wanted=wanted: mark[0] == wanted)
        time.sleep(rng.uniform(0, took[wanted]))
        os.kill(reviser.pid, signal.SIGKILL)
        marks += [line.split() for line in reviser.communicate()[0].splitlines()]
        phase, target = marks[-1][:2]
        with edge(root) as reader:  # a fresh reader: old or new, whole
            content = content_of(reader, n)
            hits = [[h.id for h in row] for row in reader.query("c", queries(), K)]
            assert hits == expected[content]
        hit[phase, "published" if content == target else "as before"] += 1
        debris += len(list((root / "c").iterdir())) > 3  # a half copy, a half-removed version
        with edge(root) as store:  # the revision run again ends where it was going
            revise(store, n, target, mark=lambda _: None)
            assert content_of(store, n) == target
        # no debris, but a version the killed run had yet to remove (it goes at the next publish)
        left = sorted(p.name for p in (root / "c").iterdir())
        assert left[0] == "CURRENT" and len(left) <= 4, f"debris of the killed revision: {left}"
    print(f"kills by (phase, what a reader then saw): {dict(hit)}")
    print(f"{debris} kills left a draft or a half-removed version, all collected by the rerun")
    by_phase = Counter(phase for phase, _ in hit.elements())
    assert sum(by_phase.values()) == 20 and all(by_phase[phase] >= 2 for phase in PHASES)
    assert not hit["copy", "published"] and not hit["upsert", "published"]


NAMESPACE_PROBE = ["unshare", "--user", "--map-root-user", "--mount", "true"]


def full_disk(root: str, n: int) -> None:
    """In a mount namespace of its own: a collection on a small tmpfs, the tmpfs shrunk to leave less
    room than a copy needs, and a revision; prints what happened, as JSON."""
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256m", "tmpfs", root], check=True)
    create(Path(root), n)
    with edge(Path(root)) as store:
        version = store._version("c")
        meta = (version / "collection.json").read_bytes()
        stat = os.statvfs(root)
        used = (stat.f_blocks - stat.f_bfree) * stat.f_frsize
        segments = sum(p.stat().st_blocks * 512 for p in (version / "shard" / "segments").rglob("*"))
        room = (used + segments // 3) // 1024
        subprocess.run(["mount", "-o", f"remount,size={room}k", root], check=True)
        try:
            revise(store, n, "new", mark=lambda _: None)
            error = None
        except CollectionError as failure:
            error = str(failure)
        after = content_of(store, n)
        entries = sorted(p.name for p in (Path(root) / "c").iterdir())
        intact = (version / "collection.json").read_bytes() == meta
    print(json.dumps({"error": error, "content": after, "entries": entries, "meta_intact": intact}))


def test_a_revision_on_a_full_disk_fails_clearly_and_keeps_the_published(tmp_path: Path) -> None:
    probe = subprocess.run(NAMESPACE_PROBE, capture_output=True, text=True)
    assert probe.returncode == 0, (
        f"`{' '.join(NAMESPACE_PROBE)}` failed ({probe.stderr.strip()}): this check needs user and mount "
        "namespaces (util-linux `unshare`) to give the revision a small tmpfs that really fills up"
    )
    n, root = 15_000, tmp_path / "small-disk"
    root.mkdir()
    call = f"from tests.integration.test_store_concurrency import full_disk; full_disk({str(root)!r}, {n})"
    done = subprocess.run(
        [*NAMESPACE_PROBE[:-1], sys.executable, "-c", call],
        cwd=REPO_ROOT,
        env=os.environ | {"PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.splitlines()[-1])
    print(report)
    assert report["error"] is not None and "No space left on device" in report["error"]
    assert f"{root}/c/v000003: could not copy version v000002" in report["error"]
    assert report["content"] == "old" and report["meta_intact"]
    assert report["entries"] == ["CURRENT", "v000001", "v000002"]  # the half copy is gone
