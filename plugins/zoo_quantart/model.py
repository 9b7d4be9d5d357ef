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

Shapes: D = vqgan.code_dim (one code vector), K = vqgan.codebook_size, h = H / f with
f = 2^(len(ch_mult) - 1).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from zoo.nn.blocks import AttnBlock, AutoencoderShape, Decoder, Encoder, ResnetBlock
from zoo.nn.gan import NLayerDiscriminator
from zoo.nn.layers import modules_as
from zoo.nn.quantize import QuantizerOutput, VectorQuantizer, codes_from_features, init_codebook_from
from zoo_quantart.config import QuantArtConfig


def quantize_to_codebook(codes: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Replace every vector of (B, D, h, w) by its nearest codebook row (K, D); no gradient path."""
    return codebook[codes_from_features(codes, codebook)].permute(0, 3, 1, 2)  # (B, h, w, D) -> (B, D, h, w)


def blend(start: torch.Tensor, end: torch.Tensor, amount: torch.Tensor) -> torch.Tensor:
    """start + amount * (end - start), with one amount (B,) per image."""
    return start + amount.view(-1, 1, 1, 1) * (end - start)


Domain = Literal["photo", "art"]
"""The two VQGANs' domains: content photos and style (art) images."""


class VQGAN(nn.Module):
    """Encoder -> 1x1 conv -> codebook -> 1x1 conv -> decoder, plus the PatchGAN that
    judges its reconstructions."""

    def __init__(self, config: QuantArtConfig) -> None:
        super().__init__()
        arch = config.vqgan
        shape = AutoencoderShape(
            ch=arch.ch,
            ch_mult=arch.ch_mult,
            num_res_blocks=arch.num_res_blocks,
            attn_resolutions=arch.attn_resolutions,
            resolution=config.image_size,
            z_channels=arch.z_channels,
            dropout=arch.dropout,
        )
        self.encoder = Encoder(**shape)
        self.quant_conv = nn.Conv2d(arch.z_channels, arch.code_dim, 1)
        self.quantizer = VectorQuantizer(
            arch.codebook_size,
            arch.code_dim,
            beta=arch.beta,
            legacy=arch.legacy,
            dead_code_threshold=arch.dead_code_threshold,
        )
        self.post_quant_conv = nn.Conv2d(arch.code_dim, arch.z_channels, 1)
        self.decoder = Decoder(**shape)
        disc = config.discriminator
        self.discriminator = NLayerDiscriminator(3, disc.base_channels, disc.num_layers)

    @torch.no_grad()
    def init_codebook(self, images: torch.Tensor, batch_size: int = 8) -> None:
        """Seed the codebook with encoder outputs of (N, 3, H, W) images: codes drawn from them
        all start in use, where taming's tiny uniform init collapses to a handful of codes in
        a short CPU run."""
        features = torch.cat([self.quant_conv(self.encoder(chunk)) for chunk in images.split(batch_size)])
        init_codebook_from(self.quantizer, features.permute(0, 2, 3, 1).reshape(-1, features.shape[1]))

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
        return modules_as(self.blocks, StyleTransferBlock)[-1].attn_block.proj_out.weight

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
        self.transfer = StyleTransferModule(config.vqgan.code_dim, config.transfer.block_num)
        self.latent_discriminator = NLayerDiscriminator(
            config.vqgan.code_dim,
            config.transfer.discriminator_channels,
            config.transfer.discriminator_layers,
            downsample=config.transfer.discriminator_downsample,
        )

    def vqgan(self, domain: Domain) -> VQGAN:
        """The VQGAN of a domain, "photo" or "art"."""
        return self.photo if domain == "photo" else self.art

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
