"""Optional perceptual loss on the features of a frozen pretrained backbone.

Nothing is downloaded: the backbone is built by timm without weights
(`timm.create_model(name, pretrained=False, features_only=True)`) and its weights come from
a local safetensors file the user names, e.g. one written with
`safetensors.torch.save_file(timm.create_model(name, pretrained=True, features_only=True).state_dict(), path)`.
With no weights file the loss is off and models train on their other terms.

The distance is LPIPS without its learned linear heads: every feature map is unit-normalised
over channels, and the squared differences are averaged over positions and summed over levels.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from zoo.nn.backbone import create_timm_model, load_backbone_weights

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class PerceptualLoss(nn.Module):
    """distance(images, targets) for images in [-1, 1]; `backbone(x)` returns a list of
    feature maps (what timm's `features_only=True` models return). The backbone is frozen."""

    mean: torch.Tensor  # (1, 3, 1, 1) buffer
    std: torch.Tensor  # (1, 3, 1, 1) buffer

    def __init__(
        self,
        backbone: nn.Module,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        self.backbone = backbone.eval().requires_grad_(False)
        # not persistent: the backbone's weights live in their own file, not in checkpoints
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> PerceptualLoss:
        super().train(mode)
        self.backbone.eval()  # frozen: BatchNorm statistics must not drift with training data
        return self

    def forward(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) x2 -> ()
        images = ((images + 1) / 2 - self.mean) / self.std
        targets = ((targets + 1) / 2 - self.mean) / self.std
        distance = images.new_zeros(())
        for image_features, target_features in zip(self.backbone(images), self.backbone(targets), strict=True):
            difference = _unit_normalise(image_features) - _unit_normalise(target_features)
            distance = distance + difference.pow(2).sum(1).mean()
        return distance


def _unit_normalise(features: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    return features / (features.pow(2).sum(1, keepdim=True).sqrt() + eps)


def build_timm_backbone(name: str) -> nn.Module:
    """timm's `features_only` model `name`, randomly initialised (weights come separately)."""
    return create_timm_model(name, "the perceptual loss", "unset the perceptual weights", features_only=True)


def timm_perceptual_loss(backbone_name: str, weights: Path | None) -> PerceptualLoss | None:
    """The perceptual loss of timm backbone `backbone_name` with weights from `weights`;
    None (the loss is off) when no weights file is given."""
    if weights is None:
        return None
    backbone = build_timm_backbone(backbone_name)
    load_backbone_weights(backbone, weights, "perceptual weights file")
    config = getattr(backbone, "pretrained_cfg", None) or {}
    mean = tuple(config.get("mean", IMAGENET_MEAN))
    std = tuple(config.get("std", IMAGENET_STD))
    return PerceptualLoss(backbone, mean, std)


class LazyPerceptual:
    """`timm_perceptual_loss(backbone_name, weights)`, built on its first call (so listing a
    model's stages never imports timm) and moved to the images' device; calling it gives
    the distance, or None when the loss is off (no weights file)."""

    def __init__(self, backbone_name: str, weights: Path | None) -> None:
        self.backbone_name, self.weights = backbone_name, weights
        self.loss: PerceptualLoss | None = None
        self.built = False

    def __call__(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor | None:
        if not self.built:
            self.loss, self.built = timm_perceptual_loss(self.backbone_name, self.weights), True
        if self.loss is None:
            return None
        return self.loss.to(images.device)(images, targets)
