"""zoo.nn.metrics: the one PSNR."""

from __future__ import annotations

import math

import pytest
import torch

from tests.tolerances import rounding_bound
from zoo.nn.metrics import psnr, psnr_from_mse

# float32 MSE, log10 and division: a few roundings of the result (tests.tolerances), relative
ROUNDING = rounding_bound(1.0, depth=1)


def test_psnr_per_image_against_hand_values():
    targets = torch.zeros(2, 3, 4, 4)
    images = targets.clone()
    images[0] += 0.2  # MSE 0.04: 10 log10(4 / 0.04) = 20 dB
    images[1, :, :2] += 1.0  # half the pixels off by 1: MSE 0.5, 10 log10(8) dB
    values = psnr(images, targets)
    assert values.shape == (2,)
    assert values.dtype == torch.float32
    assert values[0].item() == pytest.approx(20.0, rel=ROUNDING)
    assert values[1].item() == pytest.approx(10 * math.log10(8), rel=ROUNDING)


def test_psnr_of_identical_images_is_capped_and_of_a_set_uses_the_mean_mse():
    images = torch.rand(1, 3, 4, 4, dtype=torch.float16)
    assert psnr(images, images).item() == pytest.approx(10 * math.log10(4 / 1e-10), rel=ROUNDING)
    assert psnr_from_mse(0.04).item() == pytest.approx(20.0, abs=1e-12)  # a float stays float64
    assert psnr_from_mse(torch.tensor([0.04, 0.4])).tolist() == pytest.approx([20.0, 10.0], rel=ROUNDING)
    assert psnr_from_mse(1.0, peak_to_peak=1.0).item() == pytest.approx(0.0)
