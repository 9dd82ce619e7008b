"""The retrieval-conditioned diffusion model: context, null context, loss, sampling, model folder."""

from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from rdm.config import UNetParams
from rdm.data.training import TensorRows, TrainingTensors
from rdm.models import unet as unet_builder
from rdm.models.diffusion import RetrievalDiffusion, drop_context
from rdm.sampling.context import build_context
from rdm.sampling.denoise import denoise, make_sampler, seeded_noise

TINY_UNET = UNetParams(block_out_channels=[32, 32], cross_attention=[False, True], head_channels=16)
LATENT = (4, 8, 8)
DIM = 16


def tiny_module(**overrides: object) -> RetrievalDiffusion:
    torch.manual_seed(0)
    settings: dict = dict(
        unet=TINY_UNET.model_dump(), latent_shape=LATENT, context_dim=DIM, scale_factor=1.0, lr=2e-3
    )
    return RetrievalDiffusion(**(settings | overrides))


def tiny_tensors(n: int, k: int = 2) -> TrainingTensors:
    generator = torch.Generator().manual_seed(1)
    mean = torch.randn((n, *LATENT), generator=generator)
    std = torch.full_like(mean, 0.01)
    return TrainingTensors(
        ids=[f"img{i}" for i in range(n)],
        mean=mean,
        std=std,
        mean_flipped=mean.flip(-1),
        std_flipped=std,
        query=torch.randn((n, DIM), generator=generator),
        neighbors=torch.randn((n, k, DIM), generator=generator),
    )


def test_context_is_normalised_with_the_query_first() -> None:
    query, neighbors = torch.randn(3, DIM) * 5, torch.randn(3, 4, DIM) * 5
    context = build_context(query, neighbors)
    assert context.shape == (3, 5, DIM)
    torch.testing.assert_close(context.norm(dim=-1), torch.ones(3, 5))
    torch.testing.assert_close(context[:, 0], torch.nn.functional.normalize(query, dim=-1))


def test_drop_context_zeroes_whole_contexts_for_the_chosen_fraction() -> None:
    context = build_context(torch.randn(20_000, DIM), torch.randn(20_000, 4, DIM))
    dropped_context, dropped = drop_context(context, 0.1, torch.Generator().manual_seed(0))
    assert abs(dropped.float().mean().item() - 0.1) < 0.01
    assert torch.all(dropped_context[dropped] == 0)
    torch.testing.assert_close(dropped_context[~dropped], context[~dropped])


def test_training_feeds_the_unet_zero_contexts_for_p_uncond_of_examples() -> None:
    module = tiny_module(p_uncond=0.3)
    seen: list[torch.Tensor] = []
    module.unet.register_forward_pre_hook(
        lambda _, args, kwargs: seen.append(kwargs["encoder_hidden_states"].detach()), with_kwargs=True
    )
    batch = next(iter(DataLoader(TensorRows(tiny_tensors(64)), batch_size=64)))
    for _ in range(30):
        module.training_step(batch, 0)
    contexts = torch.cat(seen)  # (30 * 64, 1+k, D)
    null = (contexts == 0).flatten(1).all(dim=1)
    assert abs(null.float().mean().item() - 0.3) < 0.05
    torch.testing.assert_close(contexts[~null].norm(dim=-1), torch.ones(int((~null).sum()), 3))


def test_loss_falls_on_a_tiny_overfit_set(tmp_path: Path) -> None:
    module = tiny_module(p_uncond=0.0, flip=False, warmup_steps=5)
    data = DataLoader(TensorRows(tiny_tensors(8)), batch_size=8, shuffle=True)
    losses: list[float] = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):  # type: ignore[no-untyped-def]
            losses.append(float(outputs["loss"]))

    trainer = L.Trainer(
        max_steps=150,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[Record()],
        default_root_dir=tmp_path,
    )
    trainer.fit(module, data)
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.5 * first, (first, last)


def test_sampling_is_fixed_by_the_seed_and_moved_by_guidance() -> None:
    module = tiny_module().eval()
    context = build_context(torch.randn(2, DIM), torch.randn(2, 2, DIM))
    a = module.sample(context, steps=4, guidance_scale=3.0, seed=5)
    b = module.sample(context, steps=4, guidance_scale=3.0, seed=5)
    assert a.shape == (2, *LATENT)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, module.sample(context, steps=4, guidance_scale=3.0, seed=6))
    assert not torch.allclose(a, module.sample(context, steps=4, guidance_scale=1.0, seed=5))
    # an image depends on its own seed, not on the rest of its batch
    torch.testing.assert_close(module.sample(context[1:], steps=4, guidance_scale=3.0, seed=6), a[1:])


def test_paper_like_unet_has_the_reference_size() -> None:
    """README "Model sizes": the reference's 400M ImageNet RDM UNet, on latents 3x64x64, CLIP B/32."""
    paper = UNetParams(
        block_out_channels=[192, 384, 576, 960], cross_attention=[False, True, True, True], layers_per_block=2
    )
    with torch.device("meta"):
        unet = unet_builder.build(paper, latent_channels=3, latent_size=64, context_dim=512)
    assert sum(p.numel() for p in unet.parameters()) == pytest.approx(400.9e6, rel=0.01)


def test_dpm_solver_follows_the_same_ode_as_ddim_in_fewer_steps() -> None:
    module = tiny_module().eval()
    context = build_context(torch.randn(3, DIM), torch.randn(3, 2, DIM))
    noise = seeded_noise(LATENT, [0, 1, 2])
    reference = denoise(module.unet, make_sampler("ddim", module.schedule.config), context, noise, 250, 2.0)
    dpm = denoise(module.unet, make_sampler("dpm", module.schedule.config), context, noise, 20, 2.0)
    coarse = denoise(module.unet, make_sampler("ddim", module.schedule.config), context, noise, 20, 2.0)
    error = (dpm - reference).abs().mean() / reference.abs().mean()
    assert error < 0.05, error  # DPM-Solver++ in 20 steps lands where DDIM does in 250
    assert error < (coarse - reference).abs().mean() / reference.abs().mean()  # and beats DDIM in 20
    torch.testing.assert_close(
        dpm, denoise(module.unet, make_sampler("dpm", module.schedule.config), context, noise, 20, 2.0)
    )
    with pytest.raises(ValueError, match="unknown sampler 'plms'"):
        make_sampler("plms", module.schedule.config)


@pytest.mark.slow
def test_a_compiled_model_draws_the_same_images() -> None:
    """torch.compile (inductor here; CUDA graphs on a GPU) changes the speed, not the pictures."""
    from rdm.config import AutoencoderParams
    from rdm.models import autoencoder
    from rdm.models.package import ModelCard, RetrievalDiffusionModel

    module = tiny_module().eval()
    shape = AutoencoderParams(image_size=16, block_out_channels=[8, 8], latent_channels=4)  # latents 4x8x8
    vae = autoencoder.build(shape).eval()
    card = ModelCard(2, DIM, LATENT, 16, 1.0, "rdm-tiny", "test", 0)
    model = RetrievalDiffusionModel(module.unet, vae, module.schedule.config, card)
    context = build_context(torch.randn(2, DIM), torch.randn(2, 2, DIM))
    eager = model.generate(context, steps=3, guidance_scale=3.0, seed=[4, 9])
    model.compile()
    compiled = model.generate(context, steps=3, guidance_scale=3.0, seed=[4, 9])
    assert eager.shape == (2, 16, 16, 3)
    assert int(abs(compiled.astype(int) - eager.astype(int)).max()) <= 1  # uint8 rounding at most
