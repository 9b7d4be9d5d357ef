"""Procedural "paintings": a few fixed, deterministic artwork-like images for the textures set.

The shipped textures are mostly grayscale photographs; these add what a style set needs:
bold colour palettes, brush strokes and flat coloured regions.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

Palette = tuple[tuple[int, int, int], ...]

PALETTES: dict[str, Palette] = {
    "night": ((16, 24, 64), (30, 60, 140), (70, 120, 200), (230, 200, 60), (245, 240, 200)),
    "sunset": ((60, 20, 70), (150, 40, 90), (230, 90, 60), (250, 170, 60), (255, 230, 150)),
    "forest": ((20, 40, 20), (50, 90, 40), (120, 140, 60), (150, 100, 50), (220, 200, 140)),
    "pop": ((20, 20, 20), (230, 40, 50), (30, 160, 220), (250, 210, 30), (245, 245, 245)),
}
CANVAS = 384  # pixels per side of a generated painting


def _jittered(colour: tuple[int, int, int], rng: np.random.Generator, amount: int) -> tuple[int, int, int]:
    shifted = np.clip(np.array(colour) + rng.integers(-amount, amount + 1, size=3), 0, 255)
    red, green, blue = (int(channel) for channel in shifted)
    return red, green, blue


def brush_strokes(palette: Palette, seed: int, strokes: int = 1800) -> Image.Image:
    """Short thick strokes that follow a smooth swirling flow field, coloured in bands."""
    rng = np.random.default_rng(seed)
    canvas = Image.new("RGB", (CANVAS, CANVAS), palette[0])
    draw = ImageDraw.Draw(canvas)
    phase = rng.uniform(0.0, 2.0 * np.pi, size=3)
    for _ in range(strokes):
        x, y = rng.uniform(0.0, CANVAS, size=2)
        u, v = x / CANVAS * 2.0 * np.pi, y / CANVAS * 2.0 * np.pi
        angle = np.sin(1.5 * u + phase[0]) + np.cos(1.2 * v + phase[1])
        length = rng.uniform(8.0, 24.0)
        dx, dy = np.cos(angle) * length / 2.0, np.sin(angle) * length / 2.0
        # Colour bands drift across the canvas like sky, hills and light in a landscape.
        band = (v / (2.0 * np.pi) + 0.25 * np.sin(u + phase[2])) * len(palette) + rng.normal(0.0, 0.6)
        colour = palette[int(np.clip(band, 0, len(palette) - 1))]
        draw.line([(x - dx, y - dy), (x + dx, y + dy)], fill=_jittered(colour, rng, 18), width=int(rng.integers(3, 8)))
    return canvas.filter(ImageFilter.GaussianBlur(0.7))


def mosaic(palette: Palette, seed: int, cells: int = 160) -> Image.Image:
    """Flat Voronoi cells in the palette's colours with dark grout lines, like stained glass."""
    from scipy.spatial import cKDTree

    rng = np.random.default_rng(seed)
    centres = rng.uniform(0.0, CANVAS, size=(cells, 2))
    colours = np.array([_jittered(palette[rng.integers(len(palette))], rng, 25) for _ in range(cells)], dtype=np.uint8)
    rows, cols = np.mgrid[0:CANVAS, 0:CANVAS]
    _, nearest = cKDTree(centres).query(np.stack([cols.ravel(), rows.ravel()], axis=1))
    cell = nearest.reshape(CANVAS, CANVAS)
    pixels = colours[cell]  # (CANVAS, CANVAS, 3)
    edge = np.zeros_like(cell, dtype=bool)
    edge[:, 1:] |= cell[:, 1:] != cell[:, :-1]
    edge[1:, :] |= cell[1:, :] != cell[:-1, :]
    pixels[edge] = (25, 20, 15)
    return Image.fromarray(pixels)


def posterized(gray: np.ndarray, palette: Palette) -> Image.Image:
    """A grayscale texture printed in a few flat colours, like a screen print."""
    thresholds = np.quantile(gray, np.linspace(0.0, 1.0, len(palette) + 1)[1:-1])
    levels = np.digitize(gray, thresholds)  # 0 .. len(palette) - 1
    return Image.fromarray(np.array(palette, dtype=np.uint8)[levels])
