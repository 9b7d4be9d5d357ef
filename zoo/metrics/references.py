"""What `--ref` names, and its features cached per reference.

- a folder holding image files (png/jpg/jpeg) at its top level: read as torch-fidelity reads
  a folder (those files, sorted by path, as RGB, at their own size), so zoo's figures equal
  `torch_fidelity.calculate_metrics` on the same folders;
- an ADM reference batch `.npz` (`zoo.metrics.adm`): its `mu`/`sigma` for FID, its `arr_0`
  images where precision/recall or KID need features;
- a torch-fidelity feature cache file (`...-features-2048.pt`, in its cache folder): the
  pool3 features, read with torch's safe loader;
- anything `zoo.data.load_images` reads (a built-in set name, a folder of class
  subfolders, WebDataset shards): its training split at the samples' side.

Features of a reference are cached in `cache_dir` under a key of what the reference is
(its files' names, sizes and times, or the set's name and side) and the Inception weights'
sha256, as safetensors.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from zoo.errors import DataError
from zoo.metrics.adm import read_reference_batch
from zoo.metrics.fidelity import Features
from zoo.metrics.samples import read_images

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")  # torch-fidelity's samples_find_ext
LOAD_BATCH = 64


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "zoo" / "metrics"


def image_files(folder: Path) -> list[Path]:
    """The images torch-fidelity finds in `folder`: its top level only, sorted by real path."""
    found = [entry for entry in folder.iterdir() if entry.is_file() and entry.suffix.lower() in IMAGE_SUFFIXES]
    return sorted((Path(os.path.realpath(path)) for path in found), key=str)


@dataclass
class Reference:
    """A resolved --ref: `describe` is what the eval record names; `images()` yields (B, H, W,
    3) uint8 batches (None for statistics or features only); `key` identifies the content."""

    describe: str
    key: str
    images: Callable[[], Iterator[np.ndarray]] | None = None
    features: Features | None = None  # given as statistics or features; never extracted


def resolve_reference(spec: str, side: int) -> Reference:
    """`side`: the sample images' side, at which a data set (not a folder of files) is read."""
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".npz":
        batch = read_reference_batch(path)
        stat = path.stat()
        key = digest({"npz": str(path.resolve()), "size": stat.st_size, "mtime": stat.st_mtime_ns})
        if batch.images is not None:
            images = batch.images
            return Reference(
                f"ADM reference batch {path} ({len(images)} images)",
                key,
                images=lambda: (images[i : i + LOAD_BATCH] for i in range(0, len(images), LOAD_BATCH)),
                features=Features(mu=batch.mu, sigma=batch.sigma) if batch.mu is not None else None,
            )
        return Reference(f"ADM reference statistics {path}", key, features=Features(mu=batch.mu, sigma=batch.sigma))
    if path.is_file() and path.suffix == ".pt":
        pool = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(pool, torch.Tensor) or pool.ndim != 2 or pool.shape[1] != 2048:
            raise DataError(f"{path} is not a torch-fidelity pool3 feature cache (N, 2048); give its -features-2048.pt")
        return Reference(
            f"torch-fidelity features {path} ({len(pool)} images)", path.name, features=Features(pool.float())
        )
    if path.is_dir() and (files := image_files(path)):
        stats = [(str(file), file.stat().st_size, file.stat().st_mtime_ns) for file in files]
        return Reference(
            f"folder {path} ({len(files)} images)",
            digest({"folder": stats}),
            images=lambda: read_images(files, LOAD_BATCH),
        )
    return data_reference(spec, side)


def data_reference(spec: str, side: int) -> Reference:
    from torch.utils.data import DataLoader

    from zoo.data import load_images
    from zoo.data.base import dataset_length
    from zoo.outputs import to_uint8

    dataset = load_images(spec, size=side, split="train")
    path = Path(spec).expanduser()
    files = sorted(path.rglob("*")) if path.is_dir() else [path] if path.is_file() else []
    stats = [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.is_file()]

    def images() -> Iterator[np.ndarray]:
        for batch in DataLoader(dataset, batch_size=LOAD_BATCH):
            yield to_uint8(batch["image"].numpy())

    return Reference(
        f"{spec} (train split at {side}px, {dataset_length(dataset)} images)",
        digest({"data": spec, "side": side, "files": stats}),
        images=images,
    )


def digest(identity: object) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:20]


def cached_features(
    reference: Reference, extract: Callable[[Iterator[np.ndarray]], Features], weights_sha: str, cache_dir: Path
) -> Features:
    """The reference's features: given (statistics or a feature file), cached, or extracted
    now and cached. Statistics given with images (an ADM batch) are kept for FID."""
    images = reference.images
    if images is None:
        assert reference.features is not None
        return reference.features
    features = stored_features(cache_dir / f"{reference.key}-{weights_sha[:16]}.safetensors", lambda: extract(images()))
    if reference.features is not None:
        features.mu, features.sigma = reference.features.mu, reference.features.sigma
    return features


def stored_features(path: Path, compute: Callable[[], Features]) -> Features:
    """The features saved at `path` (safetensors), else `compute()`d and saved there atomically."""
    from safetensors.torch import load_file, save_file

    if path.is_file():
        tensors = load_file(path)
        return Features(pool=tensors["pool"], logits=tensors["logits"])
    features = compute()
    assert features.pool is not None and features.logits is not None
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_suffix(".part")
    save_file({"pool": features.pool.contiguous(), "logits": features.logits.contiguous()}, str(temp))
    os.replace(temp, path)
    return features
