"""The sample set of a distribution metric, drawn into a folder the user can keep, resumable.

Image i is `DIR/i.png` (6 digits). Images are drawn in chunks of CHUNK: chunk k holds
images k*CHUNK .. (k+1)*CHUNK - 1, drawn in one call with seed `seed + k`, always whole, so
an image depends only on its index, never on N or on which chunks exist. A chunk whose files
all exist is not drawn again: an evaluation killed half-way, or rerun with a larger N,
draws only what is missing. `samples.json` records what drew the images (model, weights,
options); a folder holding another model's samples is refused rather than mixed in.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from zoo.errors import ZooError

CHUNK = 50  # images per sampling call: VAR's per-class count, and small enough for any model's batch
RECORD = "samples.json"
DrawFn = Callable[[int, int, int], np.ndarray]  # (first, count, seed) -> (count, H, W, 3) uint8


class SampleFolderError(ZooError):
    """A --keep-samples folder that holds samples of something else."""


def sample_path(folder: Path, index: int) -> Path:
    return folder / f"{index:06d}.png"


def draw_samples(draw: DrawFn, folder: Path, count: int, seed: int, identity: Mapping[str, Any]) -> int:
    """Make `folder` hold images 0..count-1; returns the number of chunks drawn now."""
    folder.mkdir(parents=True, exist_ok=True)
    check_record(folder, {**identity, "seed": seed, "chunk": CHUNK})
    drawn = 0
    for chunk in range(math.ceil(count / CHUNK)):
        first = chunk * CHUNK
        wanted = range(first, min(count, first + CHUNK))
        if all(sample_path(folder, index).is_file() for index in wanted):
            continue
        images = np.asarray(draw(first, CHUNK, seed + chunk))
        if images.shape[0] != CHUNK or images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(f"the sampler returned {images.dtype} {images.shape}, not ({CHUNK}, H, W, 3) uint8")
        for index in wanted:
            write_png(sample_path(folder, index), images[index - first])
        drawn += 1
    return drawn


def check_record(folder: Path, record: Mapping[str, Any]) -> None:
    path = folder / RECORD
    wanted = json.loads(json.dumps(record, sort_keys=True, default=str))
    if path.is_file():
        found = json.loads(path.read_text())
        if found != wanted:
            differs = sorted(key for key in set(found) | set(wanted) if found.get(key) != wanted.get(key))
            raise SampleFolderError(
                f"{folder} holds samples drawn with other {', '.join(differs)}; give another --keep-samples "
                f"folder or empty this one"
            )
        return
    if any(folder.glob("*.png")):
        raise SampleFolderError(f"{folder} holds images zoo did not draw; give an empty or new --keep-samples folder")
    path.write_text(json.dumps(wanted, indent=2, sort_keys=True) + "\n")


def write_png(path: Path, image: np.ndarray) -> None:
    """Atomically: a kill leaves a whole image or none, never a truncated one that a rerun keeps."""
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".part.png")
    os.close(handle)
    try:
        Image.fromarray(image).save(temp, format="PNG")
        os.replace(temp, path)
    finally:
        Path(temp).unlink(missing_ok=True)


def sample_files(folder: Path, count: int) -> list[Path]:
    return [sample_path(folder, index) for index in range(count)]


def read_images(paths: list[Path], batch_size: int) -> Iterator[np.ndarray]:
    """(B, H, W, 3) uint8 batches of the images at `paths`, in order (RGB as torch-fidelity
    reads a folder); a batch ends early where the image size changes."""
    batch: list[np.ndarray] = []
    for path in paths:
        with Image.open(path) as image:
            array = np.asarray(image.convert("RGB"))
        if batch and (len(batch) == batch_size or array.shape != batch[0].shape):
            yield np.stack(batch)
            batch = []
        batch.append(array)
    if batch:
        yield np.stack(batch)
