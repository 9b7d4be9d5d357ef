"""VAR's metrics on the held-out split: tokenizer PSNR and codebook usage, transformer
token accuracy and NLL (teacher-forced), and for the digits the share of samples that a
digits classifier reads as the class they were drawn for."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from zoo.data import DigitsClassifier
from zoo.nn.metrics import psnr
from zoo.outputs import SampleOutput, to_uint8
from zoo.plugin import MadeImages, MetricSet
from zoo_var.config import VARConfig, VARSampleOptions
from zoo_var.data import image_dataset, labels_of
from zoo_var.model import VARModel

BATCH = 128


@torch.no_grad()
def evaluate(
    model: VARModel, config: VARConfig, device: torch.device, sample: Callable[[VARSampleOptions], SampleOutput]
) -> dict[str, float]:
    """`sample` draws images with the plugin's sampling loop (used for the digits only)."""
    model.eval()
    metrics = held_out_metrics(model, config, device)
    if config.data == "digits":
        metrics.update(sample_accuracy(sample(VARSampleOptions())))
    return metrics


def reconstruct(model: VARModel, images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> the tokenizer's reconstruction through its multi-scale tokens."""
    quantizer = model.quantizer
    tokens = model.tokenizer.encode_indices(images)  # (B, L)
    return model.tokenizer.decode_image(quantizer.fhat_from_indices(quantizer.split_scales(tokens)))


def held_out_metrics(model: VARModel, config: VARConfig, device: torch.device) -> dict[str, float]:
    """On the held-out split, batch by batch (no split is held whole): the tokenizer's
    reconstruction PSNR and codebook usage, the transformer's teacher-forced NLL (nats per
    token) and token accuracy."""
    quantizer = model.quantizer
    psnrs, hits = [], torch.zeros(config.tokenizer.codebook_size, dtype=torch.int64)
    nll, correct, token_count = 0.0, 0.0, 0
    for batch in DataLoader(image_dataset(config, "test"), batch_size=BATCH, shuffle=False):
        images = batch["image"].to(device)
        tokens = model.tokenizer.encode_indices(images)  # (B, L)
        scales = quantizer.split_scales(tokens)
        psnrs.append(psnr(model.tokenizer.decode_image(quantizer.fhat_from_indices(scales)), images).cpu())
        hits += torch.bincount(tokens.flatten().cpu(), minlength=config.tokenizer.codebook_size)
        logits = model.transformer(labels_of(batch).to(device), quantizer.teacher_forcing_input(scales))  # (B, L, V)
        nll += float(F.cross_entropy(logits.flatten(0, 1), tokens.flatten(), reduction="sum"))
        correct += float((logits.argmax(-1) == tokens).sum())
        token_count += tokens.numel()
    return {
        "tokenizer_psnr": float(torch.cat(psnrs).mean()),
        "codebook_usage": float(hits.gt(0).float().mean()),
        "token_nll": nll / token_count,
        "token_accuracy": correct / token_count,
    }


def sample_accuracy(output: SampleOutput) -> dict[str, float]:
    """Share of sampled digits classified as the class they were drawn for, overall and per class."""
    assert output.images is not None  # a VAR sample is images
    images = output.images.transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1.0
    predicted = DigitsClassifier().predict(images)
    wanted = output.extras["labels"]
    metrics = {"sample_accuracy": float((predicted == wanted).mean())}
    for digit in np.unique(wanted):
        metrics[f"sample_accuracy_{digit}"] = float((predicted[wanted == digit] == digit).mean())
    return metrics


# The official evaluation's sampling options for its FID/IS/precision/recall table (VAR
# README: "cfg=1.5, top_p=0.96, top_k=900, more_smooth=False" for 50,000 images); cfg=1.5
# trades a little quality for diversity, which FID rewards.
PAPER_METRIC_OPTIONS = {"cfg": 1.5, "top_k": 900, "top_p": 0.96, "gumbel": 0.0}


def metric_sample_options(config: VARConfig, first: int, count: int, seed: int) -> VARSampleOptions:
    """Images first..first+count-1 of the class-balanced sample set: image i of class i mod classes."""
    classes = [(first + offset) % config.transformer.num_classes for offset in range(count)]
    return VARSampleOptions(classes=classes, n=1, seed=seed, **PAPER_METRIC_OPTIONS)


def metric_sets(model: VARModel, config: VARConfig, device: torch.device) -> list[MetricSet]:
    """The tokenizer's reconstructions of the held-out split, for its reconstruction FID."""

    @torch.no_grad()
    def make(images: np.ndarray) -> np.ndarray:
        model.eval()
        return reconstruct(model, torch.from_numpy(images).to(device)).float().cpu().numpy()

    return held_out_sets(config, make)


def export_metric_sets(runtime: Any, config: VARConfig) -> list[MetricSet]:
    """The same set made by an export's encoder, embed and decoder graphs (VARRuntime.reconstruct)."""
    needed = ["encoder", "decoder", *(f"embed_{k}" for k in range(len(config.tokenizer.patch_nums)))]
    if not all(name in runtime.components for name in needed):
        return []
    return held_out_sets(config, runtime.reconstruct)


def held_out_sets(config: VARConfig, reconstruct: Callable[[np.ndarray], np.ndarray]) -> list[MetricSet]:
    """`reconstruct`: (B, 3, H, W) float32 in [-1, 1] -> the same, by the model or its export."""

    def batches() -> Iterator[MadeImages]:
        for batch in DataLoader(image_dataset(config, "test"), batch_size=BATCH, shuffle=False):
            images = batch["image"].numpy()
            yield MadeImages(to_uint8(np.clip(reconstruct(images), -1, 1)), to_uint8(images))

    return [MetricSet("tokenizer", "reconstruction", batches)]
