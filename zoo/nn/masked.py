"""Causal convolutions for autoregressive image models (the PixelCNN family).

Codes are generated in raster order, so the output at (row, col) may depend only on
inputs at earlier positions: rows above, and the same row to the left. Two ways to get
there are here:

- `MaskedConv2d`, the plain masks of PixelCNN (van den Oord et al., 2016a): a k x k
  kernel with the centre (type A, first layer) or what follows it (type B) zeroed. Stacking
  them leaves a blind spot: positions up and to the right that no output ever sees.
- `GatedStackLayer`, the gated PixelCNN of van den Oord et al. (2016b): a vertical stack
  that sees whole rows strictly above and a horizontal stack that sees the current row to
  the left, joined so that no earlier position is missed.

Fast sampling. Every layer here can run in two ways with the same weights: on a whole
map (`forward`, for training and naive sampling), or split into a part that depends only
on rows above (computed once per row for the whole row: `row`, `rows_above`) and a part on
the current row (computed once per position from a few cached columns: `position`,
`current_row`). A sampler that caches each layer's inputs then spends one position of
work per layer per generated code instead of a whole map. Row results are channels-last
(B, W, C) and position results are vectors (B, C): on so little data matmuls beat conv2d.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

MaskType = Literal["A", "B"]


def causal_mask(kernel_size: int, mask_type: MaskType) -> torch.Tensor:
    """(k, k) of 0/1: rows above the centre, and the centre row left of the centre; type B
    also keeps the centre itself."""
    centre = kernel_size // 2
    mask = torch.zeros(kernel_size, kernel_size)
    mask[:centre, :] = 1.0
    mask[centre, : centre + (1 if mask_type == "B" else 0)] = 1.0
    return mask


def gated_activation(x: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """(..., 2C, ...) -> (..., C, ...) along `dim`: tanh(first half) * sigmoid(second half)."""
    values, gates = x.chunk(2, dim=dim)
    return torch.tanh(values) * torch.sigmoid(gates)


def pointwise(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """A 1x1 convolution applied to channels-last features (..., C_in) -> (..., C_out).

    On one row or one position a matmul is several times faster than conv2d."""
    return F.linear(x, conv.weight.flatten(1), conv.bias)


def row_to_channels_last(x: torch.Tensor) -> torch.Tensor:
    """(B, C, 1, W) -> (B, W, C)."""
    return x[:, :, 0].transpose(1, 2)


class MaskedConv2d(nn.Conv2d):
    """k x k convolution (same padding) whose kernel is cut by `causal_mask`."""

    mask: torch.Tensor  # (1, 1, k, k) buffer

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, mask_type: MaskType) -> None:
        if kernel_size % 2 == 0:
            raise ValueError(f"masked convolutions need an odd kernel size, got {kernel_size}")
        super().__init__(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        self.mask_type = mask_type
        self.register_buffer("mask", causal_mask(kernel_size, mask_type)[None, None], persistent=False)

    @property
    def reach(self) -> int:
        """How far the kernel reaches from its centre: rows above, columns either side."""
        return self.kernel_size[0] // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.mask, self.bias, padding=self.padding)

    def rows_above(self, strip: torch.Tensor) -> torch.Tensor:
        """The part of `forward` at one row that sees the rows above it, bias included.

        strip (B, C_in, reach, W + 2*reach): the `reach` rows above, zero-padded at the
        sides -> (B, C_out, 1, W)."""
        return F.conv2d(strip, self.weight[:, :, : self.reach, :], self.bias)

    def current_row(self, strip: torch.Tensor) -> torch.Tensor:
        """The rest of `forward` at one position: the current row up to the position.

        strip (B, C_in, reach) for type A (the columns left of it), (B, C_in, reach + 1) for
        type B (those and the position itself) -> (B, C_out)."""
        width = self.reach + (1 if self.mask_type == "B" else 0)
        return F.linear(strip.flatten(1), self.weight[:, :, self.reach, :width].flatten(1))


class VerticalStackConv(nn.Conv2d):
    """Output row r sees whole rows strictly above r (cols c - reach .. c + reach).

    The first layer reads the codes: its kernel covers rows r - reach .. r - 1. Later
    layers read vertical features that already look strictly above their own row, so their
    kernel covers rows r - reach .. r."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, first: bool) -> None:
        reach = kernel_size // 2
        super().__init__(in_channels, out_channels, (reach + (0 if first else 1), kernel_size))
        self.reach, self.first = reach, first

    @property
    def rows(self) -> int:
        """Input rows one output row needs."""
        return self.kernel_size[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C_out, H, W)."""
        if self.first:
            x = x[:, :, :-1]  # row r never sees row r itself: shift everything down by one
        return super().forward(F.pad(x, (self.reach, self.reach, self.reach, 0)))

    def row(self, strip: torch.Tensor) -> torch.Tensor:
        """strip (B, C, rows, W + 2*reach), zero-padded at the sides -> (B, C_out, 1, W)."""
        return super().forward(strip)


class HorizontalStackConv(nn.Conv2d):
    """Output (r, c) sees row r, columns c - reach .. c - 1 (first layer) or .. c (later)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, first: bool) -> None:
        reach = kernel_size // 2
        super().__init__(in_channels, out_channels, (1, reach + (0 if first else 1)))
        self.reach, self.first = reach, first

    @property
    def columns(self) -> int:
        """Input columns one output position needs."""
        return self.kernel_size[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C_out, H, W)."""
        if self.first:
            x = x[..., :-1]  # (r, c) never sees (r, c) itself: shift right by one
        return super().forward(F.pad(x, (self.reach, 0, 0, 0)))

    def position(self, strip: torch.Tensor) -> torch.Tensor:
        """strip (B, C, columns) ending at the position -> (B, C_out)."""
        return F.linear(strip.flatten(1), self.weight.flatten(1), self.bias)


class GatedStackLayer(nn.Module):
    """One layer of the gated PixelCNN with vertical and horizontal stacks (no blind spot).

        v' = gate(V * v + cond_v)
        h' = h + out(gate(H * h + link(V * v) + cond_h))     (no residual in the first layer)

    where V and H are the stack convolutions, `link` a 1x1 convolution that hands the
    vertical stack's view of the rows above to the horizontal stack, and cond_* optional
    1x1 projections of a conditioning map (class embedding, codes of a coarser level)."""

    def __init__(
        self, channels: int, kernel_size: int, first: bool, condition_channels: int = 0, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.first = first
        self.vertical = VerticalStackConv(channels, 2 * channels, kernel_size, first)
        self.horizontal = HorizontalStackConv(channels, 2 * channels, kernel_size, first)
        self.link = nn.Conv2d(2 * channels, 2 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)
        self.dropout = nn.Dropout(dropout)
        self.condition = nn.Conv2d(condition_channels, 4 * channels, 1) if condition_channels else None

    def forward(
        self, vertical: torch.Tensor, horizontal: torch.Tensor, condition: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Whole maps: vertical, horizontal (B, C, H, W), condition (B, C_cond, H, W)."""
        vertical_pre = self.vertical(vertical)  # (B, 2C, H, W)
        horizontal_pre = self.horizontal(horizontal) + self.link(vertical_pre)
        if self.condition is not None:
            condition_vertical, condition_horizontal = self.condition(condition).chunk(2, dim=1)
            vertical_pre = vertical_pre + condition_vertical
            horizontal_pre = horizontal_pre + condition_horizontal
        new_horizontal = self.out(self.dropout(gated_activation(horizontal_pre)))
        if not self.first:
            new_horizontal = new_horizontal + horizontal
        return gated_activation(vertical_pre), new_horizontal

    def row(
        self, vertical_strip: torch.Tensor, condition_row: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The vertical stack for a whole row, and what the horizontal stack adds from it.

        vertical_strip (B, C, vertical.rows, W + 2*reach); condition_row (B, W, C_cond)
        -> vertical row (B, C, 1, W), horizontal bias (B, W, 2C)."""
        vertical_pre = row_to_channels_last(self.vertical.row(vertical_strip))  # (B, W, 2C)
        horizontal_bias = pointwise(self.link, vertical_pre)
        if self.condition is not None:
            if condition_row is None:
                raise ValueError("this layer is conditioned: pass condition_row")
            condition_vertical, condition_horizontal = pointwise(self.condition, condition_row).chunk(2, dim=-1)
            vertical_pre = vertical_pre + condition_vertical
            horizontal_bias = horizontal_bias + condition_horizontal
        vertical = gated_activation(vertical_pre, dim=-1)  # (B, W, C)
        return vertical.transpose(1, 2)[:, :, None], horizontal_bias

    def position(self, horizontal_strip: torch.Tensor, horizontal_bias: torch.Tensor) -> torch.Tensor:
        """The horizontal stack at one position.

        horizontal_strip (B, C, horizontal.columns) ending at the position (its last column
        is the position itself, except in the first layer); horizontal_bias (B, 2C) from
        `row` -> (B, C)."""
        gated = gated_activation(self.horizontal.position(horizontal_strip) + horizontal_bias, dim=-1)
        new_horizontal = pointwise(self.out, gated)
        if not self.first:
            new_horizontal = new_horizontal + horizontal_strip[..., -1]
        return new_horizontal


class MaskedGatedBlock(nn.Module):
    """Residual gated block with a plain type-B mask:

        x' = x + up(gate(masked(down(relu(x))) + cond))

    `inner(x)` = down(relu(x)) is what the masked convolution reads, so it is what a
    fast sampler caches per position."""

    def __init__(self, channels: int, kernel_size: int, condition_channels: int = 0, dropout: float = 0.0) -> None:
        super().__init__()
        hidden = channels // 2
        self.down = nn.Conv2d(channels, hidden, 1)
        self.masked = MaskedConv2d(hidden, 2 * hidden, kernel_size, "B")
        self.up = nn.Conv2d(hidden, channels, 1)
        self.dropout = nn.Dropout(dropout)
        self.condition = nn.Conv2d(condition_channels, 2 * hidden, 1) if condition_channels else None

    def inner(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.relu(x))

    def forward(self, x: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        pre = self.masked(self.inner(x))  # (B, 2 * hidden, H, W)
        if self.condition is not None:
            pre = pre + self.condition(condition)
        return x + self.up(self.dropout(gated_activation(pre)))

    def inner_at(self, x: torch.Tensor) -> torch.Tensor:
        """`inner` at one position: (B, C) -> (B, hidden)."""
        return pointwise(self.down, F.relu(x))

    def row(self, inner_rows_above: torch.Tensor, condition_row: torch.Tensor | None = None) -> torch.Tensor:
        """inner_rows_above (B, hidden, reach, W + 2*reach), condition_row (B, W, C_cond)
        -> the row's bias (B, W, 2*hidden)."""
        bias = row_to_channels_last(self.masked.rows_above(inner_rows_above))
        if self.condition is not None:
            if condition_row is None:
                raise ValueError("this block is conditioned: pass condition_row")
            bias = bias + pointwise(self.condition, condition_row)
        return bias

    def position(self, x: torch.Tensor, inner_strip: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """x (B, C) at the position, inner_strip (B, hidden, reach + 1) ending at it, bias
        (B, 2*hidden) from `row` -> (B, C)."""
        return x + pointwise(self.up, gated_activation(self.masked.current_row(inner_strip) + bias, dim=-1))
