"""Photos and textures shipped with scikit-image and scikit-learn, served as random crops.

Only files inside the installed packages are read (never `skimage.data.<name>()`, which may
download with pooch), so nothing is fetched at run time. A file a packager left out is
skipped; a set with no source at all is a DataError.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from zoo.data.base import check_split, item_rng, uint8_to_tensor
from zoo.data.images import read_rgb
from zoo.data.paintings import PALETTES, brush_strokes, mosaic, posterized
from zoo.errors import DataError

SKIMAGE_PHOTOS = {
    "astronaut": "astronaut.png",
    "coffee": "coffee.png",
    "chelsea": "chelsea.png",
    "rocket": "rocket.jpg",
    "motorcycle": "motorcycle_left.png",
}
SKLEARN_PHOTOS = {"china": "china.jpg", "flower": "flower.jpg"}
SKIMAGE_TEXTURES = {
    "brick": "brick.png",
    "grass": "grass.png",
    "gravel": "gravel.png",
    "immunohistochemistry": "ihc.png",
    "moon": "moon.png",
    "cell": "cell.png",
    "text": "text.png",
}
TEST_SHARE = 0.25  # the test split crops only from the last quarter of each image's long side
CROP_SCALE = (0.25, 0.75)  # crop side as a fraction of the image's short side


def _package_file(package: str, *parts: str) -> Path | None:
    """A file inside an installed package, found without importing the package (sklearn.datasets
    alone takes a second to import)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0], *parts)
    return path if path.is_file() else None


def _read_sources(package: str, folder: str, files: dict[str, str]) -> dict[str, Image.Image]:
    sources = {}
    for name, filename in files.items():
        path = _package_file(package, *folder.split("/"), filename)
        if path is not None:
            sources[name] = read_rgb(path)
    return sources


@functools.lru_cache(maxsize=1)
def photo_sources() -> dict[str, Image.Image]:
    """astronaut, coffee, chelsea, rocket, motorcycle (scikit-image); china, flower (scikit-learn)."""
    return {
        **_read_sources("skimage", "data", SKIMAGE_PHOTOS),
        **_read_sources("sklearn", "datasets/images", SKLEARN_PHOTOS),
    }


@functools.lru_cache(maxsize=1)
def texture_sources() -> dict[str, Image.Image]:
    """scikit-image's textures (grayscale ones as gray RGB) plus a few fixed procedural paintings."""
    sources = _read_sources("skimage", "data", SKIMAGE_TEXTURES)
    paintings = {
        "brush_night": brush_strokes(PALETTES["night"], seed=1),
        "brush_sunset": brush_strokes(PALETTES["sunset"], seed=2),
        "mosaic_pop": mosaic(PALETTES["pop"], seed=3),
        "mosaic_forest": mosaic(PALETTES["forest"], seed=4),
    }
    for texture, palette in (("gravel", "sunset"), ("brick", "night")):
        if texture in sources:
            gray = np.asarray(sources[texture].convert("L"))
            paintings[f"{texture}_{palette}"] = posterized(gray, PALETTES[palette])
    return {**sources, **paintings}


def split_region(width: int, height: int, split: str) -> tuple[int, int, int, int]:
    """The (left, top, right, bottom) box a split crops from; train and test never overlap."""
    if split == "all":
        return 0, 0, width, height
    horizontal = width >= height
    long_side = width if horizontal else height
    cut = round(long_side * (1.0 - TEST_SHARE))
    start, end = (0, cut) if split == "train" else (cut, long_side)
    return (start, 0, end, height) if horizontal else (0, start, width, end)


class RandomCrops(Dataset):
    """`count` crops of random scale, position and mirroring from a few source images.

    Item i is a function of (seed, split, i) only. Crops of the test split come from a
    region of every image that train crops never touch (see `split_region`).
    """

    def __init__(self, sources: dict[str, Image.Image], size: int, count: int, split: str, seed: int) -> None:
        check_split(split)
        if not sources:
            raise DataError("no source images found; reinstall scikit-image and scikit-learn")
        self.source_names = sorted(sources)
        self.sources = [sources[name] for name in self.source_names]
        self.size, self.count, self.split, self.seed = size, count, split, seed

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -self.count <= index < self.count:
            raise IndexError(f"index {index} out of range for {self.count} crops")
        rng = item_rng(self.seed, self.split, index % self.count)
        image = self.sources[rng.integers(len(self.sources))]
        left, top, right, bottom = split_region(*image.size, self.split)
        side = rng.uniform(*CROP_SCALE) * min(image.size)
        side = min(side, right - left, bottom - top)
        x = rng.uniform(left, right - side)
        y = rng.uniform(top, bottom - side)
        crop = image.resize((self.size, self.size), Image.Resampling.BICUBIC, box=(x, y, x + side, y + side))
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return {"image": uint8_to_tensor(np.asarray(crop))}


def photos(size: int = 64, count: int = 512, split: str = "train", seed: int = 0) -> RandomCrops:
    """Random crops of the shipped photos: QuantArt's default content set."""
    return RandomCrops(photo_sources(), size, count, split, seed)


def textures(size: int = 64, count: int = 512, split: str = "train", seed: int = 0) -> RandomCrops:
    """Random crops of the shipped textures and the procedural paintings: the default style set."""
    return RandomCrops(texture_sources(), size, count, split, seed)
