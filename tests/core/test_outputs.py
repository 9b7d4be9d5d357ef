"""Image grids of sampled outputs (zoo.outputs)."""

from __future__ import annotations

import numpy as np

from zoo.outputs import image_grid


def test_a_single_image_is_saved_as_it_is():
    image = np.random.default_rng(0).integers(0, 256, (1, 64, 48, 3), dtype=np.uint8)
    assert np.array_equal(np.asarray(image_grid(image)), image[0])


def test_several_images_are_tiled_with_a_border_and_small_ones_enlarged():
    images = np.zeros((3, 16, 16, 3), np.uint8)
    grid = np.asarray(image_grid(images, pad=2))  # 2 columns x 2 rows of 64px tiles
    assert grid.shape == (2 * 66 + 2, 2 * 66 + 2, 3)
    assert (grid[:2] == 255).all()
    assert (grid[2:66, 2:66] == 0).all()
