"""Opening, converting and cropping images, torch-free: the images a user hands to a sampling
loop (`--image`, `--edit`, `--content`, `--style`) and, through zoo.data, training images.

One list of image suffixes (`IMAGE_SUFFIXES`), one conversion to RGB (`to_rgb`: 16-bit and
float grayscale rescaled, alpha composited on white, EXIF orientation applied by the
readers), one centre crop (`center_crop_box`) and one square resize (`square_resize`).

A PNG of a few kilobytes can declare 12000 x 12000 pixels and decode to 400 MB, so the
declared size is checked against a limit before any pixel is decoded:
$ZOO_MAX_IMAGE_PIXELS, 64 megapixels by default. Every failure is one DataError naming
the file.

Wherever a path is read, a `data:` URI (RFC 2397, e.g. `data:image/png;base64,iVBOR...`)
may stand instead: the image itself, decoded from memory. That is how `zoo serve` hands
uploads to a sampling loop without writing them to disk.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import urllib.parse
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from zoo.errors import DataError, first_line

DEFAULT_MAX_IMAGE_PIXELS = 64_000_000
MAX_PIXELS_VARIABLE = "ZOO_MAX_IMAGE_PIXELS"
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"})
BACKGROUND = (255, 255, 255)  # transparent pixels are composited on white, as a viewer shows them


def max_image_pixels() -> int:
    value = os.environ.get(MAX_PIXELS_VARIABLE, "")
    if not value:
        return DEFAULT_MAX_IMAGE_PIXELS
    try:
        limit = int(value)
    except ValueError:
        limit = 0
    if limit < 1:
        raise DataError(f"${MAX_PIXELS_VARIABLE} must be a positive whole number of pixels, got {value!r}")
    return limit


DATA_URI_PREFIX = "data:"


def is_data_uri(source: str | Path) -> bool:
    return isinstance(source, str) and source.startswith(DATA_URI_PREFIX)


def data_uri(data: bytes, media_type: str = "") -> str:
    """`data:MEDIA_TYPE;base64,...`: bytes as a string that any image option takes."""
    return f"{DATA_URI_PREFIX}{media_type};base64,{base64.b64encode(data).decode('ascii')}"


def data_uri_bytes(uri: str, role: str) -> bytes:
    """The bytes a `data:` URI carries (base64 or percent-encoded); one DataError if malformed."""
    header, comma, payload = uri[len(DATA_URI_PREFIX) :].partition(",")
    if not comma:
        raise DataError(f"{role} {describe_source(uri)}: a data: URI needs a comma before its data")
    if not header.endswith(";base64"):
        return urllib.parse.unquote_to_bytes(payload)
    try:
        return base64.b64decode(payload, validate=True)
    except binascii.Error:
        raise DataError(f"{role} {describe_source(uri)}: the data is not valid base64") from None


def describe_source(source: str | Path) -> str:
    """A path as it is; a data: URI by its media type and size, not by its (long) data."""
    if not is_data_uri(source):
        return str(source)
    media_type = str(source)[len(DATA_URI_PREFIX) :].partition(",")[0].split(";")[0]
    return f"data:{media_type or 'image'} ({len(str(source)) // 1024} kB)"


@contextmanager
def open_image(path: str | Path, role: str, max_pixels: int | None = None) -> Iterator[Image.Image]:
    """`with open_image(path, "--image") as image:` the opened, not yet decoded image.

    `path` may be a data: URI. Decoding happens in the with-block (`image.convert`,
    `np.asarray`), so its errors are turned into the same one-line DataError: "--image
    PATH: ...". `max_pixels` defaults to `max_image_pixels()`."""
    limit = max_image_pixels() if max_pixels is None else max_pixels
    name = describe_source(path)
    source = io.BytesIO(data_uri_bytes(str(path), role)) if is_data_uri(path) else path
    try:
        # Pillow's own bomb check (a warning past Image.MAX_IMAGE_PIXELS) would only
        # repeat ours; past twice its limit it raises, which is reported below.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(source) as image:
                width, height = image.size
                if width * height > limit:
                    raise DataError(
                        f"{role} {name}: {width}x{height} is {width * height / 1e6:.0f} megapixels, over the limit of "
                        f"{limit / 1e6:g}; use a smaller image or raise ${MAX_PIXELS_VARIABLE}"
                    )
                yield image
    except Image.DecompressionBombError:
        raise DataError(f"{role} {name}: the image is too large to decode safely; use a smaller image") from None
    except FileNotFoundError:
        raise DataError(f"{role} {name}: no such file") from None
    except (OSError, ValueError, SyntaxError) as error:  # UnidentifiedImageError is an OSError; truncated data too
        raise DataError(f"{role} {name}: not a readable image ({first_line(error)})") from None


def is_image_file(path: Path) -> bool:
    """A visible file with one of `IMAGE_SUFFIXES` (any case): what image folders read."""
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def image_files(folder: Path) -> list[Path]:
    """The image files directly in `folder`, sorted by name."""
    return sorted(path for path in folder.iterdir() if is_image_file(path))


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


def upright_rgb(image: Image.Image) -> Image.Image:
    """EXIF orientation applied, then `to_rgb`: how every reader sees an opened file."""
    return to_rgb(ImageOps.exif_transpose(image))


def read_rgb(path: str | Path, role: str = "--image") -> Image.Image:
    """An image file a user names (or a data: URI) -> upright RGB, decoded; failures are one
    DataError naming `role`."""
    source = path if is_data_uri(path) else Path(path).expanduser()
    with open_image(source, role) as image:
        return upright_rgb(image)


def center_crop_box(width: int, height: int) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) of the largest centred square of a width x height image."""
    side = min(width, height)
    left, top = (width - side) / 2.0, (height - side) / 2.0
    return (left, top, left + side, top + side)


def square_resize(image: Image.Image, size: int, resample: Image.Resampling = Image.Resampling.BICUBIC) -> np.ndarray:
    """Centre crop to a square, resize to (size, size): (size, size, channels) uint8.
    Cropping and resizing are one resampling step (Pillow's `box`), not two."""
    box = center_crop_box(*image.size)
    return np.asarray(image.resize((size, size), resample, box=box), dtype=np.uint8)


def read_square(path: str | Path, size: int, role: str = "--image") -> np.ndarray:
    """An image file (or a data: URI) -> (size, size, 3) uint8: upright RGB, centre-cropped, resized."""
    return square_resize(read_rgb(path, role), size)


def to_model_input(images: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float32 in [-1, 1]."""
    return np.ascontiguousarray((images.astype(np.float32) / 127.5 - 1.0).transpose(0, 3, 1, 2))
