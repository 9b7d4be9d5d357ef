"""The ADM reference-batch `.npz` (openai/guided-diffusion's evaluator), which VAR's paper
numbers are measured against: `mu` (2048,) and `sigma` (2048, 2048), the mean and
covariance of the Inception pool3 features of the reference images, and `arr_0`
(N, H, W, 3) uint8, the images themselves (what precision/recall and KID need, as they
compare features, not statistics). Read with allow_pickle=False: the format holds no objects.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from zoo.errors import DataError


@dataclass
class ReferenceBatch:
    mu: np.ndarray | None  # (2048,) float64
    sigma: np.ndarray | None  # (2048, 2048) float64
    images: np.ndarray | None  # (N, H, W, 3) uint8, absent in a statistics-only file


def read_reference_batch(path: Path) -> ReferenceBatch:
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files if key in ("mu", "sigma", "arr_0")}
    except (OSError, ValueError) as error:
        raise DataError(f"{path} is not a readable .npz ({error}); give an ADM reference batch") from None
    mu, sigma, images = arrays.get("mu"), arrays.get("sigma"), arrays.get("arr_0")
    if (mu is None) != (sigma is None) or (mu is None and images is None):
        raise DataError(f"{path} holds neither mu and sigma nor arr_0 images; give an ADM reference batch")
    if mu is not None and sigma is not None and (mu.ndim != 1 or sigma.shape != (len(mu), len(mu))):
        raise DataError(f"{path}: mu {mu.shape} and sigma {sigma.shape} are not a mean and its covariance")
    if images is not None and (images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3):
        raise DataError(f"{path}: arr_0 is {images.dtype} {images.shape}, not (N, H, W, 3) uint8 images")
    return ReferenceBatch(
        mu=None if mu is None else mu.astype(np.float64),
        sigma=None if sigma is None else sigma.astype(np.float64),
        images=images,
    )


def write_reference_batch(path: Path, batch: ReferenceBatch) -> None:
    """Write the same format (atomically), e.g. statistics of a zoo reference for reuse."""
    arrays = {
        key: value
        for key, value in (("arr_0", batch.images), ("mu", batch.mu), ("sigma", batch.sigma))
        if value is not None
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".part.npz")
    os.close(handle)
    try:
        np.savez(temp, **arrays)  # type: ignore[arg-type]  # numpy's stub types the first keyword
        os.replace(temp, path)
    finally:
        Path(temp).unlink(missing_ok=True)
