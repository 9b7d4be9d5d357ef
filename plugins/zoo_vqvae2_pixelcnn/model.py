"""The whole model: the two-level VQ-VAE (vqvae.py) and a gated PixelCNN prior per level
(pixelcnn.py).

    images --vqvae.encode_codes--> top codes (B, h_top, w_top), bottom codes (B, h, w)
    prior_top:    p(top codes | label)
    prior_bottom: p(bottom codes | top codes, label)
    top codes, bottom codes --vqvae.decode_codes--> images

Sampling (runtime.py) draws the top codes in raster order, then the bottom codes given the
top, then decodes; export.py names the methods it runs as graphs.
"""

from __future__ import annotations

from torch import nn

from zoo_vqvae2_pixelcnn.config import VQVAE2Config
from zoo_vqvae2_pixelcnn.pixelcnn import CodeCondition, LabelCondition, PixelCNNPrior
from zoo_vqvae2_pixelcnn.vqvae import VQVAE2


class VQVAE2PixelCNN(nn.Module):
    def __init__(self, config: VQVAE2Config) -> None:
        super().__init__()
        self.vqvae = VQVAE2(config.vqvae)
        self.class_conditional = config.class_conditional  # else the priors know one label, 0
        top, bottom, codebooks = config.prior_top, config.prior_bottom, config.vqvae
        labels = config.num_classes if config.class_conditional else 1  # one label, 0, without classes
        self.prior_top = PixelCNNPrior(
            top,
            codebooks.top_codebook_size,
            config.top_side,
            LabelCondition(labels, top.condition_channels, config.top_side),
        )
        self.prior_bottom = PixelCNNPrior(
            bottom,
            codebooks.bottom_codebook_size,
            config.bottom_side,
            CodeCondition(
                codebooks.top_codebook_size,
                labels,
                bottom.condition_channels,
                bottom.condition_blocks,
                codebooks.top_downsample,
            ),
        )

    def priors(self) -> dict[str, PixelCNNPrior]:
        return {"prior_top": self.prior_top, "prior_bottom": self.prior_bottom}
