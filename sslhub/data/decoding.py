"""Decoding images robustly: every PIL mode to RGB, unreadable files (empty, truncated, not an image)
named in a warning instead of crashing a run."""

from __future__ import annotations

import io
import logging
import os
from typing import Any

from PIL import Image, ImageFile, UnidentifiedImageError

logger = logging.getLogger(__name__)


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB: grey, palette, CMYK, 16-bit; transparency is composited on white."""
    if image.mode == "RGB":
        return image
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if image.mode in ("I;16", "I;16B", "I;16L") or (image.mode == "I" and image.getextrema()[1] > 255):
        image = image.point(lambda v: v / 256).convert("L")  # 16-bit grey: its high byte
    elif image.mode == "I":  # 32-bit integers holding 8-bit grey (some TIFF and PNG writers)
        image = image.convert("L")
    return image.convert("RGB")


def _describe(value: Any, index: int) -> str:
    """How a sample is named in warnings: its file and position, or its position alone."""
    if isinstance(value, dict) and value.get("path"):
        return f"{value['path']} (sample {index})"
    if isinstance(value, (str, os.PathLike)):
        return f"{value} (sample {index})"
    return f"sample {index}"


_warned: set[str] = set()  # unreadable files this process already warned about


def decode_image(value: Any) -> Image.Image:
    """Decode a dataset value (PIL image, `{"bytes", "path"}` dict, bytes or path) into an RGB image.

    Raises:
        OSError / UnidentifiedImageError / ValueError for truncated or non-image data.
    """
    if isinstance(value, Image.Image):
        image = value
    elif isinstance(value, dict):
        data = value.get("bytes")
        image = Image.open(io.BytesIO(data)) if data is not None else Image.open(value["path"])
    elif isinstance(value, (bytes, bytearray)):
        image = Image.open(io.BytesIO(value))
    elif isinstance(value, (str, os.PathLike)):
        image = Image.open(value)
    else:
        raise ValueError(f"cannot decode an image from a {type(value).__name__}")
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, not a grey half-image
    try:
        image.load()
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous
    return to_rgb(image)


def try_decode(value: Any, index: int) -> tuple[Image.Image | None, str | None]:
    """`(rgb_image, None)`, or `(None, name)` for an unreadable file (empty, truncated, not an image),
    named in a warning the first time this process meets it."""
    try:
        return decode_image(value), None
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as error:
        name = _describe(value, index)
        if name not in _warned:
            _warned.add(name)
            logger.warning("skipping unreadable image %s: %s", name, error or type(error).__name__)
        return None, name
