"""VAR's data: the images of the tokenizer stage, and the token maps the transformer stage
trains on, made by the frozen tokenizer either on the fly from each batch of images or once
into the run's cache (config `codes.mode`; zoo.data.cache)."""

from __future__ import annotations

import json
from typing import Any

import torch
from torch.utils.data import Dataset

from zoo.data import load_images
from zoo.data.cache import EncodedSet, code_array, encoded_set
from zoo.plugin import StageContext
from zoo_var.config import VARConfig
from zoo_var.model import VARModel

ENCODE_BATCH = 128  # images per forward pass when encoding a split to disk


def image_dataset(config: VARConfig, split: str) -> Dataset:
    """Items {"image": (3, H, W) in [-1, 1], "label": int (labelled data only)}."""
    return load_images(config.data, config.tokenizer.resolution, split=split, seed=config.seed, augment=config.augment)


def labels_of(batch: dict[str, Any]) -> torch.Tensor:
    """(B,) int64 labels of an image batch; 0 for unlabelled data."""
    return batch["label"] if "label" in batch else torch.zeros(len(batch["image"]), dtype=torch.int64)


def transformer_dataset(context: StageContext[VARConfig, VARModel], split: str) -> Dataset:
    """The transformer stage's data: images its loss encodes batch by batch (codes.mode
    on_the_fly), or their token maps encoded once to disk (disk)."""
    config: VARConfig = context.config
    return image_dataset(config, split) if config.codes.mode == "on_the_fly" else token_set(context, split)


def token_set(context: StageContext[VARConfig, VARModel], split: str) -> EncodedSet:
    """Items {"tokens": (L,) int64, "label": int}: the split encoded once per tokenizer weights
    into the run's cache (each process encodes its share), read memory-mapped."""
    model: VARModel = context.model
    config: VARConfig = context.config

    def encode(batch: dict[str, Any]) -> dict[str, Any]:
        tokens = model.tokenizer.encode_indices(batch["image"].to(context.device))  # (B, L)
        return {"tokens": code_array(tokens, config.tokenizer.codebook_size), "label": labels_of(batch).numpy()}

    source = {
        "data": config.data,
        "split": split,
        "size": config.tokenizer.resolution,
        "augment": config.augment.model_dump(mode="json"),  # other crops are other codes
        "seed": config.seed,
    }
    return encoded_set(
        context.cache_dir,
        f"var-tokens-{split}",
        model.tokenizer,
        lambda view: image_dataset(config, split),
        encode,
        source=json.dumps(source, sort_keys=True),
        views=config.codes.views,
        seed=config.seed,
        batch_size=ENCODE_BATCH,
    )


def tokens_and_labels(model: VARModel, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, L) int64 tokens and (B,) labels of a transformer batch: read from disk, or encoded
    here from its images by the frozen tokenizer (in eval mode, as the stage leaves it). As
    the official trainer's `img_to_idxBl`: under no_grad, in fp32 outside the autocast of the
    forward pass, so the tokens are those the disk mode stores."""
    if "tokens" in batch:
        return batch["tokens"], batch["label"]
    images = batch["image"]
    with torch.no_grad(), torch.autocast(images.device.type, enabled=False):
        tokens = model.tokenizer.encode_indices(images.float())
    return tokens, labels_of(batch).to(images.device)
