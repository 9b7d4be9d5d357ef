"""Taming-style convolutional blocks shared by the VQ tokenizers (VAR, QuantArt, ...).

The layout follows CompVis/taming-transformers (`diffusionmodules/model.py`) so its
checkpoints map onto these modules name for name: `Encoder.down[i].block[j]`,
`Encoder.mid.block_1`, `Decoder.up[i].upsample`, ... Time embeddings are left out: no
zoo model is a diffusion model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypedDict

import torch
import torch.nn.functional as F
from torch import nn


class _AutoencoderShapeRequired(TypedDict):
    ch: int
    num_res_blocks: int
    resolution: int
    z_channels: int


class AutoencoderShape(_AutoencoderShapeRequired, total=False):
    """The keyword arguments `Encoder` and `Decoder` share, as taming's `ddconfig`: one dict
    builds both halves (`Encoder(**shape)`, `Decoder(**shape)`), its keys and types checked."""

    ch_mult: Sequence[int]
    attn_resolutions: Sequence[int]
    in_channels: int
    dropout: float
    resample_with_conv: bool
    mid_attention: bool


def _group_count(channels: int, max_groups: int = 32) -> int:
    """The largest group count <= max_groups that divides `channels` (tiny models have
    fewer than 32 channels, where GroupNorm(32) would not even build)."""
    for groups in range(min(max_groups, channels), 0, -1):
        if channels % groups == 0:
            return groups
    return 1


class Normalize(nn.GroupNorm):
    """GroupNorm with 32 groups (fewer when the channels are few), eps 1e-6, affine."""

    def __init__(self, channels: int, max_groups: int = 32) -> None:
        super().__init__(_group_count(channels, max_groups), channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """norm -> swish -> conv3x3 -> norm -> swish -> dropout -> conv3x3, plus a skip
    (a 1x1 conv when the channel count changes)."""

    def __init__(self, in_channels: int, out_channels: int | None = None, dropout: float = 0.0) -> None:
        super().__init__()
        out_channels = out_channels or in_channels
        self.in_channels, self.out_channels = in_channels, out_channels
        self.norm1 = Normalize(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = Normalize(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C_in, H, W) -> (B, C_out, H, W)
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head attention over the H*W positions, with a residual: self-attention, or
    cross-attention to a `context` map (keys and values from it, normalised by the same
    norm, as in QuantArt's style transfer blocks)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = Normalize(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        # x (B, C, H, W), context (B, C, H', W') or None for self-attention
        batch, channels, height, width = x.shape
        h = self.norm(x)
        source = h if context is None else self.norm(context)
        # (B, C, H, W) -> (B, 1 head, H*W, C)
        q = self.q(h).flatten(2).transpose(1, 2).unsqueeze(1)
        k, v = (conv(source).flatten(2).transpose(1, 2).unsqueeze(1) for conv in (self.k, self.v))
        h = F.scaled_dot_product_attention(q, k, v)  # (B, 1, H*W, C)
        h = h.squeeze(1).transpose(1, 2).reshape(batch, channels, height, width)
        return x + self.proj_out(h)


class Downsample(nn.Module):
    """Halve H and W: a stride-2 conv3x3 with taming's asymmetric (0, 1, 0, 1) padding,
    or 2x2 average pooling when `with_conv` is False."""

    def __init__(self, channels: int, with_conv: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2) if with_conv else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv is None:
            return F.avg_pool2d(x, 2, 2)
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Double H and W: nearest-neighbour upsampling, then a conv3x3 if `with_conv`."""

    def __init__(self, channels: int, with_conv: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1) if with_conv else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return x if self.conv is None else self.conv(x)


class _Middle(nn.Module):
    """ResnetBlock -> AttnBlock (optional) -> ResnetBlock at the lowest resolution."""

    def __init__(self, channels: int, dropout: float, attention: bool) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, dropout)
        self.attn_1 = AttnBlock(channels) if attention else nn.Identity()
        self.block_2 = ResnetBlock(channels, channels, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class _Level(nn.Module):
    """One resolution of the encoder or decoder: res blocks (each followed by attention
    when the resolution is in `attn_resolutions`) and an optional resampler, run by one
    call, so a level can be a unit of `ModelPlugin.blocks` (its hooks see the whole level)."""

    downsample: Downsample  # set on every encoder level but the last
    upsample: Upsample  # set on every decoder level but the first

    def __init__(self, blocks: list[ResnetBlock], attentions: list[AttnBlock]) -> None:
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.attn = nn.ModuleList(attentions)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C_in, H, W) -> (B, C_out, H', W'), H' = H/2, H or 2H
        for i, block in enumerate(self.block):
            x = block(x)
            if self.attn:
                x = self.attn[i](x)
        if hasattr(self, "downsample"):
            x = self.downsample(x)
        if hasattr(self, "upsample"):
            x = self.upsample(x)
        return x


class Encoder(nn.Module):
    """Image (B, in_channels, R, R) -> features (B, z_channels (x2 if double_z), R/2^(L-1), R/2^(L-1))
    with L = len(ch_mult) resolutions."""

    def __init__(
        self,
        *,
        ch: int,
        ch_mult: Sequence[int] = (1, 2, 4, 8),
        num_res_blocks: int,
        attn_resolutions: Sequence[int] = (),
        in_channels: int = 3,
        resolution: int,
        z_channels: int,
        double_z: bool = False,
        dropout: float = 0.0,
        resample_with_conv: bool = True,
        mid_attention: bool = True,
    ) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        channel_multipliers = (1, *ch_mult)
        current_resolution = resolution
        self.down = nn.ModuleList()
        for level, multiplier in enumerate(ch_mult):
            block_in, block_out = ch * channel_multipliers[level], ch * multiplier
            blocks, attentions = [], []
            for _ in range(num_res_blocks):
                blocks.append(ResnetBlock(block_in, block_out, dropout))
                block_in = block_out
                if current_resolution in attn_resolutions:
                    attentions.append(AttnBlock(block_in))
            down = _Level(blocks, attentions)
            if level != len(ch_mult) - 1:
                down.downsample = Downsample(block_in, resample_with_conv)
                current_resolution //= 2
            self.down.append(down)
        self.mid = _Middle(block_in, dropout, mid_attention)
        self.norm_out = Normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, 2 * z_channels if double_z else z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for down in self.down:
            h = down(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))

    def levels(self) -> list[nn.Module]:
        """The resolution levels and the middle, in call order: the encoder's units for
        `ModelPlugin.blocks` (conv_in, norm_out and conv_out stay outside them)."""
        return [*self.down, self.mid]


class Decoder(nn.Module):
    """Features (B, z_channels, r, r) -> image (B, out_ch, r*2^(L-1), r*2^(L-1)); mirrors `Encoder`
    with num_res_blocks + 1 blocks per resolution, as in taming."""

    def __init__(
        self,
        *,
        ch: int,
        out_ch: int = 3,
        ch_mult: Sequence[int] = (1, 2, 4, 8),
        num_res_blocks: int,
        attn_resolutions: Sequence[int] = (),
        in_channels: int = 3,
        resolution: int,
        z_channels: int,
        dropout: float = 0.0,
        resample_with_conv: bool = True,
        mid_attention: bool = True,
    ) -> None:
        super().__init__()
        del in_channels  # accepted so one keyword dict builds both halves, as in taming's ddconfig
        block_in = ch * ch_mult[-1]
        current_resolution = resolution // 2 ** (len(ch_mult) - 1)
        self.conv_in = nn.Conv2d(z_channels, block_in, 3, padding=1)
        self.mid = _Middle(block_in, dropout, mid_attention)
        levels: list[_Level] = []
        for level in reversed(range(len(ch_mult))):
            block_out = ch * ch_mult[level]
            blocks, attentions = [], []
            for _ in range(num_res_blocks + 1):
                blocks.append(ResnetBlock(block_in, block_out, dropout))
                block_in = block_out
                if current_resolution in attn_resolutions:
                    attentions.append(AttnBlock(block_in))
            up = _Level(blocks, attentions)
            if level != 0:
                up.upsample = Upsample(block_in, resample_with_conv)
                current_resolution *= 2
            levels.insert(0, up)  # up[0] is the full resolution, as in taming
        self.up = nn.ModuleList(levels)
        self.norm_out = Normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, out_ch, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for up in reversed(self.up):
            h = up(h)
        return self.conv_out(F.silu(self.norm_out(h)))

    def levels(self) -> list[nn.Module]:
        """The middle and the resolution levels, in call order: the decoder's units for
        `ModelPlugin.blocks` (conv_in, norm_out and conv_out stay outside them)."""
        return [self.mid, *reversed(self.up)]
