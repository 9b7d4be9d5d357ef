"""The encoded-to-disk codes of a folder with `codes.views` > 1: each view is read as its own
epoch of the augmentation, so random crops differ between views and no augmentation gives
equal views."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from tests.core.test_data_loader import VAR_RECIPE, noise_image
from zoo.config import AugmentConfig
from zoo.data import image_folder
from zoo.data.cache import encoded_set


def pixels(batch: dict) -> dict:
    """The "codes" of an image: its uint8 pixels, so equal codes mean equal images."""
    return {"pixels": ((batch["image"] + 1) * 127.5).round().to(torch.uint8).flatten(1).numpy()}


@pytest.mark.parametrize(("augment", "views_differ"), [(VAR_RECIPE, True), (AugmentConfig(), False)])
@pytest.mark.parametrize("workers", [0, 1])
def test_views_of_an_item_are_differently_augmented_only_when_augmentation_is_random(
    tmp_path, augment, views_differ, workers
):
    for index in range(10):
        noise_image(index, (60, 20)).save(tmp_path / f"{index}.png")
    folder = image_folder(tmp_path, 16, "train", seed=4, augment=augment)  # held-out splits are not augmented
    encoded = encoded_set(
        tmp_path / "cache",
        "views",
        nn.Linear(1, 1),
        lambda view: folder,
        pixels,
        source="10 noise images",
        views=3,
        workers=workers,
    )
    first, second, third = (
        np.stack([encoded[3 * item + view]["pixels"].numpy() for item in range(len(folder))]) for view in range(3)
    )
    differ = [not np.array_equal(first[item], other[item]) for other in (second, third) for item in range(len(folder))]
    assert any(differ) is views_differ
