"""One conformance suite for every vector backend: Qdrant Edge for real, and qdrant-client's
`:memory:` mode standing in for a Qdrant server (same client API)."""

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from rdm.artifacts.clip import ClipCard
from rdm.config import StoreParams
from rdm.retrieval.backends import open_store
from rdm.retrieval.edge import EdgeStore
from rdm.retrieval.store import CollectionBusy, CollectionError, VectorStore

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


def test_a_second_revision_at_once_is_refused(store: VectorStore, tmp_path: Path) -> None:
    store.ensure("style-neon", CARD)
    with (
        store.revision("style-neon", CARD),
        open_store(store.params) as other,
        pytest.raises(CollectionBusy, match=r"style-neon.*being changed by pid"),
        other.revision("style-neon", CARD),
    ):
        pass
    with store.revision("style-neon", CARD):  # free again once the first is done
        pass


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
