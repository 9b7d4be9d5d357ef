"""`load_images(spec, ...)`: one entry point for a built-in data set name, a user's folder or shards."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from zoo.config import AugmentConfig
from zoo.data.base import Subset, dataset_length
from zoo.data.digits import digits
from zoo.data.embedded import photos, textures
from zoo.data.folders import caption_set, has_captions, image_folder
from zoo.data.shapes import shapes
from zoo.data.shards import ShardSet, is_shard_spec
from zoo.errors import DataError, UnknownNameError

GENERATED: dict[str, Callable[..., Dataset]] = {
    "photos": photos,
    "textures": textures,
    "shapes": shapes,
}  # these take a `count`
BUILTIN_NAMES = ("digits", *GENERATED)


def load_images(
    spec: str,
    size: int,
    split: str = "train",
    seed: int = 0,
    count: int | None = None,
    augment: AugmentConfig | None = None,
) -> Dataset:
    """A data set by name ("digits", "photos", "textures", "shapes"), by directory or by shards.

    A directory with captions.jsonl/captions.csv is a caption set, one with a shard index
    or only .tar files a shard set (zoo.data.shards), any other an image folder; a brace
    pattern or a .tar path names shards. `count` is the number of generated items (photos,
    textures, shapes; None: the set's default); for digits, folders and shards it keeps a
    seeded random `count` of them. The train/test split of digits, folders and shards is
    fixed (a stratified 10% is held out) and does not depend on `seed`. `augment` applies
    to images read from files (folders and shards): the train split as configured, the
    others with its resize and a centre crop; the embedded sets ignore it.
    """
    if spec in GENERATED:
        return GENERATED[spec](size=size, split=split, seed=seed, **({} if count is None else {"count": count}))
    if spec == "digits":
        dataset: Dataset = digits(size=size, split=split, seed=seed)
    elif is_shard_spec(spec):
        dataset = ShardSet(spec, size, split, seed, augment)
    else:
        path = Path(spec).expanduser()
        if not path.exists() and len(path.parts) > 1:  # a path, not a misspelt name
            names = ", ".join(BUILTIN_NAMES)
            raise DataError(f"data folder {spec!r} does not exist; pass an existing folder, shards or one of {names}")
        if not path.exists():
            raise UnknownNameError("data set", spec, BUILTIN_NAMES)
        if not path.is_dir():
            names = ", ".join(BUILTIN_NAMES)
            raise DataError(f"data set {spec!r} is a file; pass a folder of images, shards or one of {names}")
        reader = caption_set if has_captions(path) else image_folder
        dataset = reader(path, size, split, seed, augment)
    return _random_subset(dataset, count, seed)


def _random_subset(dataset: Dataset, count: int | None, seed: int) -> Dataset:
    length = dataset_length(dataset)
    if count is None or count >= length:
        return dataset
    keep = np.sort(np.random.default_rng(seed).permutation(length)[:count])
    return Subset(dataset, keep.tolist())
