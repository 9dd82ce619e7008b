"""`rdm collections import`: `.npz` retrieval databases in the layout of CompVis' released ones (a
folder or a .zip, one file per style) become collections that search like the pipeline's own."""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from rdm.artifacts.clip import CARD as CARD_FILE
from rdm.artifacts.clip import ClipCard
from rdm.cli import main
from rdm.config import StoreParams
from rdm.retrieval.databases import import_databases
from rdm.retrieval.edge import EdgeStore
from rdm.retrieval.store import CollectionError, style_collection

DIM = 16
CARD = ClipCard(model="ViT-L-14-quickgelu", source="openai", embed_dim=DIM, fingerprint="0123abcd")


def npz_bytes(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def databases(folder: Path) -> dict[str, np.ndarray]:
    """Two databases: `ukiyo_e` of whole images, `art_nouveau` of patches (two per image)."""
    rng = np.random.default_rng(0)
    vectors = {"ukiyo_e": rng.normal(size=(30, DIM)), "art_nouveau": rng.normal(size=(40, DIM))}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ukiyo_e.npz").write_bytes(npz_bytes(embedding=vectors["ukiyo_e"], img_id=np.arange(30)))
    coords = np.array([[0, 0, 112, 112], [112, 112, 224, 224]] * 20)
    patches = npz_bytes(
        embedding=vectors["art_nouveau"], img_id=np.repeat(np.arange(20), 2), patch_coords=coords
    )
    (folder / "art_nouveau.npz").write_bytes(patches)
    return vectors


@pytest.fixture
def store(tmp_path: Path):
    with EdgeStore(StoreParams(path=str(tmp_path / "qdrant"))) as opened:
        yield opened


def test_each_database_becomes_a_collection_that_finds_its_own_rows(store: EdgeStore, tmp_path: Path) -> None:
    vectors = databases(tmp_path / "dbs")
    counts = import_databases(store, tmp_path / "dbs", CARD, "style-")
    assert counts == {style_collection("art_nouveau"): 40, style_collection("ukiyo_e"): 30}
    info = store.info(style_collection("ukiyo_e"))
    assert (info.dim, info.clip_model, info.clip_fingerprint) == (DIM, CARD.model, CARD.fingerprint)
    query = vectors["ukiyo_e"][7] / np.linalg.norm(vectors["ukiyo_e"][7])
    (hits,) = store.query(style_collection("ukiyo_e"), query[None].astype(np.float32), 3)
    assert hits[0].payload["img_id"] == "7" and hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert hits[0].payload["style"] == "ukiyo_e"
    (patch,) = store.query(style_collection("art_nouveau"), vectors["art_nouveau"][3:4].astype(np.float32), 1)
    assert patch[0].payload["img_id"] == "1" and patch[0].payload["patch_coords"] == [112, 112, 224, 224]
    assert len(store.ids(style_collection("art_nouveau"))) == 40  # two patches of one image: two points

    version = (tmp_path / "qdrant" / style_collection("ukiyo_e") / "CURRENT").read_text()
    import_databases(store, tmp_path / "dbs", CARD, "style-")  # again, unchanged: nothing published
    assert (tmp_path / "qdrant" / style_collection("ukiyo_e") / "CURRENT").read_text() == version


def test_a_zip_imports_like_a_folder_and_a_prefix_names_the_collections(
    store: EdgeStore, tmp_path: Path
) -> None:
    databases(tmp_path / "dbs")
    archive = tmp_path / "artbench.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for path in sorted((tmp_path / "dbs").glob("*.npz")):
            zipped.write(path, f"artbench/{path.name}")
    counts = import_databases(store, archive, CARD, "artbench-")
    assert counts == {"artbench-art_nouveau": 40, "artbench-ukiyo_e": 30}


def test_other_dimensions_and_pickled_arrays_are_refused_before_writing(
    store: EdgeStore, tmp_path: Path
) -> None:
    folder = tmp_path / "wrong"
    folder.mkdir()
    (folder / "neon.npz").write_bytes(npz_bytes(embedding=np.ones((4, DIM * 2)), img_id=np.arange(4)))
    with pytest.raises(CollectionError, match=r"neon.npz holds 32-d vectors.*nothing was written"):
        import_databases(store, folder, CARD, "style-")
    assert store.list_collections() == []
    (folder / "neon.npz").write_bytes(
        npz_bytes(embedding=np.ones((2, DIM)), img_id=np.array([{"x": 1}, None], dtype=object))
    )
    with pytest.raises(CollectionError, match="without pickle"):
        import_databases(store, folder, CARD, "style-")
    assert store.list_collections() == []


def test_the_cli_imports_with_the_clip_folder_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    databases(tmp_path / "dbs")
    (tmp_path / "vit-l").mkdir()
    (tmp_path / "vit-l" / CARD_FILE).write_text(json.dumps(asdict(CARD)))  # the card of a CLIP folder
    params = tmp_path / "params.yaml"
    params.write_text(f"store:\n  path: {tmp_path / 'qdrant'}\n")
    assert main(["--params", str(params), "collections", "import", "dbs", "--clip", "vit-l"]) == 0
    assert (
        "imported style-ukiyo_e: 30 points of CLIP ViT-L-14-quickgelu [0123abcd]" in capsys.readouterr().out
    )
    assert main(["--params", str(params), "collections"]) == 0
    assert "style-art_nouveau" in capsys.readouterr().out


def test_a_database_saved_in_parts_is_one_collection_that_keeps_raw_lengths(
    store: EdgeStore, tmp_path: Path
) -> None:
    """The RDMs' builder saves `<rows>x<dim>-part_<i>.npz` in the database's folder (the released
    `artbench-surrealism/`); the parts are one database, and each row's raw length is kept."""
    rng = np.random.default_rng(1)
    first, second = rng.normal(size=(12, DIM)) * 4, rng.normal(size=(8, DIM)) * 4
    archive = tmp_path / "artbench_databases.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr(
            f"artbench-surrealism/12x{DIM}-part_1.npz", npz_bytes(embedding=first, img_id=np.arange(12))
        )
        zipped.writestr(
            f"artbench-surrealism/8x{DIM}-part_2.npz", npz_bytes(embedding=second, img_id=np.arange(12, 20))
        )
    assert import_databases(store, archive, CARD, "style-") == {"style-artbench-surrealism": 20}
    query = (second[3] / np.linalg.norm(second[3])).astype(np.float32)
    (hits,) = store.query("style-artbench-surrealism", query[None], 1)
    assert hits[0].payload["img_id"] == "15" and hits[0].payload["style"] == "artbench-surrealism"
    assert hits[0].payload["norm"] == pytest.approx(float(np.linalg.norm(second[3])), rel=1e-5)


def test_files_that_would_merge_into_one_database_are_refused(store: EdgeStore, tmp_path: Path) -> None:
    """Files named alike in two style folders are two databases whose name the files do not tell."""
    for style in ("surrealism", "baroque"):
        (tmp_path / "dbs" / style).mkdir(parents=True)
        vectors = np.random.default_rng(2).normal(size=(4, DIM))
        (tmp_path / "dbs" / style / "embeddings.npz").write_bytes(
            npz_bytes(embedding=vectors, img_id=np.arange(4))
        )
    with pytest.raises(CollectionError, match=r"baroque/embeddings.npz, .*surrealism/embeddings.npz would"):
        import_databases(store, tmp_path / "dbs", CARD, "style-")
    assert store.list_collections() == []
