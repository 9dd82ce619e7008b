from pathlib import Path

import pytest
import torch

from rdm.artifacts.clip import ClipError
from rdm.artifacts.manifest import read_manifest
from rdm.config import Config
from rdm.embedding import model as clip_model
from rdm.embedding.encode import load_images
from rdm.embedding.train import train_clip
from rdm.stages import clip, generate, prepare


@pytest.fixture
def prepared(tiny_config: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    generate.run(
        tiny_config.model_copy(
            update={"generate": tiny_config.generate.model_copy(update={"image_size": 64})}
        ),
        progress=False,
    )
    prepare.run(tiny_config.prepare, tiny_config.s3, progress=False)
    return Path(tiny_config.prepare.out)


def test_unknown_model_and_weights_are_named(tmp_path: Path) -> None:
    with pytest.raises(ClipError, match=r"clip\.model: 'ViT-Imaginary'"):
        clip_model.create("ViT-Imaginary")
    with pytest.raises(ClipError, match=r"clip\.pretrained: 'no-such-tag'.*tags: .*laion"):
        clip_model.create("ViT-B-32", "no-such-tag")


def test_weights_from_a_local_file(tiny_config: Config, prepared: Path, tmp_path: Path) -> None:
    torch.manual_seed(7)
    source, _ = clip_model.create("rdm-tiny")
    weights = tmp_path / "my-clip.pt"
    torch.save(source.state_dict(), weights)
    params = tiny_config.clip.model_copy(update={"pretrained": str(weights)})
    report = clip.run(params, prepared, tiny_config.sample.style_text, progress=False)
    assert report["source"] == str(weights) and "final_loss" not in report
    loaded = clip_model.load(Path(params.out), "cpu")
    assert loaded.card.source == str(weights) and loaded.card.embed_dim == 128
    for name, tensor in source.state_dict().items():
        torch.testing.assert_close(loaded.model.state_dict()[name], tensor)
    assert {"content_top1", "content_top5", "holdout_images"} <= set(report)


def test_training_lowers_the_contrastive_loss(tiny_config: Config, prepared: Path) -> None:
    rows = read_manifest(prepared / "train.parquet")
    model, _ = clip_model.create("rdm-tiny")
    images = load_images([prepared / p for p in rows["path"]], clip_model.image_size(model))
    import open_clip

    params = tiny_config.clip.model_copy(update={"epochs": 60, "batch_size": 24, "lr": 1e-3})
    history = train_clip(
        model,
        open_clip.get_tokenizer("rdm-tiny"),
        images,
        list(rows["caption"]),
        params,
        torch.device("cpu"),
        progress=False,
    )
    assert history[-1] < 0.7 * history[0]


def test_holdout_is_deterministic_and_disjoint(prepared: Path) -> None:
    rows = read_manifest(prepared / "train.parquet")
    train_a, hold_a = clip.holdout_split(rows, 0.25, seed=0)
    _, hold_b = clip.holdout_split(rows.sample(frac=1, random_state=3), 0.25, seed=0)
    assert list(hold_a["id"]) == list(hold_b["id"])
    assert set(train_a["id"]).isdisjoint(hold_a["id"]) and len(train_a) + len(hold_a) == len(rows)


@pytest.mark.parametrize("size", [(64, 64), (100, 64), (64, 130), (33, 47)])
def test_fast_preprocessing_matches_open_clip(size: tuple[int, int]) -> None:
    """The batched uint8 path gives the same model input as open_clip's own transform."""
    import numpy as np
    from PIL import Image

    from rdm.embedding.encode import to_uint8

    model, preprocess = clip_model.create("rdm-tiny")
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    ours = clip_model.normalize_images(to_uint8(image, 64)[None], model, torch.device("cpu"))[0]
    torch.testing.assert_close(ours, preprocess(image), atol=1e-5, rtol=0)


def test_the_stage_records_clip_resize_in_the_folder(
    tiny_config: Config, prepared: Path, tmp_path: Path
) -> None:
    torch.manual_seed(7)
    source, _ = clip_model.create("rdm-tiny")
    weights = tmp_path / "my-clip.pt"
    torch.save(source.state_dict(), weights)
    params = tiny_config.clip.model_copy(update={"pretrained": str(weights), "resize": "squash"})
    report = clip.run(params, prepared, tiny_config.sample.style_text, progress=False)
    card = clip_model.load(Path(params.out), "cpu").card
    assert report["resize"] == card.resize == "squash" and report["fingerprint"] == card.fingerprint


def test_training_sees_images_resized_the_folders_way(
    tiny_config: Config, prepared: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rdm.embedding import encode

    seen: list[str] = []

    def spy(paths: list[Path], size: int, workers: int = 0, resize: str = "crop") -> torch.Tensor:
        seen.append(resize)
        return load_images(paths, size, workers, resize)

    monkeypatch.setattr(encode, "load_images", spy)
    params = tiny_config.clip.model_copy(update={"resize": "squash", "epochs": 1})
    rows = read_manifest(prepared / "train.parquet")
    clip.clip_weights(params, rows[rows["caption"].notna()], prepared, progress=False)
    assert seen == ["squash"]
