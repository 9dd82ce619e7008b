"""The one typed configuration of the pipeline, loaded from `params.yaml`.

Each top-level section is named after the stage that reads it (DVC tracks the same sections as
stage params). Every model forbids unknown keys and uses strict types, so a typo or a wrong type
fails before any work starts, with a message that names the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from rdm.errors import UserError

DEFAULT_PARAMS = Path("params.yaml")


class ConfigError(UserError, ValueError):
    """A params file that cannot be used; the message names the file and the field."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


PositiveInt = Annotated[int, Field(ge=1)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]


class GenerateParams(Section):
    """The built-in demo dataset, a miniature of the paper's setting: training images and a general
    D_train (mostly ordinary renderings, each seen style a few percent), specialised style collections
    large enough to match a prompt's content and colour, and styles held out of everything but their
    own collection."""

    seed: int = 0
    image_size: Annotated[int, Field(ge=16, le=1024)] = 64
    train_images: PositiveInt = 2000
    d_train_images: PositiveInt = 3000
    style_images: PositiveInt = 300
    """Images in each style's collection."""
    eval_prompts: PositiveInt = 24
    styles: list[str] = Field(
        default_factory=lambda: [
            "pointillism",
            "hatching",
            "mosaic",
            "neon",
            "watercolor",
            "pixel_art",
            "ukiyo_e",
        ]
    )
    """The style collections, evaluated one by one."""
    held_out_styles: list[str] = Field(default_factory=lambda: ["pixel_art", "ukiyo_e"])
    """Styles that appear only in their own collection: never in training images, D_train or captions."""
    general: list[str] = Field(default_factory=lambda: ["plain", "shaded", "sketch"])
    """Ordinary renderings that make up the rest of the training images and D_train."""
    style_fraction: Annotated[float, Field(ge=0.0, le=0.25)] = 0.05
    """Share of the training images and of D_train drawn in each seen style."""
    style_caption_fraction: Fraction = 0.5
    """Share of styled captions that name the style, so a CLIP trained on them learns style words."""
    out: str = "data/raw"

    @model_validator(mode="after")
    def _known_styles(self) -> GenerateParams:
        if not self.general:
            raise ValueError("general needs at least one ordinary rendering (e.g. plain)")
        both = sorted(set(self.styles) & set(self.general))
        if both:
            raise ValueError(f"{both} are general renderings, not style collections: remove them from styles")
        missing = [s for s in self.held_out_styles if s not in self.styles]
        if missing:
            raise ValueError(f"held_out_styles {missing} must also be listed in styles")
        seen = len(self.styles) - len(self.held_out_styles)
        if seen < 1:
            raise ValueError("at least one style must be left for training (held_out_styles holds them all)")
        if seen * self.style_fraction > 0.9:
            raise ValueError(
                f"style_fraction {self.style_fraction} x {seen} seen styles leaves almost no general images"
            )
        return self


class SourcesParams(Section):
    """Where each split's images come from: a folder (ImageFolder layout), a manifest file
    (.csv, .jsonl or .parquet with path, caption, style) or an `s3://bucket/prefix`."""

    train: str = "data/raw/train/manifest.csv"
    d_train: str = "data/raw/d_train/manifest.csv"
    styles: str | list[str] = "data/raw/styles"
    """One collection per style: the style is the first folder below each root (or a manifest column).
    A list gathers several sources (folders, manifests, s3:// prefixes) into the same collections."""
    prompts: str | None = "data/raw/prompts.csv"
    """Evaluation prompts: a CSV or JSONL file with a `prompt` column."""


class PrepareParams(Section):
    """Ingestion of the raw sources into validated, content-addressed images and parquet manifests."""

    sources: SourcesParams = SourcesParams()
    out: str = "data/prepared"
    metrics: str = "reports/prepare"
    """Folder of the ingestion counts, one `<side>.json` per side (`rdm.artifacts.manifest.SIDES`)."""
    rejected: str = "reports/rejected"
    """Folder of the rejected files, one `<side>.jsonl` per side."""
    min_side: PositiveInt = 32
    """Images whose shorter side is below this are rejected as too small."""
    max_side: Annotated[int, Field(ge=16)] = 512
    """Larger images are downscaled so their longer side is this (aspect kept)."""
    max_pixels: Annotated[int, Field(ge=1024)] = 40_000_000
    """Images declaring more pixels are rejected before decoding (decompression bombs)."""
    workers: Annotated[int, Field(ge=1, le=64)] = 4
    """local: threads reading and checking files."""
    executor: Literal["local", "ray"] = "local"
    """local: this process, with `workers` threads; ray: tasks on the Ray cluster `RAY_ADDRESS` names
    (else a Ray started here) read, decode and check the files (`rdm.data.on_ray`). Same outcome."""


class S3Params(Section):
    """Connection to S3 or an S3-compatible store (MinIO). Credentials are best left to the
    environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_PROFILE); they are never logged."""

    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: SecretStr | None = None
    secret_access_key: SecretStr | None = None
    max_attempts: PositiveInt = 5


class ClipParams(Section):
    """The CLIP model every embedding comes from: an open_clip model with pretrained weights, or,
    with none at hand, a small CLIP trained here on the captioned training images."""

    model: str = "rdm-tiny"
    """An open_clip model name (`ViT-B-32`, `ViT-L-14`, ...) or the built-in demo size `rdm-tiny`."""
    pretrained: str | None = None
    """A pretrained tag (`laion2b_s34b_b79k`, `openai`) or a local weights file; null trains one."""
    resize: Literal["crop", "squash"] = "crop"
    """How images become the CLIP's square input, recorded in the CLIP folder so every stage embedding
    with it does the same. `crop`: shortest side to the input side (bicubic), centre crop, as open_clip.
    `squash`: the whole image to the input side, aspect ratio not kept (bicubic, align_corners, no
    antialiasing, rounded to uint8), as CompVis' released retrieval databases were embedded (knn2img,
    with ViT-L-14-quickgelu and OpenAI weights): use it to make collections comparable with those."""
    out: str = "models/clip"
    metrics: str = "reports/clip.json"
    holdout_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.1
    """Share of captioned training images kept out of CLIP training to measure retrieval."""
    seed: int = 0
    epochs: PositiveInt = 40
    batch_size: Annotated[int, Field(ge=2)] = 128
    lr: Annotated[float, Field(gt=0.0)] = 1e-3
    weight_decay: Annotated[float, Field(ge=0.0)] = 0.1
    device: Literal["auto", "cpu", "cuda"] = "auto"


class EmbedParams(Section):
    """Embedding every prepared image and filling the collections."""

    out: str = "data/embeddings"
    metrics: str = "reports/embed"
    """Folder of the embedding counts, one `<side>.json` per side."""
    batch_size: PositiveInt = 256
    workers: Annotated[int, Field(ge=0, le=64)] | Literal["auto"] = "auto"
    """DataLoader processes decoding images. `auto`: none on a CPU (the model already uses every core,
    measured faster on 2 cores), up to 8 beside a GPU."""
    chunk_size: PositiveInt = 2048
    """Images embedded between two checkpoints: a killed run loses at most this many."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    executor: Literal["local", "ray"] = "local"
    """local: this process (with `workers` decoding); ray: the Ray cluster `RAY_ADDRESS` names (else a
    Ray started here), images decoded in CPU tasks and embedded by CLIP actors
    (`rdm.embedding.on_ray`)."""
    ray_actors: PositiveInt | Literal["auto"] = "auto"
    """ray, on CPUs: CLIP actors. `auto`: half the cluster's cores; with GPUs always one per GPU."""
    rebuild_mismatched: bool = True
    """A collection holding another CLIP's vectors is rebuilt (true) or refused with an error (false:
    the safe choice for collections shared on a server)."""


class StoreParams(Section):
    """The vector database. `edge` runs Qdrant's engine in-process (one shard folder per
    collection); `server` talks to a Qdrant server or cluster."""

    backend: Literal["edge", "server"] = "edge"
    path: str = "data/qdrant"
    """Edge: the folder holding one shard folder per collection."""
    url: str | None = None
    """Server: e.g. http://127.0.0.1:6333 (or QDRANT_URL); `:memory:` runs qdrant-client's local toy."""
    api_key: SecretStr | None = None
    """Server: or QDRANT_API_KEY in the environment."""
    exact_below: PositiveInt = 20_000
    """Collections with fewer points are searched exactly; larger ones through HNSW."""
    hnsw_m: Annotated[int, Field(ge=4, le=128)] = 16
    hnsw_ef_construct: Annotated[int, Field(ge=8)] = 100
    hnsw_ef: Annotated[int, Field(ge=8)] = 128
    """Candidates kept while searching the graph. At 1M x 512 (benchmarks/retrieval.py, 2 cores):
    64 gives recall@19 0.94 to 0.95 at p50 0.47 ms, 128 gives 0.988 at 0.67 ms."""
    quantization: Literal["none", "int8"] = "none"
    """int8: the vectors also held as int8 scalars (a quarter of float32's memory), which the graph
    search scores; the best `quantization_oversampling` x k are re-scored from the float32 vectors."""
    quantization_oversampling: Annotated[float, Field(ge=1.0)] = 2.0
    version_max_age_s: PositiveInt = 3600
    """Edge: a superseded version is removed once no reader is copying it; one a reader still holds is
    removed anyway this long after the first attempt (that reader, stuck, retries with the new one)."""
    lock_ttl_s: PositiveInt = 120
    """Server: a revision's lock, held in the server (`<name>__lock`), expires this long after its last
    renewal (every third of it while the revision runs); another host breaks an expired lock, so a
    crashed host blocks the collection this long at most."""


class NeighborsParams(Section):
    """The k nearest neighbours in D_train of every training image (the training context)."""

    k: Annotated[int, Field(ge=1, le=64)] = 4
    """The reference trained with 4 (ImageNet RDM) to 8 (LAION RDM)."""
    duplicate_threshold: Annotated[float, Field(gt=0.0, le=1.0)] = 0.99
    """Neighbours at least this cosine-similar to the query are near-duplicates and dropped."""
    out: str = "data/neighbors/train.parquet"
    metrics: str = "reports/neighbors.json"
    batch_size: PositiveInt = 1024
    device: Literal["auto", "cpu", "cuda"] = "auto"
    method: Literal["exact", "ivfpq"] = "exact"
    """exact: every query scored against all of D_train (the default, and the GPU path); ivfpq: a
    faiss IVF-PQ index of D_train, its candidates re-scored exactly, for databases of millions."""
    ivf_lists: PositiveInt | None = None
    """ivfpq: inverted lists; null means 4 x sqrt(N), as autofaiss sizes them."""
    code_bytes: PositiveInt = 64
    """ivfpq: bytes per vector (product-quantiser sub-vectors); must divide the embedding size."""
    nprobe: PositiveInt = 16
    """ivfpq: lists searched per query: recall against time."""
    rerank: PositiveInt = 16
    """ivfpq: candidates per neighbour re-scored with the stored vectors: at 1M x 512, k 19, recall@19
    0.90 with 4 and 1.00 with 16 (benchmarks/retrieval.py)."""
    recall_queries: PositiveInt = 1000
    """ivfpq: queries also answered exactly, for the recall@k the stage reports."""


class AutoencoderParams(Section):
    """The KL autoencoder the diffusion runs in: a pretrained diffusers `AutoencoderKL` folder (Stable
    Diffusion's VAE, for one), or, with none at hand, a small one trained here on the training images."""

    pretrained: str | None = None
    """A local diffusers AutoencoderKL folder (config.json + weights); null trains one."""
    out: str = "models/autoencoder"
    metrics: str = "reports/autoencoder.json"
    reconstructions: str = "reports/autoencoder"
    """Reconstructions of style-collection images (PNGs + reconstructions.jsonl): the evaluation's ceiling,
    written by the `reconstruct` stage."""
    reconstruction_metrics: str = "reports/reconstruct.json"
    """Their PSNR and colour check, overall and per style."""
    latents: str | None = "data/latents/train.npz"
    """Where the training images' latents are cached (both flips); null encodes on the fly in training."""
    image_size: Annotated[int, Field(ge=16, le=1024)] = 64
    """Training images are resized and centre-cropped to this side; latents are 2**(levels-1) smaller."""
    block_out_channels: list[PositiveInt] = Field(default_factory=lambda: [16, 32, 32])
    """Channels per level when training; three levels give a 4x smaller latent (the reference's f=4)."""
    layers_per_block: PositiveInt = 1
    latent_channels: PositiveInt = 4
    steps: PositiveInt = 1500
    batch_size: PositiveInt = 16
    lr: Annotated[float, Field(gt=0.0)] = 1e-3
    kl_weight: Annotated[float, Field(ge=0.0)] = 1e-6
    """Weight of the KL term against the L1 reconstruction loss (the reference's 1e-6)."""
    gradient_weight: Annotated[float, Field(ge=0.0)] = 1.0
    """Weight of the L1 on image gradients: keeps edges and strokes."""
    fft_weight: Annotated[float, Field(ge=0.0)] = 0.0
    """Weight of the L1 on Fourier magnitudes: keeps textures whose phase varies (dots, hatching)."""
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"

    @model_validator(mode="after")
    def _latent_fits(self) -> AutoencoderParams:
        factor = 2 ** (len(self.block_out_channels) - 1)
        if self.image_size % factor:
            raise ValueError(
                f"image_size ({self.image_size}) must be divisible by the downsampling factor {factor} "
                f"of {len(self.block_out_channels)} levels in block_out_channels"
            )
        return self


class UNetParams(Section):
    """The denoising UNet (diffusers UNet2DConditionModel). The defaults are the demo size, which trains
    in minutes on 2 CPU cores; README "Model sizes" gives the paper-like 400M setting for GPUs."""

    block_out_channels: list[PositiveInt] = Field(default_factory=lambda: [32, 64, 128])
    cross_attention: list[bool] = Field(default_factory=lambda: [False, True, True])
    """Per level: whether it reads the retrieved context through cross-attention (the reference: every
    level but the first)."""
    layers_per_block: PositiveInt = 1
    head_channels: PositiveInt = 32
    """Channels per attention head (the reference's num_head_channels)."""
    norm_groups: PositiveInt = 32
    pooled_context: bool = False
    """Also add an attention-pooled summary of the context to the timestep embedding, so every ResNet
    block (levels without cross-attention too) is steered by it (diffusers' `addition_embed_type:
    text`). Not in the reference, whose UNet reads the context by cross-attention alone."""
    context_projection: bool = False
    """Pass the context through a learned linear map that starts as sqrt(D) times the identity, so the
    cross-attention meets unit-variance tokens from unit-norm CLIP vectors from its first step (their
    raw components are about 1/sqrt(D): keys and values near zero, attention uniform). Not in the
    reference, which has a GPU-week to grow its key and value weights instead."""

    @model_validator(mode="after")
    def _one_flag_per_level(self) -> UNetParams:
        if len(self.cross_attention) != len(self.block_out_channels):
            raise ValueError(
                f"cross_attention has {len(self.cross_attention)} entries but block_out_channels has "
                f"{len(self.block_out_channels)} levels: give one true/false per level"
            )
        bad = [c for c in self.block_out_channels if c % self.norm_groups or c % self.head_channels]
        if bad:
            raise ValueError(
                f"block_out_channels {bad} must be multiples of norm_groups ({self.norm_groups}) "
                f"and head_channels ({self.head_channels})"
            )
        return self


class TrainParams(Section):
    """Training the retrieval-conditioned diffusion model with Lightning."""

    unet: UNetParams = UNetParams()
    k: Annotated[int, Field(ge=1, le=64)] = 4
    """Neighbours in the training context, the nearest first (the reference: 4 and 8); at most
    neighbors.k. The context is these neighbours alone, never the image's own embedding."""
    k_min: Annotated[int, Field(ge=1, le=64)] | None = None
    """With a value, each batch draws its k uniformly from [k_min, k], so the model meets the range of k
    it is sampled with (sample.k); null trains with k alone."""
    p_uncond: Fraction = 0.1
    """Share of examples whose whole context is zeroed, so classifier-free guidance has a trained null."""
    flip: bool = True
    """Random horizontal flips."""
    batch_size: PositiveInt = 32
    max_steps: PositiveInt = 1500
    lr: Annotated[float, Field(gt=0.0)] = 4e-4
    warmup_steps: Annotated[int, Field(ge=0)] = 100
    lr_schedule: Literal["constant", "cosine"] = "constant"
    """After the warm-up: `constant` (the reference's LambdaLinearScheduler) or `cosine` decay to zero
    at max_steps, which a short fixed budget favours."""
    weight_decay: Annotated[float, Field(ge=0.0)] = 0.01
    grad_clip: Annotated[float, Field(gt=0.0)] = 1.0
    ema_decay: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.995
    min_snr_gamma: Annotated[float, Field(gt=0.0)] | None = None
    """Min-SNR loss weighting (Hang et al. 2023: weight min(SNR, gamma) / SNR for epsilon); null is the
    reference's plain L2."""
    noise_offset: Annotated[float, Field(ge=0.0)] = 0.0
    """Std of a per-channel constant added to the training noise (offset noise): the schedule's last
    step keeps a trace of each image's mean, which the model learns to read from the noise, so at
    sampling the seed, not the context, would set brightness and background. 0 is the reference."""
    val_images: Annotated[int, Field(ge=1)] = 32
    """Training images kept apart for the validation loss and the sample grids."""
    val_every_n_steps: PositiveInt = 250
    """How often the validation loss is measured and a grid of samples (EMA weights) is logged."""
    log_every_n_steps: PositiveInt = 10
    """How often losses, learning rate and throughput go to MLflow (sent asynchronously)."""
    sample_steps: PositiveInt = 25
    """DDIM steps for the logged sample grids."""
    guidance_scale: Annotated[float, Field(ge=1.0)] = 3.0
    checkpoint_every_n_steps: PositiveInt = 100
    checkpoints: str = "models/checkpoints"
    out: str = "models/rdm"
    metrics: str = "reports/train.json"
    precision: Literal["auto", "32-true", "bf16-mixed", "16-mixed"] = "auto"
    """auto: bf16-mixed on a GPU, 32-true on a CPU."""
    accelerator: Literal["auto", "cpu", "gpu"] = "auto"
    devices: PositiveInt | Literal["auto"] = 1
    """More than one runs DDP (gloo on CPUs, NCCL on GPUs)."""
    num_nodes: PositiveInt = 1
    workers: Annotated[int, Field(ge=0, le=64)] = 0
    seed: int = 0


class SampleParams(Section):
    """Stylized sampling: the defaults of `rdm sample`, and what the `sample` stage draws for evaluation."""

    model: str = "models:/rdm@latest"
    """What `rdm sample` loads by default: a registry URI, a model folder, or a Lightning .ckpt. The
    `sample` stage always samples `train.out`, the model DVC tracks."""
    k: Annotated[int, Field(ge=0, le=256)] = 19
    """Neighbours retrieved per query (the paper: 19 from the style database); may differ from train.k."""
    query: Literal["with_neighbors", "neighbors_only", "query_only"] = "with_neighbors"
    """The context's tokens: the query then its k neighbours (knn2img, the default), the neighbours alone,
    or the query alone."""
    sampler: Literal["ddim", "dpm"] = "ddim"
    """ddim (eta 0) or dpm (DPM-Solver++, 2nd order multistep, good in about 20 steps)."""
    steps: PositiveInt = 50
    guidance_scale: Annotated[float, Field(ge=1.0)] = 5.0
    postfix: str = "in the style of {style}"
    """The baseline: the prompt plus this text, retrieved from D_train; `{style}` is the style's words."""
    style_words: dict[str, str] = Field(default_factory=dict)
    """How a prompt names a style, when not the name with spaces (e.g. ukiyo_e: ukiyo-e)."""
    per_style: Annotated[int, Field(ge=2)] = 70
    """Samples per style and per method in the `sample` stage (the paper: 70); prompts are cycled."""
    methods: Annotated[list[Literal["retrieval", "postfix", "postfix_text"]], Field(min_length=1)] = [
        "retrieval",
        "postfix",
        "postfix_text",
    ]
    """What the `sample` stage draws, `per_style` each: retrieval (the prompt and its k neighbours from
    the style's collection), postfix (prompt + postfix, neighbours from D_train), postfix_text (prompt +
    postfix alone, knn2img's text-only mode)."""
    floor_per_style: Annotated[int, Field(ge=0)] = 20
    """Samples per style of each floor in the `sample` stage: null (the all-zero context) and other_style
    (retrieval from the next style's collection); 0 draws none."""
    top_m: Annotated[float, Field(gt=0.0, le=1.0)] = 0.01
    """`rdm sample --unconditional`: pseudo-queries are drawn from this share of the D_train images most
    often retrieved for training images (the RDM repo's top-m; 0.01 gave its best FID)."""
    seed: int = 0
    batch_size: PositiveInt = 32
    grid_rows: PositiveInt = 8
    """Rows (prompt, seed) in each grid of the `sample` stage; styles are its columns."""
    out: str = "data/samples"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    compile: bool = False
    """torch.compile the UNet before sampling (CUDA graphs on a GPU: on an H100, 4x faster DDIM and 7x
    faster DPM-Solver at demo size); the first batch of each size pays about a minute of compiling."""

    def style_text(self, style: str) -> str:
        return self.style_words.get(style, style.replace("_", " "))

    @model_validator(mode="after")
    def _postfix_names_style(self) -> SampleParams:
        if "{style}" not in self.postfix:
            raise ValueError(f"postfix {self.postfix!r} must contain {{style}}, where the style's words go")
        if len(set(self.methods)) != len(self.methods):
            raise ValueError(f"methods {self.methods} lists a method twice")
        return self


class ClassifierParams(Section):
    """The style classifier: a 2-layer perceptron on CLIP image features (the paper's, 77 % on ArtBench);
    the content and colour classifiers of the evaluation use the same settings."""

    hidden: PositiveInt = 256
    epochs: PositiveInt = 300
    lr: Annotated[float, Field(gt=0.0)] = 1e-3
    weight_decay: Annotated[float, Field(ge=0.0)] = 1e-2
    holdout_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.2
    """Share of the classifier's images kept apart to measure its top-1 (for the style classifier, of
    its part of each collection, chosen by id with `evaluate.split_seed`)."""
    seed: int = 0


class EvaluateParams(Section):
    """Scoring the `sample` stage's images: style accuracy and target logits with bootstrap intervals,
    floors and a ceiling, content and colour kept, conditioning sensitivity, Frechet distance, CLIP score."""

    classifier: ClassifierParams = ClassifierParams()
    classifier_share: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.3
    """Share of every style collection, chosen by a hash of the image id, that trains and checks the style
    classifier and that retrieval must never return (`rdm.evaluation.split.classifier_ids`)."""
    split_seed: int = 0
    """Salt of that hash: another seed, another split."""
    bootstrap_resamples: Annotated[int, Field(ge=100)] = 1000
    """Resamples of every 95 % interval (percentile bootstrap, paired for differences)."""
    bootstrap_seed: int = 0
    metrics: str = "reports/evaluate.json"
    plots: str = "reports/evaluate"
    """Folder for the per-style CSV tables and the PNG charts."""
    device: Literal["auto", "cpu", "cuda"] = "auto"


class TrackingParams(Section):
    """MLflow: where runs, metrics, images and the registered model go."""

    tracking_uri: str = "sqlite:///mlflow.db"
    """MLFLOW_TRACKING_URI overrides it (e.g. http://127.0.0.1:5000 for `make services`)."""
    experiment: str = "rdm"
    registered_model: str = "rdm"
    alias: str = "latest"
    """The alias the new version gets; `latest` is MLflow's own, always the newest version
    (`models:/rdm@latest`); another name (`champion`) is moved to each new version."""
    enabled: bool = True
    """false trains without MLflow (no logger, nothing registered)."""


class RefreshParams(Section):
    """The scheduled refresh of the style collections from `prepare.sources.styles` (a folder or an
    s3:// prefix of `<style>/<image>`): what changed is found by content hash, only new images are
    embedded, and each changed collection is published as a new version in one atomic step."""

    schedule: Annotated[str, Field(pattern=r"^\S+( \S+){4}$")] = "0 3 * * *"
    """Cron (5 fields) of the refresh-style-collections deployment."""
    timezone: str = "UTC"
    metrics: str = "reports/refresh.json"

    @model_validator(mode="after")
    def _known_timezone(self) -> RefreshParams:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"refresh.timezone {self.timezone!r} is not an IANA time zone (e.g. UTC, Europe/Berlin)"
            ) from None
        return self

    """The last refresh's summary: per style added, changed, removed, rejected, points; duration."""


class ServicesParams(Section):
    """`make services`: a Prefect server, an MLflow server and the served deployments, on this machine."""

    host: str = "127.0.0.1"
    prefect_port: Annotated[int, Field(ge=1, le=65535)] = 4200
    mlflow_port: Annotated[int, Field(ge=1, le=65535)] = 5000
    state: str = ".services"
    """Their databases, logs and process ids (git-ignored)."""
    startup_timeout: PositiveInt = 180
    """Seconds to wait for each to answer before giving up."""
    stack: Literal["sqlite", "postgres"] = "sqlite"
    """`sqlite`: both servers on SQLite, the deployments served by one process (a laptop). `postgres`:
    the compose stack's shape without Docker (infra/README.md): PostgreSQL from this machine's
    binaries under both servers, MLflow serving artifacts from `artifacts`, the deployments of
    infra/prefect.yaml in the process pool of infra/work-pool.json, run by a `prefect worker`."""
    postgres_port: Annotated[int, Field(ge=1, le=65535)] = 5432
    postgres_data: str | None = None
    """The PostgreSQL data folder (default `<state>/postgres`); run as root, the server runs as the OS
    user postgres, which must be able to reach it."""
    artifacts: str | None = None
    """Postgres stack: where the MLflow server keeps artifacts, e.g. `s3://mlflow/artifacts` (it reads
    AWS_* and MLFLOW_S3_ENDPOINT_URL); default `<state>/mlartifacts`. Clients need no credentials."""


class Config(Section):
    generate: GenerateParams = GenerateParams()
    prepare: PrepareParams = PrepareParams()
    clip: ClipParams = ClipParams()
    embed: EmbedParams = EmbedParams()
    store: StoreParams = StoreParams()
    neighbors: NeighborsParams = NeighborsParams()
    autoencoder: AutoencoderParams = AutoencoderParams()
    train: TrainParams = TrainParams()
    sample: SampleParams = SampleParams()
    evaluate: EvaluateParams = EvaluateParams()
    tracking: TrackingParams = TrackingParams()
    refresh: RefreshParams = RefreshParams()
    services: ServicesParams = ServicesParams()
    s3: S3Params = S3Params()

    @model_validator(mode="after")
    def _demo_fits_prepare(self) -> Config:
        if self.generate.image_size < self.prepare.min_side:
            raise ValueError(
                f"generate.image_size ({self.generate.image_size}) is below prepare.min_side "
                f"({self.prepare.min_side}): every demo image would be rejected as too small"
            )
        if self.train.k_min is not None and self.train.k_min > self.train.k:
            raise ValueError(f"train.k_min ({self.train.k_min}) is more than train.k ({self.train.k})")
        if self.train.k > self.neighbors.k:
            raise ValueError(
                f"train.k ({self.train.k}) is more than neighbors.k ({self.neighbors.k}): "
                "raise neighbors.k or lower train.k"
            )
        return self


def load_config(path: str | Path = DEFAULT_PARAMS) -> Config:
    """Read and validate a params file; raise ConfigError naming the file and every bad field."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such params file; run from the project root or pass --params PATH")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(data).__name__}")
    return config_from_dict(data, source=str(path))


def config_from_dict(data: dict[str, Any], source: str = "params") -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source)) from None


def _describe(exc: ValidationError, source: str) -> str:
    lines = [f"{source}: {exc.error_count()} invalid setting(s):"]
    for err in exc.errors():
        field = ".".join(str(part) for part in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            known = _known_keys(err["loc"][:-1])
            lines.append(f"  {field}: unknown key; the keys allowed here are {known}")
        elif err["type"] == "value_error":
            lines.append(f"  {field or '(top level)'}: {err['msg'].removeprefix('Value error, ')}")
        else:
            lines.append(f"  {field}: {err['msg']} (got {err['input']!r})")
    return "\n".join(lines)


def _known_keys(loc: tuple[int | str, ...]) -> list[str]:
    model: type[BaseModel] = Config
    for part in loc:
        annotation = model.model_fields[str(part)].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def _null_as_null_class() -> type:
    from ruamel.yaml.representer import RoundTripRepresenter

    class NullAsNull(RoundTripRepresenter):
        """Writes None as `null`, as params.yaml spells it (ruamel's default writes nothing)."""

    NullAsNull.add_representer(
        type(None), lambda rep, _: rep.represent_scalar("tag:yaml.org,2002:null", "null")
    )
    return NullAsNull


def set_params(path: Path, changes: dict[str, Any]) -> list[str]:
    """Write dotted changes (`{"train.max_steps": 3000}`) into the params file, keeping its comments and
    order, as `dvc exp run -S` does. The result is validated before anything is written; returns the
    keys whose value changed."""
    import io

    from ruamel.yaml import YAML

    from rdm.files import atomic_write_bytes

    round_trip = YAML()
    round_trip.preserve_quotes = True
    round_trip.Representer = _null_as_null_class()
    document = round_trip.load(path.read_text())
    changed = []
    for dotted, value in changes.items():
        node = document
        *sections, key = dotted.split(".")
        for section in sections:
            if not isinstance(node.get(section), dict):
                raise ConfigError(f"{path}: {dotted}: no section {section!r} here; see `rdm config`")
            node = node[section]
        if node.get(key) != value:
            node[key] = value
            changed.append(dotted)
    buffer = io.StringIO()
    round_trip.dump(document, buffer)
    config_from_dict(yaml.safe_load(buffer.getvalue()), source=f"{path} with {changes}")
    atomic_write_bytes(path, buffer.getvalue().encode())
    return changed
