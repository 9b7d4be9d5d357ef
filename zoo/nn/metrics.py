"""Image metrics every plugin reports the same way.

PSNR is 10 log10(peak_to_peak^2 / MSE) in dB. Images in this zoo span [-1, 1], so the
peak-to-peak range is 2 and the numerator 4. A perfect reconstruction (MSE 0) is capped at
the PSNR of MSE 1e-10 instead of infinity.
"""

from __future__ import annotations

import torch

PEAK_TO_PEAK = 2.0  # images span [-1, 1]
MIN_MSE = 1e-10


def psnr_from_mse(mse: torch.Tensor | float, peak_to_peak: float = PEAK_TO_PEAK) -> torch.Tensor:
    """PSNR in dB of a mean squared error: a tensor (any shape, in fp32 or fp64) or a
    Python float (-> a 0-dim fp64 tensor, as precise as the float)."""
    mse = (
        mse.float()
        if torch.is_tensor(mse) and mse.dtype != torch.float64
        else torch.as_tensor(mse, dtype=torch.float64)
    )
    return 10 * torch.log10(peak_to_peak**2 / mse.clamp(min=MIN_MSE))


def psnr(images: torch.Tensor, targets: torch.Tensor, peak_to_peak: float = PEAK_TO_PEAK) -> torch.Tensor:
    """PSNR in dB per image: (B, ...) x2 -> (B,), in fp32 whatever the inputs' dtype.

    Averaging these gives the mean per-image PSNR; `psnr_from_mse` of the mean MSE gives the
    PSNR of a whole set instead (lower: bad images weigh more). Clamp reconstructions to
    [-1, 1] first where the decoder can overshoot, as a saved image would be.
    """
    mse = (images.float() - targets.float()).pow(2).flatten(1).mean(1)  # (B,)
    return psnr_from_mse(mse, peak_to_peak)
