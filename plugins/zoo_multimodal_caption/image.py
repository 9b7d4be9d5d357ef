"""The image half of the model: image -> latent and latent -> image."""

from __future__ import annotations

import torch
from torch import nn

from zoo.nn.backbone import create_timm_model, load_backbone_weights
from zoo_multimodal_caption.config import ImageConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def conv_backbone(channels: list[int], pool_size: int) -> nn.Sequential:
    """(B, 3, S, S) -> (B, channels[-1] * pool_size^2): k4 s2 p1 convs with ReLU, then a pool."""
    layers: list[nn.Module] = []
    for in_channels, out_channels in zip([3, *channels[:-1]], channels, strict=True):
        layers += [nn.Conv2d(in_channels, out_channels, 4, stride=2, padding=1), nn.ReLU()]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(pool_size), nn.Flatten())


class TimmBackbone(nn.Module):
    """A timm classifier without its head ((B, 3, S, S) in [-1, 1] -> (B, features)),
    fed with the normalisation its weights were trained with."""

    mean: torch.Tensor  # (1, 3, 1, 1) buffers: the normalisation of the timm model's weights
    std: torch.Tensor

    def __init__(self, model_name: str) -> None:
        super().__init__()
        self.model = create_timm_model(
            model_name, f"image.encoder 'timm:{model_name}'", "use image.encoder=conv", num_classes=0
        )
        config = getattr(self.model, "pretrained_cfg", None) or {}
        self.register_buffer("mean", torch.tensor(config.get("mean", IMAGENET_MEAN)).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(config.get("std", IMAGENET_STD)).view(1, 3, 1, 1), persistent=False)
        num_features = self.model.num_features
        assert isinstance(num_features, int)  # every timm model declares its feature width
        self.num_features = num_features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(((images + 1) / 2 - self.mean) / self.std)


class ImageEncoder(nn.Module):
    """(B, 3, S, S) in [-1, 1] -> (B, latent)."""

    def __init__(self, config: ImageConfig, latent_dim: int) -> None:
        super().__init__()
        if config.encoder == "conv":
            self.backbone: nn.Module = conv_backbone(config.channels, config.pool_size)
            features = config.channels[-1] * config.pool_size**2
        else:
            timm_backbone = TimmBackbone(config.encoder.removeprefix("timm:"))
            self.backbone, features = timm_backbone, timm_backbone.num_features
        if config.encoder_weights is not None:
            load_backbone_weights(self.backbone, config.encoder_weights, "image.encoder_weights")
        self.to_latent = nn.Linear(features, latent_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.to_latent(self.backbone(images))  # (B, latent)


class ImageDecoder(nn.Module):
    """(B, latent) -> (B, 3, S, S) in [-1, 1]: a linear stem to the smallest feature map,
    then k4 s2 p1 transposed convs mirroring the encoder's widths."""

    def __init__(self, config: ImageConfig, latent_dim: int) -> None:
        super().__init__()
        widths = config.channels[::-1]  # e.g. 512, 256, 128, 64
        self.stem_channels = widths[0]
        self.stem_side = config.size // 2 ** len(widths)
        self.stem = nn.Linear(latent_dim, self.stem_channels * self.stem_side**2)
        layers: list[nn.Module] = []
        for in_channels, out_channels in zip(widths, [*widths[1:], 3], strict=True):
            layers += [nn.ReLU(), nn.ConvTranspose2d(in_channels, out_channels, 4, stride=2, padding=1)]
        self.upsample = nn.Sequential(*layers, nn.Tanh())

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        features = self.stem(latent).view(-1, self.stem_channels, self.stem_side, self.stem_side)  # (B, C, S/16, S/16)
        return self.upsample(features)  # (B, 3, S, S)
