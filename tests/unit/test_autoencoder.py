"""The autoencoder stage: a pretrained diffusers folder or a small trained one; scale, PSNR, latents."""

from pathlib import Path

import numpy as np
import pytest
import torch

from rdm.config import AutoencoderParams, Config
from rdm.data.manifest import read_manifest
from rdm.models import autoencoder as ae
from rdm.models.autoencoder import AutoencoderError
from rdm.stages import autoencoder, generate, prepare

TINY = {"image_size": 32, "block_out_channels": [8, 16], "steps": 40, "batch_size": 8, "scale_batches": 2}


@pytest.fixture
def prepared(tiny_config: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    generate.run(tiny_config.generate, progress=False)
    prepare.run(tiny_config.prepare, tiny_config.s3, progress=False)
    return Path(tiny_config.prepare.out)


def tiny_params(tiny_config: Config, **overrides: object) -> AutoencoderParams:
    return tiny_config.autoencoder.model_copy(update=TINY | overrides)


def test_training_lowers_the_reconstruction_loss(tiny_config: Config, prepared: Path) -> None:
    params = tiny_params(tiny_config, steps=80)
    report = autoencoder.run(params, prepared, progress=False)
    assert report["source"] == "trained" and report["latent_shape"] == [4, 16, 16]
    torch.manual_seed(params.seed)
    untrained = ae.build(params)
    rows = read_manifest(prepared / "d_train.parquet")
    from rdm.embedding.encode import load_images

    unseen = load_images([prepared / p for p in rows["path"]], params.image_size)
    assert report["psnr_db"] > ae.psnr(untrained, unseen, torch.device("cpu")) + 3


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
    latents = autoencoder.load_latents(Path(params.latents), ids[::-1])
    assert latents["mean"].shape == (len(ids), 4, 16, 16)
    sampled = (latents["mean"] + latents["std"] * torch.randn_like(latents["std"])) * report["scale_factor"]
    assert sampled.std().item() == pytest.approx(1.0, abs=0.15)
    assert not torch.allclose(latents["mean"], latents["mean_flipped"])
    with np.load(params.latents) as data:
        assert sorted(data["ids"]) == sorted(ids)


def test_bad_inputs_name_the_field_or_the_stage(tiny_config: Config, tmp_path: Path) -> None:
    with pytest.raises(AutoencoderError, match=r"autoencoder\.pretrained: .*no config\.json"):
        ae.load_pretrained(str(tmp_path / "nowhere"))
    with pytest.raises(AutoencoderError, match=r"dvc repro autoencoder"):
        autoencoder.read_card(tmp_path / "models" / "autoencoder")
    with pytest.raises(AutoencoderError, match=r"dvc repro autoencoder"):
        autoencoder.load_latents(tmp_path / "latents.npz", ["a"])
