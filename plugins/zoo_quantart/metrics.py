"""Style and content metrics of `evaluate`.

No pretrained network can be downloaded here, so the features come from a fixed,
randomly initialised three-layer conv net (seed 0, Kaiming init, ReLU): random conv
features are known to carry texture statistics well enough for Gram/AdaIN style
measures (Ulyanov et al. 2017; He et al. 2016, "A powerful generative model using random
weights"). The same net scores every model, so numbers are comparable across runs.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from skimage.metrics import structural_similarity
from torch import nn

from zoo.outputs import to_uint8


class RandomFeatures(nn.Module):
    """images (B, 3, H, W) in [-1, 1] -> three ReLU feature maps at strides 1, 2, 4."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        widths = [(3, 32, 1), (32, 64, 2), (64, 128, 2)]
        self.convs = nn.ModuleList(nn.Conv2d(cin, cout, 3, stride=stride, padding=1) for cin, cout, stride in widths)
        with torch.no_grad():
            for conv in self.convs:
                fan_in = conv.in_channels * 9
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * (2.0 / fan_in) ** 0.5)
                conv.bias.zero_()
        self.requires_grad_(False).eval()

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        features, h = [], images
        for conv in self.convs:
            h = F.relu(conv(h))
            features.append(h)
        return features


def mean_std_distance(features: list[torch.Tensor], reference: list[torch.Tensor]) -> torch.Tensor:
    """Per image: sum over layers of MSE(channel means) + MSE(channel stds). -> (B,)"""
    total = 0.0
    for a, b in zip(features, reference, strict=True):
        a, b = a.flatten(2), b.flatten(2)
        total = total + (a.mean(2) - b.mean(2)).pow(2).mean(1) + (a.std(2) - b.std(2)).pow(2).mean(1)
    return total


def gram(features: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, C, C)
    flat = features.flatten(2)
    return flat @ flat.transpose(1, 2) / flat.shape[-1]


def gram_distance(features: list[torch.Tensor], reference: list[torch.Tensor]) -> torch.Tensor:
    """Per image: sum over layers of MSE between Gram matrices. -> (B,)"""
    return sum((gram(a) - gram(b)).pow(2).flatten(1).mean(1) for a, b in zip(features, reference, strict=True))


def content_distance(features: list[torch.Tensor], reference: list[torch.Tensor]) -> torch.Tensor:
    """Per image: mean over layers of the squared distance of channel-normalised features. -> (B,)"""
    distances = []
    for a, b in zip(features, reference, strict=True):
        a = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        b = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        distances.append((a - b).pow(2).sum(1).flatten(1).mean(1))
    return torch.stack(distances).mean(0)


def ssim(images: torch.Tensor, references: torch.Tensor, luma: bool = True) -> np.ndarray:
    """SSIM per image pair on 8-bit images as a viewer sees them (scikit-image, 7x7 window).

    luma=True compares the BT.601 luminance only: style transfer changes colours on
    purpose, and structure preservation is what the content score is meant to measure.
    luma=False compares the three RGB channels.
    """
    a, b = to_uint8(images.cpu().numpy()), to_uint8(references.cpu().numpy())  # (B, H, W, 3)
    if luma:
        a, b = _luma(a), _luma(b)
        return np.array([structural_similarity(x, y, data_range=255.0) for x, y in zip(a, b, strict=True)])
    return np.array([structural_similarity(x, y, channel_axis=-1, data_range=255) for x, y in zip(a, b, strict=True)])


def _luma(images: np.ndarray) -> np.ndarray:
    """(B, H, W, 3) uint8 -> (B, H, W) float64 BT.601 luminance in 0..255."""
    return images.astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def psnr(images: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """PSNR in dB per image, for images in [-1, 1] (peak-to-peak 2). -> (B,)"""
    mse = (images.clamp(-1, 1) - references).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(4.0 / mse.clamp(min=1e-10))
