"""The stages' data: images for the autoencoder; for the priors, the codes of those images
made by the frozen autoencoder, either on the fly from each batch of images or once into the
run's cache (config `codes.mode`; zoo.data.cache)."""

from __future__ import annotations

import json
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from zoo.data import load_images
from zoo.data.base import dataset_length
from zoo.data.cache import EncodedSet, code_array, encoded_set
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


def prior_dataset(context: StageContext[VQVAE2Config, VQVAE2PixelCNN], split: str) -> Dataset:
    """A prior stage's data: images its loss encodes batch by batch (codes.mode on_the_fly),
    or their codes extracted once to disk (disk)."""
    config: VQVAE2Config = context.config
    if config.codes.mode == "disk":
        return code_set(context, split)
    images = image_set(config, split)
    check_labels(config, images)
    return images


def check_labels(config: VQVAE2Config, images: Dataset) -> None:
    first = images[0] if dataset_length(images) else {}
    if config.class_conditional and "label" not in first:
        raise DataError(
            f"data {config.data!r} has no labels; set class_conditional=false or use labelled data "
            "(digits, or a folder with one subfolder per class)"
        )


def code_set(context: StageContext[VQVAE2Config, VQVAE2PixelCNN], split: str) -> EncodedSet:
    """Items {"top": (h_top, w_top), "bottom": (h, w) int64 codes, "label": int}: the split's
    codes extracted once per autoencoder weights into the run's cache (each process extracts
    its share), read memory-mapped."""
    model: VQVAE2PixelCNN = context.model
    config: VQVAE2Config = context.config
    images = image_set(config, split)
    check_labels(config, images)

    def encode(batch: dict[str, Any]) -> dict[str, Any]:
        top, bottom = model.vqvae.encode_codes(batch["image"].to(context.device))
        return {
            "top": code_array(top, config.vqvae.top_codebook_size),
            "bottom": code_array(bottom, config.vqvae.bottom_codebook_size),
            "label": prior_labels(batch, config.class_conditional).numpy(),
        }

    source = {
        "data": config.data,
        "split": split,
        "size": config.image_size,
        "augment": config.augment.model_dump(mode="json"),  # other crops are other codes
        "seed": config.seed,
    }
    return encoded_set(
        context.cache_dir,
        f"vqvae2-codes-{split}",
        model.vqvae,
        lambda view: images,
        encode,
        source=json.dumps(source, sort_keys=True),
        views=config.codes.views,
        seed=config.seed,
        batch_size=ENCODE_BATCH,
    )


def prior_labels(batch: dict[str, Any], class_conditional: bool) -> torch.Tensor:
    """(B,) int64: the batch's labels, or 0 (the one label of a prior without classes)."""
    return batch["label"] if class_conditional else torch.zeros(len(batch["image"]), dtype=torch.int64)


def prior_batch(model: VQVAE2PixelCNN, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
    """{"top", "bottom", "label"} of a prior batch: read from disk, or extracted here from its
    images by the frozen autoencoder (in eval mode, as the stage leaves it; under no_grad, in
    fp32 outside the autocast of the forward pass, so the codes are those the disk mode stores)."""
    if "top" in batch:
        return batch
    images = batch["image"]
    with torch.no_grad(), torch.autocast(images.device.type, enabled=False):
        top, bottom = model.vqvae.encode_codes(images.float())
    return {"top": top, "bottom": bottom, "label": prior_labels(batch, model.class_conditional).to(images.device)}
