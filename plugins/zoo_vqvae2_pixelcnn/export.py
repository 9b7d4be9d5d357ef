"""The graphs sampling runs (runtime.py), each a method of the model:

    encoder                 vqvae.encode_codes      images -> top_codes, bottom_codes
    decoder                 vqvae.decode_codes      top_codes, bottom_codes -> images
    <prior>_condition       prior.condition         labels (top) or top_codes, labels (bottom) -> condition
    <prior>_logits          prior.code_logits       codes, condition -> logits          (naive path)
    <prior>_row             prior.row               once per row: -> row_bias, new_vertical_cache
    <prior>_step            prior.step              once per position: -> logits, new_horizontal_cache

for <prior> in prior_top, prior_bottom. Every input and output has a dynamic batch axis. The
encoder (nearest-code searches) stays fp32 at fp16/int8 (keep_fp32).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from zoo.plugin import Component
from zoo.torch_components import method_component
from zoo_vqvae2_pixelcnn.config import VQVAE2Config
from zoo_vqvae2_pixelcnn.model import VQVAE2PixelCNN
from zoo_vqvae2_pixelcnn.pixelcnn import PixelCNNPrior

Inputs = Callable[[int], dict[str, torch.Tensor]]


def batch_axes(*names: str) -> dict[str, dict[int, str]]:
    return {name: {0: "batch"} for name in names}


def export_components(model: VQVAE2PixelCNN, config: VQVAE2Config) -> list[Component]:
    generator = torch.Generator().manual_seed(config.seed)
    size, codebooks = config.image_size, config.vqvae

    def codes(batch: int, side: int, codebook_size: int) -> torch.Tensor:
        return torch.randint(0, codebook_size, (batch, side, side), generator=generator)

    def image_inputs(variant: int) -> dict[str, torch.Tensor]:
        return {"images": torch.rand(2 + variant, 3, size, size, generator=generator) * 2 - 1}

    def code_inputs(variant: int) -> dict[str, torch.Tensor]:
        return {
            "top_codes": codes(2 + variant, config.top_side, codebooks.top_codebook_size),
            "bottom_codes": codes(2 + variant, config.bottom_side, codebooks.bottom_codebook_size),
        }

    components = [
        method_component(
            "encoder",
            model.vqvae,
            "encode_codes",
            image_inputs,
            ["top_codes", "bottom_codes"],
            batch_axes("images", "top_codes", "bottom_codes"),
            keep_fp32=True,
        ),
        method_component(
            "decoder",
            model.vqvae,
            "decode_codes",
            code_inputs,
            ["images"],
            batch_axes("top_codes", "bottom_codes", "images"),
        ),
    ]
    for name, prior in model.priors().items():
        components += prior_components(name, prior, config, generator)
    return components


def prior_components(
    name: str, prior: PixelCNNPrior, config: VQVAE2Config, generator: torch.Generator
) -> list[Component]:
    """`<name>_condition`, `_logits` (naive path), `_row` and `_step` (fast path)."""
    settings = getattr(config, name)
    side, codebook_size, condition_channels = prior.side, prior.codebook_size, settings.condition_channels

    def condition_inputs(variant: int) -> dict[str, torch.Tensor]:
        batch = 2 + variant
        labels = {
            "labels": torch.randint(
                0, config.num_classes if config.class_conditional else 1, (batch,), generator=generator
            )
        }
        if name == "prior_top":
            return labels
        top_side = config.top_side
        return {
            "top_codes": torch.randint(
                0, config.vqvae.top_codebook_size, (batch, top_side, top_side), generator=generator
            ),
            **labels,
        }

    def codes(batch: int) -> torch.Tensor:
        return torch.randint(0, codebook_size, (batch, side, side), generator=generator)

    def condition_map(batch: int) -> torch.Tensor:
        return torch.randn(batch, condition_channels, side, side, generator=generator)

    def position(variant: int) -> torch.Tensor:
        return torch.randint(0, side, (1,), generator=generator)

    def logits_inputs(variant: int) -> dict[str, torch.Tensor]:
        return {"codes": codes(2 + variant), "condition": condition_map(2 + variant)}

    def row_inputs(variant: int) -> dict[str, torch.Tensor]:
        batch = 2 + variant
        return {
            "codes": codes(batch),
            "row": position(variant),
            "vertical_cache": torch.randn(batch, *settings.vertical_cache_shape(side), generator=generator),
            "previous_row": torch.randn(batch, *settings.horizontal_cache_shape(side), generator=generator),
            "condition": condition_map(batch),
        }

    def step_inputs(variant: int) -> dict[str, torch.Tensor]:
        batch = 2 + variant
        return {
            "codes": codes(batch),
            "row": position(variant),
            "col": position(variant),
            "row_bias": torch.randn(batch, *settings.row_bias_shape(side), generator=generator),
            "horizontal_cache": torch.randn(batch, *settings.horizontal_cache_shape(side), generator=generator),
        }

    condition_names = ["labels"] if name == "prior_top" else ["top_codes", "labels"]
    return [
        method_component(
            f"{name}_condition",
            prior,
            "condition",
            condition_inputs,
            ["condition"],
            batch_axes(*condition_names, "condition"),
        ),
        method_component(
            f"{name}_logits",
            prior,
            "code_logits",
            logits_inputs,
            ["logits"],
            batch_axes("codes", "condition", "logits"),
        ),
        method_component(
            f"{name}_row",
            prior,
            "row",
            row_inputs,
            ["row_bias", "new_vertical_cache"],
            batch_axes("codes", "vertical_cache", "previous_row", "condition", "row_bias", "new_vertical_cache"),
        ),
        method_component(
            f"{name}_step",
            prior,
            "step",
            step_inputs,
            ["logits", "new_horizontal_cache"],
            batch_axes("codes", "row_bias", "horizontal_cache", "logits", "new_horizontal_cache"),
        ),
    ]
