"""The stages' data: images for the autoencoder; for the priors, the codes of those images,
extracted once per autoencoder weights with the frozen autoencoder and kept in the run's
cache (zoo.data.cache)."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from zoo.data import load_images
from zoo.data.base import dataset_length
from zoo.data.cache import cached_encoding
from zoo.errors import DataError
from zoo.plugin import StageContext
from zoo_vqvae2_pixelcnn.config import VQVAE2Config
from zoo_vqvae2_pixelcnn.model import VQVAE2PixelCNN

ENCODE_BATCH = 256  # images per forward pass when extracting codes


def image_set(config: VQVAE2Config, split: str) -> Dataset:
    return load_images(config.data, config.image_size, split=split, seed=config.seed, augment=config.augment)


def first_images(context: StageContext[VQVAE2Config, VQVAE2PixelCNN]) -> torch.Tensor:
    """The first ENCODE_BATCH training images (B, 3, H, W) on the stage's device."""
    return next(iter(DataLoader(image_set(context.config, "train"), batch_size=ENCODE_BATCH)))["image"].to(
        context.device
    )


class CodeSet(Dataset):
    """Items {"top": (h_top, w_top), "bottom": (h, w) int64 codes, "label": int}."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self.tensors = tensors

    def __len__(self) -> int:
        return len(self.tensors["label"])

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {
            "top": self.tensors["top"][index],
            "bottom": self.tensors["bottom"][index],
            "label": int(self.tensors["label"][index]),
        }


@torch.no_grad()
def extract_codes(
    model: VQVAE2PixelCNN, config: VQVAE2Config, split: str, device: torch.device
) -> dict[str, torch.Tensor]:
    images = image_set(config, split)
    first = images[0] if dataset_length(images) else {}
    if config.class_conditional and "label" not in first:
        raise DataError(
            f"data {config.data!r} has no labels; set class_conditional=false or use labelled data "
            "(digits, or a folder with one subfolder per class)"
        )
    was_training = model.vqvae.training
    model.vqvae.eval()
    tops, bottoms, labels = [], [], []
    for batch in DataLoader(images, batch_size=ENCODE_BATCH):
        top, bottom = model.vqvae.encode_codes(batch["image"].to(device))
        tops.append(top.cpu())
        bottoms.append(bottom.cpu())
        labels.append(batch["label"] if config.class_conditional else torch.zeros(len(top), dtype=torch.int64))
    model.vqvae.train(was_training)
    return {"top": torch.cat(tops), "bottom": torch.cat(bottoms), "label": torch.cat(labels).long()}


def cached_codes(context: StageContext[VQVAE2Config, VQVAE2PixelCNN], split: str) -> CodeSet:
    """The codes of a split, extracted once per autoencoder weights and kept in the run's cache."""
    model = context.model
    return CodeSet(
        cached_encoding(
            context.cache_dir,
            f"vqvae2-codes-{split}",
            model.vqvae,
            lambda: extract_codes(model, context.config, split, context.device),
        )
    )
