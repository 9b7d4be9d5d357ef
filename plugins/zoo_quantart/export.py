"""QuantArt's export: the graphs `zoo sample` and `zoo run` loop over, and the images they
stylise by default.

    photo_encoder  images (B, 3, H, W) -> codes (B, D, h, w)        VQGAN.encode_codes of the photo VQGAN
    art_encoder    images (B, 3, H, W) -> codes (B, D, h, w)        VQGAN.encode_codes of the art VQGAN
    transfer       content_codes, reference_codes, both balances (B,) -> codes      QuantArt.stylize_codes
    art_decoder    codes (B, D, h, w) -> images (B, 3, H, W)        VQGAN.decode of the art VQGAN
    stylize        content, style images, both balances -> images   QuantArt.stylize (all of the above in one graph)

D is `vqgan.code_dim`, h = H / 2^(len(ch_mult) - 1). Every graph holding a nearest-code search
stays fp32 at fp16/int8 (keep_fp32): only art_decoder is converted.
"""

from __future__ import annotations

import torch

from zoo.outputs import to_uint8
from zoo.plugin import Component, ExportAssets
from zoo.torch_components import method_component
from zoo_quantart.config import QuantArtConfig
from zoo_quantart.data import sample_images
from zoo_quantart.model import QuantArt


def export_components(model: QuantArt, config: QuantArtConfig) -> list[Component]:
    stride = 2 ** (len(config.vqgan.ch_mult) - 1)
    side, code_dim = config.image_size, config.vqgan.code_dim
    generator = torch.Generator().manual_seed(config.seed)

    # Size s: batch 2 + s (1 would be specialised by the tracer) and sides shrinking by one
    # code per step; the reference is one code smaller than the content so the tracer
    # keeps the two spatial sizes independent.
    def images(size: int, shrink: int = 0) -> torch.Tensor:
        image_side = side - stride * (size + shrink)
        return torch.rand(2 + size, 3, image_side, image_side, generator=generator) * 2 - 1

    def codes(size: int, shrink: int = 0) -> torch.Tensor:
        code_side = side // stride - size - shrink
        return torch.randn(2 + size, code_dim, code_side, code_side, generator=generator)

    def balances(size: int) -> torch.Tensor:
        return torch.rand(2 + size, generator=generator)

    image_axes = {0: "batch", 2: "height", 3: "width"}
    code_axes = {0: "batch", 2: "code_height", 3: "code_width"}
    batch_axis = {0: "batch"}
    balance_axes = {"content_style_balance": batch_axis, "fidelity_balance": batch_axis}
    return [
        method_component(
            "photo_encoder",
            model.photo,
            "encode_codes",
            lambda size: {"images": images(size)},
            ["codes"],
            {"images": image_axes, "codes": code_axes},
            keep_fp32=True,
        ),
        method_component(
            "art_encoder",
            model.art,
            "encode_codes",
            lambda size: {"images": images(size)},
            ["codes"],
            {"images": image_axes, "codes": code_axes},
            keep_fp32=True,
        ),
        method_component(
            "transfer",
            model,
            "stylize_codes",
            lambda size: {
                "content_codes": codes(size),
                "reference_codes": codes(size, 1),
                "content_style_balance": balances(size),
                "fidelity_balance": balances(size),
            },
            ["codes"],
            {
                "content_codes": code_axes,
                "reference_codes": {0: "batch", 2: "reference_height", 3: "reference_width"},
                **balance_axes,
                "codes": code_axes,
            },
            keep_fp32=True,  # ends in a nearest-code search: at fp16, codes flipped (max error 0.46 of 4.4)
        ),
        method_component(
            "art_decoder",
            model.art,
            "decode",
            lambda size: {"codes": codes(size)},
            ["images"],
            {"codes": code_axes, "images": image_axes},
        ),
        method_component(
            "stylize",
            model,
            "stylize",
            lambda size: {
                "content": images(size),
                "style": images(size, 1),
                "content_style_balance": balances(size),
                "fidelity_balance": balances(size),
            },
            ["images"],
            {
                "content": image_axes,
                "style": {0: "batch", 2: "style_height", 3: "style_width"},
                **balance_axes,
                "images": image_axes,
            },
            keep_fp32=True,  # holds the encoders and the transfer
        ),
    ]


def export_assets(model: QuantArt, config: QuantArtConfig) -> ExportAssets:
    """The held-out images `zoo sample` / `zoo run` stylise when no --content/--style is given."""
    return ExportAssets(
        arrays={f"{role}_images": to_uint8(sample_images(config, role).numpy()) for role in ("content", "style")}
    )
