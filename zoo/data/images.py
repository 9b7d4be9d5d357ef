"""Reading one training image file as 8-bit RGB, whatever its mode, and fitting it to a square.

The suffix list, the RGB conversion and the centre crop are zoo.runtime.images' (the ones
sampling loops use); this module adds the reader whose errors an image folder counts as
skips instead of reporting them."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import IO

from PIL import Image

from zoo.runtime.images import IMAGE_SUFFIXES, is_image_file, max_image_pixels, square_resize, to_rgb, upright_rgb

__all__ = ["IMAGE_SUFFIXES", "is_image_file", "read_rgb", "square_resize", "to_rgb"]


def read_rgb(path: Path | IO[bytes], max_pixels: int | None = None) -> Image.Image:
    """A training image: unlike zoo.runtime.images.read_rgb (a user's sampling input, one
    DataError), its errors are Pillow's or a ValueError, for the caller to count as a skip.

    Decode the whole file (so truncated files fail here, not mid-training) as upright RGB.
    `path` may be an open binary file (a member of a shard).

    Raises for a file Pillow cannot read and for one of more than `max_pixels` (default:
    the limit inference inputs have, $ZOO_MAX_IMAGE_PIXELS): a PNG of a few kilobytes can
    decode to gigabytes. Callers that skip unreadable files catch both alike.
    """
    limit = max_image_pixels() if max_pixels is None else max_pixels
    with warnings.catch_warnings():
        # Pillow only warns between its own limit and twice that (and raises above); the
        # size check below decides instead, so no raw warning reaches the user.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(path) as image:
            width, height = image.size
            if width * height > limit:
                raise ValueError(f"{width}x{height} pixels is over the limit of {limit:,}")
            image.load()
            return upright_rgb(image)
