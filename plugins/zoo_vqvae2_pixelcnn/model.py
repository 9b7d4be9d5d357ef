"""The whole model (VQ-VAE-2 + two PixelCNN priors) and the graphs sampling runs.

Sampling (see runtime.py) draws the top codes in raster order, then the bottom codes
given the top, then decodes. Each numeric step is one of the modules below; the numpy
loop around them only draws codes from logits.
"""

from __future__ import annotations

import torch
from torch import nn

from zoo_vqvae2_pixelcnn.config import VQVAE2Config
from zoo_vqvae2_pixelcnn.pixelcnn import CodeCondition, LabelCondition, PixelCNNPrior
from zoo_vqvae2_pixelcnn.vqvae import VQVAE2


class VQVAE2PixelCNN(nn.Module):
    def __init__(self, config: VQVAE2Config) -> None:
        super().__init__()
        self.vqvae = VQVAE2(config.vqvae)
        top, bottom = config.prior_top, config.prior_bottom
        labels = config.num_classes if config.class_conditional else 1
        self.prior_top = PixelCNNPrior(top, config.vqvae.top_codes, config.top_side,
                                       LabelCondition(labels, top.condition_channels, config.top_side))
        self.prior_bottom = PixelCNNPrior(
            bottom, config.vqvae.bottom_codes, config.bottom_side,
            CodeCondition(config.vqvae.top_codes, labels, bottom.condition_channels, bottom.condition_blocks,
                          config.vqvae.top_downsample))

    def priors(self) -> dict[str, PixelCNNPrior]:
        return {"prior_top": self.prior_top, "prior_bottom": self.prior_bottom}


# The graphs. Each forward takes and returns tensors in the order of the Component's names.

class EncodeCodes(nn.Module):
    """images (B, 3, H, W) in [-1, 1] -> top codes (B, h_top, w_top), bottom codes (B, h, w)."""

    def __init__(self, vqvae: VQVAE2) -> None:
        super().__init__()
        self.vqvae = vqvae

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.vqvae.encode_codes(images)


class DecodeCodes(nn.Module):
    """top codes, bottom codes -> images (B, 3, H, W) in [-1, 1]."""

    def __init__(self, vqvae: VQVAE2) -> None:
        super().__init__()
        self.vqvae = vqvae

    def forward(self, top_codes: torch.Tensor, bottom_codes: torch.Tensor) -> torch.Tensor:
        return self.vqvae.decode_codes(top_codes, bottom_codes)


class TopCondition(nn.Module):
    """labels (B,) -> the top prior's condition map (B, C_cond, h_top, w_top)."""

    def __init__(self, prior: PixelCNNPrior) -> None:
        super().__init__()
        self.prior = prior

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        return self.prior.condition(labels)


class BottomCondition(nn.Module):
    """top codes (B, h_top, w_top), labels (B,) -> the bottom prior's condition map (B, C_cond, h, w)."""

    def __init__(self, prior: PixelCNNPrior) -> None:
        super().__init__()
        self.prior = prior

    def forward(self, top_codes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.prior.condition(top_codes, labels)


class PriorLogits(nn.Module):
    """The naive path: codes (B, H, W), condition map -> logits (B, K, H, W) at every position."""

    def __init__(self, prior: PixelCNNPrior) -> None:
        super().__init__()
        self.prior = prior

    def forward(self, codes: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        return self.prior.logits(self.prior.embed(codes), condition)


class PriorRow(nn.Module):
    """Fast path, once per row: see PixelCNNPrior.row."""

    def __init__(self, prior: PixelCNNPrior) -> None:
        super().__init__()
        self.prior = prior

    def forward(self, codes: torch.Tensor, row: torch.Tensor, vertical_cache: torch.Tensor, previous_row: torch.Tensor,
                condition: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.prior.row(codes, row, vertical_cache, previous_row, condition)


class PriorStep(nn.Module):
    """Fast path, once per position: see PixelCNNPrior.step."""

    def __init__(self, prior: PixelCNNPrior) -> None:
        super().__init__()
        self.prior = prior

    def forward(self, codes: torch.Tensor, row: torch.Tensor, col: torch.Tensor, row_bias: torch.Tensor,
                horizontal_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.prior.step(codes, row, col, row_bias, horizontal_cache)
