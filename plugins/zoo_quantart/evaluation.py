"""QuantArt's evaluation: style transfer quality on held-out (content, style) pairs plus
reconstruction and codebook usage of each VQGAN."""

from __future__ import annotations

import torch

from zoo.nn.quantize import code_statistics, nearest_code_indices
from zoo_quantart import metrics
from zoo_quantart.config import QuantArtConfig
from zoo_quantart.data import content_images, stack_images, style_images
from zoo_quantart.model import VQGAN, QuantArt

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

    style distance: mean/std and Gram distances of RandomFeatures (see metrics.py) to the
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

    features = metrics.RandomFeatures().to(device)
    totals: dict[str, list] = {key: [] for key in (
        "style_out", "style_content", "gram_out", "gram_content", "ssim", "ssim_rgb", "content_distance", "stylized_indices",
        "photo_psnr", "art_psnr", "photo_indices", "art_indices")}
    for start in range(0, count, EVAL_BATCH):
        content, style = contents[start : start + EVAL_BATCH], styles[start : start + EVAL_BATCH]
        balances = [torch.full((len(content),), value, device=device) for value in (content_style_balance, fidelity_balance)]
        content_codes, reference_codes = model.photo.encode_codes(content), model.art.encode_codes(style)
        codes = model.stylize_codes(content_codes, reference_codes, *balances)
        output = model.art.decode(codes).clamp(-1, 1)
        out_features, content_features, style_features = features(output), features(content), features(style)
        totals["style_out"].append(metrics.mean_std_distance(out_features, style_features))
        totals["style_content"].append(metrics.mean_std_distance(content_features, style_features))
        totals["gram_out"].append(metrics.gram_distance(out_features, style_features))
        totals["gram_content"].append(metrics.gram_distance(content_features, style_features))
        totals["content_distance"].append(metrics.content_distance(out_features, content_features))
        totals["ssim"].append(torch.from_numpy(metrics.ssim(output, content)))
        totals["ssim_rgb"].append(torch.from_numpy(metrics.ssim(output, content, luma=False)))
        totals["stylized_indices"].append(_indices(codes, model.art))
        for name, network, images in (("photo", model.photo, content), ("art", model.art, style)):
            reconstruction, quantized = network(images)
            totals[f"{name}_psnr"].append(metrics.psnr(reconstruction, images))
            totals[f"{name}_indices"].append(quantized.indices.flatten())

    mean = {key: torch.cat([v.flatten().float().cpu() for v in values]).mean().item()
            for key, values in totals.items() if not key.endswith("indices")}
    num_codes = config.vqgan.num_codes
    usage = {key.removesuffix("_indices"): code_statistics(torch.cat(values), num_codes)
             for key, values in totals.items() if key.endswith("indices")}
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


def _indices(codes: torch.Tensor, vqgan: VQGAN) -> torch.Tensor:
    """Art-codebook indices of (B, D, h, w) codes, flattened."""
    return nearest_code_indices(codes.permute(0, 2, 3, 1).reshape(-1, codes.shape[1]), vqgan.quantizer.codebook)
