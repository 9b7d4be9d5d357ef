"""VAR's metrics on the held-out split: tokenizer PSNR and codebook usage, transformer
token accuracy and NLL (teacher-forced), and for the digits the share of samples that a
digits classifier reads as the class they were drawn for."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from zoo.data import DigitsClassifier
from zoo.nn.metrics import psnr
from zoo.outputs import SampleOutput
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
    tokens, labels, metrics = tokenizer_metrics(model, config, device)
    metrics.update(transformer_metrics(model, tokens, labels))
    if config.data == "digits":
        metrics.update(sample_accuracy(sample(VARSampleOptions())))
    return metrics


def reconstruct(model: VARModel, images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> the tokenizer's reconstruction through its multi-scale tokens."""
    quantizer = model.quantizer
    tokens = model.tokenizer.encode_indices(images)  # (B, L)
    return model.tokenizer.decode_image(quantizer.fhat_from_indices(quantizer.split_scales(tokens)))


def tokenizer_metrics(
    model: VARModel, config: VARConfig, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """The test split's tokens (N, L) and labels (N,), its reconstruction PSNR and codebook usage."""
    quantizer = model.quantizer
    psnrs, all_tokens, all_labels = [], [], []
    for batch in DataLoader(image_dataset(config, "test"), batch_size=BATCH, shuffle=False):
        images = batch["image"].to(device)
        tokens = model.tokenizer.encode_indices(images)  # (B, L)
        f_hat = quantizer.fhat_from_indices(quantizer.split_scales(tokens))
        psnrs.append(psnr(model.tokenizer.decode_image(f_hat), images).cpu())
        all_tokens.append(tokens)
        all_labels.append(labels_of(batch).to(device))
    tokens = torch.cat(all_tokens)
    hits = torch.bincount(tokens.flatten().cpu(), minlength=config.tokenizer.codebook_size)
    metrics = {"tokenizer_psnr": float(torch.cat(psnrs).mean()), "codebook_usage": float(hits.gt(0).float().mean())}
    return tokens, torch.cat(all_labels), metrics


def transformer_metrics(model: VARModel, tokens: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Teacher-forced NLL (nats per token) and accuracy of the transformer on (N, L) tokens."""
    quantizer = model.quantizer
    nll, correct = 0.0, 0.0
    for start in range(0, len(tokens), BATCH):
        chunk, chunk_labels = tokens[start : start + BATCH], labels[start : start + BATCH]
        teacher_input = quantizer.teacher_forcing_input(quantizer.split_scales(chunk))
        logits = model.transformer(chunk_labels, teacher_input)  # (B, L, codebook_size)
        nll += float(F.cross_entropy(logits.flatten(0, 1), chunk.flatten(), reduction="sum"))
        correct += float((logits.argmax(-1) == chunk).sum())
    return {"token_nll": nll / tokens.numel(), "token_accuracy": correct / tokens.numel()}


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
