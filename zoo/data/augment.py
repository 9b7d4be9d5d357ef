"""From a decoded image to a training image: the `augment` section of a config, applied.

    fit(image, size, augment, rng):
        plain augment (ratio 1, centre crop, no flip): centre square, resized   (zoo's default)
        else:
            flip left-right if augment.flip and a draw < 1/2
            resize so the shorter side is round(resize_ratio * size), with augment.filter
            crop size x size: at a random place (crop "random") or in the centre

This is torchvision's RandomHorizontalFlip -> Resize(int) -> RandomCrop/CenterCrop, the
order and rounding of the official VAR code (utils/data.py), on Pillow images.

The random draws come from `item_generator(seed, epoch, index)`, never from a worker
process's RNG: a seed fixes the augmentation at any worker count, and each epoch draws
anew. The epoch of the item being read is set by the training loader around each read
(`reading_epoch`, see zoo.data.loader); outside it (evaluation, encoding) it is 0.

Torch-free: numpy and Pillow only.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from PIL import Image

from zoo.config import AugmentConfig
from zoo.runtime.images import square_resize

FILTERS = {
    "lanczos": Image.Resampling.LANCZOS,
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "box": Image.Resampling.BOX,
    "nearest": Image.Resampling.NEAREST,
}
AUGMENT_STREAM = 0x617567  # keeps these draws apart from any other use of (seed, epoch, index)

_epoch: contextvars.ContextVar[int] = contextvars.ContextVar("zoo_data_epoch", default=0)


@contextmanager
def reading_epoch(epoch: int) -> Iterator[None]:
    """Items read inside the block are read for `epoch` (their augmentation draws anew per epoch)."""
    token = _epoch.set(epoch)
    try:
        yield
    finally:
        _epoch.reset(token)


def current_epoch() -> int:
    return _epoch.get()


def item_generator(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The random draws of one item's augmentation in one epoch."""
    return np.random.default_rng([seed, epoch, index, AUGMENT_STREAM])


def held_out(augment: AugmentConfig) -> AugmentConfig:
    """What held-out images get: the same resize, a centre crop, no flip (VAR's val_aug)."""
    return augment.model_copy(update={"crop": "center", "flip": False})


def is_plain(augment: AugmentConfig) -> bool:
    return augment.resize_ratio == 1.0 and augment.crop == "center" and not augment.flip


def fit(image: Image.Image, size: int, augment: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """An RGB image -> (size, size, 3) uint8, augmented as `augment` says."""
    resample = FILTERS[augment.filter]
    if is_plain(augment):
        return square_resize(image, size, resample)
    if augment.flip and rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    width, height = image.size
    short = round(augment.resize_ratio * size)
    if width <= height:  # torchvision's Resize(int): the longer side truncated, not rounded
        new_width, new_height = short, int(short * height / width)
    else:
        new_width, new_height = int(short * width / height), short
    image = image.resize((new_width, new_height), resample)
    if augment.crop == "random":
        left = int(rng.integers(0, new_width - size + 1))
        top = int(rng.integers(0, new_height - size + 1))
    else:  # torchvision's CenterCrop
        left, top = int(round((new_width - size) / 2.0)), int(round((new_height - size) / 2.0))
    return np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.uint8)
