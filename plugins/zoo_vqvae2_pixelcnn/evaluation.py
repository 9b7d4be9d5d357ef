"""`evaluate`: on the held-out split, reconstruction MSE/PSNR, codebook usage and perplexity
per level, each prior's NLL in bits per code; on digits, how clear samples are."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from zoo.data import DigitsClassifier
from zoo.nn.metrics import psnr_from_mse
from zoo.nn.quantize import count_statistics
from zoo.outputs import SampleOutput, to_uint8
from zoo.plugin import MadeImages, MetricSet, StepContext
from zoo_vqvae2_pixelcnn.config import VQVAE2Config, VQVAE2SampleOptions
from zoo_vqvae2_pixelcnn.data import ENCODE_BATCH, check_labels, image_set, prior_batch
from zoo_vqvae2_pixelcnn.losses import PRIOR_LOSSES
from zoo_vqvae2_pixelcnn.model import VQVAE2PixelCNN


@torch.no_grad()
def evaluate(
    model: VQVAE2PixelCNN,
    config: VQVAE2Config,
    device: torch.device,
    sample: Callable[[VQVAE2SampleOptions], SampleOutput],
) -> dict[str, float]:
    """`sample(options)` draws images with the model (the plugin's sampling loop); the digit
    scores are of `eval_samples` images drawn with seed 0."""
    model.eval()
    images_set = image_set(config, "test")
    check_labels(config, images_set)
    codebook_sizes = {"top": config.vqvae.top_codebook_size, "bottom": config.vqvae.bottom_codebook_size}
    counts = {level: torch.zeros(size, dtype=torch.int64) for level, size in codebook_sizes.items()}
    squared_error, nll, images_seen = 0.0, dict.fromkeys(PRIOR_LOSSES, 0.0), 0
    for batch in DataLoader(images_set, batch_size=ENCODE_BATCH):  # batch by batch: no split held whole
        batch = {key: value.to(device) for key, value in batch.items() if key in ("image", "label")}
        images = batch["image"]
        reconstruction = model.vqvae(images).reconstruction.clamp(-1, 1)
        squared_error += (reconstruction - images).pow(2).mean(dim=(1, 2, 3)).sum().item()
        codes = prior_batch(model, batch)
        for level, size in codebook_sizes.items():
            counts[level] += torch.bincount(codes[level].flatten().cpu(), minlength=size)
        for name, loss in PRIOR_LOSSES.items():
            nll[name] += loss(model, codes, StepContext(0, 1, device))["loss"].item() * len(images)
        images_seen += len(images)
    mse = squared_error / max(1, images_seen)
    metrics: dict[str, float] = {"recon_mse": mse, "recon_psnr": psnr_from_mse(mse).item()}  # of the mean MSE
    for level, level_counts in counts.items():
        metrics[f"{level}_codebook_usage"], metrics[f"{level}_perplexity"] = count_statistics(level_counts)
    for name, total in nll.items():
        metrics[f"{name}_bits_per_code"] = total / max(1, images_seen) / math.log(2)

    if config.data == "digits":
        output = sample(eval_sample_options(config))
        images = torch.from_numpy(output.images).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        labels = output.extras["labels"] if config.class_conditional else None
        metrics.update({f"sample_{k}": v for k, v in DigitsClassifier().score(images, labels).items()})
    return metrics


def eval_sample_options(config: VQVAE2Config) -> VQVAE2SampleOptions:
    """`eval_samples` images in all: n per class over the first 10 classes (or all n unconditionally)."""
    rows = min(10, config.num_classes) if config.class_conditional else 1
    return VQVAE2SampleOptions(n=max(1, config.eval_samples // rows), seed=0)


def metric_sample_options(config: VQVAE2Config, first: int, count: int, seed: int) -> VQVAE2SampleOptions:
    """Images first..first+count-1 of the sample set, with the sampling defaults (temperature 1,
    no top-k: the paper's FID is of unfiltered samples); class-balanced for a class model."""
    if not config.class_conditional:
        return VQVAE2SampleOptions(n=count, seed=seed)
    return VQVAE2SampleOptions(classes=[(first + i) % config.num_classes for i in range(count)], n=1, seed=seed)


def metric_sets(model: VQVAE2PixelCNN, config: VQVAE2Config, device: torch.device) -> list[MetricSet]:
    """The autoencoder's reconstructions of the held-out split, for its reconstruction FID."""

    @torch.no_grad()
    def reconstruct(images: np.ndarray) -> np.ndarray:
        model.eval()
        return model.vqvae(torch.from_numpy(images).to(device)).reconstruction.float().cpu().numpy()

    return held_out_sets(config, reconstruct)


def export_metric_sets(runtime: Any, config: VQVAE2Config) -> list[MetricSet]:
    """The same set made by an export's encoder and decoder graphs (VQVAE2Runtime.reconstruct)."""
    if "encoder" not in runtime.components or "decoder" not in runtime.components:
        return []
    return held_out_sets(config, runtime.reconstruct)


def held_out_sets(config: VQVAE2Config, reconstruct: Callable[[np.ndarray], np.ndarray]) -> list[MetricSet]:
    """`reconstruct`: (B, 3, H, W) float32 in [-1, 1] -> the same, by the model or its export."""

    def batches() -> Iterator[MadeImages]:
        for batch in DataLoader(image_set(config, "test"), batch_size=ENCODE_BATCH):
            images = batch["image"].numpy()
            yield MadeImages(to_uint8(np.clip(reconstruct(images), -1, 1)), to_uint8(images))

    return [MetricSet("vqvae", "reconstruction", batches)]
