"""Procedurally drawn coloured shapes with captions: the caption model's default data set.

One item is one to `max_objects` shapes of one colour, kind and size, placed together in
one region of a dark plain background, and a caption that names all of it:
"a large red circle on the left", "two small blue squares at the top".
The vocabulary is small on purpose, so a small captioner can get the whole caption right.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from torch.utils.data import Dataset

from zoo.data.base import check_split, item_rng, uint8_to_tensor
from zoo.errors import DataError

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (50, 90, 235),
    "yellow": (240, 220, 40),
    "purple": (150, 60, 200),
    "orange": (250, 140, 30),
    "white": (240, 240, 240),
}
SHAPES = ("circle", "square", "triangle", "star")
# Radius as a fraction of the image side; every kind of shape has about the area of a
# circle of that radius (within 30%), so "small" and "large" never overlap in area.
SIZES: dict[str, tuple[float, float]] = {"small": (0.07, 0.09), "large": (0.15, 0.17)}
POSITIONS: dict[str, tuple[float, float]] = {  # (x, y) of the group's centre, as fractions of the side
    "left": (0.25, 0.5),
    "right": (0.75, 0.5),
    "top": (0.5, 0.25),
    "bottom": (0.5, 0.75),
    "center": (0.5, 0.5),
}
POSITION_PHRASES = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "center": "in the center",
}
COUNT_WORDS = ("one", "two", "three")
GROUP_SCALE = (1.0, 0.9, 0.7)  # shapes shrink in groups so that three large stars do not touch
SUPERSAMPLE = 4  # drawn at 4x and downsampled, so edges are smooth at 32 or 64 pixels


def shapes_vocabulary(max_objects: int = 1) -> list[str]:
    """Every word a caption of `shapes(max_objects=...)` can contain, sorted."""
    words = {"a", "on", "at", "in", "the", *COLORS, *SHAPES, *SIZES}
    words |= {phrase.split()[-1] for phrase in POSITION_PHRASES.values()}
    if max_objects > 1:
        words |= set(COUNT_WORDS[1:max_objects]) | {f"{shape}s" for shape in SHAPES}
    return sorted(words)


def caption(attributes: dict[str, str]) -> str:
    count = COUNT_WORDS.index(attributes["count"]) + 1
    noun = attributes["shape"] if count == 1 else f"{attributes['shape']}s"
    quantity = "a" if count == 1 else attributes["count"]
    return f"{quantity} {attributes['size']} {attributes['color']} {noun} {POSITION_PHRASES[attributes['position']]}"


def _draw_shape(
    draw: ImageDraw.ImageDraw, shape: str, x: float, y: float, radius: float, fill: tuple[int, ...]
) -> None:
    if shape == "circle":
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=fill)
    elif shape == "square":  # area 0.92 of the circle's
        half = radius * 0.85
        draw.rectangle((x - half, y - half, x + half, y + half), fill=fill)
    elif shape == "triangle":  # area 0.70 of the circle's; moved down to centre its bulk
        draw.regular_polygon((x, y + radius * 0.15, radius * 1.3), 3, fill=fill)
    else:  # star with five points, inner radius half the outer one: area 0.79 of the circle's
        angles = -np.pi / 2 + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, radius * 1.3, radius * 0.65)
        draw.polygon([(x + r * np.cos(a), y + r * np.sin(a)) for r, a in zip(radii, angles, strict=True)], fill=fill)


def _centres(position: str, count: int, rng: np.random.Generator) -> list[tuple[float, float]]:
    """Centres (fractions of the side) of `count` shapes: a row at top/bottom/center,
    a column on the left/right, spaced so that large shapes do not touch."""
    x, y = POSITIONS[position]
    if count == 1:
        jitter = rng.uniform(-0.03, 0.03, size=2)
        return [(x + jitter[0], y + jitter[1])]
    offsets = np.linspace(-1.0, 1.0, count) * (0.2 if count == 2 else 0.3)
    shift = rng.uniform(-0.02, 0.02, size=2)
    if position in ("left", "right"):
        return [(x + shift[0], y + offset + shift[1]) for offset in offsets]
    return [(x + offset + shift[0], y + shift[1]) for offset in offsets]


class Shapes(Dataset):
    """Items {"image": (3, size, size) in [-1, 1], "caption": str, "attributes": {color, shape,
    size, position, count}}. Item i is a function of (seed, split, i) only."""

    def __init__(
        self, size: int = 64, count: int = 2000, split: str = "train", seed: int = 0, max_objects: int = 1
    ) -> None:
        check_split(split)
        if not 1 <= max_objects <= len(COUNT_WORDS):
            raise DataError(f"shapes: max_objects must be 1 to {len(COUNT_WORDS)}, got {max_objects}")
        self.size, self.count, self.split, self.seed, self.max_objects = size, count, split, seed, max_objects
        self.vocabulary = shapes_vocabulary(max_objects)

    def __len__(self) -> int:
        return self.count

    @property
    def captions(self) -> list[str]:
        """Every item's caption without drawing its image (as `CaptionSet.captions`), e.g. to train a tokenizer."""
        return [caption(self._attributes(index)[0]) for index in range(self.count)]

    def _attributes(self, index: int) -> tuple[dict[str, str], np.random.Generator]:
        rng = item_rng(self.seed, self.split, index)
        attributes = {
            "color": list(COLORS)[rng.integers(len(COLORS))],
            "shape": SHAPES[rng.integers(len(SHAPES))],
            "size": list(SIZES)[rng.integers(len(SIZES))],
            "position": list(POSITIONS)[rng.integers(len(POSITIONS))],
            "count": COUNT_WORDS[rng.integers(self.max_objects)],
        }
        return attributes, rng

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -self.count <= index < self.count:
            raise IndexError(f"index {index} out of range for {self.count} shapes")
        attributes, rng = self._attributes(index % self.count)
        canvas_side = self.size * SUPERSAMPLE
        background = int(rng.integers(15, 50))
        canvas = Image.new("RGB", (canvas_side, canvas_side), (background,) * 3)
        draw = ImageDraw.Draw(canvas)
        jittered = np.clip(np.array(COLORS[attributes["color"]]) + rng.integers(-15, 16, size=3), 0, 255)
        fill = tuple(int(channel) for channel in jittered)
        count = COUNT_WORDS.index(attributes["count"]) + 1
        radius = rng.uniform(*SIZES[attributes["size"]]) * GROUP_SCALE[count - 1] * canvas_side
        for x, y in _centres(attributes["position"], count, rng):
            _draw_shape(draw, attributes["shape"], x * canvas_side, y * canvas_side, radius, fill)
        image = canvas.resize((self.size, self.size), Image.Resampling.BOX)
        return {"image": uint8_to_tensor(np.asarray(image)), "caption": caption(attributes), "attributes": attributes}


def shapes(size: int = 64, count: int = 2000, split: str = "train", seed: int = 0, max_objects: int = 1) -> Shapes:
    """`count` captioned shape images; train and test draw from separate random streams."""
    return Shapes(size, count, split, seed, max_objects)
