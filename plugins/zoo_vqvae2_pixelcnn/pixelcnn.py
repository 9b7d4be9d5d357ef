"""Gated PixelCNN priors over one level's code map, with a fast sampling path.

    codes (B, H, W) --embedding--> (B, C, H, W) --first layer (type A)--> L gated blocks --head--> logits (B, K, H, W)

Every layer also adds a projection of a conditioning map (B, C_cond, H, W): the image
label for the top prior, the top codes (embedded, upsampled to the bottom map) and the
label for the bottom prior. A model without labels has a single label, 0.

Fast sampling splits each layer into what depends only on rows above (`row`: computed
once per row for the whole row) and what depends on the current row up to the position
(`step`: one position per layer), with small caches of each block's recent inputs.
Generating a map then costs about one forward pass over it instead of one per position.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from zoo.nn.layers import modules_as
from zoo.nn.masked import GatedStackLayer, MaskedConv2d, MaskedGatedBlock, pointwise, row_to_channels_last
from zoo_vqvae2_pixelcnn.config import PriorConfig


class LabelCondition(nn.Module):
    """labels (B,) int64 -> (B, C_cond, H, W): one learnt vector per label, spread over the map."""

    def __init__(self, num_labels: int, channels: int, side: int) -> None:
        super().__init__()
        self.side = side
        self.embedding = nn.Embedding(num_labels, channels)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        return self.embedding(labels)[:, :, None, None].expand(-1, -1, self.side, self.side)


class CodeCondition(nn.Module):
    """Codes of the coarser level (B, h, w) and labels (B,) -> (B, C_cond, factor*h, factor*w)."""

    def __init__(self, codebook_size: int, num_labels: int, channels: int, blocks: int, factor: int) -> None:
        super().__init__()
        self.factor = factor
        self.embedding = nn.Embedding(codebook_size, channels)
        self.label_embedding = nn.Embedding(num_labels, channels)
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(), nn.Conv2d(channels, channels, 1)
            )
            for _ in range(blocks)
        )

    def forward(self, codes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x = (
            self.embedding(codes).permute(0, 3, 1, 2) + self.label_embedding(labels)[:, :, None, None]
        )  # (B, C_cond, h, w)
        for block in self.blocks:
            x = x + block(x)
        return F.interpolate(x, scale_factor=float(self.factor), mode="nearest")  # (B, C_cond, H, W)


class PixelCNNPrior(nn.Module):
    def __init__(self, config: PriorConfig, codebook_size: int, side: int, condition: nn.Module) -> None:
        super().__init__()
        channels, condition_channels = config.channels, config.condition_channels
        self.variant, self.codebook_size, self.side, self.reach = config.variant, codebook_size, side, config.reach
        # Index codebook_size stands for "outside the map": its embedding is zero, exactly the
        # zero padding the convolutions see in a full forward pass.
        self.embedding = nn.Embedding(codebook_size + 1, channels, padding_idx=codebook_size)
        self.condition = condition
        if self.variant == "gated":
            self.layers = nn.ModuleList(
                [GatedStackLayer(channels, config.first_kernel, True, condition_channels, config.dropout)]
                + [
                    GatedStackLayer(channels, config.kernel, False, condition_channels, config.dropout)
                    for _ in range(config.blocks)
                ]
            )
        else:
            self.first = MaskedConv2d(channels, channels, config.first_kernel, "A")
            self.first_condition = nn.Conv2d(condition_channels, channels, 1)
            self.blocks = nn.ModuleList(
                MaskedGatedBlock(channels, config.kernel, condition_channels, config.dropout)
                for _ in range(config.blocks)
            )
        self.head = nn.Sequential(
            nn.ReLU(), nn.Conv2d(channels, channels, 1), nn.ReLU(), nn.Conv2d(channels, codebook_size, 1)
        )

    def gated_layers(self) -> list[nn.Module]:
        """The repeated layers: every gated stack layer, or the masked variant's gated blocks."""
        return list(self.layers if self.variant == "gated" else self.blocks)

    def embed(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, H, W) int64 -> (B, C, H, W)."""
        return self.embedding(codes).permute(0, 3, 1, 2)

    def forward(self, codes: torch.Tensor, *condition_inputs: torch.Tensor) -> torch.Tensor:
        """codes (B, H, W) and what `condition` takes (labels (B,); or top codes and labels)
        -> logits (B, K, H, W)."""
        return self.code_logits(codes, self.condition(*condition_inputs))

    def code_logits(self, codes: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """codes (B, H, W) and a condition map (B, C_cond, H, W) -> logits (B, K, H, W) at
        every position: the naive sampler's graph."""
        return self.logits(self.embed(codes), condition)

    def logits(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """Embedded codes (B, C, H, W) and a condition map (B, C_cond, H, W) -> (B, K, H, W).
        Takes the embedding (not the codes) so a test can differentiate through it."""
        if self.variant == "gated":
            vertical, horizontal = x, x
            for layer in self.layers:
                vertical, horizontal = layer(vertical, horizontal, condition)
            features = horizontal
        else:
            features = self.first(x) + self.first_condition(condition)
            for block in self.blocks:
                features = block(features, condition)
        return self.head(features)

    # fast sampling -------------------------------------------------------------------------
    # Shapes: see PriorConfig.*_shape; `row` and `col` are (1,) int64 tensors. A block's
    # kernel reaches `reach` rows up and `reach` columns left, so the caches keep just that
    # much of each block's input: the last `reach` rows (vertical_cache, padded by `reach`
    # columns at each side) and the last `reach` columns (horizontal_cache). Zeros, the
    # convolutions' padding, start them off at the first row and at each row's start.

    def row(
        self,
        codes: torch.Tensor,
        row: torch.Tensor,
        vertical_cache: torch.Tensor,
        previous_row: torch.Tensor,
        condition: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Everything at row `row` that depends only on the rows above, for the whole row.

        codes (B, H, W) with every row above `row` final; vertical_cache (B, L, C_cache,
        reach, W + 2 reach); previous_row (B, L, C_cache, ...): the step cache at the end
        of the row just finished, which the masked variant needs (its blocks read their own
        input from the rows above; the gated variant's vertical stack does not);
        condition (B, C_cond, H, W).
        -> row_bias (B, L + 1, W, C_bias) for `step`, the new vertical_cache.
        """
        reach, first_reach = self.reach, self.first_reach()
        condition_row = row_to_channels_last(torch.index_select(condition, 2, row))  # (B, W, C_cond)
        padded = F.pad(codes, (first_reach, first_reach, first_reach, 0), value=self.codebook_size)
        rows_above = row + torch.arange(first_reach, device=row.device)  # padded rows of row-reach .. row-1
        above = self.embed(torch.index_select(padded, 1, rows_above))  # (B, C, reach, W + 2 reach)
        biases, caches = [], []
        if self.variant == "gated":
            layers = modules_as(self.layers, GatedStackLayer)
            vertical, bias = layers[0].row(above, condition_row)  # (B, C, 1, W), (B, W, 2C)
            biases.append(bias)
            for index, layer in enumerate(layers[1:]):
                # This block reads the rows above from the cache and this row from the layer below.
                strip = torch.cat(
                    [vertical_cache[:, index], F.pad(vertical, (reach, reach))], dim=2
                )  # rows row-reach .. row
                vertical, bias = layer.row(strip, condition_row)
                biases.append(bias)
                caches.append(strip[:, :, 1:])
        else:
            biases.append(
                row_to_channels_last(self.first.rows_above(above)) + pointwise(self.first_condition, condition_row)
            )
            for index, block in enumerate(modules_as(self.blocks, MaskedGatedBlock)):
                finished = F.pad(
                    previous_row[:, index, :, None, reach:], (reach, reach)
                )  # (B, C_cache, 1, W + 2 reach)
                strip = torch.cat([vertical_cache[:, index, :, 1:], finished], dim=2)  # rows row-reach .. row-1
                biases.append(block.row(strip, condition_row))
                caches.append(strip)
        return torch.stack(biases, dim=1), torch.stack(caches, dim=1)

    def step(
        self,
        codes: torch.Tensor,
        row: torch.Tensor,
        col: torch.Tensor,
        row_bias: torch.Tensor,
        horizontal_cache: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits at (row, col) from the codes before it.

        row_bias (B, L + 1, W, C_bias) from `row`; horizontal_cache: gated (B, L, C_cache,
        reach), each block's input at the `reach` positions before this one; masked (B, L,
        C_cache, reach + W), at every earlier position of the row (`row` needs them all).
        -> logits (B, K), the new horizontal_cache.
        """
        reach, first_reach = self.reach, self.first_reach()
        code_row = F.pad(
            torch.index_select(codes, 1, row)[:, 0], (first_reach, 0), value=self.codebook_size
        )  # (B, reach + W)
        columns_left = col + torch.arange(first_reach, device=col.device)  # padded columns of col-reach .. col-1
        left = self.embed(torch.index_select(code_row, 1, columns_left)[:, None])[:, :, 0]  # (B, C, reach)
        bias = torch.index_select(row_bias, 2, col)[:, :, 0]  # (B, L + 1, C_bias)
        caches = []
        if self.variant == "gated":
            layers = modules_as(self.layers, GatedStackLayer)
            features = layers[0].position(left, bias[:, 0])  # (B, C)
            for index, layer in enumerate(layers[1:]):
                strip = torch.cat([horizontal_cache[:, index], features[:, :, None]], dim=2)  # cols col-reach .. col
                features = layer.position(strip, bias[:, index + 1])
                caches.append(strip[:, :, 1:])
        else:
            cache_columns = torch.arange(reach + self.side, device=col.device)  # the cache's (padded) column numbers
            features = self.first.current_row(left) + bias[:, 0]
            for index, block in enumerate(modules_as(self.blocks, MaskedGatedBlock)):
                inner = block.inner_at(features)[:, :, None]  # (B, C_cache, 1)
                cache = torch.where(cache_columns == col + reach, inner, horizontal_cache[:, index])
                strip = torch.index_select(
                    cache, 2, col + torch.arange(reach + 1, device=col.device)
                )  # cols col-reach .. col
                features = block.position(features, strip, bias[:, index + 1])
                caches.append(cache)
        for head_layer in self.head:
            features = pointwise(head_layer, features) if isinstance(head_layer, nn.Conv2d) else head_layer(features)
        return features, torch.stack(caches, dim=1)

    def first_reach(self) -> int:
        return (
            modules_as(self.layers, GatedStackLayer)[0].vertical.reach if self.variant == "gated" else self.first.reach
        )
