"""The autoencoder stage: a pretrained diffusers folder or a small trained one; scale, PSNR, latents."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from rdm.artifacts import autoencoder as autoencoder_folder
from rdm.artifacts.autoencoder import AutoencoderError
from rdm.artifacts.manifest import read_manifest
from rdm.config import AutoencoderParams, Config
from rdm.models import autoencoder as ae
from rdm.stages import autoencoder, generate, prepare, reconstruct

TINY = {"image_size": 32, "block_out_channels": [8, 16], "steps": 40, "batch_size": 8}


@pytest.fixture
def prepared(tiny_config: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    generate.run(tiny_config, progress=False)
    prepare.run(tiny_config.prepare, tiny_config.s3, progress=False)
    return Path(tiny_config.prepare.out)


def tiny_params(tiny_config: Config, **overrides: object) -> AutoencoderParams:
    return tiny_config.autoencoder.model_copy(update=TINY | overrides)


def test_training_lowers_the_reconstruction_loss(tiny_config: Config, prepared: Path) -> None:
    params = tiny_params(tiny_config, steps=80)
    report = autoencoder.run(params, prepared, progress=False)
    assert report["source"] == "trained" and report["latent_shape"] == [params.latent_channels, 16, 16]
    torch.manual_seed(params.seed)
    untrained = ae.build(params)
    rows = read_manifest(prepared / "d_train.parquet")
    from rdm.embedding.encode import load_images

    unseen = load_images([prepared / p for p in rows["path"]], params.image_size)
    assert report["psnr_db"] > ae.psnr(ae.reconstruct(untrained, unseen, torch.device("cpu")), unseen) + 3
    # every style collection is reconstructed for the evaluation's ceiling, and measured per style
    ceiling = reconstruct.run(params, prepared)
    written = [json.loads(line) for line in (Path(params.reconstructions) / "reconstructions.jsonl").open()]
    assert {r["style"] for r in written} == set(tiny_config.generate.styles)
    assert all((Path(params.reconstructions) / r["file"]).is_file() for r in written)
    assert set(ceiling["per_style"]) == set(tiny_config.generate.styles)
    assert json.loads(Path(params.reconstruction_metrics).read_text()) == ceiling
    assert ceiling["psnr_db"] > 10  # reconstructions, not noise


def test_reconstruction_loss_sees_texture_that_pixels_average_away() -> None:
    """A fine checkerboard and its flat mean differ little per pixel but much in gradients; the spectrum
    term tells the texture from flat paint wherever its phase lies (a shifted board costs it nothing)."""
    board = (torch.arange(16)[:, None] + torch.arange(16)[None]) % 2 * 0.4 - 0.2  # (16, 16) in +-0.2
    texture, flat = board.expand(1, 3, 16, 16), torch.zeros(1, 3, 16, 16)
    shifted = texture.roll(1, dims=-1)
    plain = ae.reconstruction_loss(flat, texture, 0.0, 0.0)
    assert ae.reconstruction_loss(flat, texture, 1.0, 0.0) > 2.5 * plain
    spectrum_flat = ae.reconstruction_loss(flat, texture, 0.0, 1.0) - plain
    spectrum_shifted = ae.reconstruction_loss(shifted, texture, 0.0, 1.0) - ae.reconstruction_loss(
        shifted, texture, 0.0, 0.0
    )
    assert spectrum_flat > 0.01 and abs(float(spectrum_shifted)) < 1e-5
    assert ae.reconstruction_loss(texture, texture, 1.0, 1.0) == 0


def test_colour_check_fails_a_hue_drift_and_passes_the_original() -> None:
    images = torch.zeros(2, 3, 16, 16, dtype=torch.uint8)
    images[:, 2, 4:12, 4:12] = 200  # a blue square
    drifted = images.clone()
    drifted[1, 0, 4:12, 4:12], drifted[1, 2, 4:12, 4:12] = 120, 60  # the second turns maroon
    assert ae.colour_kept(images, images) == 1.0
    assert ae.colour_kept(drifted, images) == 0.5


def test_a_pretrained_folder_is_used_as_is_and_its_latents_cached(
    tiny_config: Config, prepared: Path, tmp_path: Path
) -> None:
    torch.manual_seed(3)
    source = ae.build(tiny_params(tiny_config))
    source.save_pretrained(tmp_path / "my-vae")
    params = tiny_params(tiny_config, pretrained=str(tmp_path / "my-vae"))
    report = autoencoder.run(params, prepared, progress=False)
    assert report["source"] == str(tmp_path / "my-vae") and "steps" not in report

    from diffusers import AutoencoderKL

    saved = AutoencoderKL.from_pretrained(params.out)
    for name, tensor in source.state_dict().items():
        torch.testing.assert_close(saved.state_dict()[name], tensor)
    # the scale factor is measured, written into the saved config, and makes latents unit-variance
    assert saved.config.scaling_factor == pytest.approx(report["scale_factor"], rel=1e-5)
    ids = list(read_manifest(prepared / "train.parquet")["id"])
    latents = autoencoder_folder.load_latents(Path(params.latents), ids[::-1])
    assert latents["latent"].shape == (len(ids), params.latent_channels, 16, 16)
    scaled = latents["latent"] * report["scale_factor"]
    assert scaled.std().item() == pytest.approx(1.0, abs=0.15)
    assert not torch.allclose(latents["latent"], latents["latent_flipped"])
    with np.load(params.latents) as data:
        assert sorted(data["ids"]) == sorted(ids)


def test_bad_inputs_name_the_field_or_the_stage(tiny_config: Config, tmp_path: Path) -> None:
    with pytest.raises(AutoencoderError, match=r"autoencoder\.pretrained: .*no config\.json"):
        ae.load_pretrained(str(tmp_path / "nowhere"))
    with pytest.raises(AutoencoderError, match=r"dvc repro autoencoder"):
        autoencoder_folder.read_card(tmp_path / "models" / "autoencoder")
    with pytest.raises(AutoencoderError, match=r"dvc repro autoencoder"):
        autoencoder_folder.load_latents(tmp_path / "latents.npz", ["a"])
