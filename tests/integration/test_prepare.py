import hashlib
import json
from pathlib import Path

import pandas as pd
import pytest

from rdm.artifacts.manifest import read_manifest
from rdm.config import Config
from rdm.stages import generate, prepare


@pytest.fixture
def prepared(tiny_config: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    monkeypatch.chdir(tmp_path)
    generate.run(tiny_config, progress=False)
    return prepare.run(tiny_config.prepare, tiny_config.s3, progress=False)


def test_prepare_writes_a_manifest_per_split(tiny_config: Config, prepared: dict) -> None:
    params = tiny_config.generate
    out = Path(tiny_config.prepare.out)
    train, d_train, styles = (read_manifest(out / f"{split}.parquet") for split in prepare.SPLITS)
    assert len(train) == params.train_images and len(d_train) == params.d_train_images
    assert styles.groupby("style").size().to_dict() == dict.fromkeys(params.styles, params.style_images)
    assert set(train["id"]).isdisjoint(d_train["id"]) and set(train["id"]).isdisjoint(styles["id"])
    assert train["caption"].str.len().min() > 0 and styles["caption"].notna().all()
    assert set(train["content"].dropna()) and train["split"].eq("train").all()
    raw = Path(params.out) / "train" / "images" / "000000.png"
    first = train[train["source"].str.endswith("000000.png")].iloc[0]
    assert first["id"] == hashlib.sha256(raw.read_bytes()).hexdigest()
    assert (out / first["path"]).read_bytes() == raw.read_bytes()
    assert len(pd.read_parquet(out / "prompts.parquet")) == params.eval_prompts


def test_prepare_metrics_account_for_every_file(tiny_config: Config, prepared: dict) -> None:
    metrics = json.loads(Path(tiny_config.prepare.metrics).read_text())
    assert metrics == json.loads(json.dumps(prepared))
    expected = tiny_config.generate.train_images + tiny_config.generate.d_train_images
    expected += len(tiny_config.generate.styles) * tiny_config.generate.style_images
    assert metrics["total"] == {"seen": expected, "accepted": expected, "rejected": {}}
    assert Path(tiny_config.prepare.rejected).read_text() == ""


def test_bad_files_in_a_source_are_listed_not_fatal(
    tiny_config: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    generate.run(tiny_config, progress=False)
    neon = Path(tiny_config.generate.out) / "styles" / "neon"
    whole = sorted(neon.glob("*.png"))[0].read_bytes()
    (neon / "broken.png").write_bytes(whole[: len(whole) // 2])
    metrics = prepare.run(tiny_config.prepare, tiny_config.s3, progress=False)
    assert metrics["styles"]["rejected"] == {"truncated": 1}
    assert (
        metrics["styles"]["accepted"] == len(tiny_config.generate.styles) * tiny_config.generate.style_images
    )
    (line,) = Path(tiny_config.prepare.rejected).read_text().splitlines()
    assert json.loads(line)["source"].endswith("neon/broken.png")
