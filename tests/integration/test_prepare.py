import hashlib
import io
import json
from pathlib import Path

import boto3
import pandas as pd
import pytest
from PIL import Image

from rdm.artifacts.manifest import SIDES, SPLITS, read_manifest
from rdm.config import Config, S3Params
from rdm.stages import generate, prepare


@pytest.fixture
def prepared(tiny_config: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    monkeypatch.chdir(tmp_path)
    generate.run(tiny_config, progress=False)
    return prepare.run(tiny_config.prepare, tiny_config.s3, progress=False)


def test_prepare_writes_a_manifest_per_split(tiny_config: Config, prepared: dict) -> None:
    params = tiny_config.generate
    out = Path(tiny_config.prepare.out)
    train, d_train, styles = (read_manifest(out / f"{split}.parquet") for split in SPLITS)
    assert len(train) == params.train_images and len(d_train) == params.d_train_images
    assert styles.groupby("style").size().to_dict() == dict.fromkeys(params.styles, params.style_images)
    assert set(train["id"]).isdisjoint(d_train["id"]) and set(train["id"]).isdisjoint(styles["id"])
    assert train["caption"].str.len().min() > 0 and styles["caption"].notna().all()
    assert set(train["content"].dropna()) and train["split"].eq("train").all()
    raw = Path(params.out) / "train" / "images" / "000000.png"
    first = train[train["source"].str.endswith("000000.png")].iloc[0]
    assert first["id"] == hashlib.sha256(raw.read_bytes()).hexdigest()
    assert (out / first["path"]).read_bytes() == raw.read_bytes()
    assert first["path"].startswith("images/train/")  # each split's images are a DVC output of their own
    assert len(pd.read_parquet(out / "prompts.parquet")) == params.eval_prompts


def test_prepare_metrics_account_for_every_file(tiny_config: Config, prepared: dict) -> None:
    generated = tiny_config.generate
    expected = {
        "training": generated.train_images + generated.d_train_images,
        "styles": len(generated.styles) * generated.style_images,
    }
    for side in SIDES:
        metrics = json.loads(prepare.metrics_path(tiny_config.prepare, side).read_text())
        assert metrics == json.loads(json.dumps(prepared[side]))
        assert metrics["total"] == {"seen": expected[side], "accepted": expected[side], "rejected": {}}
        assert prepare.rejections_path(tiny_config.prepare, side).read_text() == ""
    assert prepared["styles"]["prompts"] == generated.eval_prompts


def test_the_styles_side_alone_leaves_the_training_side_untouched(
    tiny_config: Config, prepared: dict, tmp_path: Path
) -> None:
    """What a refresh runs: a style image added and one removed change only the styles side's files;
    a style image with a training image's bytes is still a duplicate."""
    out = Path(tiny_config.prepare.out)
    training = {p: p.read_bytes() for p in (out / "images" / "train").rglob("*") if p.is_file()}
    manifests = {split: (out / f"{split}.parquet").read_bytes() for split in SIDES["training"]}
    neon = Path(tiny_config.generate.out) / "styles" / "neon"
    removed = sorted(neon.glob("*.png"))[0]
    gone = hashlib.sha256(removed.read_bytes()).hexdigest()
    removed.unlink()
    removed.with_suffix(".txt").unlink(missing_ok=True)  # its caption
    train_image = sorted((Path(tiny_config.generate.out) / "train" / "images").glob("*.png"))[0]
    (neon / "copy-of-train.png").write_bytes(train_image.read_bytes())
    metrics = prepare.run_side(tiny_config.prepare, tiny_config.s3, "styles", progress=False)
    assert metrics["styles"]["rejected"] == {"duplicate": 1}
    styles = read_manifest(out / "styles.parquet")
    assert gone not in set(styles["id"]) and not list((out / "images" / "styles").rglob(f"{gone}*"))
    assert {p: p.read_bytes() for p in (out / "images" / "train").rglob("*") if p.is_file()} == training
    assert {split: (out / f"{split}.parquet").read_bytes() for split in SIDES["training"]} == manifests


def test_several_style_sources_fill_the_same_collections(
    tiny_config: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, s3_endpoint: str
) -> None:
    """A list of sources, a folder and an S3 prefix (moto's server), gathered per style: one more neon
    image from the bucket, and a style (cubism) that only the bucket has."""
    monkeypatch.chdir(tmp_path)
    generate.run(tiny_config, progress=False)
    s3 = S3Params(endpoint_url=s3_endpoint, region="us-east-1")
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    client.create_bucket(Bucket="art")
    extra = sorted((Path(tiny_config.generate.out) / "styles" / "neon").glob("*.png"))[0]
    flipped = Image.open(extra).transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    for key, image in {"neon/flipped.png": flipped, "cubism/one.png": flipped.rotate(90)}.items():
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        client.put_object(Bucket="art", Key=f"more-styles/{key}", Body=buffer.getvalue())
    sources = tiny_config.prepare.sources.model_copy(
        update={"styles": ["data/raw/styles", "s3://art/more-styles"]}
    )
    params = tiny_config.prepare.model_copy(update={"sources": sources})
    metrics = prepare.run(params, s3, progress=False)["styles"]
    per_style = tiny_config.generate.style_images
    assert metrics["collections"]["neon"] == per_style + 1 and metrics["collections"]["cubism"] == 1
    assert metrics["styles"]["seen"] == len(tiny_config.generate.styles) * per_style + 2
    styles = read_manifest(Path(params.out) / "styles.parquet")
    assert set(styles.loc[styles["style"] == "cubism", "source"]) == {"s3://art/more-styles/cubism/one.png"}


def test_bad_files_in_a_source_are_listed_not_fatal(
    tiny_config: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    generate.run(tiny_config, progress=False)
    neon = Path(tiny_config.generate.out) / "styles" / "neon"
    whole = sorted(neon.glob("*.png"))[0].read_bytes()
    (neon / "broken.png").write_bytes(whole[: len(whole) // 2])
    metrics = prepare.run(tiny_config.prepare, tiny_config.s3, progress=False)["styles"]
    assert metrics["styles"]["rejected"] == {"truncated": 1}
    assert (
        metrics["styles"]["accepted"] == len(tiny_config.generate.styles) * tiny_config.generate.style_images
    )
    (line,) = prepare.rejections_path(tiny_config.prepare, "styles").read_text().splitlines()
    assert json.loads(line)["source"].endswith("neon/broken.png")
