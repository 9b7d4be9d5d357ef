"""QuantArt (Huang et al., CVPR 2023): style transfer on the codes of two VQGANs.

A photo VQGAN encodes the content image, an art VQGAN encodes the style reference; the
style transfer module maps the content codes, attending to the reference codes, into the
art code space, where the art codebook quantises them and the art decoder paints them.

    content image -> photo encoder -> photo codebook -> content codes (B, D, h, w) ─┐
    style image   -> art encoder   -> art codebook   -> reference codes ──────────> transfer module
                                      art decoder <- art codebook <- transferred codes

Two knobs act at inference: the content-style balance blends content codes and
transferred codes, the fidelity balance blends those continuous codes with their
art-codebook quantisation.
"""

from __future__ import annotations

import torch
from torch import nn

from zoo.nn.blocks import AttnBlock, Decoder, Encoder, ResnetBlock
from zoo.nn.gan import NLayerDiscriminator
from zoo.nn.quantize import QuantizerOutput, VectorQuantizer, nearest_code_indices
from zoo_quantart.config import QuantArtConfig


def quantize_to_codebook(codes: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Replace every vector of (B, D, h, w) by its nearest codebook row (K, D); no gradient path."""
    batch, channels, height, width = codes.shape
    flat = codes.permute(0, 2, 3, 1).reshape(-1, channels)  # (B*h*w, D)
    nearest = codebook[nearest_code_indices(flat, codebook)]
    return nearest.view(batch, height, width, channels).permute(0, 3, 1, 2)


def blend(start: torch.Tensor, end: torch.Tensor, amount: torch.Tensor) -> torch.Tensor:
    """start + amount * (end - start), with one amount (B,) per image."""
    return start + amount.view(-1, 1, 1, 1) * (end - start)


class VQGAN(nn.Module):
    """Encoder -> 1x1 conv -> codebook -> 1x1 conv -> decoder, plus the PatchGAN that
    judges its reconstructions."""

    def __init__(self, config: QuantArtConfig) -> None:
        super().__init__()
        arch = config.vqgan
        shape = dict(
            ch=arch.ch, ch_mult=arch.ch_mult, num_res_blocks=arch.num_res_blocks,
            attn_resolutions=arch.attn_resolutions, resolution=config.image_size,
            z_channels=arch.z_channels, dropout=arch.dropout,
        )
        self.encoder = Encoder(**shape)
        self.quant_conv = nn.Conv2d(arch.z_channels, arch.embed_dim, 1)
        self.quantizer = VectorQuantizer(
            arch.num_codes, arch.embed_dim, beta=arch.beta, legacy=arch.legacy,
            dead_code_threshold=arch.dead_code_threshold,
        )
        self.post_quant_conv = nn.Conv2d(arch.embed_dim, arch.z_channels, 1)
        self.decoder = Decoder(**shape)
        disc = config.discriminator
        self.discriminator = NLayerDiscriminator(3, disc.base_channels, disc.num_layers)

    def generator_modules(self) -> list[nn.Module]:
        return [self.encoder, self.quant_conv, self.quantizer, self.post_quant_conv, self.decoder]

    @property
    def last_layer(self) -> torch.Tensor:
        """The decoder's output conv weight, where the adaptive GAN weight is measured."""
        return self.decoder.conv_out.weight

    def encode(self, images: torch.Tensor) -> QuantizerOutput:  # (B, 3, H, W) -> codes (B, D, H/f, W/f)
        return self.quantizer(self.quant_conv(self.encoder(images)))

    def encode_codes(self, images: torch.Tensor) -> torch.Tensor:
        """Inference-only encode: (B, 3, H, W) -> quantised codes (B, D, h, w), no losses or usage tracking."""
        return quantize_to_codebook(self.quant_conv(self.encoder(images)), self.quantizer.codebook)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:  # (B, D, h, w) -> (B, 3, h*f, w*f)
        return self.decoder(self.post_quant_conv(codes))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, QuantizerOutput]:
        quantized = self.encode(images)
        return self.decode(quantized.quantized), quantized


class StyleTransferBlock(nn.Module):
    """ResnetBlock -> self-attention -> cross-attention to the reference codes."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.res_block = ResnetBlock(channels, channels)
        self.self_attn_block = AttnBlock(channels)
        self.attn_block = AttnBlock(channels)

    def forward(self, codes: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:  # (B, D, h, w), (B, D, h', w')
        codes = self.self_attn_block(self.res_block(codes))
        return self.attn_block(codes, context=reference)


class StyleTransferModule(nn.Module):
    """Content codes (B, D, h, w) + reference codes (B, D, h', w') -> continuous art-space codes (B, D, h, w)."""

    def __init__(self, channels: int, block_num: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(StyleTransferBlock(channels) for _ in range(block_num))

    @property
    def last_layer(self) -> torch.Tensor:
        """The output projection of the last cross-attention, where the adaptive GAN weight is measured."""
        return self.blocks[-1].attn_block.proj_out.weight

    def forward(self, content: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        codes = content
        for block in self.blocks:
            codes = block(codes, reference)
        return codes


class QuantArt(nn.Module):
    """All parts of all stages: two VQGANs, the style transfer module, the latent discriminator."""

    def __init__(self, config: QuantArtConfig) -> None:
        super().__init__()
        self.photo = VQGAN(config)
        self.art = VQGAN(config)
        self.transfer = StyleTransferModule(config.vqgan.embed_dim, config.transfer.block_num)
        self.latent_discriminator = NLayerDiscriminator(
            config.vqgan.embed_dim, config.transfer.discriminator_channels,
            config.transfer.discriminator_layers, downsample=config.transfer.discriminator_downsample,
        )

    def stylize_codes(
        self,
        content_codes: torch.Tensor,
        reference_codes: torch.Tensor,
        content_style_balance: torch.Tensor,
        fidelity_balance: torch.Tensor,
    ) -> torch.Tensor:
        """Quantised content and reference codes (B, D, h, w), balances (B,) -> codes for the art decoder."""
        transferred = self.transfer(content_codes, reference_codes)
        stylized = blend(content_codes, transferred, content_style_balance)  # content-style trade-off
        quantized = quantize_to_codebook(stylized, self.art.quantizer.codebook)
        return blend(stylized, quantized, fidelity_balance)  # visual-fidelity trade-off

    def stylize(
        self,
        content: torch.Tensor,
        style: torch.Tensor,
        content_style_balance: torch.Tensor,
        fidelity_balance: torch.Tensor,
    ) -> torch.Tensor:
        """Content and style images (B, 3, H, W) in [-1, 1], balances (B,) -> stylised images (B, 3, H, W)."""
        content_codes = self.photo.encode_codes(content)
        reference_codes = self.art.encode_codes(style)
        codes = self.stylize_codes(content_codes, reference_codes, content_style_balance, fidelity_balance)
        return self.art.decode(codes)


# The graphs the exporter writes and `sample` runs; each returns tensors in output-name order.


class EncodeCodes(nn.Module):
    """images (B, 3, H, W) -> quantised codes (B, D, h, w) of one VQGAN (photo: content codes,
    art: reference codes)."""

    def __init__(self, vqgan: VQGAN) -> None:
        super().__init__()
        self.vqgan = vqgan

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.vqgan.encode_codes(images)


class TransferCodes(nn.Module):
    """content codes, reference codes (B, D, h, w), content_style_balance (B,), fidelity_balance (B,) -> codes."""

    def __init__(self, model: QuantArt) -> None:
        super().__init__()
        self.model = model

    def forward(self, content_codes, reference_codes, content_style_balance, fidelity_balance) -> torch.Tensor:
        return self.model.stylize_codes(content_codes, reference_codes, content_style_balance, fidelity_balance)


class DecodeCodes(nn.Module):
    """codes (B, D, h, w) -> images (B, 3, H, W) in about [-1, 1]."""

    def __init__(self, vqgan: VQGAN) -> None:
        super().__init__()
        self.vqgan = vqgan

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return self.vqgan.decode(codes)


class Stylize(nn.Module):
    """content images, style images (B, 3, H, W), balances (B,) -> stylised images: the whole
    transfer as one graph."""

    def __init__(self, model: QuantArt) -> None:
        super().__init__()
        self.model = model

    def forward(self, content, style, content_style_balance, fidelity_balance) -> torch.Tensor:
        return self.model.stylize(content, style, content_style_balance, fidelity_balance)
