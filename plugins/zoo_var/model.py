"""The whole VAR network: the tokenizer (a multi-scale VQVAE, `vqvae.py`), the transformer
(`transformer.py`) and, only when the tokenizer stage uses an adversarial loss, its
discriminator. The graphs exported from it are listed in `export.py`."""

from __future__ import annotations

import math

from torch import nn

from zoo.nn.gan import NLayerDiscriminator
from zoo_var.config import VARConfig
from zoo_var.transformer import VARTransformer
from zoo_var.vqvae import MultiScaleResidualQuantizer, Tokenizer


class VARModel(nn.Module):
    def __init__(self, config: VARConfig) -> None:
        super().__init__()
        tokenizer = config.tokenizer
        self.tokenizer = Tokenizer(tokenizer)
        self.transformer = VARTransformer(
            config.transformer, tokenizer.code_dim, tokenizer.codebook_size, tokenizer.patch_nums
        )
        # Only trained (and saved) when the tokenizer stage uses an adversarial loss; fewer
        # stride-2 layers for small images, so every patch logit still sees a whole region.
        layers = max(1, min(3, tokenizer.resolution.bit_length() - 5))
        self.discriminator = (
            NLayerDiscriminator(3, num_layers=layers) if config.tokenizer_training.gan_weight > 0 else None
        )

    @property
    def quantizer(self) -> MultiScaleResidualQuantizer:
        return self.tokenizer.quantizer

    @property
    def gan_discriminator(self) -> NLayerDiscriminator:
        """The discriminator, for what runs only with an adversarial loss (its optimizer, its loss)."""
        if self.discriminator is None:
            raise RuntimeError("this VAR model has no discriminator: its tokenizer_training.gan_weight is 0")
        return self.discriminator

    def transformer_parameter_count(self) -> int:
        """What the paper reports as the model size: the VAR transformer alone (no tokenizer)."""
        return sum(math.prod(p.shape) for p in self.transformer.parameters())
