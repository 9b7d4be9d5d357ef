"""Pieces every data set here shares: splits, seeding, image tensors, subsets."""

from __future__ import annotations

from collections.abc import Sequence, Sized
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from zoo.errors import DataError, UnknownNameError

SPLITS = ("train", "test", "all")
TEST_FRACTION = 0.1  # the held-out share of the fixed data sets (digits, user folders)
SPLIT_SEED = 0  # fixed so that a model is always evaluated on the same held-out images


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise UnknownNameError("split", split, SPLITS)
    return split


def dataset_length(dataset: Dataset) -> int:
    """The number of items of a map-style data set (torch's `Dataset` type does not declare
    `__len__`, and an iterable-style one has none: training needs to index and count them)."""
    if not isinstance(dataset, Sized):
        raise DataError(f"a {type(dataset).__name__} has no length; give a data set with __len__ and __getitem__")
    return len(dataset)


def item_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The random numbers of one generated item: a function of (seed, split, index) only.

    Items do not depend on the data set's length or on the order they are read in, and
    the splits draw from separate streams, so train and test never repeat each other.
    """
    return np.random.default_rng([seed, SPLITS.index(split), index])


def split_indices(
    n: int,
    test_fraction: float = TEST_FRACTION,
    seed: int = SPLIT_SEED,
    labels: Sequence[int] | np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic (train, test) index arrays, stratified by `labels` when given.

    Each class (or the whole set) gives round(count * test_fraction) items to the test
    split, at least one when it has two or more, so a tiny folder still has a test image.
    A set of one item has it in both splits: nothing can be held out, and a one-image
    folder (a single style painting) must still train, sample and evaluate.
    """
    if n == 1:
        return np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.int64)
    groups = np.zeros(n, dtype=np.int64) if labels is None else np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    test: list[np.ndarray] = []
    for group in np.unique(groups):
        members = np.flatnonzero(groups == group)
        take = round(len(members) * test_fraction)
        if len(members) >= 2:
            take = max(take, 1)
        test.append(rng.permutation(members)[:take])
    test_indices = np.sort(np.concatenate(test)) if test else np.zeros(0, dtype=np.int64)
    if n >= 2 and len(test_indices) == 0:  # every class has one item: hold out one of them
        test_indices = np.sort(rng.permutation(n)[:1])
    train_indices = np.setdiff1d(np.arange(n), test_indices)
    return train_indices, test_indices


def pick_split(indices_by_split: tuple[np.ndarray, np.ndarray], split: str, n: int) -> np.ndarray:
    train_indices, test_indices = indices_by_split
    return {"train": train_indices, "test": test_indices, "all": np.arange(n)}[check_split(split)]


def uint8_to_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float32 in [-1, 1]."""
    return torch.tensor(image, dtype=torch.uint8).permute(2, 0, 1).float().div_(127.5).sub_(1.0)


class Subset(Dataset):
    """A view on some items of a data set that keeps its attributes (class_names, skipped, ...)."""

    def __init__(self, dataset: Dataset, indices: Sequence[int]) -> None:
        self.dataset = dataset
        self.indices = list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.dataset[self.indices[index]]

    def __getattr__(self, name: str) -> Any:
        if name in ("dataset", "indices"):  # not set yet (e.g. while unpickling in a worker)
            raise AttributeError(name)
        return getattr(self.dataset, name)


def first_images(dataset: Dataset, count: int) -> torch.Tensor:
    """The `image` of the first `count` items (fewer if the set is smaller): (N, 3, H, W),
    e.g. the held-out images a stage's reconstruction grid shows."""
    size = dataset_length(dataset)
    return torch.stack([dataset[index]["image"] for index in range(min(count, size))])
