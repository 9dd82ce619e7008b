"""The one typed configuration of the pipeline, loaded from `params.yaml`.

Each top-level section is named after the stage that reads it (DVC tracks the same sections as
stage params). Every model forbids unknown keys and uses strict types, so a typo or a wrong type
fails before any work starts, with a message that names the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

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


class Config(Section):
    generate: GenerateParams = GenerateParams()
    prepare: PrepareParams = PrepareParams()
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
