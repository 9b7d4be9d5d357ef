"""A request's cost, stated by its sampling loop before it runs (`ModelRuntime.cost`).

`zoo serve` refuses a request whose peak memory estimate is over its budget before the loop
allocates anything. The estimates count the arrays a loop and its graphs hold at their
largest moment: decoded input images, the activations of the widest graph call (a batch of
feature maps, a key/value cache, the logits and the float64 copies that filtering makes),
and the outputs kept until the response is written. They are checked against measured
peaks in tests/serve/test_cost.py (within 2x for every model).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from zoo.runtime.images import image_files, is_data_uri, open_image

FLOAT32 = 4
FLOAT64 = 8
INT64 = 8
# Peak bytes per pixel of decoding an image and making it RGB (zoo.runtime.images.read_square),
# measured on PNGs: 8-bit colour or gray 12, with alpha 20, 16-bit or float 32.
DECODE_BYTES_PER_PIXEL = {"alpha": 20, "wide": 32, "other": 12}


@dataclass(frozen=True)
class Cost:
    """What one request takes at its peak: memory, and graph calls as a measure of compute."""

    peak_bytes: int
    graph_calls: int

    def describe(self) -> str:
        return f"about {self.peak_bytes / 1024**2:,.0f} MB at its peak and {self.graph_calls:,} graph calls"


def decode_costs(source: str | Path, role: str) -> list[int]:
    """Peak bytes of decoding each image an image option names (a data: URI, a file, or a
    folder's images), from their headers only: nothing is decoded."""
    paths: list[str | Path]
    if is_data_uri(source):
        paths = [source]
    else:
        path = Path(source).expanduser()
        paths = list(image_files(path)) if path.is_dir() else [path]
    costs = []
    for item in paths:
        with open_image(item, role) as image:
            width, height = image.size
            mode = image.mode
        kind = "wide" if mode in ("I", "F") or mode.startswith("I;") else "alpha" if "A" in mode else "other"
        costs.append(width * height * DECODE_BYTES_PER_PIXEL[kind])
    return costs


def widest_feature_map(channels: int, multipliers: list[int], side: int) -> int:
    """Values in the largest feature map of a convolutional encoder/decoder whose level i has
    `channels * multipliers[i]` channels at `side / 2**i` pixels a side (taming's layout)."""
    return max(channels * multiplier * (side // 2**level) ** 2 for level, multiplier in enumerate(multipliers))
