"""A SampleOutput -> the response body: JSON (base64 PNGs, texts, extras) or one PNG."""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
from PIL import Image

from zoo.outputs import SampleOutput

# Extras are arrays a caller may compare (tokens, codes, labels). Some loops also keep
# large float arrays there (quantart's decoder output): those are named with their shape
# instead of being sent, so that a response stays about the size of its images.
MAX_EXTRA_VALUES = 65_536


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def output_json(output: SampleOutput, seconds: float, queued_seconds: float) -> dict[str, Any]:
    """`images`: one base64 PNG per image (N, H, W, 3); `texts`; `extras` as nested lists;
    `omitted_extras`: name -> shape of those over MAX_EXTRA_VALUES; `seconds` of sampling;
    `queued_seconds` waiting for a worker before it."""
    images = [] if output.images is None else list(output.images)
    extras: dict[str, Any] = {}
    omitted: dict[str, list[int]] = {}
    for name, value in output.extras.items():
        array = np.asarray(value)
        if array.size > MAX_EXTRA_VALUES:
            omitted[name] = list(array.shape)
        else:
            extras[name] = array.tolist()
    return {
        "images": [base64.b64encode(png_bytes(Image.fromarray(image))).decode("ascii") for image in images],
        "texts": output.texts,
        "columns": output.columns,
        "extras": extras,
        "omitted_extras": omitted,
        "seconds": round(seconds, 4),
        "queued_seconds": round(queued_seconds, 4),
    }


def output_png(output: SampleOutput) -> bytes:
    """The image grid, as `zoo run --out FILE.png` saves it."""
    return png_bytes(output.grid())
