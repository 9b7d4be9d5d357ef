"""Data sets: embedded ones (nothing is downloaded) and a user's image folders, caption sets
and WebDataset shards, read lazily (zoo.data.sources) by the training loader (zoo.data.loader).

Every data set yields dicts with "image" a float tensor (3, H, W) in [-1, 1], plus "label"
(int) or "caption" (str) where it has them, and batches with torch's default collate.

The data sets are torch Datasets, so their modules import torch; this package imports them
on first use (`zoo.data.digits`, `from zoo.data import image_folder`), so that importing
`zoo.data` (or its torch-free `zoo.data.images`) costs no torch.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

_HOME = {  # public name -> the submodule that defines it
    "SPLITS": "base",
    "Subset": "base",
    "split_indices": "base",
    "BUILTIN_NAMES": "catalog",
    "load_images": "catalog",
    "DigitsClassifier": "classifier",
    "Digits": "digits",
    "digits": "digits",
    "RandomCrops": "embedded",
    "photos": "embedded",
    "textures": "embedded",
    "CaptionSet": "folders",
    "ImageFolder": "folders",
    "caption_set": "folders",
    "image_folder": "folders",
    "info": "packing",
    "pack": "packing",
    "ShardSet": "shards",
    "Shapes": "shapes",
    "shapes": "shapes",
    "shapes_vocabulary": "shapes",
}

__all__ = sorted(_HOME)

if TYPE_CHECKING:  # the names for type checkers; `X as X` marks a re-export
    from zoo.data.base import SPLITS as SPLITS, Subset as Subset, split_indices as split_indices
    from zoo.data.catalog import BUILTIN_NAMES as BUILTIN_NAMES, load_images as load_images
    from zoo.data.classifier import DigitsClassifier as DigitsClassifier
    from zoo.data.digits import Digits as Digits, digits as digits
    from zoo.data.embedded import RandomCrops as RandomCrops, photos as photos, textures as textures
    from zoo.data.folders import (
        CaptionSet as CaptionSet,
        ImageFolder as ImageFolder,
        caption_set as caption_set,
        image_folder as image_folder,
    )
    from zoo.data.packing import info as info, pack as pack
    from zoo.data.shapes import Shapes as Shapes, shapes as shapes, shapes_vocabulary as shapes_vocabulary
    from zoo.data.shards import ShardSet as ShardSet


class _DataPackage(types.ModuleType):
    """`zoo.data.digits` and `zoo.data.shapes` are functions, as they were when this package
    imported everything eagerly, even though submodules of the same names exist: importing
    such a submodule must not replace the function with the module."""

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and _HOME.get(name) == name:
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _DataPackage


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module 'zoo.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"zoo.data.{_HOME[name]}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOME))
