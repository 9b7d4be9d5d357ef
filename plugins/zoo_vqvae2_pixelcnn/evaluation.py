"""`evaluate`: on the held-out split, reconstruction MSE/PSNR, codebook usage and perplexity
per level, each prior's NLL in bits per code; on digits, how clear samples are."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.utils.data import DataLoader

from zoo.data import DigitsClassifier
from zoo.nn.metrics import psnr_from_mse
from zoo.nn.quantize import code_statistics
from zoo.outputs import SampleOutput
from zoo.plugin import StepContext
from zoo_vqvae2_pixelcnn.config import VQVAE2Config, VQVAE2SampleOptions
from zoo_vqvae2_pixelcnn.data import ENCODE_BATCH, CodeSet, extract_codes, image_set
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
    metrics: dict[str, float] = {}
    squared_errors = []
    for batch in DataLoader(image_set(config, "test"), batch_size=ENCODE_BATCH):
        images = batch["image"].to(device)
        reconstruction = model.vqvae(images).reconstruction.clamp(-1, 1)
        squared_errors.append((reconstruction - images).pow(2).mean(dim=(1, 2, 3)).cpu())
    mse = torch.cat(squared_errors).mean().item()
    metrics["recon_mse"] = mse
    metrics["recon_psnr"] = psnr_from_mse(mse).item()  # of the mean MSE of the split

    codes = CodeSet(extract_codes(model, config, "test", device))
    for level, codebook_size in (
        ("top", config.vqvae.top_codebook_size),
        ("bottom", config.vqvae.bottom_codebook_size),
    ):
        usage, perplexity = code_statistics(codes.tensors[level], codebook_size)
        metrics[f"{level}_codebook_usage"] = usage
        metrics[f"{level}_perplexity"] = perplexity
    for name, loss in PRIOR_LOSSES.items():
        nll, count = 0.0, 0
        for batch in DataLoader(codes, batch_size=ENCODE_BATCH):
            batch = {k: v.to(device) for k, v in batch.items()}
            nll += loss(model, batch, StepContext(0, 1, device))["loss"].item() * len(batch["label"])
            count += len(batch["label"])
        metrics[f"{name}_bits_per_code"] = nll / count / math.log(2)

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
