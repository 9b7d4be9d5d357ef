"""Distribution metrics at a stage's validations (the config's `validation` section): what
`zoo eval --metrics` measures, on `validation.samples` images, logged as `val_fid`,
`val_rfid/NAME`, ... beside the validation loss.

Which stage measures what: fid, isc, kid and prc the model's sample set at the last stage's
validations (the set needs every stage trained), or a style transfer's set at the
validations of the stage of its name; rfid the reconstruction set of the stage's name.
Everything that can fail is checked when training starts (`plan`, `ValidationMetrics`):
a metric no validated stage measures, torch-fidelity missing, the weights file missing or
not the published one, a `ref` that does not resolve. Reference features are extracted at
the first validation and kept for the run (a `ref` also in the run's cache), never
recomputed; the samples are drawn with the same seeds at every validation, so the curve
follows the weights, not the draw.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zoo.errors import ConfigError
from zoo.metrics.evaluate import joined, limited, ssim
from zoo.metrics.fidelity import Features, InceptionFeatures, figures, import_fidelity
from zoo.metrics.references import Reference, cached_features, resolve_reference
from zoo.metrics.samples import CHUNK
from zoo.metrics.weights import resolve_weights
from zoo.plugin import MetricSet, ModelPlugin, Stage

SAMPLED = ("fid", "isc", "kid", "prc")
PREFIX = "val_"  # logged as the validation loss is: val_loss, val_fid, val_rfid/tokenizer


def metric_sets_of(plugin: ModelPlugin[Any, Any, Any], config: Any) -> list[MetricSet]:
    """The model's MetricSets, named without building weights (a model on the meta device)."""
    with torch.device("meta"):
        model = plugin.build(config)
    return plugin.metric_sets(model, config, torch.device("meta"))


def plan(plugin: ModelPlugin[Any, Any, Any], config: Any, stages: list[Stage[Any, Any]]) -> dict[str, list[str]]:
    """Stage name -> the metrics measured at its validations; refuses a metric that no
    validated stage measures, naming the stage that would."""
    wanted = list(config.validation.metrics)
    sets = metric_sets_of(plugin, config)
    draws = plugin.metric_sample_options(config, 0, 1, config.seed) is not None
    last = stages[-1].name

    def measures(stage: str, name: str) -> bool:
        if name == "rfid":
            return any(made.kind == "reconstruction" and made.name == stage for made in sets)
        return (draws and stage == last) or any(made.kind == "transfer" and made.name == stage for made in sets)

    planned: dict[str, list[str]] = {}
    for name in wanted:
        where = [stage.name for stage in stages if measures(stage.name, name)]
        validated = [stage for stage in stages if stage.name in where and stage.validation is not None]
        if not where:
            what = "no tokenizer or autoencoder stage" if name == "rfid" else "no sample set or style transfer"
            raise ConfigError(f"validation.metrics: {plugin.name} has {what} to measure {name} on; drop {name}")
        if not validated:
            raise ConfigError(
                f"validation.metrics: {name} is measured at the validations of stage {', '.join(where)}, "
                f"which has no validation in this config; set its validation interval where {plugin.name} has one, "
                f"or drop {name}"
            )
        for stage in validated:
            planned.setdefault(stage.name, []).append(name)
    reference_needed = set(wanted) & {"fid", "kid", "prc"}
    if reference_needed and draws and config.validation.ref is None:
        if not any(made.kind == "reconstruction" for made in sets):
            raise ConfigError(
                f"validation.metrics: {plugin.name} has no held-out images to compare its samples with; "
                "give validation.ref (a folder, shards, a data set name or an ADM .npz)"
            )
    return planned


class ValidationMetrics:
    """The metrics of one training run's validations; built (and so checked) before training."""

    def __init__(
        self,
        plugin: ModelPlugin[Any, Any, Any],
        config: Any,
        stages: list[Stage[Any, Any]],
        device: torch.device,
        weights: Path | None,
        cache_dir: Path,
    ) -> None:
        self.plugin, self.config, self.device, self.cache_dir = plugin, config, device, cache_dir
        self.spec = config.validation
        self.planned = plan(plugin, config, stages)
        self.last = stages[-1].name
        self.weights, self.weights_sha = resolve_weights(weights)
        import_fidelity()
        if self.spec.ref is not None and not Path(self.spec.ref).expanduser().is_file():
            # A name or folder that resolves to nothing fails now; the side it is read at
            # (the samples') is known at the first validation, and a data set opens at any.
            resolve_reference(self.spec.ref, 32)
        self.extract = InceptionFeatures(self.weights, device)
        self.references: dict[str, tuple[Features, str]] = {}  # per set: features and what they are
        self.measured_on: dict[str, dict[str, Any]] = {}  # per logged key: N, reference, weights' hash

    def measure(self, model: Any, stage: str) -> dict[str, float]:
        """The stage's metrics of `model` (in eval mode, under no_grad), keys prefixed `val_`."""
        wanted = self.planned.get(stage, [])
        if not wanted:
            return {}
        sampled = [name for name in wanted if name in SAMPLED]
        sets = [made for made in self.plugin.metric_sets(model, self.config, self.device) if made.name == stage]
        out: dict[str, float] = {}
        draws = self.plugin.metric_sample_options(self.config, 0, 1, self.config.seed) is not None
        if sampled and draws and stage == self.last:
            out.update(self._sample_set(model, sampled))
        for made in sets:
            if made.kind == "transfer" and sampled:
                out.update(self._made_set(made, sampled))
            elif made.kind == "reconstruction" and "rfid" in wanted:
                out.update(self._made_set(made, ["rfid"]))
        return {PREFIX + key: value for key, value in out.items()}

    def _sample_set(self, model: Any, wanted: list[str]) -> dict[str, float]:
        count = self.spec.samples
        images = list(self._draw(model, count))  # a few hundred images: held while their features are taken
        features = self.extract(images)
        reference = self._reference(model, images[0].shape[1]) if set(wanted) - {"isc"} else None
        values = figures(wanted, features, reference[0] if reference else None)
        self._record(values, count, reference[1] if reference else None)
        return values

    def _draw(self, model: Any, count: int) -> Iterator[np.ndarray]:
        """The first `count` images of the class-balanced sample set, in chunks seeded as
        `zoo eval` seeds its chunks."""
        for first in range(0, count, CHUNK):
            options = self.plugin.metric_sample_options(
                self.config, first, min(CHUNK, count - first), self.config.seed + first // CHUNK
            )
            images = self.plugin.sample(model, self.config, options, self.device).images
            assert images is not None  # a model with a sample set draws images
            yield images

    def _reference(self, model: Any, side: int) -> tuple[Features, str]:
        """The samples' reference: `validation.ref`, else the held-out images of the model's
        first reconstruction set (at most `samples` of them), extracted once per run."""
        if "samples" in self.references:
            return self.references["samples"]
        if self.spec.ref is not None:
            return self._given_reference(side)
        made = next(m for m in self.plugin.metric_sets(model, self.config, self.device) if m.kind == "reconstruction")
        features = joined([self.extract([batch.references]) for batch in limited(made.batches(), self.spec.samples)])
        found = self.references["samples"] = (features, f"{made.name}'s held-out images ({features.count})")
        return found

    def _given_reference(self, side: int) -> tuple[Features, str]:
        """`validation.ref` read at `side`, its features from the run's cache after the first time."""
        if "ref" not in self.references:
            given: Reference = resolve_reference(self.spec.ref, side)
            features = cached_features(given, self.extract, self.weights_sha, self.cache_dir)
            self.references["ref"] = (features, given.describe)
        return self.references["ref"]

    def _made_set(self, made: MetricSet, wanted: list[str]) -> dict[str, float]:
        """rfid (reconstruction) or fid, isc, kid, prc and ssim (transfer) of a set's first
        `samples` outputs; its references' features are extracted at the first call only
        (a transfer's reference is `validation.ref` where given, as in zoo eval)."""
        cached = self.references.get(made.name)
        given = made.kind == "transfer" and self.spec.ref is not None
        outputs: list[Features] = []
        references: list[Features] = []
        ssims: list[float] = []
        side = 0
        for batch in limited(made.batches(), self.spec.samples):
            outputs.append(self.extract([batch.outputs]))
            if cached is None and not given:
                references.append(self.extract([batch.references]))
            if batch.sources is not None:
                ssims.extend(ssim(batch))
            side = batch.outputs.shape[1]
        if given:
            cached = self._given_reference(side)
        elif cached is None:
            features = joined(references)
            kind = "inputs" if made.kind == "reconstruction" else "references"
            cached = self.references[made.name] = (features, f"{made.name}'s held-out {kind} ({features.count})")
        features = joined(outputs)
        if made.kind == "reconstruction":
            values = {"rfid": figures(["fid"], features, cached[0])["fid"]}
        else:
            values = figures(wanted, features, cached[0])
            if ssims:
                values["ssim"] = float(np.mean(ssims))
        named = {f"{key}/{made.name}": value for key, value in values.items()}
        self._record(named, features.count, cached[1])
        return named

    def _record(self, values: dict[str, float], count: int, reference: str | None) -> None:
        for key in values:
            self.measured_on[PREFIX + key] = {
                "samples": count,
                "reference": None if key.startswith("isc") else reference,  # IS measures the samples alone
                "inception_weights": str(self.weights),
                "inception_sha256": self.weights_sha,
            }
