"""The training loader: which item each rank reads at each step, and the DataLoader that
reads them in worker processes.

    step s covers positions [s*B, (s+1)*B) of a stream of per-epoch permutations
    position p is item perm_e[p mod N] of epoch e = p div N, perm_e = randperm(N, seed(seed, e))
    rank r of W reads the r-th slice of each global batch of B
    the sampler runs in the training process; the DataLoader hands whole batches of
    (epoch, item) keys to its workers and returns them in order

So every item is read once per epoch across all ranks (an epoch boundary may fall inside a
step), the order is a function of (seed, epoch) alone, each epoch is a new permutation,
and a run resumed at step s reads exactly the items the killed run would have read, at
any worker count. Items are read inside `reading_epoch(epoch)` (zoo.data.augment), so
their augmentation is a function of (seed, epoch, item) and not of which worker read
them. Worker processes are seeded from a generator seeded by the run seed.

Map-style data of any kind goes through the same sampler: the embedded sets, encoded
codes, folders and shards (zoo.data.sources).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from zoo.config import LoaderConfig
from zoo.data.augment import reading_epoch
from zoo.data.sources import LazyImages
from zoo.distributed import WorldInfo
from zoo.errors import TrainingError
from zoo.runtime.cpus import available_cpus

MAX_AUTO_WORKERS = 8
EpochItem = tuple[int, int]  # (epoch, item index)


class GlobalBatchSampler(Sampler[list[EpochItem]]):
    """Batches of one rank, from step `start` on, of a seeded stream of permutations.

    Step s covers positions [s*B, (s+1)*B) of the concatenated per-epoch permutations;
    rank r of W takes the r-th contiguous slice of each global batch. Each key is
    (epoch, item) for `EpochItems`.
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

    def _key(self, position: int) -> EpochItem:
        epoch, offset = divmod(position, self.size)
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch, self._permutation = epoch, torch.randperm(self.size, generator=generator).tolist()
        return epoch, self._permutation[offset]

    def __iter__(self) -> Iterator[list[EpochItem]]:
        per_rank = self.batch_size // self.world.world_size
        for step in range(self.start, self.steps):
            first = step * self.batch_size + self.world.rank * per_rank
            yield [self._key(first + i) for i in range(per_rank)]

    def __len__(self) -> int:
        return self.steps - self.start


class EpochItems(Dataset):
    """A map-style data set read by (epoch, item) keys: item `item`, read for `epoch`."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: EpochItem) -> Any:
        epoch, item = key
        with reading_epoch(epoch):
            return self.dataset[item]


def lazy_sources(dataset: Any, depth: int = 4) -> list[LazyImages]:
    """The lazy sources a data set reads from: itself, or data sets it holds as attributes
    (a Subset's, a plugin's wrapper of images and tokens), looked for `depth` levels down."""
    found: list[LazyImages] = []
    seen: set[int] = set()

    def visit(value: Any, depth: int) -> None:
        if id(value) in seen or depth < 0:
            return
        seen.add(id(value))
        if isinstance(value, LazyImages):
            found.append(value)
        elif isinstance(value, Dataset):
            for attribute in vars(value).values():
                for member in attribute if isinstance(attribute, (list, tuple)) else [attribute]:
                    if isinstance(member, Dataset):
                        visit(member, depth - 1)

    visit(dataset, depth)
    return found


def worker_count(config: LoaderConfig, dataset: Dataset) -> int:
    """`loader.workers`, or for auto: none for data held in memory; for data read from
    files, this process's share of the CPUs less one for the step, between 1 and 8."""
    if config.workers != "auto":
        return config.workers
    if not lazy_sources(dataset):
        return 0
    processes_here = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, min(MAX_AUTO_WORKERS, available_cpus() // processes_here - 1))


def training_loader(
    dataset: Dataset, sampler: GlobalBatchSampler, config: LoaderConfig, device: torch.device, seed: int
) -> DataLoader:
    """The DataLoader of a training stage: `sampler`'s batches of `dataset`, read by
    `worker_count` worker processes."""
    workers = worker_count(config, dataset)
    return DataLoader(
        EpochItems(dataset),
        batch_sampler=sampler,
        collate_fn=default_collate,
        num_workers=workers,
        prefetch_factor=config.prefetch if workers else None,
        persistent_workers=config.persistent_workers and workers > 0,
        pin_memory=config.pin_memory and device.type == "cuda",
        # Its own generator: the workers' seeds follow the run seed, and drawing them from
        # the global RNG would shift a resumed run's random numbers.
        generator=torch.Generator().manual_seed(seed),
    )


def skipped_reports(dataset: Dataset, world: WorldInfo) -> list[str]:
    """One line per lazy source of `dataset` that skipped files: "WHERE: skipped N ...".
    The unreadable-file tables of every rank are merged first, so a file two ranks found
    unreadable counts once; with several processes every rank must call it (collective)."""
    lines = []
    for source in lazy_sources(dataset):
        table = source.unreadable
        if world.world_size > 1:
            table = table.to(torch.int32)  # a copy, in a type every backend reduces
            dist.all_reduce(table, op=dist.ReduceOp.MAX)
        summary = source.skipped_summary(table.numpy())
        if summary:
            lines.append(f"{source.where} ({source.split} split): {summary}")
    return lines
