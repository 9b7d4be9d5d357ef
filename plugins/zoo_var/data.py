"""VAR's data: the images of the tokenizer stage, and the token maps of the transformer
stage, encoded once by the frozen tokenizer and kept in the run's cache."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from zoo.data import load_images
from zoo.data.cache import cached_encoding
from zoo.plugin import StageContext
from zoo_var.config import VARConfig
from zoo_var.model import VARModel

ENCODE_BATCH = 128


class TokenDataset(Dataset):
    """Items {"tokens": (L,) int64, "label": int}: a data split encoded once by the frozen tokenizer."""

    def __init__(self, tokens: torch.Tensor, labels: torch.Tensor) -> None:
        self.tokens, self.labels = tokens, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"tokens": self.tokens[index], "label": int(self.labels[index])}


def image_dataset(config: VARConfig, split: str) -> Dataset:
    """Items {"image": (3, H, W) in [-1, 1], "label": int (labelled data only)}."""
    return load_images(config.data, config.tokenizer.resolution, split=split, seed=config.seed, augment=config.augment)


def labels_of(batch: dict[str, Any]) -> torch.Tensor:
    """(B,) int64 labels of an image batch; 0 for unlabelled data."""
    return batch["label"] if "label" in batch else torch.zeros(len(batch["image"]), dtype=torch.int64)


@torch.no_grad()
def encode_split(
    model: VARModel, config: VARConfig, split: str, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, L) int64 tokens and (N,) labels of a data split (label 0 for unlabelled data)."""
    loader = DataLoader(image_dataset(config, split), batch_size=ENCODE_BATCH, shuffle=False)
    was_training = model.tokenizer.training
    model.tokenizer.eval()
    tokens, labels = [], []
    for batch in loader:
        tokens.append(model.tokenizer.encode_indices(batch["image"].to(device)).cpu())
        labels.append(labels_of(batch))
    model.tokenizer.train(was_training)
    return torch.cat(tokens), torch.cat(labels).long()


def cached_token_dataset(context: StageContext[VARConfig, VARModel], split: str) -> TokenDataset:
    """The split's tokens, encoded once per tokenizer weights and kept in the run's cache."""
    model: VARModel = context.model

    def encode() -> dict[str, torch.Tensor]:
        tokens, labels = encode_split(model, context.config, split, context.device)
        return {"tokens": tokens, "labels": labels}

    tensors = cached_encoding(context.cache_dir, f"var-tokens-{split}", model.tokenizer, encode)
    return TokenDataset(tensors["tokens"], tensors["labels"])
