"""The retrieval-conditioned diffusion model: contexts, null context, schedule, guidance, loss, sampling,
EMA, and that a trained model reads its context."""

from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from rdm.config import UNetParams
from rdm.data.training import TensorRows, TrainingTensors
from rdm.diffusion.context import drop_context, neighbor_context, random_k, sampling_context
from rdm.diffusion.guidance import denoise, seeded_noise
from rdm.diffusion.noise_schedule import noise_schedule
from rdm.diffusion.samplers import make_sampler
from rdm.models import unet as unet_builder
from rdm.models.lightning_module import RdmLightningModule, min_snr_weights, offset_noise

TINY_UNET = UNetParams(
    block_out_channels=[32, 32], cross_attention=[False, True], head_channels=16, norm_groups=8
)
LATENT = (4, 8, 8)
DIM = 16


def tiny_module(**overrides: object) -> RdmLightningModule:
    torch.manual_seed(0)
    settings: dict = dict(
        unet=TINY_UNET.model_dump(), latent_shape=LATENT, context_dim=DIM, scale_factor=1.0, lr=2e-3
    )
    return RdmLightningModule(**(settings | overrides))


def tiny_tensors(n: int, k: int = 2) -> TrainingTensors:
    generator = torch.Generator().manual_seed(1)
    latent = torch.randn((n, *LATENT), generator=generator)
    return TrainingTensors(
        ids=[f"img{i}" for i in range(n)],
        latent=latent,
        latent_flipped=latent.flip(-1),
        neighbors=torch.randn((n, k, DIM), generator=generator),
    )


def fit(module: RdmLightningModule, data: DataLoader, steps: int, root: Path, callbacks: list) -> None:
    L.Trainer(
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
        default_root_dir=root,
    ).fit(module, data)


def test_sampling_contexts_put_the_query_first_and_are_normalised() -> None:
    query, neighbors = torch.randn(3, DIM) * 5, torch.randn(3, 4, DIM) * 5
    both = sampling_context(query, neighbors)
    assert both.shape == (3, 5, DIM)
    torch.testing.assert_close(both.norm(dim=-1), torch.ones(3, 5))
    torch.testing.assert_close(both[:, 0], torch.nn.functional.normalize(query, dim=-1))
    torch.testing.assert_close(sampling_context(query, neighbors, "neighbors_only"), both[:, 1:])
    torch.testing.assert_close(sampling_context(query, neighbors, "query_only"), both[:, :1])
    with pytest.raises(ValueError, match="unknown query mode"):
        sampling_context(query, neighbors, "text")  # type: ignore[arg-type]


def test_drop_context_zeroes_whole_contexts_for_the_chosen_fraction() -> None:
    context = neighbor_context(torch.randn(20_000, 4, DIM))
    dropped_context, dropped = drop_context(context, 0.1, torch.Generator().manual_seed(0))
    assert abs(dropped.float().mean().item() - 0.1) < 0.01
    assert torch.all(dropped_context[dropped] == 0)
    torch.testing.assert_close(dropped_context[~dropped], context[~dropped])


def test_random_k_keeps_the_nearest_and_covers_the_range() -> None:
    neighbors = torch.randn(2, 8, DIM)
    generator = torch.Generator().manual_seed(0)
    sizes = {random_k(neighbors, 3, generator).shape[1] for _ in range(200)}
    assert sizes == set(range(3, 9))
    torch.testing.assert_close(random_k(neighbors, 8), neighbors)
    picked = random_k(neighbors, 3, torch.Generator().manual_seed(5))
    torch.testing.assert_close(picked, neighbors[:, : picked.shape[1]])


def test_training_context_is_the_neighbours_alone_with_zero_contexts_for_p_uncond() -> None:
    """The reference's retro_only conditioning: k normalised neighbours, never the image's own vector."""
    module = tiny_module(p_uncond=0.3, k_min=2)
    seen: list[torch.Tensor] = []
    module.unet.register_forward_pre_hook(
        lambda _, args, kwargs: seen.append(kwargs["encoder_hidden_states"].detach()), with_kwargs=True
    )
    tensors = tiny_tensors(64, k=4)
    batch = next(iter(DataLoader(TensorRows(tensors), batch_size=64)))
    for _ in range(40):
        module.training_step(batch, 0)
    assert {c.shape[1] for c in seen} == {2, 3, 4}  # k drawn per batch from [k_min, k]
    for context in seen:
        null = (context == 0).flatten(1).all(dim=1)
        k = context.shape[1]
        torch.testing.assert_close(context[~null], neighbor_context(tensors.neighbors[:, :k])[~null])
    share = torch.cat([(c == 0).flatten(1).all(dim=1) for c in seen]).float().mean().item()
    assert abs(share - 0.3) < 0.05


def test_noise_schedule_is_ldm_linear() -> None:
    """LDM's make_beta_schedule("linear"): betas = linspace(sqrt(0.0015), sqrt(0.0195), 1000) ** 2."""
    betas = torch.linspace(0.0015**0.5, 0.0195**0.5, 1000, dtype=torch.float64) ** 2
    schedule = noise_schedule()
    torch.testing.assert_close(schedule.betas.double(), betas, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(
        schedule.alphas_cumprod.double(), torch.cumprod(1 - betas, 0), rtol=1e-4, atol=1e-7
    )


def test_guidance_is_e_u_plus_s_times_e_c_minus_e_u() -> None:
    """A stub UNet answers 1 for the all-zero context and 3 otherwise; the sampler must be given
    e_u + s (e_c - e_u) = 1 + 5 * 2 = 11, and the null half of the batch must be all zeros."""
    contexts: list[torch.Tensor] = []

    def unet(x: torch.Tensor, t: torch.Tensor, encoder_hidden_states: torch.Tensor) -> SimpleNamespace:
        contexts.append(encoder_hidden_states)
        null = (encoder_hidden_states == 0).flatten(1).all(1)[:, None, None, None]
        return SimpleNamespace(sample=torch.where(null, 1.0, 3.0).expand_as(x).clone())

    unet.device, unet.dtype = torch.device("cpu"), torch.float32  # type: ignore[attr-defined]
    given: list[torch.Tensor] = []

    class Sampler:
        init_noise_sigma = 1.0
        timesteps = torch.tensor([999, 499])

        def set_timesteps(self, steps: int, device: torch.device) -> None: ...

        def scale_model_input(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return x

        def step(self, predicted: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> SimpleNamespace:
            given.append(predicted)
            return SimpleNamespace(prev_sample=x - 0.01 * predicted)

    context = neighbor_context(torch.randn(2, 3, DIM))
    denoise(unet, Sampler(), context, torch.zeros(2, *LATENT), steps=2, guidance_scale=5.0)
    assert len(given) == 2
    torch.testing.assert_close(given[0], torch.full((2, *LATENT), 11.0))
    assert contexts[0].shape == (4, 3, DIM)
    assert torch.all(contexts[0][:2] == 0)
    torch.testing.assert_close(contexts[0][2:], context)
    given.clear()
    denoise(unet, Sampler(), context, torch.zeros(2, *LATENT), steps=2, guidance_scale=1.0)
    torch.testing.assert_close(given[0], torch.full((2, *LATENT), 3.0))  # scale 1: the conditional alone


def test_min_snr_weights_cap_the_clean_timesteps() -> None:
    alphas_cumprod = noise_schedule().alphas_cumprod
    timesteps = torch.tensor([0, 100, 999])
    weights = min_snr_weights(alphas_cumprod, timesteps, 5.0)
    snr = alphas_cumprod[timesteps] / (1 - alphas_cumprod[timesteps])
    torch.testing.assert_close(weights, torch.minimum(snr, torch.tensor(5.0)) / snr)
    assert weights[0] < 0.01 and weights[-1] == pytest.approx(1.0)


@pytest.mark.parametrize("name", ["constant", "cosine"])
def test_learning_rate_warms_up_then_holds_or_decays_to_zero(name: str) -> None:
    module = tiny_module(lr=1e-3, warmup_steps=10, lr_schedule=name, max_steps=100)
    setup = module.configure_optimizers()
    optimizer, schedule = setup["optimizer"], setup["lr_scheduler"]["scheduler"]
    rates = []
    for _ in range(100):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert rates[0] == 0.0 and rates[5] == pytest.approx(5e-4)  # a linear warm-up over 10 steps
    assert rates[10] == pytest.approx(1e-3)
    if name == "constant":
        assert rates[-1] == pytest.approx(1e-3)
    else:  # half the base rate halfway through the decay, nearly zero at max_steps
        assert rates[55] == pytest.approx(5e-4)
        assert rates[-1] < 1e-6


def test_loss_falls_on_a_tiny_overfit_set(tmp_path: Path) -> None:
    module = tiny_module(p_uncond=0.0, flip=False, warmup_steps=5)
    data = DataLoader(TensorRows(tiny_tensors(8)), batch_size=8, shuffle=True)
    losses: list[float] = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):  # type: ignore[no-untyped-def]
            losses.append(float(outputs["loss"]))

    fit(module, data, 150, tmp_path, [Record()])
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.5 * first, (first, last)


def test_a_trained_model_reads_its_context(tmp_path: Path) -> None:
    """After a little training on images that their neighbours describe, the loss with each image's own
    neighbours is well below the loss with another image's: a model that ignored its context would
    score both the same."""
    generator = torch.Generator().manual_seed(3)
    n, k = 16, 2
    codes = torch.randn(n, DIM, generator=generator)
    projection = torch.randn(DIM, LATENT[0] * LATENT[1] * LATENT[2], generator=generator) / DIM**0.5
    latent = (codes @ projection).reshape(n, *LATENT)  # each image is fixed by its neighbours' vector
    neighbors = codes[:, None] + 0.05 * torch.randn(n, k, DIM, generator=generator)
    tensors = TrainingTensors([str(i) for i in range(n)], latent, latent.flip(-1), neighbors)
    module = tiny_module(p_uncond=0.0, flip=False, warmup_steps=10, lr=3e-3)
    fit(module, DataLoader(TensorRows(tensors), batch_size=n, shuffle=True), 300, tmp_path, [])
    module.eval()
    timesteps = torch.full((n,), 700)
    noise = torch.randn(latent.shape, generator=generator)
    context = neighbor_context(neighbors)
    with torch.no_grad():
        true = module.loss(latent, context, timesteps, noise).item()
        shuffled = module.loss(latent, context.roll(1, dims=0), timesteps, noise).item()
    assert true < 0.7 * shuffled, (true, shuffled)


def test_fused_ema_equals_lightnings_per_parameter_ema(tmp_path: Path) -> None:
    from lightning.pytorch.callbacks import EMAWeightAveraging

    from rdm.stages.train import ema_averaging

    data = DataLoader(TensorRows(tiny_tensors(16)), batch_size=8)
    averaged = []
    for callback in (EMAWeightAveraging(decay=0.9), ema_averaging(0.9)):
        module = tiny_module(p_uncond=0.0, flip=False)
        L.seed_everything(0, verbose=False)
        fit(module, data, 12, tmp_path, [callback])
        averaged.append(torch.cat([p.detach().flatten() for p in module.unet.parameters()]))
    trained = tiny_module(p_uncond=0.0, flip=False)
    assert not torch.allclose(averaged[0], torch.cat([p.flatten() for p in trained.unet.parameters()]))
    torch.testing.assert_close(averaged[1], averaged[0], rtol=1e-5, atol=1e-6)


def test_sampling_is_fixed_by_the_seed_and_moved_by_guidance() -> None:
    module = tiny_module().eval()
    context = neighbor_context(torch.randn(2, 2, DIM))
    a = module.sample(context, steps=4, guidance_scale=3.0, seed=5)
    b = module.sample(context, steps=4, guidance_scale=3.0, seed=5)
    assert a.shape == (2, *LATENT)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, module.sample(context, steps=4, guidance_scale=3.0, seed=6), atol=1e-2)
    assert not torch.allclose(a, module.sample(context, steps=4, guidance_scale=1.0, seed=5), atol=1e-2)
    # an image depends on its own seed, not on the rest of its batch: equal up to float kernels, whose
    # reductions may be ordered by batch size (seen: 2.4e-5 on one CPU); a different seed moves it by ~1
    alone = module.sample(context[1:], steps=4, guidance_scale=3.0, seed=6)
    torch.testing.assert_close(alone, a[1:], rtol=1e-3, atol=1e-3)


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
    context = sampling_context(torch.randn(3, DIM), torch.randn(3, 2, DIM))
    noise = seeded_noise(LATENT, [0, 1, 2])
    reference = denoise(
        module.unet, make_sampler("ddim", module.noise_schedule.config), context, noise, 250, 2.0
    )
    dpm = denoise(module.unet, make_sampler("dpm", module.noise_schedule.config), context, noise, 20, 2.0)
    coarse = denoise(module.unet, make_sampler("ddim", module.noise_schedule.config), context, noise, 20, 2.0)
    error = (dpm - reference).abs().mean() / reference.abs().mean()
    assert error < 0.05, error  # DPM-Solver++ in 20 steps lands where DDIM does in 250
    assert error < (coarse - reference).abs().mean() / reference.abs().mean()  # and beats DDIM in 20
    torch.testing.assert_close(
        dpm, denoise(module.unet, make_sampler("dpm", module.noise_schedule.config), context, noise, 20, 2.0)
    )
    with pytest.raises(ValueError, match="unknown sampler 'plms'"):
        make_sampler("plms", module.noise_schedule.config)


@pytest.mark.slow
def test_a_compiled_model_draws_the_same_images() -> None:
    """torch.compile (inductor here; CUDA graphs on a GPU) changes the speed, not the pictures."""
    from rdm.artifacts.model import ModelCard
    from rdm.config import AutoencoderParams
    from rdm.models import autoencoder
    from rdm.models.pipeline import RdmPipeline

    module = tiny_module().eval()
    shape = AutoencoderParams(image_size=16, block_out_channels=[8, 8], latent_channels=4)  # latents 4x8x8
    vae = autoencoder.build(shape).eval()
    card = ModelCard(2, DIM, LATENT, 16, 1.0, "rdm-tiny", "test", 0)
    model = RdmPipeline(module.unet, vae, module.noise_schedule.config, card)
    context = sampling_context(torch.randn(2, DIM), torch.randn(2, 2, DIM))
    eager = model.generate(context, steps=3, guidance_scale=3.0, seed=[4, 9])
    model.compile()
    compiled = model.generate(context, steps=3, guidance_scale=3.0, seed=[4, 9])
    assert eager.shape == (2, 16, 16, 3)
    assert int(abs(compiled.astype(int) - eager.astype(int)).max()) <= 1  # uint8 rounding at most


def test_offset_noise_moves_each_image_and_channel_mean_by_the_offset() -> None:
    torch.manual_seed(0)
    latents = torch.zeros(4000, 2, 8, 8)
    plain, offset = offset_noise(latents, 0.0), offset_noise(latents, 0.3)
    assert plain.shape == offset.shape == latents.shape
    # the mean of 64 standard normals has std 1/8; the offset adds its own std in quadrature
    assert plain.mean((2, 3)).std().item() == pytest.approx(1 / 8, rel=0.05)
    assert offset.mean((2, 3)).std().item() == pytest.approx((1 / 64 + 0.09) ** 0.5, rel=0.05)


def test_context_projection_starts_as_unit_variance_tokens_the_model_reacts_to() -> None:
    """Unit-norm CLIP vectors have components of about 1/sqrt(D): without the projection a fresh UNet
    barely tells two contexts apart; with it, the projected tokens have unit variance and the
    prediction moves with the context many times more."""
    dim = 128  # the demo CLIP's: sqrt(128) ~ 11 times larger tokens
    generator = torch.Generator().manual_seed(0)
    vectors = torch.nn.functional.normalize(torch.randn(2, 3, dim, generator=generator), dim=-1)  # (B, T, D)
    noisy = torch.randn((1, *LATENT), generator=generator).expand(2, -1, -1, -1)  # one latent, two contexts
    timesteps = torch.tensor([500, 500])
    moved = {}
    for projected in (False, True):
        torch.manual_seed(0)
        params = TINY_UNET.model_copy(update={"context_projection": projected})
        unet = unet_builder.build(params, LATENT[0], LATENT[1], dim).eval()
        with torch.no_grad():
            if projected:
                tokens = unet.encoder_hid_proj(vectors)
                assert tokens.std().item() == pytest.approx(1.0, rel=0.2)
            prediction = unet(noisy, timesteps, encoder_hidden_states=vectors).sample
        moved[projected] = (prediction[0] - prediction[1]).abs().mean().item()
    assert moved[True] > 4 * moved[False], moved  # seen: 8 to 16 times over six seeds
