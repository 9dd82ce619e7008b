"""`clip.resize`: `crop` (open_clip's centre crop) or `squash` (the whole image, as CompVis' knn2img
embedded its released databases), recorded in the CLIP folder and followed by every embedding path."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, cast, get_args

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from rdm.artifacts.clip import CARD, CONFIG, RESIZE_MODES, WEIGHTS, ClipError, read_card
from rdm.config import ClipParams
from rdm.embedding import model as clip_model
from rdm.embedding.encode import RESIZERS, encode_paths, load_images, to_uint8
from rdm.retrieval.search import Retriever
from rdm.retrieval.store import VectorStore

SMALL = "ViT-L-14-quickgelu-rdm-test"
"""ViT-L-14-quickgelu made small: the same 224 px input, patch 14 and QuickGELU, narrow and shallow."""

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


@pytest.fixture(scope="module")
def small_quickgelu(tmp_path_factory: pytest.TempPathFactory) -> str:
    config = open_clip.get_model_config("ViT-L-14-quickgelu")
    assert config is not None and config["quick_gelu"] and config["vision_cfg"]["patch_size"] == 14
    config["embed_dim"] = 32
    config["vision_cfg"] |= {"width": 64, "layers": 2, "head_width": 32}
    config["text_cfg"] |= {"width": 32, "heads": 2, "layers": 1}
    folder = tmp_path_factory.mktemp("configs")
    (folder / f"{SMALL}.json").write_text(json.dumps(config))
    open_clip.add_model_config(folder)
    return SMALL


@pytest.fixture(scope="module")
def weights_file(small_quickgelu: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model, _ = clip_model.create(small_quickgelu)
    path = tmp_path_factory.mktemp("weights") / "small-quickgelu.pt"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def folders(
    small_quickgelu: str, weights_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """The same weights, loaded from the local file, saved as one CLIP folder per resize mode."""
    model, _ = clip_model.create(small_quickgelu, pretrained=str(weights_file))
    root = tmp_path_factory.mktemp("clips")
    for mode in RESIZE_MODES:
        clip_model.save(model, small_quickgelu, str(weights_file), root / mode, mode)
    return {mode: root / mode for mode in RESIZE_MODES}


def bands(width: int, height: int) -> Image.Image:
    """A wide image: red left third, green middle, blue right third. A centre crop keeps only green."""
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[:, : width // 3] = RED
    pixels[:, width // 3 : 2 * width // 3] = GREEN
    pixels[:, 2 * width // 3 :] = BLUE
    return Image.fromarray(pixels)


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def edge_colours(pixels: torch.Tensor) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The colours of the middle row's first and last pixels of a (3, H, W) image."""
    row = pixels[:, pixels.shape[1] // 2]
    return tuple(row[:, 0].tolist()), tuple(row[:, -1].tolist())


def test_every_mode_is_a_setting_and_a_resizer() -> None:
    assert set(get_args(ClipParams.model_fields["resize"].annotation)) == set(RESIZE_MODES) == set(RESIZERS)
    assert ClipParams().resize == "crop"


def test_squash_keeps_the_whole_image_and_crop_cuts_its_sides() -> None:
    image = bands(3 * 224, 224)
    assert edge_colours(to_uint8(image, 224, "squash")) == (RED, BLUE)
    assert edge_colours(to_uint8(image, 224, "crop")) == (GREEN, GREEN)
    assert edge_colours(to_uint8(image, 224)) == (GREEN, GREEN)  # crop stays the default


@pytest.mark.parametrize("size", [(300, 200), (97, 311), (150, 150), (40, 30)])
def test_squash_is_knn2img_bicubic_resize(size: tuple[int, int]) -> None:
    """knn2img: pixels in [-1, 1] through kornia's bicubic resize (align_corners, no antialiasing),
    then back to [0, 1]; ours matches it to within one uint8 level (after rounding and clamping)."""
    image = noise(*size)
    signed = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)[None].float() / 127.5 - 1
    resized = F.interpolate(signed, size=(224, 224), mode="bicubic", align_corners=True, antialias=False)
    reference = ((resized[0] + 1) / 2 * 255).clamp(0, 255)
    ours = to_uint8(image, 224, "squash")
    assert ours.shape == (3, 224, 224) and ours.dtype == torch.uint8
    assert (ours.float() - reference).abs().max() <= 1.0


def test_an_unknown_mode_names_the_setting() -> None:
    with pytest.raises(ClipError, match=r"clip\.resize: 'stretch'"):
        to_uint8(noise(8, 8), 8, "stretch")


def test_a_local_weights_file_loads_into_the_quickgelu_architecture(
    small_quickgelu: str, weights_file: Path
) -> None:
    saved = torch.load(weights_file, weights_only=True)
    model, _ = clip_model.create(small_quickgelu, pretrained=str(weights_file))
    assert isinstance(model.visual.transformer.resblocks[0].mlp.gelu, open_clip.transformer.QuickGELU)
    assert clip_model.image_size(model) == 224
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, saved[name], atol=0, rtol=0)


def test_rdm_import_clip_makes_the_folder_from_a_local_file(
    small_quickgelu: str, weights_file: Path, folders: dict[str, Path], tmp_path: Path
) -> None:
    from rdm.cli import main

    out = tmp_path / "clip"
    argv = ["import", "clip", str(weights_file), "--model", small_quickgelu, "--resize", "squash"]
    assert main([*argv, "--out", str(out)]) == 0
    assert read_card(out) == read_card(folders["squash"])  # same weights, mode, hence fingerprint
    assert (out / WEIGHTS).read_bytes() == (folders["squash"] / WEIGHTS).read_bytes()


def test_a_torchscript_archive_is_refused_with_the_file_to_use_instead(
    small_quickgelu: str, tmp_path: Path
) -> None:
    """OpenAI's release of ViT-L/14 is a TorchScript archive; open_clip's safe loading cannot read it."""
    archive = tmp_path / "ViT-L-14.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(archive))
    with pytest.raises(ClipError, match=r"ViT-L-14.pt is a TorchScript archive.*safetensors"):
        clip_model.create(small_quickgelu, pretrained=str(archive))


def test_the_card_records_the_mode_and_the_fingerprint_tells_modes_apart(folders: dict[str, Path]) -> None:
    crop, squash = read_card(folders["crop"]), read_card(folders["squash"])
    assert (crop.resize, squash.resize) == ("crop", "squash")
    assert clip_model.load(folders["squash"], "cpu").card == squash
    # crop's fingerprint is still the weights' digest: folders written before the setting keep theirs
    assert crop.fingerprint == hashlib.sha256((folders["crop"] / WEIGHTS).read_bytes()).hexdigest()[:16]
    assert squash.fingerprint != crop.fingerprint  # same weights, other vectors: never mixed
    preprocess_cfg = json.loads((folders["squash"] / CONFIG).read_text())["preprocess_cfg"]
    assert preprocess_cfg["resize_mode"] == "squash"  # open_clip users of the folder see it too


def test_a_card_written_before_the_setting_loads_as_crop(folders: dict[str, Path], tmp_path: Path) -> None:
    card = json.loads((folders["crop"] / CARD).read_text())
    del card["resize"]
    (tmp_path / CARD).write_text(json.dumps(card))
    assert read_card(tmp_path).resize == "crop"
    (tmp_path / CARD).write_text(json.dumps(card | {"resize": "stretch"}))
    with pytest.raises(ClipError, match=r"clip\.resize 'stretch'"):
        read_card(tmp_path)


def embed(clip: clip_model.Clip, pixels: torch.Tensor) -> np.ndarray:
    return clip.encode_images(clip.normalize(pixels[None])).cpu().numpy()


@pytest.mark.parametrize("mode", RESIZE_MODES)
def test_queries_are_preprocessed_as_the_card_says(folders: dict[str, Path], mode: str) -> None:
    clip = clip_model.load(folders[mode], "cpu")
    image = bands(3 * 224, 224)
    query = Retriever(cast(VectorStore, None), clip).embed_images([image])
    other = "squash" if mode == "crop" else "crop"
    np.testing.assert_allclose(query, embed(clip, to_uint8(image, 224, mode)), atol=1e-5)
    assert np.abs(query - embed(clip, to_uint8(image, 224, other))).max() > 1e-2


def test_crop_queries_match_open_clips_own_transform(folders: dict[str, Path]) -> None:
    """What `Retriever.embed_images` gave before it used `to_uint8`: the same vectors for `crop`."""
    clip = clip_model.load(folders["crop"], "cpu")
    images = [noise(300, 200, 1), noise(97, 311, 2), noise(224, 224, 3)]
    before = clip.encode_images(torch.stack([clip.preprocess(i) for i in images])).cpu().numpy()
    np.testing.assert_allclose(
        Retriever(cast(VectorStore, None), clip).embed_images(images), before, atol=1e-5
    )


def test_collections_and_queries_agree(folders: dict[str, Path], tmp_path: Path) -> None:
    """The embed stage's path (`encode_paths`) and a query of the same image give the same vector."""
    path = tmp_path / "wide.png"
    bands(3 * 224, 224).save(path)
    clip = clip_model.load(folders["squash"], "cpu")
    stored = np.concatenate(list(encode_paths(clip, [path], 4, 0, progress=False)))
    query = Retriever(cast(VectorStore, None), clip).embed_images([path])
    np.testing.assert_allclose(stored, query, atol=1e-5)
    np.testing.assert_allclose(stored, embed(clip, to_uint8(Image.open(path), 224, "squash")), atol=1e-5)


def test_load_images_passes_the_mode(tmp_path: Path) -> None:
    path = tmp_path / "wide.png"
    bands(3 * 64, 64).save(path)
    squashed: Any = load_images([path], 64, resize="squash")[0]
    assert edge_colours(squashed) == (RED, BLUE)
    assert edge_colours(load_images([path], 64)[0]) == (GREEN, GREEN)
