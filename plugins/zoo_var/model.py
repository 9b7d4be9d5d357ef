"""The VAR model (tokenizer + transformer) and the modules it is exported as.

The tokenizer lives in `tokenizer.py`, the transformer in `transformer.py`. The export
modules below are thin views of them, one per graph the sampling loop calls:

    encoder            image (B, 3, H, W)                    -> tokens (B, L) int64
    embed_k            codes (B, side_k^2, C), f_hat          -> new_f_hat, next_input (B, side_{k+1}^2, C)
    transformer_step   labels, scale_inputs, positions, cache -> logits, new_cache
    decoder            f_hat (B, C, h, w)                     -> image (B, 3, H, W) in [-1, 1]
"""

from __future__ import annotations

import torch
from torch import nn

from zoo.nn.gan import NLayerDiscriminator
from zoo_var.config import Config
from zoo_var.tokenizer import MultiScaleResidualQuantizer, Tokenizer
from zoo_var.transformer import VARTransformer


class VARModel(nn.Module):
    def __init__(self, config: Config) -> None:
        super().__init__()
        tokenizer = config.tokenizer
        self.tokenizer = Tokenizer(tokenizer)
        self.transformer = VARTransformer(
            config.transformer, tokenizer.latent_channels, tokenizer.vocab_size, tokenizer.patch_nums
        )
        # Only trained (and saved) when the tokenizer stage uses an adversarial loss; fewer
        # stride-2 layers for small images, so every patch logit still sees a whole region.
        layers = max(1, min(3, tokenizer.resolution.bit_length() - 5))
        self.discriminator = NLayerDiscriminator(3, num_layers=layers) if config.tokenizer_training.gan_weight > 0 else None

    @property
    def quantizer(self) -> MultiScaleResidualQuantizer:
        return self.tokenizer.quantizer


class EncoderGraph(nn.Module):
    def __init__(self, tokenizer: Tokenizer) -> None:
        super().__init__()
        self.tokenizer = tokenizer

    def forward(self, image: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, L) int64
        return self.tokenizer.encode_indices(image)


class DecoderGraph(nn.Module):
    def __init__(self, tokenizer: Tokenizer) -> None:
        super().__init__()
        self.tokenizer = tokenizer

    def forward(self, f_hat: torch.Tensor) -> torch.Tensor:  # (B, C, h, w) -> (B, 3, H, W)
        return self.tokenizer.decode(f_hat).clamp(-1.0, 1.0)


class EmbedGraph(nn.Module):
    """Adds scale k's code vectors into f_hat and makes the next scale's transformer input
    (one graph per scale: every scale has its own resampling sizes and phi)."""

    def __init__(self, quantizer: MultiScaleResidualQuantizer, scale: int) -> None:
        super().__init__()
        self.quantizer, self.scale = quantizer, scale

    def forward(self, codes: torch.Tensor, f_hat: torch.Tensor) -> tuple[torch.Tensor, ...]:
        f_hat, next_input = self.quantizer.add_scale(self.scale, codes, f_hat)
        return (f_hat,) if next_input is None else (f_hat, next_input)


class TransformerStepGraph(nn.Module):
    def __init__(self, transformer: VARTransformer) -> None:
        super().__init__()
        self.transformer = transformer

    def forward(
        self, labels: torch.Tensor, scale_inputs: torch.Tensor, positions: torch.Tensor, cache: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transformer.step(labels, scale_inputs, positions, cache)
