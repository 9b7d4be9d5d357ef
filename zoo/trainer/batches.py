"""A stage's batches: the loader of zoo.data.loader (its seeded sampler makes the data order
a function of the seed and the step, so a resumed run sees the same batches), micro-batches
and the move to the device."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from zoo.config import ZooConfig
from zoo.data.base import dataset_length
from zoo.data.loader import GlobalBatchSampler as GlobalBatchSampler, training_loader
from zoo.distributed import WorldInfo
from zoo.plugin import Stage


def stage_loader(
    dataset: Dataset,
    stage: Stage,
    index: int,
    config: ZooConfig,
    start: int,
    world: WorldInfo,
    device: torch.device,
) -> DataLoader:
    """This rank's batches of the stage at position `index`, from step `start` to its end,
    read by the workers of `config.loader` (zoo.data.loader); the data order is drawn from
    `config.seed + index` (each stage its own order)."""
    seed = config.seed + index
    sampler = GlobalBatchSampler(dataset_length(dataset), stage.batch_size, stage.steps, seed, start, world)
    return training_loader(dataset, sampler, config.loader, device, config.seed)


def split_batch(batch: Any, parts: int) -> list[Any]:
    """A collated batch cut into `parts` equal micro-batches along its first dimension."""
    if parts == 1:
        return [batch]
    if isinstance(batch, torch.Tensor):
        return list(batch.chunk(parts))
    if isinstance(batch, dict):
        pieces = {key: split_batch(value, parts) for key, value in batch.items()}
        return [{key: pieces[key][i] for key in batch} for i in range(parts)]
    if isinstance(batch, list):
        size = len(batch) // parts
        return [batch[i * size : (i + 1) * size] for i in range(parts)]
    return [batch] * parts


def to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, list):
        return [to_device(v, device) for v in batch]
    return batch
