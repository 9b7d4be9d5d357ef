"""Reading one image file as 8-bit RGB, whatever its mode, and fitting it to a square."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"})
BACKGROUND = (255, 255, 255)  # transparent pixels are composited on white, as a viewer shows them


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> "RGB": 16/32-bit and float grayscale are rescaled, not clipped;
    alpha (RGBA, LA, a palette's transparent index) is composited on white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit PNGs open as "I;16" (or "I" in older Pillow); their full range is 0..65535.
        values = np.asarray(image, dtype=np.float64)
        return _gray_to_rgb(values / 65535.0)
    if image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        return _gray_to_rgb(values if values.max(initial=0.0) <= 1.0 else values / 255.0)
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        image = image.convert("RGBA")
        canvas = Image.new("RGBA", image.size, BACKGROUND + (255,))
        return Image.alpha_composite(canvas, image).convert("RGB")
    return image.convert("RGB")


def _gray_to_rgb(values: np.ndarray) -> Image.Image:
    gray = (np.clip(values, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return Image.fromarray(gray).convert("RGB")


def read_rgb(path: Path) -> Image.Image:
    """Decode the whole file (so truncated files fail here, not mid-training) as upright RGB."""
    with Image.open(path) as image:
        image.load()
        return to_rgb(ImageOps.exif_transpose(image))


def square_resize(image: Image.Image, size: int) -> np.ndarray:
    """Centre crop to a square, resize to (size, size): (size, size, 3) uint8."""
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) / 2.0, (height - side) / 2.0
    box = (left, top, left + side, top + side)
    return np.asarray(image.resize((size, size), Image.Resampling.BICUBIC, box=box), dtype=np.uint8)
