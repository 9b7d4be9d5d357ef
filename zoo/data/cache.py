"""Codes of a frozen network, encoded once into the run's cache directory and read memory-mapped.

A later stage often trains on what an earlier stage's frozen network makes of the data:
VAR's transformer on the tokenizer's token maps, VQ-VAE-2's priors on the autoencoder's
codes. The config's `codes` section (`zoo.config.CodesConfig`) picks one of two ways:

- on the fly: the stage reads images and its loss encodes each batch on the training
  device with the frozen network, in eval mode under no_grad (the official VAR training:
  `img_to_idxBl` on every batch). Augmentation applies; nothing here is used.
- disk (`encoded_set`): the split is encoded once per encoder weights, data source and view
  count, into the cache directory:

      cache/<name>-<weights fingerprint>-<source digest>/part-00000.safetensors ...

  A part holds PART_ITEMS consecutive items (the last one fewer), each item's views side by
  side; which parts exist does not depend on the number of processes. Process r of W
  encodes parts r, r + W, r + 2W, ..., writes each atomically (temp file + rename, the
  safetensors header names the weights, source and item range), then all processes wait
  at a barrier and read every part memory-mapped: resident memory does not grow with the
  data set (the pages are the OS's file cache). A run killed while encoding keeps its
  complete parts; a missing, truncated or foreign part is encoded again. Codes are stored
  as uint16 when the codebook has at most 65,536 codes, else int32 (`code_array`).

In a process group every process must call `encoded_set` (it meets barriers); the trainer
builds each stage's data on every process.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import struct
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor
from torch.utils.data import DataLoader, Dataset, Subset

from zoo.checkpoint import atomic_save_tensors
from zoo.data.augment import reading_epoch
from zoo.data.base import dataset_length
from zoo.errors import RunError
from zoo.temporary import remove_recorded

logger = logging.getLogger(__name__)

FINGERPRINT_VERSION = "1"  # bump when the fingerprint's recipe changes
FORMAT = "2"  # of the part files; bump when their layout or what they hold changes (2: views read as epochs)
PART_ITEMS = 4096  # items per part: what a kill can lose per process (VAR 256 px: 5.6 MB)
LARGEST_UINT16_CODEBOOK = 2**16

# safetensors dtype names -> numpy; the header is 8 bytes of length, then JSON.
_DTYPES = {"U8": np.uint8, "I8": np.int8, "U16": np.uint16, "I16": np.int16, "I32": np.int32, "I64": np.int64}


def weights_fingerprint(module: nn.Module) -> str:
    """16 hex digits that change whenever any tensor of `module.state_dict()` does: names,
    dtypes, shapes and bytes (buffers included, e.g. a quantiser's codebook)."""
    digest = hashlib.sha256(FINGERPRINT_VERSION.encode())
    for name, tensor in sorted(module.state_dict().items()):
        if isinstance(tensor, DTensor):  # sharded by fully_shard: every process gathers it
            tensor = tensor.full_tensor()
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def code_dtype(codebook_size: int) -> np.dtype:
    """uint16 for codebooks of up to 65,536 codes, int32 above."""
    return np.dtype(np.uint16 if codebook_size <= LARGEST_UINT16_CODEBOOK else np.int32)


def code_array(codes: torch.Tensor, codebook_size: int) -> np.ndarray:
    """Code indices as stored on disk: `code_dtype(codebook_size)` on the CPU."""
    return codes.cpu().numpy().astype(code_dtype(codebook_size))


def encoded_set(
    cache_dir: Path,
    name: str,
    encoder: nn.Module,
    images: Callable[[int], Dataset],
    encode: Callable[[dict[str, Any]], Mapping[str, np.ndarray]],
    *,
    source: str,
    views: int = 1,
    seed: int = 0,
    batch_size: int = 128,
    workers: int = 0,
    part_items: int = PART_ITEMS,
) -> EncodedSet:
    """The codes of a data set, encoded once (split over the processes) and memory-mapped.

    `images(view)` is the data set of view `view` (0..views-1); every view has the same
    items. View v's items are read as epoch v (`zoo.data.augment.reading_epoch`), so a
    randomly augmented source (a folder or shards with a random crop or flip) gives each
    view its own draws, and a source without augmentation the same images. `encode(batch)` turns a collated batch of it into integer arrays, each
    (B, ...): the codes (`code_array`) and whatever else a stage needs (labels); it runs
    under no_grad with `encoder` in eval mode, on batches of `batch_size` read by `workers`
    DataLoader worker processes. `name` tells encoded sets apart
    ("var-tokens-train"); `source` describes the data (set, split, size, augmentation):
    together with the item count, `views` and the encoder's weights it keys the cache.

    Encoding a part seeds torch's RNG from (seed, part, view) and restores it afterwards,
    so the codes depend neither on the number of processes nor on what was cached before.
    An encoder sharded by fully_shard (its forward is collective) encodes every missing
    part on every process, and process 0 writes them.
    """
    datasets = {0: images(0)}

    def view_set(view: int) -> Dataset:
        if view not in datasets:
            datasets[view] = images(view)
        return datasets[view]

    items = dataset_length(datasets[0])
    fingerprint = weights_fingerprint(encoder)  # collective when sharded, like the encoding
    cache_key = {"format": FORMAT, "source": source, "items": items, "views": views, "part_items": part_items}
    digest = hashlib.sha256(json.dumps(cache_key, sort_keys=True).encode()).hexdigest()[:8]
    directory = Path(cache_dir) / f"{name}-{fingerprint}-{digest}"
    metadata = {field: str(value) for field, value in cache_key.items()} | {"fingerprint": fingerprint}
    parts = math.ceil(items / part_items)
    rank, world_size = _world()
    sharded = world_size > 1 and _is_sharded(encoder)

    if rank == 0:
        _remove_leftovers(directory)  # of a killed run: no process writes before the barrier
    _barrier(world_size)
    assigned = range(parts) if sharded else range(rank, parts, world_size)
    missing = [part for part in assigned if _valid_header(directory, part, metadata) is None]
    if missing:
        logger.info("%s: encoding %d of its %d parts in this process", directory.name, len(missing), parts)
        was_training = encoder.training
        encoder.eval()
        try:
            for part in missing:
                first, count = part * part_items, min(part_items, items - part * part_items)
                indices = range(first, first + count)
                arrays = _encode_part(view_set, encode, indices, views, seed, part, batch_size, workers)
                if sharded and rank != 0:
                    continue
                tensors = {key: torch.from_numpy(np.ascontiguousarray(array)) for key, array in arrays.items()}
                atomic_save_tensors(_part_path(directory, part), tensors, metadata | {"first": str(first)})
        finally:
            encoder.train(was_training)
    _barrier(world_size)

    maps = []
    for part in range(parts):
        header = _valid_header(directory, part, metadata)
        if header is None:
            raise RunError(
                f"{_part_path(directory, part)} is missing or unreadable after encoding; "
                "the cache directory must be one folder shared by all processes"
            )
        maps.append(_memory_map(_part_path(directory, part), header))
    return EncodedSet([_part_path(directory, part) for part in range(parts)], part_items * views, maps)


class EncodedSet(Dataset):
    """Items of an encoded set, read from its memory-mapped parts: item i, view v is index
    i * views + v. Each item is a dict: arrays as int64 tensors, per-item scalars (labels) as
    ints. Opens the parts lazily in each process (a DataLoader worker maps them itself
    instead of receiving a copy of the data)."""

    def __init__(self, paths: list[Path], rows_per_part: int, maps: list[dict[str, np.ndarray]]) -> None:
        self.paths, self.rows_per_part = paths, rows_per_part
        self._maps = dict(enumerate(maps))
        last_rows = len(next(iter(maps[-1].values()))) if maps else 0
        self.length = (len(paths) - 1) * rows_per_part + last_rows if paths else 0

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} items")
        part, row = divmod(index, self.rows_per_part)
        return {key: _item(array[row]) for key, array in self.part(part).items()}

    def part(self, index: int) -> dict[str, np.ndarray]:
        """The arrays of one part, memory-mapped (read-only), each (rows, ...)."""
        if index not in self._maps:
            self._maps[index] = _memory_map(self.paths[index])
        return self._maps[index]

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_maps": {}}  # mapped again where it is unpickled


class ViewItems(Dataset):
    """The items of a data set read as epoch `view`: its augmentation draws are view v's.
    (Read in the DataLoader worker that reads the item, so the epoch reaches it there.)"""

    def __init__(self, dataset: Dataset, view: int) -> None:
        self.dataset, self.view = dataset, view

    def __len__(self) -> int:
        return dataset_length(self.dataset)

    def __getitem__(self, index: int) -> Any:
        with reading_epoch(self.view):
            return self.dataset[index]


def _item(value: np.ndarray) -> Any:
    return int(value) if value.ndim == 0 else torch.from_numpy(value.astype(np.int64))


def _encode_part(
    images: Callable[[int], Dataset],
    encode: Callable[[dict[str, Any]], Mapping[str, np.ndarray]],
    indices: range,
    views: int,
    seed: int,
    part: int,
    batch_size: int,
    workers: int,
) -> dict[str, np.ndarray]:
    """{name: (len(indices) * views, ...)} rows in item-major order (an item's views side by side)."""
    per_view: list[dict[str, np.ndarray]] = []
    for view in range(views):
        part_seed = int(np.random.SeedSequence([seed, part, view]).generate_state(1)[0])
        chunks: dict[str, list[np.ndarray]] = {}
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(part_seed)
            loader = DataLoader(
                Subset(ViewItems(images(view), view), indices),
                batch_size=batch_size,
                shuffle=False,
                num_workers=workers,
                generator=torch.Generator().manual_seed(part_seed),  # seeds the workers
            )
            for batch in loader:
                for key, value in encode(batch).items():
                    chunks.setdefault(key, []).append(np.asarray(value))
        per_view.append({key: np.concatenate(values) for key, values in chunks.items()})
    return {
        key: np.stack([arrays[key] for arrays in per_view], axis=1).reshape(-1, *per_view[0][key].shape[1:])
        for key in per_view[0]
    }


def _part_path(directory: Path, part: int) -> Path:
    return directory / f"part-{part:05d}.safetensors"


def _valid_header(directory: Path, part: int, metadata: dict[str, str]) -> dict[str, Any] | None:
    """The part's header, or None when the part is missing, truncated or not of these weights
    and data (it is then encoded again)."""
    path = _part_path(directory, part)
    if not path.is_file():
        return None
    try:
        header = _header(path)
    except (OSError, ValueError, KeyError, TypeError) as error:  # TypeError, KeyError: JSON of another shape
        logger.warning("%s is unreadable (%s); encoding it again", path, error)
        return None
    expected = metadata | {"first": str(part * int(metadata["part_items"]))}
    found = header.get("__metadata__", {})
    if any(found.get(field) != value for field, value in expected.items()):
        logger.warning("%s is of other weights or data; encoding it again", path)
        return None
    return header


def _header(path: Path) -> dict[str, Any]:
    """A safetensors file's JSON header, checked against the file's size."""
    with open(path, "rb") as file:
        prefix = file.read(8)
        if len(prefix) < 8:
            raise ValueError("shorter than a safetensors header")
        (length,) = struct.unpack("<Q", prefix)
        size = path.stat().st_size
        if length > size - 8:
            raise ValueError("truncated header")
        header = json.loads(file.read(length))
    if any(key != "__metadata__" and entry.get("dtype") not in _DTYPES for key, entry in header.items()):
        raise ValueError("a tensor of a dtype other than integers")
    end = max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0)
    if size != 8 + length + end:
        raise ValueError(f"{size} bytes where the header describes {8 + length + end}")
    header["__data_start__"] = 8 + length
    return header


def _memory_map(path: Path, header: dict[str, Any] | None = None) -> dict[str, np.ndarray]:
    """Each tensor of a safetensors file as a read-only np.memmap."""
    header = _header(path) if header is None else header
    start = header["__data_start__"]
    arrays: dict[str, np.ndarray] = {}
    for key, entry in header.items():
        if key.startswith("__"):
            continue
        dtype = np.dtype(_DTYPES[entry["dtype"]])
        begin, end = entry["data_offsets"]
        shape = tuple(entry["shape"])
        if end == begin:  # numpy cannot map zero bytes
            arrays[key] = np.zeros(shape, dtype)
            continue
        arrays[key] = np.memmap(path, dtype=dtype, mode="r", offset=start + begin, shape=shape)
    return arrays


def _remove_leftovers(directory: Path) -> None:
    """Temp folders of parts a killed run was writing (`atomic_save_tensors` records them)."""
    remove_recorded(directory)


def _is_sharded(module: nn.Module) -> bool:
    return any(isinstance(param, DTensor) for param in module.parameters())


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier(world_size: int) -> None:
    if world_size > 1:
        dist.barrier()
