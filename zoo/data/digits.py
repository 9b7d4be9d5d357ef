"""scikit-learn's 1,797 labelled 8x8 handwritten digits, upscaled: the class-conditional default."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from zoo.data.base import check_split, pick_split, split_indices

DIGITS_MAX_INTENSITY = 16.0  # sklearn's digits count ink in 4x4 blocks: 0..16


@functools.lru_cache(maxsize=1)
def real_digits() -> tuple[np.ndarray, np.ndarray]:
    """(1797, 8, 8) float64 intensities in 0..16 and (1797,) int64 labels, shipped with sklearn."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images, bunch.target.astype(np.int64)


def digits_split(split: str) -> np.ndarray:
    """Indices of a split: a fixed, stratified 10% of every digit class is held out as `test`."""
    images, labels = real_digits()
    return pick_split(split_indices(len(labels), labels=labels), split, len(labels))


def upscale_digits(images: np.ndarray, size: int) -> torch.Tensor:
    """(N, 8, 8) in 0..16 -> (N, 1, size, size) float32 in [-1, 1], dark background, bright strokes."""
    small = torch.from_numpy(images).float().unsqueeze(1) / DIGITS_MAX_INTENSITY * 2.0 - 1.0
    if size == small.shape[-1]:
        return small
    # Bicubic keeps strokes smooth; it overshoots at edges, hence the clamp.
    return F.interpolate(small, size=(size, size), mode="bicubic", align_corners=False).clamp_(-1.0, 1.0)


class Digits(Dataset):
    """Items {"image": (3, size, size) in [-1, 1], "label": int}. Preprocessed once into one tensor."""

    def __init__(self, size: int = 32, split: str = "train") -> None:
        check_split(split)
        images, labels = real_digits()
        chosen = digits_split(split)
        self.size = size
        self.split = split
        self.class_names = [str(digit) for digit in range(10)]
        self.images = upscale_digits(images[chosen], size)  # (N, 1, size, size)
        self.labels = torch.from_numpy(labels[chosen])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"image": self.images[index].repeat(3, 1, 1), "label": int(self.labels[index])}


def digits(size: int = 32, split: str = "train", seed: int = 0) -> Digits:
    """The digits at `size` x `size`, 3 channels in [-1, 1].

    `split` is "train" (1,618 images), "test" (a fixed stratified 10%: 179 images) or "all".
    `seed` is accepted for a signature shared with the other data sets but changes nothing:
    the images and the held-out split are fixed so every model is judged on the same digits
    (the trainer shuffles the order).
    """
    del seed
    return Digits(size, split)
