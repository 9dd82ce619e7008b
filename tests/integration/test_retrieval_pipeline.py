"""prepare -> clip -> embed -> neighbors on a reduced demo, then what users do with the result:
search by text, list collections, re-run, resume after a kill, refuse another CLIP's collection."""

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml

from rdm.artifacts.clip import ClipCard, read_card
from rdm.artifacts.embeddings import VectorChunks
from rdm.artifacts.manifest import SPLITS, read_manifest
from rdm.artifacts.neighbors import read_neighbors
from rdm.cli import main
from rdm.config import Config, PrepareParams, S3Params, SourcesParams, load_config
from rdm.data.ingest import JOURNAL
from rdm.retrieval.backends import open_store
from rdm.retrieval.store import CollectionError
from rdm.stages import clip, embed, generate, neighbors, prepare
from tests.support import REPO_ROOT, ray_cluster
from tests.unit.test_ingest import write_shards

pytestmark = pytest.mark.slow

REDUCED = {
    # styled images common enough (5 x 15 %) that a CLIP trained on 600 captions learns the style words:
    # these tests check search, not the demo's proportions (where each style is 5 % of D_train)
    "generate": {
        "train_images": 600,
        "d_train_images": 400,
        "style_images": 30,
        "eval_prompts": 5,
        "style_fraction": 0.15,
    },
    "clip": {"epochs": 25, "batch_size": 64},
    "embed": {"chunk_size": 64, "workers": 0},
}


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Config]:
    root = tmp_path_factory.mktemp("pipeline")
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    for section, values in REDUCED.items():
        params[section].update(values)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    with contextlib.chdir(root):
        config = load_config("params.yaml")
        generate.run(config, progress=False)
        prepare.run(config.prepare, config.s3, progress=False)
        clip.run(config.clip, Path(config.prepare.out), config.sample.style_text, progress=False)
        embed.run(config.embed, config.store, Path(config.clip.out), Path(config.prepare.out), progress=False)
        neighbors.run(config.neighbors, config.embed, Path(config.clip.out), Path(config.prepare.out), False)
    return root, config


@pytest.fixture
def in_demo(demo: tuple[Path, Config], monkeypatch: pytest.MonkeyPatch) -> Config:
    monkeypatch.chdir(demo[0])
    return demo[1]


def test_text_search_in_d_train_finds_the_named_style(in_demo: Config, capsys: pytest.CaptureFixture) -> None:
    trained = [s for s in in_demo.generate.styles if s not in in_demo.generate.held_out_styles]
    precision = {}
    for style in trained:
        assert (
            main(
                [
                    "search",
                    "--text",
                    f"a red circle in the style of {in_demo.sample.style_text(style)}",
                    "--collection",
                    "d_train",
                    "-k",
                    "5",
                ]
            )
            == 0
        )
        rows = [line.split() for line in capsys.readouterr().out.splitlines()[1:]]
        precision[style] = sum(row[2] == style for row in rows) / 5
    assert np.mean(list(precision.values())) >= 0.6, precision


def test_style_collection_search_and_listing(in_demo: Config, capsys: pytest.CaptureFixture) -> None:
    assert main(["search", "--text", "a blue star", "--collection", "style-neon", "-k", "19"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[1:]]
    assert len(rows) == 19 and {row[2] for row in rows} == {"neon"}
    assert all(Path(row[-1]).is_file() for row in rows)
    assert main(["collections"]) == 0
    listing = capsys.readouterr().out
    for style in in_demo.generate.styles:
        assert f"style-{style}" in listing
    assert "d_train" in listing and " 400 " in listing


def test_rerun_embeds_nothing(in_demo: Config) -> None:
    report = embed.run(in_demo.embed, in_demo.store, Path(in_demo.clip.out), Path(in_demo.prepare.out), False)
    assert report["embedded"] == {"train": 0, "d_train": 0, "styles": 0}
    assert all(c["added"] == 0 and c["removed"] == 0 for c in report["collections"].values())


def embed_killed_once(params: Path, sides: list[str], chunks: Path, pattern: str, timeout: float) -> None:
    """`rdm embed [sides]` in a session of its own, sent SIGKILL once a chunk matching `pattern` is in
    `chunks`."""
    args = [sys.executable, "-m", "rdm.cli", "--params", str(params), "embed", *sides]
    process = subprocess.Popen(
        args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.monotonic() + timeout
    while not list(chunks.glob(pattern)) and time.monotonic() < deadline:
        assert process.poll() is None, "embed finished before it could be killed"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def test_killed_embed_resumes_to_exactly_the_right_set(in_demo: Config, tmp_path: Path) -> None:
    params = yaml.safe_load(Path("params.yaml").read_text())
    params["embed"]["out"] = str(tmp_path / "embeddings")
    params["store"]["path"] = str(tmp_path / "qdrant")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    chunks = tmp_path / "embeddings" / "train"
    embed_killed_once(tmp_path / "params.yaml", [], chunks, "chunk-0000[2-9].npz", timeout=120)
    done_before = len(VectorChunks(chunks, read_card(Path(in_demo.clip.out))).known_ids())
    assert 0 < done_before < in_demo.generate.train_images

    config = load_config(tmp_path / "params.yaml")
    report = embed.run(config.embed, config.store, Path(config.clip.out), Path(config.prepare.out), False)
    assert report["embedded"]["train"] == in_demo.generate.train_images - done_before
    card = read_card(Path(config.clip.out))
    for split in SPLITS:
        stored = [np.load(c)["ids"] for c in sorted((tmp_path / "embeddings" / split).glob("chunk-*.npz"))]
        ids = np.concatenate(stored)
        assert len(ids) == len(set(ids)), f"{split}: duplicate embeddings"
        manifest = read_manifest(Path(config.prepare.out) / f"{split}.parquet")
        assert set(ids) == set(manifest["id"])
        np.testing.assert_allclose(
            VectorChunks(tmp_path / "embeddings" / split, card).vectors_for(list(manifest["id"][:5])),
            VectorChunks(Path(in_demo.embed.out) / split, card).vectors_for(list(manifest["id"][:5])),
            atol=1e-5,
        )
    with open_store(config.store) as store:
        assert store.ids("d_train") == set(read_manifest(Path(config.prepare.out) / "d_train.parquet")["id"])


@pytest.fixture(scope="module")
def ray_address() -> Iterator[str]:
    """A two-worker Ray cluster on 127.0.0.1 for this module's tests, its nodes started in a folder of
    their own (so the drivers' relative paths mean nothing to them)."""
    with ray_cluster(workers=2) as address:
        yield address


def test_ingestion_on_a_ray_cluster_equals_in_process(
    ray_address: str,
    messy_folder: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    """`prepare.executor: ray` with relative paths, as params.yaml has them: every manifest, image,
    shard journal, count and rejection as the threads of this process make them."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RAY_ADDRESS", ray_address)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # as the cluster's nodes
    shutil.copytree(messy_folder, "messy")
    write_shards(Path("laion"))
    sources = SourcesParams(train="messy", d_train="laion", styles="messy", prompts=None)
    metrics = {}
    for executor in ("local", "ray"):
        params = PrepareParams(
            sources=sources,
            out=f"{executor}/prepared",
            metrics=f"{executor}/reports/prepare",
            rejected=f"{executor}/reports/rejected",
            executor=executor,
        )
        metrics[executor] = prepare.run_side(params, S3Params(), "training", progress=False)
    assert f"ingest train: checks on the Ray cluster at {ray_address} (3 nodes, 2 CPUs, 0 GPUs)" in (
        capsys.readouterr().out
    )
    assert metrics["ray"] == metrics["local"]
    assert metrics["ray"]["d_train"] == {"seen": 3, "accepted": 2, "rejected": {"not_an_image": 1}}
    written = {
        executor: {p.relative_to(executor): p.read_bytes() for p in Path(executor).rglob("*") if p.is_file()}
        for executor in ("local", "ray")
    }
    assert any(p.parts[1] == JOURNAL for p in written["ray"])  # the shards were journaled
    assert sorted(written["ray"]) == sorted(written["local"])
    assert [p for p in written["ray"] if written["ray"][p] != written["local"][p]] == []


def test_embedding_on_a_ray_cluster_equals_in_process_and_resumes_after_a_kill(
    ray_address: str,
    in_demo: Config,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    params = yaml.safe_load(Path("params.yaml").read_text())
    params["embed"] |= {
        "out": str(tmp_path / "embeddings"),
        "executor": "ray",
        "chunk_size": 64,
        "batch_size": 8,
    }
    params["store"]["path"] = str(tmp_path / "qdrant")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    card = read_card(Path(in_demo.clip.out))
    train = tmp_path / "embeddings" / "train"
    monkeypatch.setenv("RAY_ADDRESS", ray_address)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # as the cluster's nodes
    embed_killed_once(tmp_path / "params.yaml", ["training"], train, "chunk-00001.npz", timeout=300)
    done_before = len(VectorChunks(train, card).known_ids())
    assert 0 < done_before < in_demo.generate.train_images

    config = load_config(tmp_path / "params.yaml")
    report = embed.run(
        config.embed,
        config.store,
        Path(config.clip.out),
        Path(config.prepare.out),
        False,
        sides=["training"],
    )
    assert f"on the Ray cluster at {ray_address} (3 nodes, 2 CPUs, 0 GPUs)" in capsys.readouterr().out
    assert report["embedded"] == {"train": in_demo.generate.train_images - done_before, "d_train": 400}
    for split in ("train", "d_train"):
        stored = np.concatenate(
            [np.load(c)["ids"] for c in sorted((tmp_path / "embeddings" / split).glob("*.npz"))]
        )
        assert len(stored) == len(set(stored)), f"{split}: duplicate embeddings"
        ids = list(read_manifest(Path(config.prepare.out) / f"{split}.parquet")["id"])
        np.testing.assert_allclose(  # the in-process path's vectors: same model and pixels, other batches
            VectorChunks(tmp_path / "embeddings" / split, card).vectors_for(ids),
            VectorChunks(Path(in_demo.embed.out) / split, card).vectors_for(ids),
            atol=1e-5,
        )
    with open_store(config.store) as store:
        assert store.ids("d_train") == set(read_manifest(Path(config.prepare.out) / "d_train.parquet")["id"])


def test_embedding_on_ray_without_an_address_starts_ray_here(
    in_demo: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    params = in_demo.embed.model_copy(update={"out": str(tmp_path / "embeddings"), "executor": "ray"})
    store = in_demo.store.model_copy(update={"path": str(tmp_path / "qdrant")})
    report = embed.run(
        params, store, Path(in_demo.clip.out), Path(in_demo.prepare.out), False, sides=["styles"]
    )
    assert "(1 nodes," in capsys.readouterr().out
    assert report["embedded"] == {"styles": 210}
    card = read_card(Path(in_demo.clip.out))
    ids = list(read_manifest(Path(in_demo.prepare.out) / "styles.parquet")["id"])
    np.testing.assert_allclose(
        VectorChunks(tmp_path / "embeddings" / "styles", card).vectors_for(ids),
        VectorChunks(Path(in_demo.embed.out) / "styles", card).vectors_for(ids),
        atol=1e-5,
    )


def test_another_clips_collection_is_refused_untouched(in_demo: Config, tmp_path: Path) -> None:
    store_params = in_demo.store.model_copy(update={"path": str(tmp_path / "qdrant")})
    stranger = ClipCard(model="ViT-B-32", source="openai", embed_dim=128, fingerprint="0123456789abcdef")
    with open_store(store_params) as store:
        store.ensure("d_train", stranger)
        store.upsert("d_train", ["f" * 64], np.ones((1, 128), np.float32), [{"id": "f" * 64}])
    params = in_demo.embed.model_copy(update={"rebuild_mismatched": False})
    with pytest.raises(
        CollectionError, match=r"'d_train'.*ViT-B-32 \[0123456789abcdef\].*Nothing was written"
    ):
        embed.run(params, store_params, Path(in_demo.clip.out), Path(in_demo.prepare.out), False)
    with open_store(store_params) as store:
        assert store.ids("d_train") == {"f" * 64}
    rebuilt = embed.run(in_demo.embed, store_params, Path(in_demo.clip.out), Path(in_demo.prepare.out), False)
    assert rebuilt["collections"]["d_train"] == {"points": 400, "added": 400, "removed": 0}


def test_neighbors_are_the_exact_nearest_in_d_train(in_demo: Config) -> None:
    table, meta = read_neighbors(Path(in_demo.neighbors.out))
    card = read_card(Path(in_demo.clip.out))
    assert meta.k == in_demo.neighbors.k and meta.clip_fingerprint == card.fingerprint
    train = read_manifest(Path(in_demo.prepare.out) / "train.parquet")
    d_train = read_manifest(Path(in_demo.prepare.out) / "d_train.parquet")
    queries = VectorChunks(Path(in_demo.embed.out) / "train", card).vectors_for(list(train["id"]))
    database = VectorChunks(Path(in_demo.embed.out) / "d_train", card).vectors_for(list(d_train["id"]))
    sims = queries @ database.T
    sims[sims >= in_demo.neighbors.duplicate_threshold] = -np.inf
    expected = np.argsort(-sims, axis=1)[:, : in_demo.neighbors.k]
    got = np.array(table.column("neighbor_ids").to_pylist())
    assert table.column("id").to_pylist() == list(train["id"])
    agreement = np.mean(got == d_train["id"].to_numpy()[expected])
    assert agreement > 0.999  # exact up to float ties
