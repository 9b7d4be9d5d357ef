"""The two-level VQ-VAE of Razavi et al. (2019), laid out as rosinality/vq-vae-2-pytorch.

At 32x32 with the default strides:

    image (B, 3, 32, 32) --encoder_bottom--> (B, C, 8, 8) --encoder_top--> (B, C, 4, 4)
    top codes (4x4) = quantize(top_in(...)); decoder_top lifts them back to 8x8
    bottom codes (8x8) = quantize(bottom_in(cat(decoder_top(top), bottom features)))
    image = decoder(cat(upsample_top(top), bottom))
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
from torch import nn

from zoo.nn.quantize import VectorQuantizer, codes_from_features, init_codebook_from
from zoo_vqvae2_pixelcnn.config import VQVAEConfig


class ResidualBlock(nn.Module):
    """skip(x) + conv1x1(relu(conv3x3(relu(x)))), skip(x) = x.

    relu_skip: skip(x) = relu(x). rosinality's code before ef5f67c ("Fixed inplace ReLU")
    opened the block with an in-place ReLU, which also rectified the tensor the skip adds;
    the published vqvae_560.pt was trained so and gives other codes without it.
    """

    def __init__(self, channels: int, hidden: int, relu_skip: bool = False) -> None:
        super().__init__()
        self.skip = nn.ReLU() if relu_skip else nn.Identity()  # no parameters: same state dict either way
        self.conv = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(channels, hidden, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden, channels, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.conv(x)


class Encoder(nn.Module):
    """Stride-2 4x4 convolutions down by `downsample`, a 3x3 conv, residual blocks."""

    def __init__(
        self,
        in_channels: int,
        channels: int,
        res_blocks: int,
        res_channels: int,
        downsample: int,
        relu_skip: bool = False,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_channels
        for i in range(int(math.log2(downsample))):
            out = channels // 2 if i == 0 else channels
            layers += [nn.Conv2d(width, out, 4, stride=2, padding=1), nn.ReLU()]
            width = out
        layers.append(nn.Conv2d(width, channels, 3, padding=1))
        layers += [ResidualBlock(channels, res_channels, relu_skip) for _ in range(res_blocks)]
        layers.append(nn.ReLU())
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class Decoder(nn.Module):
    """A 3x3 conv, residual blocks, stride-2 transposed convolutions up by `upsample`."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        channels: int,
        res_blocks: int,
        res_channels: int,
        upsample: int,
        relu_skip: bool = False,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 3, padding=1)]
        layers += [ResidualBlock(channels, res_channels, relu_skip) for _ in range(res_blocks)]
        layers.append(nn.ReLU())
        steps = int(math.log2(upsample))
        width = channels
        for i in range(steps):
            last = i == steps - 1
            out = out_channels if last else channels // 2
            layers.append(nn.ConvTranspose2d(width, out, 4, stride=2, padding=1))
            if not last:
                layers.append(nn.ReLU())
            width = out
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def upsampler(channels: int, factor: int) -> nn.Sequential:
    """Transposed stride-2 convolutions that scale a code map up by `factor`."""
    layers: list[nn.Module] = []
    for i in range(int(math.log2(factor))):
        if i:
            layers.append(nn.ReLU())
        layers.append(nn.ConvTranspose2d(channels, channels, 4, stride=2, padding=1))
    return nn.Sequential(*layers)


@dataclass
class VQVAEOutput:
    reconstruction: torch.Tensor  # (B, 3, H, W)
    latent_loss: torch.Tensor  # both quantisers' losses
    top_codes: torch.Tensor  # (B, h_top, w_top) int64
    bottom_codes: torch.Tensor  # (B, h_bottom, w_bottom) int64
    top_perplexity: torch.Tensor
    bottom_perplexity: torch.Tensor


class VQVAE2(nn.Module):
    def __init__(self, config: VQVAEConfig, in_channels: int = 3) -> None:
        super().__init__()
        channels, blocks, hidden, dim = config.channels, config.res_blocks, config.res_channels, config.code_dim
        skip = config.residual_relu_skip
        self.encoder_bottom = Encoder(in_channels, channels, blocks, hidden, config.bottom_downsample, skip)
        self.encoder_top = Encoder(channels, channels, blocks, hidden, config.top_downsample, skip)
        self.top_in = nn.Conv2d(channels, dim, 1)
        self.decoder_top = Decoder(dim, dim, channels, blocks, hidden, config.top_downsample, skip)
        self.bottom_in = nn.Conv2d(dim + channels, dim, 1)
        self.upsample_top = upsampler(dim, config.top_downsample)
        self.decoder = Decoder(2 * dim, in_channels, channels, blocks, hidden, config.bottom_downsample, skip)
        quantizer = functools.partial(
            VectorQuantizer,
            beta=config.beta,
            ema_decay=config.ema_decay,
            dead_code_threshold=config.dead_code_threshold,
        )
        self.quantizer_top = quantizer(config.top_codebook_size, dim)
        self.quantizer_bottom = quantizer(config.bottom_codebook_size, dim)

    def features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images (B, 3, H, W) -> bottom features (B, C, H/4, W/4), top pre-quantisation (B, D, H/8, W/8)."""
        bottom = self.encoder_bottom(images)
        return bottom, self.top_in(self.encoder_top(bottom))

    def bottom_input(self, bottom_features: torch.Tensor, top_quantized: torch.Tensor) -> torch.Tensor:
        """The bottom level sees its own features and what the top level already explains."""
        return self.bottom_in(torch.cat([self.decoder_top(top_quantized), bottom_features], dim=1))  # (B, D, h, w)

    def forward(self, images: torch.Tensor) -> VQVAEOutput:
        bottom_features, top_in = self.features(images)
        top = self.quantizer_top(top_in)
        bottom = self.quantizer_bottom(self.bottom_input(bottom_features, top.quantized))
        reconstruction = self.decode(top.quantized, bottom.quantized)
        return VQVAEOutput(
            reconstruction, top.loss + bottom.loss, top.indices, bottom.indices, top.perplexity, bottom.perplexity
        )

    def decode(self, top_quantized: torch.Tensor, bottom_quantized: torch.Tensor) -> torch.Tensor:
        """(B, D, h_top, w_top), (B, D, h, w) -> images (B, 3, H, W)."""
        return self.decoder(torch.cat([self.upsample_top(top_quantized), bottom_quantized], dim=1))

    def encode_codes(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images -> (top codes (B, h_top, w_top), bottom codes (B, h, w)), int64. Export-friendly:
        nearest-code search only, no codebook updates or losses."""
        bottom_features, top_in = self.features(images)
        top_codes = codes_from_features(top_in, self.quantizer_top.codebook)
        bottom_in = self.bottom_input(bottom_features, self.quantizer_top.lookup(top_codes))
        return top_codes, codes_from_features(bottom_in, self.quantizer_bottom.codebook)

    def decode_codes(self, top_codes: torch.Tensor, bottom_codes: torch.Tensor) -> torch.Tensor:
        """(B, h_top, w_top), (B, h, w) int64 -> images (B, 3, H, W), clamped to [-1, 1]."""
        images = self.decode(self.quantizer_top.lookup(top_codes), self.quantizer_bottom.lookup(bottom_codes))
        return images.clamp(-1.0, 1.0)

    @torch.no_grad()
    def init_codebooks(self, images: torch.Tensor) -> None:
        """Start every code of both levels on a real encoder output of `images` (no code is
        born dead)."""
        bottom_features, top_in = self.features(images)
        init_codebook_from(self.quantizer_top, flatten(top_in))
        top_quantized = self.quantizer_top.lookup(codes_from_features(top_in, self.quantizer_top.codebook))
        init_codebook_from(self.quantizer_bottom, flatten(self.bottom_input(bottom_features, top_quantized)))


def flatten(features: torch.Tensor) -> torch.Tensor:
    """(B, D, H, W) -> (B * H * W, D)."""
    return features.permute(0, 2, 3, 1).reshape(-1, features.shape[1])
