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

from rdm.data.demo.styles import STYLE_NAMES
from rdm.errors import UserError

DEFAULT_PARAMS = Path("params.yaml")


class ConfigError(UserError, ValueError):
    """A params file that cannot be used; the message names the file and the field."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


PositiveInt = Annotated[int, Field(ge=1)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]


class GenerateParams(Section):
    """The built-in demo dataset: small captioned artworks in distinct styles."""

    seed: int = 0
    image_size: Annotated[int, Field(ge=16, le=1024)] = 64
    train_images: PositiveInt = 1000
    d_train_images: PositiveInt = 1000
    style_images: PositiveInt = 120
    """Images in each style's collection."""
    eval_prompts: PositiveInt = 24
    styles: list[str] = Field(default_factory=lambda: [s for s in STYLE_NAMES if s != "plain"])
    held_out_styles: list[str] = Field(default_factory=lambda: ["ukiyo_e"])
    """Styles that appear only in their own collection: never in training images, D_train or captions."""
    plain_fraction: Fraction = 0.15
    """Share of training and D_train images drawn in the plain style."""
    style_caption_fraction: Fraction = 0.5
    """Share of captions that name the style, so a CLIP trained on them learns style words."""
    out: str = "data/raw"

    @model_validator(mode="after")
    def _known_styles(self) -> GenerateParams:
        unknown = [s for s in [*self.styles, *self.held_out_styles] if s not in STYLE_NAMES]
        if unknown:
            raise ValueError(f"unknown style(s) {unknown}; known styles: {list(STYLE_NAMES)}")
        if "plain" in self.styles:
            raise ValueError("'plain' is the unstyled rendering, not a style collection; remove it")
        missing = [s for s in self.held_out_styles if s not in self.styles]
        if missing:
            raise ValueError(f"held_out_styles {missing} must also be listed in styles")
        if len(self.held_out_styles) >= len(self.styles):
            raise ValueError("at least one style must be left for training (held_out_styles holds them all)")
        return self


class SourcesParams(Section):
    """Where each split's images come from: a folder (ImageFolder layout), a manifest file
    (.csv, .jsonl or .parquet with path, caption, style) or an `s3://bucket/prefix`."""

    train: str = "data/raw/train/manifest.csv"
    d_train: str = "data/raw/d_train/manifest.csv"
    styles: str = "data/raw/styles"
    """One collection per style: the style is the first folder below this root (or a manifest column)."""
    prompts: str | None = "data/raw/prompts.csv"
    """Evaluation prompts: a CSV or JSONL file with a `prompt` column."""


class PrepareParams(Section):
    """Ingestion of the raw sources into validated, content-addressed images and parquet manifests."""

    sources: SourcesParams = SourcesParams()
    out: str = "data/prepared"
    metrics: str = "reports/prepare.json"
    rejected: str = "reports/rejected.jsonl"
    min_side: PositiveInt = 32
    """Images whose shorter side is below this are rejected as too small."""
    max_side: Annotated[int, Field(ge=16)] = 512
    """Larger images are downscaled so their longer side is this (aspect kept)."""
    max_pixels: Annotated[int, Field(ge=1024)] = 40_000_000
    """Images declaring more pixels are rejected before decoding (decompression bombs)."""
    workers: Annotated[int, Field(ge=1, le=64)] = 4


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
    metrics: str = "reports/embed.json"
    batch_size: PositiveInt = 256
    workers: Annotated[int, Field(ge=0, le=64)] | Literal["auto"] = "auto"
    """DataLoader processes decoding images. `auto`: none on a CPU (the model already uses every core,
    measured faster on 2 cores), up to 8 beside a GPU."""
    chunk_size: PositiveInt = 2048
    """Images embedded between two checkpoints: a killed run loses at most this many."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
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
    hnsw_ef: Annotated[int, Field(ge=8)] = 64
    """Candidates kept while searching the graph: recall@19 0.9998 at 100k x 512 (benchmarks/retrieval.py)."""


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


class Config(Section):
    generate: GenerateParams = GenerateParams()
    prepare: PrepareParams = PrepareParams()
    clip: ClipParams = ClipParams()
    embed: EmbedParams = EmbedParams()
    store: StoreParams = StoreParams()
    neighbors: NeighborsParams = NeighborsParams()
    s3: S3Params = S3Params()

    @model_validator(mode="after")
    def _demo_fits_prepare(self) -> Config:
        if self.generate.image_size < self.prepare.min_side:
            raise ValueError(
                f"generate.image_size ({self.generate.image_size}) is below prepare.min_side "
                f"({self.prepare.min_side}): every demo image would be rejected as too small"
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
