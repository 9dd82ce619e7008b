"""One conformance suite for every vector backend: Qdrant Edge for real, and qdrant-client's
`:memory:` mode standing in for a Qdrant server (same client API)."""

import errno
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from qdrant_client import QdrantClient, models
from qdrant_edge import CountRequest, EdgeShard, Query, QueryBatchRequest, QueryRequest

from rdm.artifacts.clip import ClipCard
from rdm.config import StoreParams
from rdm.files import lease
from rdm.retrieval import edge
from rdm.retrieval.backends import open_store
from rdm.retrieval.edge import EdgeStore
from rdm.retrieval.server import ServerStore
from rdm.retrieval.store import CollectionBusy, CollectionError, VectorStore, ids_digest

CARD = ClipCard(model="rdm-tiny", source="trained", embed_dim=16, fingerprint="aaaa")
OTHER = ClipCard(model="ViT-B-32", source="openai", embed_dim=16, fingerprint="bbbb")


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def points(n: int, dim: int = 16, seed: int = 0) -> tuple[list[str], np.ndarray, list[dict]]:
    vectors = unit(np.random.default_rng(seed).normal(size=(n, dim)))
    ids = [f"{i:064x}" for i in range(n)]
    return (
        ids,
        vectors,
        [{"id": i, "style": "neon" if n % 2 else "mosaic", "n": n} for n, i in enumerate(ids)],
    )


@pytest.fixture(params=["edge", "server"])
def store(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[VectorStore]:
    if request.param == "server":
        monkeypatch.setenv("QDRANT_URL", ":memory:")
    with open_store(StoreParams(backend=request.param, path=str(tmp_path / "qdrant"), exact_below=1000)) as s:
        yield s


def test_create_upsert_query(store: VectorStore) -> None:
    ids, vectors, payloads = points(50)
    info = store.ensure("d_train", CARD)
    assert (info.points, info.dim, info.clip_model, info.backend) == (0, 16, "rdm-tiny", store.backend)
    store.upsert("d_train", ids, vectors, payloads)
    store.finish("d_train")
    assert store.list_collections() == ["d_train"]
    assert store.info("d_train").points == 50
    hits = store.query("d_train", vectors[[3, 7]], k=5, with_vectors=True)
    assert hits[0][0].id == ids[3] and hits[1][0].id == ids[7]
    assert hits[0][0].score == pytest.approx(1.0, abs=1e-4)
    assert all(a.score >= b.score for a, b in zip(hits[0], hits[0][1:], strict=False))
    assert hits[0][0].payload == payloads[3]
    np.testing.assert_allclose(hits[0][0].vector, vectors[3], atol=1e-5)
    exact = np.argsort(-(vectors[[3]] @ vectors.T)[0])[:5]
    assert [h.id for h in hits[0]] == [ids[i] for i in exact]


def test_upsert_is_idempotent_and_delete_removes(store: VectorStore) -> None:
    ids, vectors, payloads = points(30)
    store.ensure("c", CARD)
    store.upsert("c", ids, vectors, payloads)
    store.upsert("c", ids[:10], vectors[:10], payloads[:10])
    assert store.info("c").points == 30 and store.ids("c") == set(ids)
    store.delete("c", ids[:5])
    assert store.ids("c") == set(ids[5:])


def test_another_clip_is_refused_and_nothing_is_damaged(store: VectorStore) -> None:
    ids, vectors, payloads = points(20)
    store.ensure("style-neon", CARD)
    store.upsert("style-neon", ids, vectors, payloads)
    with pytest.raises(CollectionError, match=r"'style-neon'.*rdm-tiny \[aaaa\].*ViT-B-32 \[bbbb\]"):
        store.ensure("style-neon", OTHER)
    wider = ClipCard(model="rdm-tiny", source="trained", embed_dim=32, fingerprint="aaaa")
    with pytest.raises(CollectionError, match="16-d"):
        store.ensure("style-neon", wider)
    assert store.ids("style-neon") == set(ids)


def test_missing_collection_is_named(store: VectorStore) -> None:
    store.ensure("d_train", CARD)
    with pytest.raises(CollectionError, match=r"no collection 'style-x'.*collections here: d_train"):
        store.require("style-x")


def test_drop(store: VectorStore) -> None:
    store.ensure("a", CARD)
    store.ensure("b", CARD)
    store.drop("a")
    assert store.list_collections() == ["b"]


def test_hnsw_above_the_threshold_keeps_recall(store: VectorStore) -> None:
    centres = np.random.default_rng(1).normal(size=(40, 16))
    rng = np.random.default_rng(2)
    vectors = unit(centres[rng.integers(0, 40, 3000)] + 0.3 * rng.normal(size=(3000, 16)))
    ids = [f"{i:064x}" for i in range(3000)]
    store.ensure("big", CARD)
    store.upsert("big", ids, vectors, [{"id": i} for i in ids])
    store.finish("big")
    if isinstance(store, EdgeStore):
        assert store.indexed_points("big") == 3000  # really through HNSW, not a full scan
    queries = unit(rng.normal(size=(50, 16)))
    hits = store.query("big", queries, k=19)
    exact = np.argsort(-(queries @ vectors.T), axis=1)[:, :19]
    recall = np.mean(
        [
            len({h.id for h in row} & {ids[j] for j in truth}) / 19
            for row, truth in zip(hits, exact, strict=True)
        ]
    )
    assert recall >= 0.95


def test_edge_int8_quantization_searches_int8_vectors_and_rescores_them(tmp_path: Path) -> None:
    centres = np.random.default_rng(1).normal(size=(40, 16))
    rng = np.random.default_rng(2)
    vectors = unit(centres[rng.integers(0, 40, 3000)] + 0.3 * rng.normal(size=(3000, 16)))
    ids = [f"{i:064x}" for i in range(3000)]
    with edge_with(tmp_path, exact_below=1000, quantization="int8") as store:
        store.ensure("big", CARD)
        store.upsert("big", ids, vectors, [{"id": i} for i in ids])
        store.finish("big")
        assert store.indexed_points("big") == 3000
        assert list((tmp_path / "qdrant").rglob("quantized.data")), "no int8 vectors were written"
        queries = unit(rng.normal(size=(50, 16)))
        hits = store.query("big", queries, k=19)
    sims = queries @ vectors.T
    exact = np.argsort(-sims, axis=1)[:, :19]
    found = [[int(h.id, 16) for h in row] for row in hits]
    assert np.mean([len(set(f) & set(t)) / 19 for f, t in zip(found, exact.tolist(), strict=True)]) >= 0.95
    # the scores are the float32 vectors' (re-scored), not the int8 estimate
    np.testing.assert_allclose([h.score for h in hits[0]], sims[0, found[0]], atol=1e-5)


def test_edge_collection_reopens_in_another_process(tmp_path: Path) -> None:
    params = StoreParams(backend="edge", path=str(tmp_path / "qdrant"))
    ids, vectors, payloads = points(25)
    with open_store(params) as store:
        store.ensure("d_train", CARD)
        store.upsert("d_train", ids, vectors, payloads)
    code = (
        "from rdm.config import StoreParams; from rdm.retrieval.backends import open_store\n"
        "import numpy as np\n"
        f"s = open_store(StoreParams(backend='edge', path={str(tmp_path / 'qdrant')!r}))\n"
        "hit = s.query('d_train', np.eye(16, dtype=np.float32)[:1], 1)[0][0]\n"
        "print(s.info('d_train').points, hit.payload['n'])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    expected = int(np.argmax(vectors[:, 0]))
    assert out == ["25", str(expected)]


def test_server_backend_needs_a_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("QDRANT_URL", raising=False)
    with pytest.raises(CollectionError, match="QDRANT_URL"):
        open_store(StoreParams(backend="server"))


def test_revision_is_published_in_one_step(store: VectorStore) -> None:
    ids, vectors, payloads = points(30)
    store.ensure("style-neon", CARD)
    store.upsert("style-neon", ids[:20], vectors[:20], payloads[:20])
    with store.revision("style-neon", CARD) as revision:
        draft = revision.name
        revision.changed = True
        store.upsert(draft, ids[20:], vectors[20:], payloads[20:])
        store.delete(draft, ids[:5])
        assert store.ids("style-neon") == set(ids[:20]), "readers must not see the unpublished revision"
        assert store.ids(draft) == set(ids[5:])
    assert store.ids("style-neon") == set(ids[5:])
    assert store.info("style-neon").points == 25
    assert store.query("style-neon", vectors[[25]], k=1)[0][0].id == ids[25]
    assert store.list_collections() == ["style-neon"]


def test_failed_revision_leaves_the_collection_as_it_was(store: VectorStore) -> None:
    ids, vectors, payloads = points(10)
    store.ensure("style-neon", CARD)
    store.upsert("style-neon", ids, vectors, payloads)
    with (
        pytest.raises(RuntimeError, match="embedding failed"),
        store.revision("style-neon", CARD) as revision,
    ):
        store.delete(revision.name, ids)
        raise RuntimeError("embedding failed")
    assert store.ids("style-neon") == set(ids)
    with pytest.raises(CollectionError, match=r"current CLIP"), store.revision("style-neon", OTHER):
        pass


def another_process(store: VectorStore, tmp_path: Path) -> VectorStore:
    """A second handle on the same collections, as another process (or, for a server, another host:
    no lock folder in common, one backing server) would open them."""
    if isinstance(store, ServerStore):
        params = store.params.model_copy(update={"path": str(tmp_path / "another-host")})
        return ServerStore(params, store.url, None, client=store.client)
    return open_store(store.params)


def test_a_second_revision_at_once_is_refused(store: VectorStore, tmp_path: Path) -> None:
    store.ensure("style-neon", CARD)
    with (
        store.revision("style-neon", CARD),
        another_process(store, tmp_path) as other,
        pytest.raises(CollectionBusy, match=r"style-neon.*being changed by pid"),
        other.revision("style-neon", CARD),
    ):
        pass
    with store.revision("style-neon", CARD):  # free again once the first is done
        pass


def test_drop_and_ensure_are_refused_while_a_revision_runs(store: VectorStore, tmp_path: Path) -> None:
    store.ensure("style-neon", CARD)
    with another_process(store, tmp_path) as other:
        with store.revision("style-neon", CARD), pytest.raises(CollectionBusy, match="style-neon"):
            other.drop("style-neon")
        with store.revision("style-new", CARD), pytest.raises(CollectionBusy, match="style-new"):
            other.ensure("style-new", CARD)  # creating it would race the revision that creates it
        other.ensure("style-neon", CARD)  # checking an existing collection takes no lock
        other.drop("style-neon")
    assert store.list_collections() == ["style-new"]


def test_a_write_to_a_published_collection_is_a_revision_of_its_own(store: VectorStore) -> None:
    ids, vectors, payloads = points(10)
    store.ensure("c", CARD)
    store.upsert("c", ids, vectors, payloads)
    published = store.list_collections(), store.ids("c")
    with store.revision("c", CARD) as revision:
        # a write aimed at the published name while a revision runs would race it
        with pytest.raises(CollectionBusy, match="'c'"):
            store.upsert("c", ids[:1], vectors[:1], payloads[:1])
        store.delete(revision.name, ids[:2])
        revision.changed = True
    assert published == (["c"], set(ids))
    assert store.ids("c") == set(ids[2:])
    with pytest.raises(CollectionError, match="no collection 'missing'"):
        store.upsert("missing", ids, vectors, payloads)


def test_edge_keeps_the_published_version_and_the_one_before(tmp_path: Path) -> None:
    ids, vectors, payloads = points(6)
    with open_store(StoreParams(backend="edge", path=str(tmp_path / "qdrant"))) as store:
        store.ensure("d_train", CARD)
        for i in range(4):
            with store.revision("d_train", CARD) as revision:
                store.upsert(revision.name, ids[i : i + 1], vectors[i : i + 1], payloads[i : i + 1])
                revision.changed = True
        assert store.ids("d_train") == set(ids[:4])
    versions = sorted(p.name for p in (tmp_path / "qdrant" / "d_train").glob("v*"))
    assert versions == ["v000004", "v000005"]
    assert (tmp_path / "qdrant" / "d_train" / "CURRENT").read_text().strip() == "v000005"


def test_unchanged_revision_publishes_nothing_and_another_clip_can_rebuild(store: VectorStore) -> None:
    ids, vectors, payloads = points(8)
    store.ensure("style-neon", CARD)
    store.upsert("style-neon", ids, vectors, payloads)
    with store.revision("style-neon", CARD) as revision:
        assert store.ids(revision.name) == set(ids)  # a copy of the published points
    assert store.ids("style-neon") == set(ids)
    with store.revision("style-neon", OTHER, rebuild_mismatched=True) as revision:
        assert store.ids(revision.name) == set()  # built again from nothing for the other CLIP
    assert store.info("style-neon").clip_model == OTHER.model and store.ids("style-neon") == set()


def test_edge_revision_never_opens_the_version_a_reader_holds(tmp_path: Path) -> None:
    """Qdrant Edge lets one handle open a shard: a reader (another handle, as in another process)
    keeps the published version open while a revision copies it and publishes the next."""
    params = StoreParams(backend="edge", path=str(tmp_path / "qdrant"))
    ids, vectors, payloads = points(12)
    with open_store(params) as store:
        store.ensure("style-neon", CARD)
        store.upsert("style-neon", ids[:6], vectors[:6], payloads[:6])
    with open_store(params) as reader, open_store(params) as writer:
        assert reader.ids("style-neon") == set(ids[:6])  # holds the published shard open
        with writer.revision("style-neon", CARD) as revision:
            writer.upsert(revision.name, ids[6:], vectors[6:], payloads[6:])
            revision.changed = True
        assert reader.ids("style-neon") == set(ids)  # the reader moves to the new version


def test_edge_replaces_an_unversioned_collection_of_an_earlier_release(tmp_path: Path) -> None:
    root = tmp_path / "qdrant"
    (root / "d_train" / "shard").mkdir(parents=True)  # the layout before versions: no CURRENT
    (root / "d_train" / "collection.json").write_text("{}")
    ids, vectors, payloads = points(4)
    with open_store(StoreParams(backend="edge", path=str(root))) as store:
        assert store.list_collections() == []
        with store.revision("d_train", CARD) as revision:
            store.upsert(revision.name, ids, vectors, payloads)
        assert store.ids("d_train") == set(ids)
    assert sorted(p.name for p in (root / "d_train").iterdir()) == ["CURRENT", "v000001"]


def edge_with(tmp_path: Path, **params: object) -> EdgeStore:
    store = open_store(StoreParams(backend="edge", path=str(tmp_path / "qdrant"), **params))
    assert isinstance(store, EdgeStore)
    return store


def files_of(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file below `folder` with its size and modification time: what a write would change."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def test_edge_reader_searches_a_private_copy_and_never_the_published_folder(tmp_path: Path) -> None:
    ids, vectors, payloads = points(40)
    with edge_with(tmp_path) as writer:
        writer.ensure("c", CARD)
        writer.upsert("c", ids[:20], vectors[:20], payloads[:20])
    version = tmp_path / "qdrant" / "c" / "v000002"
    before = files_of(version)
    with edge_with(tmp_path) as reader, edge_with(tmp_path) as writer:
        assert reader.query("c", vectors[[3]], k=1)[0][0].id == ids[3]
        private = reader._copies["c"].folder
        assert private.is_relative_to(tempfile.gettempdir()) and private.is_dir()
        assert files_of(version) == before, "opening a published version rewrote its files"
        second = edge_with(tmp_path)  # another reader at once: no WAL lock in the way
        assert second.ids("c") == set(ids[:20])
        second.close()
        writer.upsert("c", ids[20:], vectors[20:], payloads[20:])
        assert reader.ids("c") == set(ids)  # moved to the new version ...
        assert not private.exists()  # ... and removed the copy of the old one
        private = reader._copies["c"].folder
    assert not private.exists(), "close() leaves no copy behind"
    assert files_of(version) == before


def test_edge_revisions_keep_deleting_and_replacing_points_written_before(tmp_path: Path) -> None:
    """A draft copied without its WAL would number operations from 0 again, and the engine ignores an
    operation numbered below the version of the point it targets: deletes would vanish silently."""
    ids, vectors, payloads = points(30)
    with edge_with(tmp_path) as store:
        store.ensure("c", CARD)
        for i in range(0, 30, 10):  # points written by ever later operations
            store.upsert("c", ids[i : i + 10], vectors[i : i + 10], payloads[i : i + 10])
        store.delete("c", ids[20:])
        assert store.ids("c") == set(ids[:20])
        store.upsert("c", ids[10:20], vectors[:10], payloads[10:20])  # new vectors for old points
        hits = store.query("c", vectors[:1], k=2, with_vectors=True)[0]
        assert {h.id for h in hits} == {ids[0], ids[10]}


def test_edge_reader_removes_the_copies_of_killed_readers_only(tmp_path: Path) -> None:
    with edge_with(tmp_path) as store:
        store.ensure("c", CARD)
    orphan = Path(tempfile.mkdtemp(prefix=f"{edge.COPIES}c-v000001-"))  # its reader was killed
    with edge_with(tmp_path) as live, edge_with(tmp_path) as another:
        assert live.ids("c") == set() and not orphan.exists()
        assert another.ids("c") == set() and live._copies["c"].folder.is_dir()


def test_edge_readers_copies_skip_the_wal_and_answer_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids, vectors, payloads = points(300)
    with edge_with(tmp_path, exact_below=100) as store:
        store.ensure("c", CARD)
        store.upsert("c", ids[:200], vectors[:200], payloads[:200])
        store.upsert("c", ids[200:], vectors[200:], payloads[200:])
        store.delete("c", ids[:50])
        version = store._version("c")
    whole = tmp_path / "whole"
    shutil.copytree(version, whole)  # the WAL too, opened where it lies
    in_place = EdgeShard.load(str(whole / "shard"))
    request = QueryBatchRequest(
        [QueryRequest(limit=7, query=Query.Nearest(v.tolist()), with_payload=True) for v in vectors[:20]]
    )
    expected = [[(str(p.id), round(p.score, 5)) for p in row] for row in in_place.query_batch(request)]
    count = in_place.count(CountRequest(exact=True))
    in_place.close()
    copied: list[Path] = []
    real = edge._copy_file

    def recorded(source: Path, target: Path) -> None:
        copied.append(source)
        real(source, target)

    monkeypatch.setattr(edge, "_copy_file", recorded)
    with edge_with(tmp_path, exact_below=100) as reader:
        shard = reader._shard("c")
        assert copied and not [p for p in copied if "wal" in p.relative_to(version).parts]
        assert shard.info().indexed_vectors_count >= 250  # the HNSW graph came along (deleted points too)
        assert shard.count(CountRequest(exact=True)) == count == 250
        got = [[(str(p.id), round(p.score, 5)) for p in row] for row in shard.query_batch(request)]
    assert got == expected


def test_edge_copy_keeps_holes_holes(tmp_path: Path) -> None:
    sparse = tmp_path / "sparse"
    with sparse.open("wb") as f:
        f.write(b"head")
        f.seek(32 << 20)
        f.write(b"tail")
    edge._copy_file(sparse, tmp_path / "copy")
    assert (tmp_path / "copy").read_bytes() == sparse.read_bytes()
    assert (tmp_path / "copy").stat().st_blocks * 512 < 1 << 20


def test_edge_revision_copy_skips_transient_files_and_retries_a_vanishing_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids, vectors, payloads = points(12)
    with edge_with(tmp_path) as store:
        store.ensure("c", CARD)
        store.upsert("c", ids, vectors, payloads)
        segment = next((tmp_path / "qdrant" / "c" / "v000002" / "shard" / "segments").iterdir())
        (segment / ".atomicwriteXYZ").write_text("half written")
        real, calls = edge._copy_file, []

        def vanishing_once(source: Path, target: Path) -> None:
            calls.append(source)
            if len(calls) == 3:
                raise FileNotFoundError(2, "No such file or directory", str(source))
            real(source, target)

        monkeypatch.setattr(edge, "_copy_file", vanishing_once)
        with store.revision("c", CARD) as revision:
            draft = tmp_path / "qdrant" / revision.name
            assert not list(draft.rglob(".atomicwrite*"))
            assert store.ids(revision.name) == set(ids)
    assert len(calls) > 3  # copied again after the file that vanished


def test_edge_revision_refuses_a_copy_that_does_not_match_the_seal(tmp_path: Path) -> None:
    ids, vectors, payloads = points(12)
    with edge_with(tmp_path) as store:
        store.ensure("c", CARD)
        store.upsert("c", ids, vectors, payloads)
        meta_path = tmp_path / "qdrant" / "c" / "v000002" / "collection.json"
        meta = json.loads(meta_path.read_text())
        assert meta["points"] == 12 and meta["ids_sha256"] == ids_digest(set(ids))
        meta_path.write_text(json.dumps(meta | {"ids_sha256": ids_digest(set(ids[1:]))}))  # same count
        with (
            pytest.raises(CollectionError, match=r"v000002: 3 copies of collection 'c'.*sealed points"),
            store.revision("c", CARD),
        ):
            pass
        assert store.ids("c") == set(ids)
    assert sorted(p.name for p in (tmp_path / "qdrant" / "c").iterdir()) == ["CURRENT", "v000001", "v000002"]


def test_edge_revision_out_of_space_names_the_folder_and_keeps_the_published(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The unit half (the copy's write fails as on a full disk); the integration test fills a real
    filesystem."""
    ids, vectors, payloads = points(12)
    with edge_with(tmp_path) as store:
        store.ensure("c", CARD)
        store.upsert("c", ids, vectors, payloads)

        def full(source: Path, target: Path) -> None:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))

        monkeypatch.setattr(edge, "_copy_file", full)
        with (
            pytest.raises(
                CollectionError, match=r"qdrant/c/v000003: could not copy version v000002.*No space"
            ),
            store.revision("c", CARD),
        ):
            pass
        monkeypatch.undo()
        assert not (tmp_path / "qdrant" / "c" / "v000003").exists()
        assert store.ids("c") == set(ids)


def test_edge_keeps_a_version_a_reader_is_copying(tmp_path: Path) -> None:
    ids, vectors, payloads = points(6)
    root = tmp_path / "qdrant" / "c"
    with edge_with(tmp_path, version_max_age_s=60) as store:
        store.ensure("c", CARD)
        store.upsert("c", ids[:1], vectors[:1], payloads[:1])  # v000002
        with lease(root / "v000001"):
            store.upsert("c", ids[1:2], vectors[1:2], payloads[1:2])  # v000003: v000001 is due to go
            store.upsert("c", ids[2:3], vectors[2:3], payloads[2:3])
            assert (root / "v000001" / edge.RETIRED).is_file()
        assert sorted(p.name for p in root.glob("v*")) == ["v000001", "v000003", "v000004"]
        store.upsert("c", ids[3:4], vectors[3:4], payloads[3:4])  # free now: removed
        assert sorted(p.name for p in root.glob("v*")) == ["v000004", "v000005"]
        with lease(root / "v000004"):
            store.upsert("c", ids[4:5], vectors[4:5], payloads[4:5])  # marks v000004
            os.utime(root / "v000004" / edge.RETIRED, (time.time() - 61,) * 2)
            store.upsert("c", ids[5:6], vectors[5:6], payloads[5:6])  # held too long: removed anyway
            assert sorted(p.name for p in root.glob("v*")) == ["v000006", "v000007"]
        assert store.ids("c") == set(ids)
    assert sorted(p.name for p in root.iterdir()) == ["CURRENT", "v000006", "v000007"]


def test_edge_publish_collects_the_debris_of_killed_runs(tmp_path: Path) -> None:
    ids, vectors, payloads = points(3)
    root = tmp_path / "qdrant" / "c"
    with edge_with(tmp_path) as store:
        store.ensure("c", CARD)
        store.upsert("c", ids[:1], vectors[:1], payloads[:1])
        (root / "v000003" / "shard").mkdir(parents=True)  # a draft killed mid-copy
        (root / ".trash-v000000-0badc0de" / "shard").mkdir(parents=True)  # killed mid-removal
        (root / ".CURRENT.x1y2.tmp").write_text("v000003\n")  # killed before the pointer's rename
        store.upsert("c", ids[1:], vectors[1:], payloads[1:])
        assert store.ids("c") == set(ids)
    assert sorted(p.name for p in root.iterdir()) == ["CURRENT", "v000002", "v000004"]


def test_edge_reader_that_loses_the_race_reads_current_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids, vectors, payloads = points(6)
    with edge_with(tmp_path) as store:
        store.ensure("c", CARD)
        for i in range(3):
            store.upsert("c", ids[i : i + 1], vectors[i : i + 1], payloads[i : i + 1])
    gone = tmp_path / "qdrant" / "c" / "v000001"
    assert not gone.exists()
    real, answers = EdgeStore._version, [gone]

    def stale_once(self: EdgeStore, name: str) -> Path:
        """CURRENT as read just before two publishes removed the version it named."""
        return answers.pop() if answers else real(self, name)

    monkeypatch.setattr(EdgeStore, "_version", stale_once)
    with edge_with(tmp_path) as reader:
        assert reader.ids("c") == set(ids[:3])
        assert reader._copies["c"].version.name == "v000004"


def test_drop_removes_what_readers_could_reach_in_one_step(tmp_path: Path) -> None:
    with edge_with(tmp_path) as store, edge_with(tmp_path) as reader:
        store.ensure("c", CARD)
        assert reader.ids("c") == set()
        store.drop("c")
        with pytest.raises(CollectionError, match="no collection 'c'"):
            reader.ids("c")
    assert not (tmp_path / "qdrant" / "c").exists()


def test_server_lock_is_held_in_the_server_and_excludes_another_host(tmp_path: Path) -> None:
    client = QdrantClient(location=":memory:")
    host_a, host_b = (
        ServerStore(StoreParams(backend="server", path=str(tmp_path / h)), ":memory:", None, client=client)
        for h in ("a", "b")
    )
    host_a.ensure("c", CARD)
    with host_a.revision("c", CARD) as revision:
        assert client.collection_exists("c__lock")
        assert host_a.list_collections() == ["c"]  # a lock is no collection
        for attempt in (lambda: host_b.revision("c", CARD).__enter__(), lambda: host_b.drop("c")):
            with pytest.raises(CollectionBusy, match=rf"'c' is being changed by pid {os.getpid()} on"):
                attempt()
        revision.changed = True
    assert not client.collection_exists("c__lock")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()  # no host-local lock files
    with host_b.revision("c", CARD):
        pass
    client.close()


def test_server_lock_expired_is_broken_and_a_live_one_renewed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    client = QdrantClient(location=":memory:")
    params = StoreParams(backend="server", path=str(tmp_path), lock_ttl_s=1)
    host_a, host_b = (ServerStore(params, ":memory:", None, client=client) for _ in range(2))
    host_a.ensure("c", CARD)
    client.create_collection(  # the lock of a host that crashed two seconds ago
        "c__lock",
        vectors_config=models.VectorParams(size=1, distance=models.Distance.COSINE),
        metadata={"holder": "pid 1 on gone", "token": "x", "expires": time.time() - 2},
    )
    with host_b.revision("c", CARD):
        assert "breaking the lock on collection 'c' of pid 1 on gone" in capsys.readouterr().out
        time.sleep(1.5)  # past the lock's first expiry: renewed meanwhile
        with pytest.raises(CollectionBusy, match="being changed by pid"):
            host_a.drop("c")
    assert host_b.list_collections() == ["c"]
    client.close()


def test_server_publishes_nothing_once_its_lock_was_broken(tmp_path: Path) -> None:
    client = QdrantClient(location=":memory:")
    store = ServerStore(StoreParams(backend="server", path=str(tmp_path)), ":memory:", None, client=client)
    ids, vectors, payloads = points(4)
    store.ensure("c", CARD)
    with (
        pytest.raises(CollectionError, match=r"lost the lock on collection 'c'.*Nothing was published"),
        store.revision("c", CARD) as revision,
    ):
        store.upsert(revision.name, ids, vectors, payloads)
        revision.changed = True
        client.update_collection("c__lock", metadata={"token": "another host's"})
    assert store.ids("c") == set()
    client.close()
