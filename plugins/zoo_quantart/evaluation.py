"""QuantArt's evaluation: style transfer quality on held-out (content, style) pairs plus
reconstruction and codebook usage of each VQGAN.

No pretrained network can be downloaded here, so the style and content features come from a fixed,
randomly initialised three-layer conv net (seed 0, Kaiming init, ReLU): random conv
features are known to carry texture statistics well enough for Gram/AdaIN style
measures (Ulyanov et al. 2017; He et al. 2016, "A powerful generative model using random
weights"). The same net scores every model, so numbers are comparable across runs.

Distribution metrics (`metric_sets`, for `zoo eval --metrics fid,rfid`): the QuantArt paper
measures a transfer by the FID of the stylised images against the style (artwork) images and
keeps content by SSIM to the content photos (its repository ships no evaluation code; the
paper's tables are followed). So its `transfer` set holds the stylised held-out pairs, the
style images as references and the content photos as sources (SSIM, RGB); each VQGAN's
reconstructions of its held-out images give its reconstruction FID.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from skimage.metrics import structural_similarity
from torch import nn

from zoo.nn.metrics import psnr
from zoo.nn.quantize import code_statistics, codes_from_features
from zoo.outputs import to_uint8
from zoo.plugin import MadeImages, MetricSet
from zoo_quantart.config import QuantArtConfig
from zoo_quantart.data import content_images, stack_images, style_images
from zoo_quantart.model import QuantArt

EVAL_BATCH = 8


@torch.no_grad()
def evaluate_pairs(
    model: QuantArt,
    config: QuantArtConfig,
    device: torch.device,
    content_style_balance: float = 1.0,
    fidelity_balance: float = 1.0,
) -> dict[str, float]:
    """Held-out (content, style) pairs, stylised at the given balances (sampling's defaults: 1, 1).

    style distance: mean/std and Gram distances of RandomFeatures (see py) to the
    style image, for the output and for the unstyled content image (ratio < 0.5 halves it);
    content preservation: SSIM (luminance; RGB too) and feature distance of the output to the content image;
    reconstruction PSNR and codebook usage of each VQGAN on its own held-out images.
    """
    model.eval()
    count = config.data.eval_pairs
    contents = stack_images(content_images(config, "test", count), count).to(device)
    styles = stack_images(style_images(config, "test", count), count).to(device)
    pairs = torch.arange(count)
    contents, styles = contents[pairs % len(contents)], styles[(pairs + pairs // len(styles)) % len(styles)]

    features = RandomFeatures().to(device)
    totals: dict[str, list] = {
        key: []
        for key in (
            "style_out",
            "style_content",
            "gram_out",
            "gram_content",
            "ssim",
            "ssim_rgb",
            "content_distance",
            "stylized_indices",
            "photo_psnr",
            "art_psnr",
            "photo_indices",
            "art_indices",
        )
    }
    for start in range(0, count, EVAL_BATCH):
        content, style = contents[start : start + EVAL_BATCH], styles[start : start + EVAL_BATCH]
        balances = [
            torch.full((len(content),), value, device=device) for value in (content_style_balance, fidelity_balance)
        ]
        content_codes, reference_codes = model.photo.encode_codes(content), model.art.encode_codes(style)
        codes = model.stylize_codes(content_codes, reference_codes, *balances)
        output = model.art.decode(codes).clamp(-1, 1)
        out_features, content_features, style_features = features(output), features(content), features(style)
        totals["style_out"].append(mean_std_distance(out_features, style_features))
        totals["style_content"].append(mean_std_distance(content_features, style_features))
        totals["gram_out"].append(gram_distance(out_features, style_features))
        totals["gram_content"].append(gram_distance(content_features, style_features))
        totals["content_distance"].append(content_distance(out_features, content_features))
        totals["ssim"].append(torch.from_numpy(ssim(output, content)))
        totals["ssim_rgb"].append(torch.from_numpy(ssim(output, content, luma=False)))
        totals["stylized_indices"].append(codes_from_features(codes, model.art.quantizer.codebook).flatten())
        for name, network, images in (("photo", model.photo, content), ("art", model.art, style)):
            reconstruction, quantized = network(images)
            totals[f"{name}_psnr"].append(psnr(reconstruction.clamp(-1, 1), images))
            totals[f"{name}_indices"].append(quantized.indices.flatten())

    mean = {
        key: torch.cat([v.flatten().float().cpu() for v in values]).mean().item()
        for key, values in totals.items()
        if not key.endswith("indices")
    }
    codebook_size = config.vqgan.codebook_size
    usage = {
        key.removesuffix("_indices"): code_statistics(torch.cat(values), codebook_size)
        for key, values in totals.items()
        if key.endswith("indices")
    }
    return {
        "style_distance_output": mean["style_out"],
        "style_distance_content": mean["style_content"],
        "style_distance_ratio": mean["style_out"] / max(mean["style_content"], 1e-12),
        "gram_distance_output": mean["gram_out"],
        "gram_distance_content": mean["gram_content"],
        "gram_distance_ratio": mean["gram_out"] / max(mean["gram_content"], 1e-12),
        "content_ssim": mean["ssim"],
        "content_ssim_rgb": mean["ssim_rgb"],
        "content_feature_distance": mean["content_distance"],
        "photo_psnr": mean["photo_psnr"],
        "art_psnr": mean["art_psnr"],
        "photo_codebook_usage": usage["photo"][0],
        "photo_perplexity": usage["photo"][1],
        "art_codebook_usage": usage["art"][0],
        "art_perplexity": usage["art"][1],
        "stylized_codebook_usage": usage["stylized"][0],
    }


Make = Callable[[np.ndarray], np.ndarray]  # (B, 3, H, W) float32 in [-1, 1] -> the same


def metric_sets(model: QuantArt, config: QuantArtConfig, device: torch.device) -> list[MetricSet]:
    """Each VQGAN's reconstructions of its held-out images, and the held-out (content, style)
    pairs stylised at balances (1, 1), as `evaluate_pairs` scores them."""

    def made_by(network: Callable[[torch.Tensor], torch.Tensor]) -> Make:
        @torch.no_grad()
        def make(images: np.ndarray) -> np.ndarray:
            return network(torch.from_numpy(images).to(device)).float().cpu().numpy()

        return make

    @torch.no_grad()
    def stylize(contents: np.ndarray, styles: np.ndarray) -> np.ndarray:
        content, style = torch.from_numpy(contents).to(device), torch.from_numpy(styles).to(device)
        ones = torch.ones(len(content), device=device)
        codes = model.stylize_codes(model.photo.encode_codes(content), model.art.encode_codes(style), ones, ones)
        return model.art.decode(codes).float().cpu().numpy()

    model.eval()
    photo, art = made_by(lambda images: model.photo(images)[0]), made_by(lambda images: model.art(images)[0])
    return held_out_sets(config, photo, art, stylize)


def export_metric_sets(runtime: Any, config: QuantArtConfig) -> list[MetricSet]:
    """The transfer set and the art VQGAN's rFID, made by an export's graphs (QuantArtRuntime
    `stylize`, `reconstruct_art`). The photo VQGAN's rFID needs the run: its decoder is not
    exported (a transfer decodes with the art decoder)."""
    graphs = ("photo_encoder", "art_encoder", "transfer", "art_decoder")
    if not all(name in runtime.components for name in graphs):
        return []
    return held_out_sets(config, None, runtime.reconstruct_art, runtime.stylize)


def held_out_sets(
    config: QuantArtConfig, photo: Make | None, art: Make, stylize: Callable[[np.ndarray, np.ndarray], np.ndarray]
) -> list[MetricSet]:
    """The sets, whatever makes the images (the model or its export): `photo` and `art`
    reconstruct, `stylize` transfers (content, style) pairs row by row."""
    count = config.data.eval_pairs

    def pairs() -> tuple[torch.Tensor, torch.Tensor]:
        contents = stack_images(content_images(config, "test", count), count)
        styles = stack_images(style_images(config, "test", count), count)
        index = torch.arange(count)
        return contents[index % len(contents)], styles[(index + index // len(styles)) % len(styles)]

    def pixels(images: np.ndarray) -> np.ndarray:
        return to_uint8(np.clip(images, -1, 1))

    def reconstructions(domain: str, make: Make) -> Iterator[MadeImages]:
        images = pairs()[0 if domain == "photo" else 1].unique(dim=0).float().numpy()
        for start in range(0, len(images), EVAL_BATCH):
            batch = images[start : start + EVAL_BATCH]
            yield MadeImages(pixels(make(batch)), pixels(batch))

    def transfer() -> Iterator[MadeImages]:
        contents, styles = (images.float().numpy() for images in pairs())
        for start in range(0, count, EVAL_BATCH):
            content, style = contents[start : start + EVAL_BATCH], styles[start : start + EVAL_BATCH]
            yield MadeImages(pixels(stylize(content, style)), pixels(style), pixels(content))

    sets = [MetricSet("vqgan_photo", "reconstruction", lambda: reconstructions("photo", photo))] if photo else []
    return [
        *sets,
        MetricSet("vqgan_art", "reconstruction", lambda: reconstructions("art", art)),
        MetricSet("transfer", "transfer", transfer),
    ]


# --- the style and content metrics ------------------------------------------------------------


class RandomFeatures(nn.Module):
    """images (B, 3, H, W) in [-1, 1] -> three ReLU feature maps at strides 1, 2, 4."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        widths = [(3, 32, 1), (32, 64, 2), (64, 128, 2)]
        convs = [nn.Conv2d(cin, cout, 3, stride=stride, padding=1) for cin, cout, stride in widths]
        with torch.no_grad():
            for conv in convs:
                fan_in = conv.in_channels * 9
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * (2.0 / fan_in) ** 0.5)
                assert conv.bias is not None  # built with a bias
                conv.bias.zero_()
        self.convs = nn.ModuleList(convs)
        self.requires_grad_(False).eval()

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        features, h = [], images
        for conv in self.convs:
            h = F.relu(conv(h))
            features.append(h)
        return features


def mean_std_distance(features: list[torch.Tensor], reference: list[torch.Tensor]) -> torch.Tensor:
    """Per image: sum over layers of MSE(channel means) + MSE(channel stds). -> (B,)"""
    layers = []
    for a, b in zip(features, reference, strict=True):
        a, b = a.flatten(2), b.flatten(2)
        layers.append((a.mean(2) - b.mean(2)).pow(2).mean(1) + (a.std(2) - b.std(2)).pow(2).mean(1))
    return functools.reduce(operator.add, layers)


def gram(features: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, C, C)
    flat = features.flatten(2)
    return flat @ flat.transpose(1, 2) / flat.shape[-1]


def gram_distance(features: list[torch.Tensor], reference: list[torch.Tensor]) -> torch.Tensor:
    """Per image: sum over layers of MSE between Gram matrices. -> (B,)"""
    return functools.reduce(
        operator.add, ((gram(a) - gram(b)).pow(2).flatten(1).mean(1) for a, b in zip(features, reference, strict=True))
    )


def content_distance(features: list[torch.Tensor], reference: list[torch.Tensor]) -> torch.Tensor:
    """Per image: mean over layers of the squared distance of channel-normalised features. -> (B,)"""
    distances = []
    for a, b in zip(features, reference, strict=True):
        a = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        b = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        distances.append((a - b).pow(2).sum(1).flatten(1).mean(1))
    return torch.stack(distances).mean(0)


def ssim(images: torch.Tensor, references: torch.Tensor, luma: bool = True) -> np.ndarray:
    """SSIM per image pair on 8-bit images as a viewer sees them (scikit-image, 7x7 window).

    luma=True compares the BT.601 luminance only: style transfer changes colours on
    purpose, and structure preservation is what the content score is meant to measure.
    luma=False compares the three RGB channels.
    """
    a, b = to_uint8(images.cpu().numpy()), to_uint8(references.cpu().numpy())  # (B, H, W, 3)
    if luma:
        a, b = _luma(a), _luma(b)
        return np.array([structural_similarity(x, y, data_range=255.0) for x, y in zip(a, b, strict=True)])
    return np.array([structural_similarity(x, y, channel_axis=-1, data_range=255) for x, y in zip(a, b, strict=True)])


def _luma(images: np.ndarray) -> np.ndarray:
    """(B, H, W, 3) uint8 -> (B, H, W) float64 BT.601 luminance in 0..255."""
    return images.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
