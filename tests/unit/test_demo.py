import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from rdm.config import Config
from rdm.data.demo.contents import CONTENTS
from rdm.data.demo.generate import generate_demo
from rdm.data.demo.styles import RENDERERS
from rdm.errors import UserError


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def image_hashes(folder: Path) -> set[str]:
    return {hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*.png")}


@pytest.fixture
def demo(tiny_config: Config, tmp_path: Path) -> Path:
    return generate_demo(
        tiny_config.generate, tiny_config.sample.style_text, tmp_path / "raw", progress=False
    ).out


def test_same_seed_gives_the_same_bytes(tiny_config: Config, demo: Path, tmp_path: Path) -> None:
    again = generate_demo(
        tiny_config.generate, tiny_config.sample.style_text, tmp_path / "again", progress=False
    ).out
    assert tree_bytes(demo) == tree_bytes(again)
    reseeded = tiny_config.generate.model_copy(update={"seed": 1})
    other = generate_demo(reseeded, tiny_config.sample.style_text, tmp_path / "other", progress=False).out
    assert image_hashes(other).isdisjoint(image_hashes(demo))


def test_layout_and_counts(tiny_config: Config, demo: Path) -> None:
    params = tiny_config.generate
    assert len(pd.read_csv(demo / "train" / "manifest.csv")) == params.train_images
    assert len(pd.read_csv(demo / "d_train" / "manifest.csv")) == params.d_train_images
    for style in params.styles:
        assert len(list((demo / "styles" / style).glob("*.png"))) == params.style_images
        assert len(list((demo / "styles" / style).glob("*.txt"))) == params.style_images
    assert len(pd.read_csv(demo / "prompts.csv")) == params.eval_prompts
    with Image.open(next((demo / "train" / "images").glob("*.png"))) as image:
        assert image.size == (params.image_size, params.image_size) and image.mode == "RGB"


def test_splits_are_disjoint(demo: Path) -> None:
    train, d_train = image_hashes(demo / "train"), image_hashes(demo / "d_train")
    styles = image_hashes(demo / "styles")
    assert train and d_train and styles
    assert train.isdisjoint(d_train) and train.isdisjoint(styles) and d_train.isdisjoint(styles)


def test_every_style_and_content_appears(tiny_config: Config, demo: Path) -> None:
    params = tiny_config.generate
    trained = set(params.styles) - set(params.held_out_styles)
    for split in ("train", "d_train"):
        manifest = pd.read_csv(demo / split / "manifest.csv")
        assert set(manifest["style"]) == trained | set(params.general)
        assert set(manifest["content"]) == set(CONTENTS)
    assert {p.name for p in (demo / "styles").iterdir()} == set(params.styles)


def test_d_train_is_general_with_each_seen_style_a_few_percent(tiny_config: Config) -> None:
    """The paper's proportions: any one evaluated style is rare in D_train (LAION), ordinary renderings
    make up the rest, and at least two styles exist only in their own collections."""
    from rdm.data.demo.generate import plan

    params = tiny_config.generate.model_copy(update={"d_train_images": 1000, "train_images": 600})
    planned = plan(params)
    seen = set(params.styles) - set(params.held_out_styles)
    assert len(params.held_out_styles) >= 2
    for split, count in (("d_train", 1000), ("train", 600)):
        styles = pd.Series([art.style for art in planned[split]]).value_counts()
        for style in seen:
            assert styles[style] == round(count * params.style_fraction)
        assert styles[list(params.general)].sum() == count - len(seen) * round(count * params.style_fraction)
        assert not set(styles.index) & set(params.held_out_styles)


def test_held_out_style_never_reaches_training_data(tiny_config: Config, demo: Path) -> None:
    held_out = tiny_config.generate.held_out_styles
    words = {w for s in held_out for w in (s, tiny_config.sample.style_text(s))}
    for split in ("train", "d_train"):
        manifest = pd.read_csv(demo / split / "manifest.csv")
        assert not set(manifest["style"]) & set(held_out)
        assert not any(word in caption for caption in manifest["caption"] for word in words)
    for style in held_out:
        assert len(list((demo / "styles" / style).glob("*.png"))) == tiny_config.generate.style_images


def test_captions_name_the_content_and_some_name_the_style(tiny_config: Config, demo: Path) -> None:
    style_words = {style: tiny_config.sample.style_text(style) for style in RENDERERS}
    manifest = pd.read_csv(demo / "train" / "manifest.csv")
    for row in manifest.itertuples():
        assert row.content in row.caption
    styled = manifest[~manifest["style"].isin(["plain", "shaded", "sketch"])]
    names_style = [style_words[row.style] in row.caption for row in styled.itertuples()]
    assert 0 < sum(names_style) < len(names_style)
    prompts = pd.read_csv(demo / "prompts.csv")
    general = {"plain", "shaded", "sketch"}
    assert not any(
        word in p for p in prompts["prompt"] for w, word in style_words.items() if w not in general
    )


def test_unknown_style_is_refused_before_drawing(tiny_config: Config, tmp_path: Path) -> None:
    params = tiny_config.generate.model_copy(update={"styles": ["neon", "cubism"]})
    with pytest.raises(UserError, match=r"unknown style\(s\) \['cubism'\]"):
        generate_demo(params, tiny_config.sample.style_text, tmp_path / "raw", progress=False)
    assert not (tmp_path / "raw").exists()


def texture_features(path: Path) -> np.ndarray:
    """Colour-blind texture statistics: grey-level and gradient-magnitude histograms."""
    grey = np.asarray(Image.open(path).convert("L"), dtype=np.float32) / 255
    gradient = np.abs(np.diff(grey, axis=0))[:, :-1] + np.abs(np.diff(grey, axis=1))[:-1, :]
    levels = np.histogram(grey, bins=8, range=(0, 1))[0] / grey.size
    edges = np.histogram(gradient, bins=8, range=(0, 0.8))[0] / gradient.size
    return np.concatenate([levels, edges])


def test_styles_differ_in_texture_not_only_colour(tiny_config: Config, tmp_path: Path) -> None:
    params = tiny_config.generate.model_copy(update={"style_images": 20, "image_size": 64})
    root = (
        generate_demo(params, tiny_config.sample.style_text, tmp_path / "raw", progress=False).out / "styles"
    )
    styles = sorted(p.name for p in root.iterdir())
    features = {s: np.stack([texture_features(p) for p in sorted((root / s).glob("*.png"))]) for s in styles}
    centroids = np.stack([features[s][:10].mean(axis=0) for s in styles])
    correct = total = 0
    for label, style in enumerate(styles):
        for feature in features[style][10:]:
            correct += int(np.argmin(np.linalg.norm(centroids - feature, axis=1)) == label)
            total += 1
    assert correct / total >= 0.9, f"greyscale nearest-centroid accuracy {correct / total:.2f}"
