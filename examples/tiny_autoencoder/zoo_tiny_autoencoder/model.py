"""The network: conv encoder, vector quantiser, conv decoder.

image (B, 3, H, W) --encoder--> (B, D, H/4, W/4) --quantizer--> codes (B, H/4, W/4) --decoder--> image
"""

import torch
from torch import nn

from zoo.nn.quantize import QuantizerOutput, VectorQuantizer, codes_from_features

from .config import TinyAutoencoderConfig


class TinyAutoencoder(nn.Module):
    def __init__(self, config: TinyAutoencoderConfig) -> None:
        super().__init__()
        w = config.width
        self.encoder = nn.Sequential(
            nn.Conv2d(3, w, 4, 2, 1), nn.ReLU(), nn.Conv2d(w, w, 4, 2, 1), nn.ReLU(), nn.Conv2d(w, config.code_dim, 1)
        )
        self.quantizer = VectorQuantizer(config.codebook_size, config.code_dim, ema_decay=0.9)
        self.decoder = nn.Sequential(
            nn.Conv2d(config.code_dim, w, 3, 1, 1),
            nn.ReLU(),
            nn.ConvTranspose2d(w, w, 4, 2, 1),
            nn.ReLU(),
            nn.ConvTranspose2d(w, 3, 4, 2, 1),
            nn.Tanh(),
        )

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, QuantizerOutput]:
        """-> reconstruction (B, 3, H, W), the quantiser's output (codes, loss, perplexity)."""
        quantized = self.quantizer(self.encoder(image))
        return self.decoder(quantized.quantized), quantized

    def encode_codes(self, image: torch.Tensor) -> torch.Tensor:
        """image (B, 3, H, W) -> codes (B, H/4, W/4) int64."""
        return codes_from_features(self.encoder(image), self.quantizer.codebook)

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (B, h, w) int64 -> image (B, 3, 4h, 4w)."""
        return self.decoder(self.quantizer.lookup(codes))
