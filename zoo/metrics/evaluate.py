"""`zoo eval --metrics`: the distribution metrics of a run or an export, each figure stored
with what it was measured on (N, the reference, the Inception weights' sha256).

fid, isc, kid, prc: the model's sample set (`ModelPlugin.metric_sample_options`, drawn into
the keep folder, resumable: `zoo.metrics.samples`) against --ref. A model without a sample
set but with a `transfer` MetricSet (a style transfer) is measured on that set instead:
its outputs against its references (or --ref), and the content term SSIM to its sources.
rfid: each `reconstruction` MetricSet, its outputs against its inputs.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zoo.config import validate
from zoo.errors import ConfigError, ZooError
from zoo.metrics.fidelity import BATCH, Features, InceptionFeatures, figures
from zoo.metrics.references import cached_features, default_cache_dir, resolve_reference, stored_features
from zoo.metrics.samples import CHUNK, draw_samples, read_images, sample_files
from zoo.metrics.weights import SHA256_PREFIX, resolve_weights
from zoo.plugin import MadeImages, MetricSet, ModelPlugin

METRICS = ("fid", "isc", "kid", "prc", "rfid")
SAMPLED = ("fid", "isc", "kid", "prc")
DEFAULT_SAMPLES = 50_000  # the papers' N


@dataclass
class MetricOptions:
    metrics: list[str]
    ref: str | None = None
    samples: int = DEFAULT_SAMPLES
    keep_samples: Path | None = None  # default: RUN/metric_samples
    inception_weights: Path | None = None  # default: $ZOO_INCEPTION_WEIGHTS, else torch hub's copy
    cache_dir: Path | None = None  # reference features; default ~/.cache/zoo/metrics
    seed: int = 0
    sample_options: dict[str, Any] = field(default_factory=dict)  # over the model's metric options
    held_out: int | None = None  # at most this many held-out images per MetricSet (None: the whole split)
    check_weights: bool = True  # False only for test weights
    batch_size: int = BATCH


def parse_metrics(text: str | list[str]) -> list[str]:
    names = [name.strip() for name in (text.split(",") if isinstance(text, str) else text) if name.strip()]
    unknown = [name for name in names if name not in METRICS]
    if unknown or not names:
        problem = f"unknown metric {unknown[0]!r}" if unknown else "no metric named"
        raise ConfigError(f"{problem}; choose from {','.join(METRICS)} (comma-separated)")
    return list(dict.fromkeys(names))


@dataclass
class Target:
    """What is measured: a plugin with its config, and how to draw (torch run or export)."""

    plugin: ModelPlugin[Any, Any, Any]
    config: Any
    sample: Callable[[Any], Any]  # SampleOptions -> SampleOutput
    metric_sets: Callable[[], list[MetricSet]]
    home: Path  # run or export directory: where samples are kept by default
    identity: str  # what drew the samples (weights hash), recorded beside them


def evaluate_metrics(target: Target, options: MetricOptions, device: torch.device) -> dict[str, Any]:
    wanted = parse_metrics(options.metrics)
    sampled = [name for name in wanted if name in SAMPLED]
    draws = checked_request(target, options, sampled)  # before anything slow
    weights, weights_sha = resolve_weights(options.inception_weights, check=options.check_weights)
    extract = InceptionFeatures(weights, device, options.batch_size)
    cache_dir = options.cache_dir or default_cache_dir()
    record: dict[str, Any] = {
        "inception_weights": str(weights),
        "inception_sha256": weights_sha,
        "inception_sha256_checked": f"prefix {SHA256_PREFIX}" if options.check_weights else "not checked",
    }
    sets = target.metric_sets() if "rfid" in wanted or (sampled and not draws) else []
    if sampled and draws:
        record.update(sample_set_metrics(target, options, sampled, extract, weights_sha, cache_dir))
    elif sampled:
        transfers = [made for made in sets if made.kind == "transfer"]
        if not transfers:
            raise ZooError(f"{target.plugin.name} draws no sample set for {','.join(sampled)}; measure it with rfid")
        for made in transfers:
            record.update(made_set_metrics(made, sampled, extract, options, weights_sha, cache_dir))
    if "rfid" in wanted:
        reconstructions = [made for made in sets if made.kind == "reconstruction"]
        if not reconstructions:
            raise ZooError(f"{target.plugin.name} has no tokenizer or autoencoder stage to measure with rfid")
        for made in reconstructions:
            record.update(made_set_metrics(made, ["rfid"], extract, options, weights_sha, cache_dir))
    return record


def checked_request(target: Target, options: MetricOptions, sampled: list[str]) -> bool:
    """Whether the model draws a sample set; refuses a request that would fail after drawing
    (no --ref for fid, kid or prc; a sampling option the model does not take)."""
    plugin = target.plugin
    given = plugin.metric_sample_options(target.config, 0, CHUNK, options.seed)
    if given is None or not sampled:
        return given is not None
    if options.ref is None and set(sampled) - {"isc"}:
        raise ConfigError(
            f"{','.join(sampled)} compare the samples with a reference: give --ref "
            "(a folder, shards, a data set name or an ADM .npz)"
        )
    validate(plugin.SampleOptions, {**given.model_dump(), **options.sample_options}, what="sample option")
    return True


def sample_set_metrics(
    target: Target,
    options: MetricOptions,
    wanted: list[str],
    extract: InceptionFeatures,
    weights_sha: str,
    cache_dir: Path,
) -> dict[str, Any]:
    folder = options.keep_samples or target.home / "metric_samples"
    plugin, config = target.plugin, target.config

    def draw(first: int, count: int, seed: int) -> np.ndarray:
        return target.sample(metric_options(first, count, seed)).images

    def metric_options(first: int, count: int, seed: int) -> Any:
        given = plugin.metric_sample_options(config, first, count, seed)
        assert given is not None  # the caller checked that the model draws a sample set
        if not options.sample_options:
            return given
        return validate(plugin.SampleOptions, {**given.model_dump(), **options.sample_options}, what="sample option")

    shown = metric_options(0, 1, options.seed).model_dump(mode="json", exclude={"classes", "seed"})
    identity = {"model": plugin.name, "weights": target.identity, "options": shown}
    draw_samples(draw, folder, options.samples, options.seed, identity)
    files = sample_files(folder, options.samples)
    # The folder's record guarantees what its images are: their features are cached beside them.
    cache = folder / f"features-{weights_sha[:16]}-{options.samples}.safetensors"
    out = files_metrics(files, wanted, options, extract, weights_sha, cache_dir, cache)
    out.update(samples_folder=str(folder), sample_options=json.dumps(shown, sort_keys=True))
    return out


def folder_metrics(folder: Path, options: MetricOptions, device: torch.device) -> dict[str, Any]:
    """fid, isc, kid, prc of the images in any folder (read as torch-fidelity reads one)
    against --ref: samples drawn elsewhere, measured the same way."""
    from zoo.metrics.references import image_files

    wanted = [name for name in parse_metrics(options.metrics) if name in SAMPLED]
    weights, weights_sha = resolve_weights(options.inception_weights, check=options.check_weights)
    extract = InceptionFeatures(weights, device, options.batch_size)
    record = files_metrics(
        image_files(folder), wanted, options, extract, weights_sha, options.cache_dir or default_cache_dir()
    )
    record.update(inception_weights=str(weights), inception_sha256=weights_sha)
    return record


def files_metrics(
    files: list[Path],
    wanted: list[str],
    options: MetricOptions,
    extract: InceptionFeatures,
    weights_sha: str,
    cache_dir: Path,
    features_file: Path | None = None,
) -> dict[str, Any]:
    """fid, isc, kid, prc of the images at `files` against options.ref; their features are
    read from (or written to) `features_file` when given."""
    if not files:
        raise ZooError("no images to measure: the sample folder is empty")
    if options.ref is None and set(wanted) - {"isc"}:
        raise ConfigError(
            f"{','.join(wanted)} compare the samples with a reference: give --ref "
            "(a folder, shards, a data set name or an ADM .npz)"
        )
    if features_file is not None:
        features = stored_features(features_file, lambda: extract(read_images(files, options.batch_size)))
    else:
        features = extract(read_images(files, options.batch_size))
    side = next(read_images(files[:1], 1)).shape[1]
    reference = resolve_reference(options.ref, side) if options.ref is not None else None
    ref_features = cached_features(reference, extract, weights_sha, cache_dir) if reference is not None else None
    out: dict[str, Any] = figures(wanted, features, ref_features)
    out.update(samples=len(files), reference=reference.describe if reference is not None else None)
    return out


def made_set_metrics(
    made: MetricSet,
    wanted: list[str],
    extract: InceptionFeatures,
    options: MetricOptions,
    weights_sha: str,
    cache_dir: Path,
) -> dict[str, Any]:
    """`rfid/NAME` of a reconstruction set; `fid/NAME` (isc, kid, prc) and `ssim/NAME` of a
    transfer set. Batch by batch: no split is held whole, only its features."""
    outputs: list[Features] = []
    references: list[Features] = []
    ssims: list[float] = []
    side = 0
    for batch in limited(made.batches(), options.held_out):
        outputs.append(extract([batch.outputs]))
        references.append(extract([batch.references]))
        if batch.sources is not None:
            ssims.extend(ssim(batch))
        side = batch.outputs.shape[1]
    features, ref_features = joined(outputs), joined(references)
    describe = f"{made.name}'s held-out {'inputs' if made.kind == 'reconstruction' else 'references'}"
    if made.kind == "transfer" and options.ref is not None:
        reference = resolve_reference(options.ref, side)
        ref_features, describe = cached_features(reference, extract, weights_sha, cache_dir), reference.describe
    if made.kind == "reconstruction":
        values = {"rfid": figures(["fid"], features, ref_features)["fid"]}
    else:
        values = figures(wanted, features, ref_features)
        if ssims:
            values["ssim"] = float(np.mean(ssims))
    out: dict[str, Any] = {f"{key}/{made.name}": value for key, value in values.items()}
    out[f"{made.name}/images"] = features.count
    out[f"{made.name}/reference"] = describe
    return out


def limited(batches: Iterator[MadeImages], count: int | None) -> Iterator[MadeImages]:
    """The first `count` images of the batches (all with None)."""
    for batch in batches:
        if count is not None and count <= 0:
            return
        if count is not None and len(batch.outputs) > count:
            sources = None if batch.sources is None else batch.sources[:count]
            batch = MadeImages(batch.outputs[:count], batch.references[:count], sources)
        yield batch
        if count is not None:
            count -= len(batch.outputs)


def joined(parts: list[Features]) -> Features:
    if not parts:
        raise ZooError("the held-out split is empty: nothing to measure")
    return Features(
        pool=torch.cat([part.pool for part in parts if part.pool is not None]),
        logits=torch.cat([part.logits for part in parts if part.logits is not None]),
    )


def ssim(batch: MadeImages) -> Iterator[float]:
    """SSIM of each output to the image it was made from, on RGB (scikit-image, 7x7 window)."""
    from skimage.metrics import structural_similarity

    assert batch.sources is not None
    for output, source in zip(batch.outputs, batch.sources, strict=True):
        yield float(structural_similarity(output, source, channel_axis=-1, data_range=255))


def run_target(
    plugin: ModelPlugin[Any, Any, Any], config: Any, model: Any, run_dir: Path, device: torch.device
) -> Target:
    """A trained run, sampled with torch (the plugin's loop on the torch components)."""
    from zoo.checkpoint import WEIGHTS_FILE
    from zoo.metrics.weights import sha256_of

    def sample(options: Any) -> Any:
        with torch.no_grad():
            return plugin.sample(model, config, options, device)

    def metric_sets() -> list[MetricSet]:
        return plugin.metric_sets(model, config, device)

    weights = run_dir / WEIGHTS_FILE
    identity = sha256_of(weights) if weights.is_file() else "unsaved"
    return Target(plugin, config, sample, metric_sets, run_dir, identity)


def export_target(export_dir: Path, provider: str | None = None) -> Target:
    """An export directory, sampled with onnxruntime (the same loop); its held-out sets
    (rfid, a style transfer's) are made by its graphs where it holds them
    (`ModelPlugin.export_metric_sets`)."""
    from zoo import runtime
    from zoo.config import validate
    from zoo.metrics.weights import sha256_of
    from zoo.registry import get_registry

    loaded = runtime.load(export_dir, provider=provider)
    plugin = get_registry().get(loaded.model)
    config = validate(plugin.Config, loaded.config)
    identity = sha256_of(Path(export_dir) / "manifest.json")

    def metric_sets() -> list[MetricSet]:
        sets = plugin.export_metric_sets(loaded.runtime, config)
        if not sets:
            raise ZooError(
                f"{export_dir} holds no graphs that make {plugin.name}'s held-out sets (rfid, a style transfer's fid): "
                "export every component, or give --run instead of --export"
            )
        return sets

    return Target(plugin, config, loaded.runtime.sample, metric_sets, Path(export_dir), identity)
