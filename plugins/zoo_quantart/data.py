"""Training data of the three stages.

The VQGAN stages read images. The transfer stage trains on (content, reference) pairs of
code indices: both encoders are frozen in that stage, so every image is encoded once when
the stage starts instead of twice per step (the official code runs them under no_grad).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from zoo.data import load_images
from zoo.nn.quantize import nearest_code_indices
from zoo.plugin import StageContext
from zoo_quantart.config import QuantArtConfig
from zoo_quantart.model import VQGAN, QuantArt

PAIRS_PER_CONTENT = 4  # random style partners drawn per content image of the transfer stage


def image_set(spec: str, config: QuantArtConfig, split: str, count: int | None = None) -> Dataset:
    """Images {"image": (3, S, S) in [-1, 1]} of a zoo.data set name or a directory. `count`
    None means config.data.count crops of a named set and every image of a directory."""
    if count is None and not Path(spec).expanduser().is_dir():
        count = config.data.count
    return load_images(spec, config.image_size, split, config.seed, count=count)


def content_images(config: QuantArtConfig, split: str = "train", count: int | None = None) -> Dataset:
    return image_set(config.data.content, config, split, count)


def style_images(config: QuantArtConfig, split: str = "train", count: int | None = None) -> Dataset:
    return image_set(config.data.style, config, split, count)


def stack_images(dataset: Dataset, limit: int | None = None) -> torch.Tensor:
    """The first `limit` images of a data set as one (N, 3, S, S) tensor."""
    count = len(dataset) if limit is None else min(limit, len(dataset))
    return torch.stack([dataset[i]["image"] for i in range(count)])


@torch.no_grad()
def encode_indices(vqgan: VQGAN, dataset: Dataset, device: torch.device, batch_size: int = 64) -> torch.Tensor:
    """Code indices (N, h, w) int64 of every image, without touching the quantiser's usage statistics."""
    was_training = vqgan.training
    vqgan.eval()
    codebook = vqgan.quantizer.codebook
    indices = []
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        codes = vqgan.quant_conv(vqgan.encoder(batch["image"].to(device)))  # (B, D, h, w)
        nearest = nearest_code_indices(codes.permute(0, 2, 3, 1).flatten(0, 2), codebook)
        indices.append(nearest.view(codes.shape[0], *codes.shape[2:]).cpu())
    vqgan.train(was_training)
    return torch.cat(indices)


class CodePairs(Dataset):
    """(content, reference) code index pairs: every content image with PAIRS_PER_CONTENT
    style images drawn by a seeded generator (item i depends on (seed, i) only)."""

    def __init__(self, content_indices: torch.Tensor, reference_indices: torch.Tensor, seed: int) -> None:
        self.content_indices, self.reference_indices, self.seed = content_indices, reference_indices, seed

    def __len__(self) -> int:
        return len(self.content_indices) * PAIRS_PER_CONTENT

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        reference = np.random.default_rng([self.seed, index]).integers(len(self.reference_indices))
        return {
            "content_indices": self.content_indices[index % len(self.content_indices)],
            "reference_indices": self.reference_indices[int(reference)],
        }


def code_pairs(ctx: StageContext) -> CodePairs:
    config: QuantArtConfig = ctx.config
    model: QuantArt = ctx.model
    content = encode_indices(model.photo, content_images(config), ctx.device)
    reference = encode_indices(model.art, style_images(config), ctx.device)
    return CodePairs(content, reference, config.seed)
