"""Training data of the three stages.

The VQGAN stages read images. The transfer stage trains on (content, reference) pairs of
code indices: both encoders are frozen in that stage, so every image is encoded once when
the stage starts instead of twice per step (the official code runs them under no_grad).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from zoo.data import load_images
from zoo.data.base import dataset_length
from zoo.data.shards import is_shard_spec
from zoo.errors import DataError, UnknownNameError
from zoo.nn.quantize import codes_from_features
from zoo.plugin import StageContext
from zoo_quantart.config import QuantArtConfig
from zoo_quantart.model import VQGAN, Domain, QuantArt

PAIRS_PER_CONTENT = 4  # random style partners drawn per content image of the transfer stage
EMBEDDED_SETS = {"content": "photos", "style": "textures"}  # the defaults, always readable

logger = logging.getLogger("zoo.quantart")


def image_set(spec: str, config: QuantArtConfig, split: str, count: int | None = None) -> Dataset:
    """Images {"image": (3, S, S) in [-1, 1]} of a zoo.data set name, a directory or shards.
    `count` None means config.data.count crops of a named set and every image of a directory."""
    if count is None and not (Path(spec).expanduser().is_dir() or is_shard_spec(spec)):
        count = config.data.count
    return load_images(spec, config.image_size, split, config.seed, count=count, augment=config.augment)


def content_images(config: QuantArtConfig, split: str = "train", count: int | None = None) -> Dataset:
    return image_set(config.data.content, config, split, count)


def style_images(config: QuantArtConfig, split: str = "train", count: int | None = None) -> Dataset:
    return image_set(config.data.style, config, split, count)


def domain_images(config: QuantArtConfig, domain: Domain) -> Dataset:
    """The training images of the VQGAN of `domain`: content photos ("photo") or style images ("art")."""
    return content_images(config) if domain == "photo" else style_images(config)


def check_data(config: QuantArtConfig) -> None:
    """Read both training sets now: a style folder with no readable image would otherwise
    fail only when the second stage starts, after the first has trained."""
    content_images(config)
    style_images(config)


def sample_images(config: QuantArtConfig, role: str) -> torch.Tensor:
    """(N, 3, S, S): the held-out `role` ("content" or "style") images an export ships for
    the default sample grid. A finished run must sample and export without its training
    data, so when that can no longer be read the embedded set's held-out images stand in."""
    count = config.data.sample_images
    spec = config.data.content if role == "content" else config.data.style
    try:
        dataset = image_set(spec, config, "test", count)
    except (DataError, UnknownNameError) as error:
        fallback = EMBEDDED_SETS[role]
        logger.warning("%s; the default sample grid uses held-out %s as its %s images instead", error, fallback, role)
        dataset = image_set(fallback, config, "test", count)
    return stack_images(dataset, count)


def stack_images(dataset: Dataset, limit: int | None = None) -> torch.Tensor:
    """The first `limit` images of a data set as one (N, 3, S, S) tensor."""
    size = dataset_length(dataset)
    count = size if limit is None else min(limit, size)
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
        indices.append(codes_from_features(codes, codebook).cpu())
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


def code_pairs(ctx: StageContext[QuantArtConfig, QuantArt]) -> CodePairs:
    config, model = ctx.config, ctx.model
    content = encode_indices(model.photo, content_images(config), ctx.device)
    reference = encode_indices(model.art, style_images(config), ctx.device)
    return CodePairs(content, reference, config.seed)
