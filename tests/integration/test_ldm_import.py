"""`rdm import ldm`: CompVis' RDM checkpoints become model folders that compute what CompVis' own code
computes. The reference is the `ldm` package (stable-diffusion-sdkit) built from configs laid out like
the released ones at reduced width, with random weights, saved in the released checkpoint layout."""

from __future__ import annotations

import json
from argparse import Namespace
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rdm.artifacts.clip import ClipCard
from rdm.artifacts.model import ModelError, read_card
from rdm.cli import main
from rdm.models.ldm_import import import_ldm
from rdm.models.pipeline import load_pipeline
from tests import ldm_reference as ref

DIM = 128  # the demo CLIP's (rdm-tiny) vectors, so the imported model samples with it
CLIP = ClipCard(model="rdm-tiny", source="test", embed_dim=DIM, fingerprint="0123abcd")
LAION = ref.rdm_config(
    model_channels=32, head_channels=16, context_dim=DIM, latent_size=8, first_stage_channels=32
)
TOLERANCE = 1e-4
"""Largest difference from the reference, relative to the largest output: float32 sums in another order."""


def close(made: torch.Tensor, expected: torch.Tensor) -> bool:
    return bool((made - expected).abs().max() <= TOLERANCE * expected.abs().max())


@pytest.fixture(scope="module")
def laion(tmp_path_factory: pytest.TempPathFactory) -> Namespace:
    """The reduced LAION-RDM: reference UNet and autoencoder, its checkpoint (with EMA), its import."""
    folder = tmp_path_factory.mktemp("laion")
    unet, first_stage = ref.reference_unet(LAION), ref.reference_first_stage(LAION)
    ema = ref.ema_of(unet)
    checkpoint = ref.write_checkpoint(folder / "model.ckpt", unet, first_stage, ema)
    config = ref.write_config(LAION, folder / "768x768.yaml")
    imported = import_ldm(checkpoint, config, folder / "model", CLIP, progress=False)
    averaged = ref.reference_unet(LAION)
    averaged.load_state_dict(
        {k: ema[f"model_ema.diffusion_model{k.replace('.', '')}"] for k in unet.state_dict()}
    )
    return Namespace(
        folder=folder,
        checkpoint=checkpoint,
        config=config,
        imported=imported,
        model=load_pipeline(folder / "model", "cpu"),
        unet=unet,
        averaged=averaged,
        first_stage=first_stage,
    )


@torch.no_grad()
def test_the_unet_predicts_the_reference_noise_with_the_ema_weights(laion: Namespace) -> None:
    generator = torch.Generator().manual_seed(1)
    latents = torch.randn(3, 16, 8, 8, generator=generator)
    timesteps = torch.tensor([1, 500, 999])
    context = torch.nn.functional.normalize(
        torch.randn(3, 11, DIM, generator=generator), dim=-1
    )  # [q, nn x 10]
    made = laion.model.unet(latents, timesteps, encoder_hidden_states=context).sample
    assert close(made, laion.averaged(latents, timesteps=timesteps, context=context))
    assert not close(made, laion.unet(latents, timesteps=timesteps, context=context))  # not the raw weights
    assert laion.imported.ema
    # heads of 16 channels at each level (32, 64, 96, 128 channels): the setting diffusers leaves unset
    assert list(laion.model.unet.config.attention_head_dim) == [2, 4, 6, 8]
    # the context matters: another one predicts other noise
    other = laion.model.unet(latents, timesteps, encoder_hidden_states=context.roll(1, 0)).sample
    assert not close(other, made)


@torch.no_grad()
def test_the_autoencoder_encodes_and_decodes_as_the_reference_with_its_level_attention(
    laion: Namespace,
) -> None:
    generator = torch.Generator().manual_seed(2)
    images = torch.rand(2, 3, 128, 128, generator=generator) * 2 - 1
    vae = laion.model.vae
    assert close(vae.encode(images).latent_dist.mode(), laion.first_stage.encode(images).mode())
    latents = torch.randn(2, 16, 8, 8, generator=generator)
    assert close(vae.decode(latents).sample, laion.first_stage.decode(latents))
    # attn_resolutions [16] of resolution 256: attention at the lowest of 5 levels, both ways
    assert vae.config.down_block_types[4] == "AttnDownEncoderBlock2D"
    assert len(vae.encoder.down_blocks[4].attentions) == 2 and len(vae.decoder.up_blocks[0].attentions) == 3


def test_the_folder_holds_the_models_schedule_and_card(laion: Namespace) -> None:
    scheduler = json.loads((laion.folder / "model" / "scheduler" / "scheduler_config.json").read_text())
    assert (scheduler["beta_start"], scheduler["beta_end"], scheduler["beta_schedule"]) == (
        0.0015,
        0.015,
        "scaled_linear",
    )
    betas = torch.linspace(0.0015**0.5, 0.015**0.5, 1000, dtype=torch.float64) ** 2  # LDM's "linear"
    sampler_betas = laion.model.noise_schedule_config
    assert sampler_betas.beta_end == 0.015
    from diffusers import DDPMScheduler

    assert torch.allclose(DDPMScheduler.from_config(sampler_betas).betas.double(), betas, atol=1e-7)
    card = read_card(laion.folder / "model")
    assert (card.latent_shape, card.image_size, card.scale_factor) == ((16, 8, 8), 128, 0.22765929)
    assert (card.context_dim, card.context_vectors, card.steps, card.clip_fingerprint) == (
        DIM,
        "unit",
        123,
        "0123abcd",
    )
    assert card.source is not None and card.source.startswith("model.ckpt sha256:")


@torch.no_grad()
def test_the_imagenet_rdm_imports_with_its_vq_first_stage_and_raw_contexts(tmp_path: Path) -> None:
    config = ref.imagenet_config(model_channels=32, context_dim=DIM, latent_size=8)
    vq = config["model"]["params"]["first_stage_config"]["params"]
    vq["n_embed"], vq["ddconfig"]["ch"] = 64, 32
    unet, first_stage = ref.reference_unet(config), ref.reference_first_stage(config)
    checkpoint = ref.write_checkpoint(tmp_path / "imagenet.ckpt", unet, first_stage, ema=None)
    imported = import_ldm(
        checkpoint, ref.write_config(config, tmp_path / "imagenet.yaml"), tmp_path / "m", CLIP
    )
    model = load_pipeline(tmp_path / "m", "cpu")
    assert not imported.ema  # none in the checkpoint: the raw weights
    assert type(model.vae).__name__ == "VQModel"
    assert (model.card.context_vectors, model.card.k, model.card.latent_shape) == ("raw", 4, (3, 8, 8))
    assert model.noise_schedule_config.beta_end == 0.0195
    generator = torch.Generator().manual_seed(3)
    latents, timesteps = torch.randn(2, 3, 8, 8, generator=generator), torch.tensor([3, 700])
    context = torch.randn(2, 4, DIM, generator=generator) * 5  # raw vectors, as that model was trained on
    made = model.unet(latents, timesteps, encoder_hidden_states=context).sample
    assert close(made, unet(latents, timesteps=timesteps, context=context))
    assert close(model.vae.decode(latents).sample, first_stage.decode(latents))  # quantised, then decoded


def test_a_checkpoint_holding_objects_is_refused_without_running_them(
    laion: Namespace, tmp_path: Path
) -> None:
    state = torch.load(laion.checkpoint, weights_only=True)
    state["hyper_parameters"] = Namespace(lr=1e-4)  # an object: loading it means running its class
    torch.save(state, tmp_path / "pickled.ckpt")
    with pytest.raises(ModelError, match=r"pickled.ckpt: holds an object of argparse.Namespace.*refused"):
        import_ldm(tmp_path / "pickled.ckpt", laion.config, tmp_path / "out", CLIP, progress=False)
    assert not (tmp_path / "out").exists()


def test_a_checkpoint_of_another_config_or_clip_is_refused(laion: Namespace, tmp_path: Path) -> None:
    wider = ref.write_config(ref.rdm_config(64, 16, DIM, 8, 32), tmp_path / "wider.yaml")
    with pytest.raises(ModelError, match=r"model.ckpt: the UNet does not match its config"):
        import_ldm(laion.checkpoint, wider, tmp_path / "out", CLIP, progress=False)
    vit_b = ClipCard(model="ViT-B-32", source="openai", embed_dim=512, fingerprint="ffff")
    with pytest.raises(ModelError, match=r"reads 128-d context vectors, but CLIP ViT-B-32 .* 512-d"):
        import_ldm(laion.checkpoint, laion.config, tmp_path / "out", vit_b, progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_an_imported_model_samples_from_an_imported_database_and_registers(
    laion: Namespace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The user's path: a CLIP folder, the databases imported into collections, the checkpoint imported
    and registered, then `rdm sample --model` on the folder and on the registry URI."""
    from rdm.embedding import model as clip_model

    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    clip = clip_model.save(clip_model.create("rdm-tiny")[0], "rdm-tiny", "test", tmp_path / "clip")
    rng = np.random.default_rng(0)
    for style in ("surrealism", "ukiyo_e"):
        (tmp_path / "dbs" / f"artbench-{style}").mkdir(parents=True)
        np.savez(
            tmp_path / "dbs" / f"artbench-{style}" / f"40x{DIM}-part_1.npz",
            embedding=rng.normal(size=(40, DIM)) * 3,
            img_id=np.arange(40),
            patch_coords=np.tile([0, 0, 256, 256], (40, 1)),
        )
    params = tmp_path / "params.yaml"
    params.write_text(
        f"clip:\n  out: {tmp_path / 'clip'}\nstore:\n  path: {tmp_path / 'qdrant'}\n"
        f"tracking:\n  tracking_uri: sqlite:///{tmp_path / 'mlflow.db'}\n"
    )
    rdm = ["--params", str(params)]
    assert main([*rdm, "collections", "import", "dbs"]) == 0
    assert f"imported style-artbench-surrealism: 40 points of CLIP rdm-tiny [{clip.fingerprint}]" in (
        capsys.readouterr().out
    )
    imported = [*rdm, "import", "ldm", str(laion.checkpoint), "--config", str(laion.config), "--out", "m"]
    assert main([*imported, "--register", "laion-rdm"]) == 0
    out = capsys.readouterr().out
    assert "(EMA weights), KL first stage, latents (16, 8, 8), 128x128 images" in out
    assert "registered models:/laion-rdm/1" in out

    styles = ["--style", "artbench-surrealism", "--style", "artbench-ukiyo_e"]
    drawn = [*rdm, "sample", "--prompt", "a red star", *styles, "-n", "2", "--steps", "3", "-k", "10"]
    assert main([*drawn, "--model", "m", "--out", "folder"]) == 0
    records = [json.loads(line) for line in (tmp_path / "folder" / "samples.jsonl").read_text().splitlines()]
    assert len(records) == 4 and all(len(r["neighbors"]) == 10 for r in records)
    assert {n["style"] for r in records for n in r["neighbors"]} == {
        "artbench-surrealism",
        "artbench-ukiyo_e",
    }
    images = [np.asarray(Image.open(tmp_path / "folder" / r["file"])) for r in records]
    assert all(image.shape == (128, 128, 3) for image in images)
    assert not np.array_equal(images[0], images[2])  # same prompt and seed, another collection
    assert main([*drawn, "--model", "models:/laion-rdm/1", "--out", "registry"]) == 0
    again = (tmp_path / "registry" / "samples.jsonl").read_text().splitlines()
    assert [json.loads(line)["model"]["version"] for line in again] == ["1"] * 4
    assert asdict(read_card(tmp_path / "m"))["run_id"] == json.loads(again[0])["model"]["run_id"]
