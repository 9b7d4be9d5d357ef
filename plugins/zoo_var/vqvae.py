"""VAR's tokenizer: a VQVAE whose quantiser splits the latent into residual token maps of
growing size (after FoundationVision/VAR `models/quant.py`, `models/vqvae.py`).

Quantising f (B, C, h, w) over scales k = 0..K-1 with sides patch_nums[k]:

    residual = f, f_hat = 0
    for k:  indices_k = nearest code of area_downsample(residual, side_k)
            h_k = phi_k(bicubic_upsample(codebook[indices_k], h))
            f_hat += h_k;  residual -= h_k

The area and bicubic resampling are written as fixed matrices, `rows @ x @ rows.T`:
exactly torch's `interpolate` (a test checks), and a plain MatMul for every ONNX exporter,
also for sides that do not divide the map (13 of 16), where torch's area mode fails to export.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from zoo.nn.blocks import AutoencoderShape, Decoder, Encoder
from zoo.nn.quantize import codes_from_features, count_code_usage, restart_dead_codes
from zoo_var.config import TokenizerConfig
from zoo_var.scales import area_matrix, scale_starts


def bicubic_matrix(source: int, target: int) -> torch.Tensor:
    """(target, source): torch's bicubic upsampling (align_corners=False) along one axis.
    Bicubic is separable and linear, so interpolating the unit vectors gives its matrix."""
    unit_vectors = torch.eye(source, dtype=torch.float64).view(source, 1, source, 1)
    return F.interpolate(unit_vectors, size=(target, 1), mode="bicubic", align_corners=False)[:, 0, :, 0].T


def resample(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """(B, C, s, s) -> (B, C, t, t) with a (t, s) resampling matrix applied to both axes:
    rows @ x @ rows.T, written with the constant matrix first in both products because
    onnxruntime's int8 quantisation rewrites MatMuls with a constant second operand, and
    these exact pooling weights must stay float."""
    return (rows @ (rows @ x).transpose(-1, -2)).transpose(-1, -2)


class Phi(nn.Conv2d):
    """phi(h) = (1 - r) h + r conv3x3(h): refines an upsampled token map."""

    def __init__(self, channels: int, ratio: float) -> None:
        super().__init__(channels, channels, kernel_size=3, padding=1)
        self.ratio = ratio

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return (1 - self.ratio) * h + self.ratio * super().forward(h)


def phi_index_per_scale(num_scales: int, phi_count: int) -> list[int]:
    """Which phi each scale uses. Scale k sits at k/(K-1) in [0, 1] and takes the phi whose
    tick is nearest: ticks linspace(1/12, 11/12, 4) for the paper's 4 shared convs,
    linspace(1/2n, 1 - 1/2n, n) for n convs otherwise (as the official code)."""
    count = num_scales if phi_count == 0 else phi_count
    if count == 1:
        return [0] * num_scales
    margin = 1 / 3 / count if count == 4 else 1 / 2 / count
    ticks = np.linspace(margin, 1 - margin, count)
    return [int(np.argmin(np.abs(ticks - k / (num_scales - 1)))) for k in range(num_scales)]


@dataclass
class MultiScaleOutput:
    quantized: torch.Tensor  # (B, C, h, w) f_hat, straight-through: gradients reach the encoder
    indices: list[torch.Tensor]  # per scale (B, side_k^2) int64
    loss: torch.Tensor  # mean over scales of ||sg[f] - f_hat_k||^2 + beta ||f - sg[f_hat_k]||^2


class MultiScaleResidualQuantizer(nn.Module):
    """Residual quantisation of a (B, C, h, w) map into K token maps of sides `patch_nums`."""

    usage: torch.Tensor  # (codebook_size,) buffer: running hits per global batch of every code

    def __init__(
        self,
        codebook_size: int,
        code_dim: int,
        patch_nums: list[int],
        beta: float = 0.25,
        phi_ratio: float = 0.5,
        phi_count: int = 4,
        dead_code_threshold: float | None = 0.01,
        usage_decay: float = 0.99,
    ) -> None:
        super().__init__()
        self.codebook_size, self.code_dim, self.patch_nums = codebook_size, code_dim, list(patch_nums)
        self.beta, self.dead_code_threshold, self.usage_decay = beta, dead_code_threshold, usage_decay
        side = self.patch_nums[-1]
        self.codebook = nn.Parameter(  # (codebook_size, code_dim)
            torch.empty(codebook_size, code_dim).uniform_(-1 / codebook_size, 1 / codebook_size)
        )
        self.phi_per_scale = phi_index_per_scale(len(self.patch_nums), phi_count)
        make_phi = (lambda: Phi(code_dim, phi_ratio)) if abs(phi_ratio) > 1e-6 else nn.Identity
        self.phis = nn.ModuleList(make_phi() for _ in range(max(self.phi_per_scale) + 1))
        # Fixed resampling matrices (derived, so not saved with the weights).
        for k, scale_side in enumerate(self.patch_nums):
            down = torch.tensor(area_matrix(side, scale_side), dtype=torch.float32)
            self.register_buffer(f"down_{k}", down, persistent=False)
            self.register_buffer(f"up_{k}", bicubic_matrix(scale_side, side).float(), persistent=False)
        # Running hits per global batch of every code (summed over scales and processes):
        # usage and dead codes.
        # Starting at zero makes the first training step restart every code it did not
        # hit from the data, i.e. initialise the codebook from encoder outputs.
        self.register_buffer("usage", torch.zeros(codebook_size))

    @property
    def rewrites_parameters(self) -> bool:
        """Dead-code restarts write the codebook in place (see zoo.distributed)."""
        return self.dead_code_threshold is not None

    @property
    def num_scales(self) -> int:
        return len(self.patch_nums)

    @property
    def scale_starts(self) -> list[int]:
        """Offset of every scale's tokens in the concatenated (B, L) sequence, then L."""
        return scale_starts(self.patch_nums)

    def downsample(self, k: int, x: torch.Tensor) -> torch.Tensor:  # (B, C, h, w) -> (B, C, side_k, side_k)
        return x if k == self.num_scales - 1 else resample(x, getattr(self, f"down_{k}"))

    def scale_contribution(self, k: int, codes: torch.Tensor) -> torch.Tensor:
        """Code vectors of scale k (B, side_k^2, C) -> h_k (B, C, h, w): upsampled, then phi."""
        side = self.patch_nums[k]
        code_map = codes.transpose(1, 2).reshape(codes.shape[0], self.code_dim, side, side)
        if k != self.num_scales - 1:
            code_map = resample(code_map, getattr(self, f"up_{k}"))
        return self.phis[self.phi_per_scale[k]](code_map)

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:  # (B, l) -> (B, l, C)
        return F.embedding(indices, self.codebook)

    def _scales(self, features: torch.Tensor) -> Iterator[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Yield (k, queries (B*side^2, C), indices (B, side^2), h_k) scale by scale."""
        batch = features.shape[0]
        residual = features.detach()
        for k in range(self.num_scales):
            scale_features = self.downsample(k, residual)  # (B, C, side_k, side_k)
            queries = scale_features.permute(0, 2, 3, 1).reshape(-1, self.code_dim)
            indices = codes_from_features(scale_features, self.codebook.detach()).view(batch, -1)
            contribution = self.scale_contribution(k, self.lookup(indices))
            residual = residual - contribution.detach()
            yield k, queries, indices, contribution

    def forward(self, features: torch.Tensor) -> MultiScaleOutput:
        target = features.detach()
        f_hat = torch.zeros_like(target)
        loss = features.new_zeros(())
        all_indices, all_queries = [], []
        for _, queries, indices, contribution in self._scales(features):
            f_hat = f_hat + contribution
            # codebook and phi learn to match the features; the encoder commits to f_hat
            loss = loss + F.mse_loss(f_hat, target) + self.beta * F.mse_loss(features, f_hat.detach())
            all_indices.append(indices)
            all_queries.append(queries)
        if self.training:
            self._track_usage_and_restart(torch.cat([i.flatten() for i in all_indices]), torch.cat(all_queries))
        quantized = features + (f_hat - features).detach()
        return MultiScaleOutput(quantized, all_indices, loss / self.num_scales)

    @torch.no_grad()
    def indices_from_features(self, features: torch.Tensor) -> list[torch.Tensor]:
        return [indices for _, _, indices, _ in self._scales(features)]

    def fhat_from_indices(self, indices: list[torch.Tensor]) -> torch.Tensor:
        """Per-scale indices -> f_hat (B, C, h, w), the sum of every scale's contribution."""
        contributions = (
            self.scale_contribution(k, self.lookup(scale_indices)) for k, scale_indices in enumerate(indices)
        )
        return functools.reduce(operator.add, contributions)

    def teacher_forcing_input(self, indices: list[torch.Tensor]) -> torch.Tensor:
        """What the transformer sees during training: for every scale k >= 1, the f_hat of
        scales < k area-downsampled to side_k, as (B, L - side_0^2, C)."""
        batch = indices[0].shape[0]
        side = self.patch_nums[-1]
        f_hat = self.codebook.new_zeros(batch, self.code_dim, side, side)
        inputs = []
        for k in range(self.num_scales - 1):
            f_hat = f_hat + self.scale_contribution(k, self.lookup(indices[k]))
            inputs.append(self.downsample(k + 1, f_hat).flatten(2).transpose(1, 2))
        return torch.cat(inputs, dim=1)

    def add_scale(self, k: int, codes: torch.Tensor, f_hat: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Sampling step, exported as `embed_k`: add scale k's code vectors (B, side_k^2, C) to
        f_hat (B, C, h, w); return (new f_hat, the next scale's transformer input
        (B, side_{k+1}^2, C)), or (new f_hat,) after the last scale."""
        f_hat = f_hat + self.scale_contribution(k, codes)
        if k == self.num_scales - 1:
            return (f_hat,)
        return f_hat, self.downsample(k + 1, f_hat).flatten(2).transpose(1, 2)

    def split_scales(self, tokens: torch.Tensor) -> list[torch.Tensor]:
        """(B, L) concatenated tokens -> per scale (B, side_k^2)."""
        starts = self.scale_starts
        return [tokens[:, starts[k] : starts[k + 1]] for k in range(self.num_scales)]

    def usage_fraction(self) -> float:
        """Share of codes whose running usage is above the dead-code threshold."""
        return (self.usage > (self.dead_code_threshold or 0.0)).float().mean().item()

    @torch.no_grad()
    def _track_usage_and_restart(self, indices: torch.Tensor, queries: torch.Tensor) -> None:
        hits = count_code_usage(indices, self.codebook_size)  # global batch, every scale
        self.usage.mul_(self.usage_decay).add_(hits, alpha=1 - self.usage_decay)
        if self.dead_code_threshold is not None:
            # dead codes restart on residual vectors the quantiser actually met this batch
            restart_dead_codes(self.codebook, self.usage, self.dead_code_threshold, queries, float(hits.sum()))


@dataclass
class TokenizerOutput:
    reconstruction: torch.Tensor  # (B, 3, H, W)
    vq_loss: torch.Tensor
    indices: list[torch.Tensor]


class Tokenizer(nn.Module):
    """image -> encoder -> quant_conv -> multi-scale quantiser -> post_quant_conv -> decoder."""

    def __init__(self, config: TokenizerConfig) -> None:
        super().__init__()
        blocks = AutoencoderShape(
            ch=config.channels,
            ch_mult=tuple(config.channel_multipliers),
            num_res_blocks=config.res_blocks,
            attn_resolutions=tuple(config.attention_resolutions),
            in_channels=3,
            resolution=config.resolution,
            z_channels=config.code_dim,
            dropout=config.dropout,
            mid_attention=config.mid_attention,
        )
        kernel = config.quant_conv_kernel
        self.encoder = Encoder(**blocks)
        self.quant_conv = nn.Conv2d(config.code_dim, config.code_dim, kernel, padding=kernel // 2)
        self.quantizer = MultiScaleResidualQuantizer(
            config.codebook_size,
            config.code_dim,
            config.patch_nums,
            beta=config.beta,
            phi_ratio=config.phi_ratio,
            phi_count=config.phi_count,
            dead_code_threshold=config.dead_code_threshold,
        )
        self.post_quant_conv = nn.Conv2d(config.code_dim, config.code_dim, kernel, padding=kernel // 2)
        self.decoder = Decoder(**blocks)

    def features(self, images: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, C, h, w)
        return self.quant_conv(self.encoder(images))

    def forward(self, images: torch.Tensor) -> TokenizerOutput:
        quantized = self.quantizer(self.features(images))
        return TokenizerOutput(self.decode(quantized.quantized), quantized.loss, quantized.indices)

    def decode(self, f_hat: torch.Tensor) -> torch.Tensor:  # (B, C, h, w) -> (B, 3, H, W)
        return self.decoder(self.post_quant_conv(f_hat))

    def decode_image(self, f_hat: torch.Tensor) -> torch.Tensor:
        """f_hat (B, C, h, w) -> image (B, 3, H, W) clamped to [-1, 1]; exported as `decoder`."""
        return self.decode(f_hat).clamp(-1.0, 1.0)

    @torch.no_grad()
    def encode_indices(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, L) int64, every scale's tokens concatenated; exported as `encoder`."""
        return torch.cat(self.quantizer.indices_from_features(self.features(images)), dim=1)
