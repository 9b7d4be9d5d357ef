"""Features and figures through torch-fidelity: its InceptionV3 (the TensorFlow FID network,
ported to float precision) extracts the pool3 features (`2048`) and the unbiased logits
(`logits_unbiased`, for the Inception Score); its functions turn them into the figures.

torch-fidelity imports torchvision when it is imported, which must be the build matching
the installed torch; both come with `pip install 'zoo[metrics]'` where the wheels match.
This module imports it lazily and names the install in one line where it fails.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from zoo.errors import ZooError, first_line

FEATURES = ("2048", "logits_unbiased")  # pool3 features (FID, KID, PRC) and logits (IS)
BATCH = 64  # torch-fidelity's default batch: the same batches give the same float rounding
KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000  # torch-fidelity's default; smaller sets use their size
RNG_SEED = 2020  # torch-fidelity's default seed of the IS shuffle and the KID subsets


class MissingMetricsError(ZooError):
    """torch-fidelity (or a torchvision matching torch) is not installed."""


def import_fidelity() -> ModuleType:
    try:
        import torch_fidelity
    except Exception as error:  # ImportError, or torchvision's own failure against another torch
        major, minor = (int(part) for part in torch.__version__.split(".")[:2])
        torchvision = f"torchvision=={major - 2}.{minor + 15}.*" if major == 2 else "the torchvision matching torch"
        raise MissingMetricsError(
            f"distribution metrics need torch-fidelity and a torchvision built for torch {torch.__version__} "
            f"({first_line(error, 120)}): pip install 'zoo[metrics]' '{torchvision}'"
        ) from None
    return torch_fidelity


@dataclass
class Features:
    """Per-image features, (N, 2048) and (N, 1008) float32 on the CPU, or only the statistics
    of the pool3 features (an ADM `.npz` without images)."""

    pool: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    mu: np.ndarray | None = None
    sigma: np.ndarray | None = None

    @property
    def count(self) -> int:
        return 0 if self.pool is None else len(self.pool)

    def statistics(self) -> dict[str, np.ndarray]:
        if self.mu is not None and self.sigma is not None:
            return {"mu": self.mu, "sigma": self.sigma}
        assert self.pool is not None  # one of the two is always set
        from torch_fidelity.metric_fid import fid_features_to_statistics

        return fid_features_to_statistics(self.pool)


class InceptionFeatures:
    """torch-fidelity's FeatureExtractorInceptionV3 on `device`, from a weights file."""

    def __init__(self, weights: Path, device: torch.device, batch_size: int = BATCH) -> None:
        fidelity = import_fidelity()
        # torch-fidelity unpickles the file in full; load it with the safe loader first, so a
        # file holding anything but tensors is refused before it can run code.
        torch.load(weights, map_location="cpu", weights_only=True)
        self.network = fidelity.FeatureExtractorInceptionV3(
            "inception-v3-compat", list(FEATURES), feature_extractor_weights_path=str(weights)
        ).to(device)
        self.device, self.batch_size = device, batch_size

    @torch.no_grad()
    def __call__(self, batches: Iterable[np.ndarray]) -> Features:
        """(B, H, W, 3) uint8 batches -> features of every image, computed in batches of
        `batch_size` whatever the incoming batches are (a size change starts a new batch)."""
        pools, logits = [], []
        for batch in rebatch(batches, self.batch_size):
            images = torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2).to(self.device)
            pool, logit = self.network(images)
            pools.append(pool.cpu())
            logits.append(logit.cpu())
        if not pools:
            raise ZooError("no images to measure: the sample set or the reference is empty")
        return Features(pool=torch.cat(pools), logits=torch.cat(logits))


def rebatch(batches: Iterable[np.ndarray], size: int) -> Iterable[np.ndarray]:
    pending: list[np.ndarray] = []
    count = 0
    for batch in batches:
        for image in batch:
            if pending and (count == size or image.shape != pending[0].shape):
                yield np.stack(pending)
                pending, count = [], 0
            pending.append(image)
            count += 1
    if pending:
        yield np.stack(pending)


def figures(wanted: Iterable[str], samples: Features, reference: Features | None) -> dict[str, float]:
    """The figures of `wanted` ("fid", "isc", "kid", "prc") of the sample features against
    the reference's, by torch-fidelity's functions with its default settings, except that
    precision/recall compare Inception pool3 features, as ADM's evaluator does for the
    papers' tables (torch-fidelity's own default for prc is VGG16)."""
    import_fidelity()
    from torch_fidelity.metric_fid import fid_statistics_to_metric
    from torch_fidelity.metric_isc import isc_features_to_metric
    from torch_fidelity.metric_kid import kid_features_to_metric
    from torch_fidelity.metric_prc import prc_features_to_metric

    wanted = set(wanted)
    out: dict[str, float] = {}
    if "isc" in wanted:
        assert samples.logits is not None
        isc = isc_features_to_metric(samples.logits, splits=10, shuffle=True, rng_seed=RNG_SEED)
        out.update(isc_mean=isc["inception_score_mean"], isc_std=isc["inception_score_std"])
    if not wanted & {"fid", "kid", "prc"}:
        return out
    if reference is None:
        raise ZooError("FID, KID and precision/recall compare against a reference: give --ref")
    if "fid" in wanted:
        ours, theirs = samples.statistics(), reference.statistics()
        out["fid"] = fid_statistics_to_metric(*same_dtypes(ours, theirs), verbose=False)["frechet_inception_distance"]
    for name in sorted(wanted & {"kid", "prc"}):
        if reference.pool is None:
            raise ZooError(f"{name} compares features, and the reference holds only statistics: give its images")
    if "kid" in wanted:
        assert samples.pool is not None and reference.pool is not None
        subset = min(KID_SUBSET_SIZE, samples.count, reference.count)
        kid = kid_features_to_metric(
            samples.pool, reference.pool, kid_subsets=KID_SUBSETS, kid_subset_size=subset, verbose=False
        )
        out.update(kid_mean=kid["kernel_inception_distance_mean"], kid_std=kid["kernel_inception_distance_std"])
    if "prc" in wanted:
        assert samples.pool is not None and reference.pool is not None
        prc = prc_features_to_metric(samples.pool, reference.pool, verbose=False)
        out.update(precision=prc["precision"], recall=prc["recall"], f_score=prc["f_score"])
    return out


def same_dtypes(first: dict[str, Any], second: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """torch-fidelity compares statistics of equal dtypes; an ADM file's are float64, ours
    (float32 features) give a float32 mean: compare in float64 where they differ."""
    if all(first[key].dtype == second[key].dtype for key in ("mu", "sigma")):
        return first, second
    return tuple({key: np.asarray(value, np.float64) for key, value in stats.items()} for stats in (first, second))  # type: ignore[return-value]
