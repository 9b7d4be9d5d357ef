"""A stage's batches: the seeded sampler that makes the data order a function of the seed
and the step (so a resumed run sees the same batches), the loader around it, micro-batches
and the move to the device."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from zoo.data.base import dataset_length
from zoo.distributed import WorldInfo
from zoo.errors import TrainingError
from zoo.plugin import Stage


class GlobalBatchSampler(Sampler[list[int]]):
    """Batches of one rank, from step `start` on, of a seeded stream of permutations.

    Step s covers positions [s*B, (s+1)*B) of the concatenated per-epoch permutations;
    rank r of W takes the r-th contiguous slice of each global batch.
    """

    def __init__(self, size: int, batch_size: int, steps: int, seed: int, start: int, world: WorldInfo) -> None:
        if batch_size % world.world_size:
            raise TrainingError(
                f"batch size {batch_size} does not split over {world.world_size} processes; "
                f"use a multiple of {world.world_size}"
            )
        self.size, self.batch_size, self.steps, self.seed, self.start, self.world = (
            size,
            batch_size,
            steps,
            seed,
            start,
            world,
        )
        self._epoch = -1  # the permutation is drawn on first use: no epoch is -1
        self._permutation: list[int] = []

    def _index(self, position: int) -> int:
        epoch, offset = divmod(position, self.size)
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch, self._permutation = epoch, torch.randperm(self.size, generator=generator).tolist()
        return self._permutation[offset]

    def __iter__(self) -> Iterator[list[int]]:
        per_rank = self.batch_size // self.world.world_size
        for step in range(self.start, self.steps):
            first = step * self.batch_size + self.world.rank * per_rank
            yield [self._index(first + i) for i in range(per_rank)]

    def __len__(self) -> int:
        return self.steps - self.start


def stage_loader(dataset: Dataset, stage: Stage, index: int, seed: int, start: int, world: WorldInfo) -> DataLoader:
    """This rank's batches of the stage at position `index`, from step `start` to its end;
    the data order is drawn from `seed + index` (each stage its own order)."""
    sampler = GlobalBatchSampler(dataset_length(dataset), stage.batch_size, stage.steps, seed + index, start, world)
    # Its own generator: drawing a worker seed from the global RNG would shift a resumed run.
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=default_collate,
        generator=torch.Generator().manual_seed(seed),
    )


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
