"""Decoding and checking one image: everything a dataset of real files throws at a pipeline.

`check_image` fully decodes the bytes (so truncation is caught here, not in a training loop),
applies the EXIF orientation, converts every mode to 8-bit RGB and enforces size limits. A bad
file raises `Rejected` with a short machine-readable reason and a human detail.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

# Reasons a file is not ingested; each is counted in the stage metrics.
EMPTY = "empty"
NOT_AN_IMAGE = "not_an_image"
TRUNCATED = "truncated"
CORRUPT = "corrupt"
TOO_SMALL = "too_small"
TOO_LARGE = "too_large"
UNREADABLE = "unreadable"
DUPLICATE = "duplicate"
NO_STYLE = "no_style"

# Formats whose original bytes are kept when no conversion was needed.
KEPT_FORMATS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp"}
SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}  # "I" is what some decoders give 16-bit as


class Rejected(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Limits:
    min_side: int = 32
    max_side: int = 512
    max_pixels: int = 40_000_000


@dataclass(frozen=True)
class CheckedImage:
    image: Image.Image
    """8-bit RGB, upright, within max_side."""
    suffix: str
    """File suffix to store it under."""
    unchanged: bool
    """True when the original bytes already are this image (so they can be stored as they are)."""


def check_image(data: bytes, limits: Limits) -> CheckedImage:
    if not data:
        raise Rejected(EMPTY, "zero-byte file")
    image = _open(data, limits)
    width, height = image.size
    original_format = image.format or ""
    upright = _upright(image)
    rgb = to_rgb(upright)
    if min(rgb.size) < limits.min_side:
        raise Rejected(TOO_SMALL, f"{width}x{height} is below min_side {limits.min_side}")
    resized = _fit(rgb, limits.max_side)
    unchanged = upright is image and rgb is upright and resized is rgb and original_format in KEPT_FORMATS
    suffix = KEPT_FORMATS[original_format] if unchanged else ".png"
    return CheckedImage(image=resized, suffix=suffix, unchanged=unchanged)


def _open(data: bytes, limits: Limits) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise Rejected(TOO_LARGE, str(exc)) from None
    except UnidentifiedImageError:
        raise Rejected(NOT_AN_IMAGE, "not a format Pillow can decode") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise Rejected(CORRUPT, f"unreadable header: {exc}") from None
    width, height = image.size
    if width * height > limits.max_pixels:
        raise Rejected(TOO_LARGE, f"{width}x{height} exceeds max_pixels {limits.max_pixels}")
    try:
        image.load()
    except OSError as exc:
        reason = TRUNCATED if "truncated" in str(exc) or "broken data stream" in str(exc) else CORRUPT
        raise Rejected(reason, str(exc)) from None
    except (SyntaxError, ValueError, EOFError) as exc:
        raise Rejected(CORRUPT, str(exc) or type(exc).__name__) from None
    return image


def _upright(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag; returns the same object when there is nothing to do."""
    if image.getexif().get(ExifTags.Base.Orientation, 1) in (None, 1):
        return image
    return ImageOps.exif_transpose(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any mode to 8-bit RGB: alpha composited on white, 16-bit scaled (not clipped), CMYK converted.

    Returns the same object when the image already is RGB.
    """
    if image.mode == "RGB":
        return image
    if image.mode in SIXTEEN_BIT_MODES or image.mode == "F":
        array = np.asarray(image, dtype=np.float64)
        grey = np.clip(np.rint(array / _full_scale(image.mode, array) * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("LA", "La", "PA"):
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "RGBa"):
        white = Image.new("RGB", image.size, (255, 255, 255))
        white.paste(image, mask=image.getchannel("A"))
        return white
    return image.convert("RGB")


def _full_scale(mode: str, array: np.ndarray) -> float:
    """The value that maps to white: 16-bit modes span 0..65535; 32-bit ones are guessed from the data."""
    peak = float(array.max(initial=0.0))
    if mode.startswith("I;16"):
        return 65535.0
    if mode == "I":
        return 65535.0 if peak > 255 else 255.0
    return max(peak, 1.0)


def _fit(image: Image.Image, max_side: int) -> Image.Image:
    if max(image.size) <= max_side:
        return image
    scale = max_side / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS)
