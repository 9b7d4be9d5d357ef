"""Config schemas' common base and config resolution (no torch here).

Resolution order, later wins: the schema's defaults < a preset < the registry's
overrides for that preset < a YAML/JSON file (`--config`) < `--set key.sub=value`.
"""

from __future__ import annotations

import json
import types
import typing
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar

import pydantic

from zoo.errors import ConfigError, not_there


class ConfigSection(pydantic.BaseModel):
    """Base of a plugin's `Config` and of its nested sections: unknown fields are errors, not
    silently ignored, and assignments are validated like construction.

    `renamed_fields = {"old": "new"}` keeps a renamed field readable for a release: run
    directories and `--set` flags written with the old name still work, with a warning.
    """

    # inf and nan are never a setting: they would train a model of NaNs without a word
    model_config = pydantic.ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)
    renamed_fields: ClassVar[dict[str, str]] = {}

    @pydantic.model_validator(mode="before")
    @classmethod
    def _read_renamed_fields(cls, values: Any) -> Any:
        if not (isinstance(values, Mapping) and cls.renamed_fields):
            return values
        values = dict(values)
        for old, new in cls.renamed_fields.items():
            if old not in values:
                continue
            if new in values:
                raise ValueError(f"{old!r} is the old name of {new!r}; give only {new!r}")
            _warn_renamed(old, new)
            values[new] = values.pop(old)
        return values


def _warn_renamed(old: str, new: str) -> None:
    warnings.warn(
        f"config field {old!r} is now called {new!r}; the old name is read until zoo 0.3", FutureWarning, stacklevel=3
    )


def current_names(schema: type[pydantic.BaseModel], values: Mapping[str, Any]) -> dict[str, Any]:
    """`values` with renamed fields under their current names at every level of the schema,
    so that layers using the old and the new name (a preset, then `--set`) merge on one key."""
    renamed: dict[str, str] = getattr(schema, "renamed_fields", {})
    result: dict[str, Any] = {}
    for key, value in values.items():
        name = renamed.get(key, key)
        if name != key:
            if name in values:
                raise ConfigError(f"config field {key!r} is the old name of {name!r}; give only {name!r}")
            _warn_renamed(key, name)
        field = schema.model_fields.get(name)
        section = _model_in(field.annotation) if field is not None else None
        result[name] = current_names(section, value) if section is not None and isinstance(value, Mapping) else value
    return result


# The most images (or captions) one `zoo sample` / `zoo run` call makes: a 16 x 16 grid.
# Every plugin's SampleOptions bounds its counts by it, so a typo cannot exhaust memory.
MAX_SAMPLES = 256

# Upper bounds of config fields, far past any published model, so that a typo (a digit too
# many) is a one-line error instead of an allocation that exhausts the machine. Every int
# and float field of a plugin's Config has one (tests/faults/test_config_faults.py checks).
MAX_SEED = 2**32 - 1  # numpy's legacy seeds; seed + rank and seed + epoch stay in int64
MAX_STEPS = 10**9  # steps, warm-ups, intervals: counted, never allocated
MAX_BATCH = 65536  # items per step (or micro-batches per step)
MAX_WIDTH = 16384  # channels, embedding and hidden widths
MAX_DEPTH = 1024  # blocks, layers, heads, kernel sides
MAX_CODES = 1 << 20  # codebook and vocabulary sizes, class counts
MAX_IMAGE_SIDE = 4096  # training image sides (VAR's largest paper model: 512)
MAX_ITEMS = 10**8  # items of a generated or listed data set
MAX_FACTOR = 1e6  # loss weights, learning rates, clips, thresholds: any real value is far below
MAX_MULTIPLIER = 64  # a width multiplier of one resolution level

# List items with the same bounds: a level's width multiplier, and an image or feature-map side.
Multiplier = Annotated[int, pydantic.Field(ge=1, le=MAX_MULTIPLIER)]
Side = Annotated[int, pydantic.Field(ge=1, le=MAX_IMAGE_SIDE)]


class ScaleConfig(ConfigSection):
    """How a training step is computed, not what it computes: the levers of training at
    size. A run may be resumed with other values (a larger GPU, more processes)."""

    accumulate: int = pydantic.Field(
        default=1,
        ge=1,
        le=MAX_BATCH,
        description="micro-batches per optimizer step (gradient accumulation): each process's batch is split in this many",
    )
    activation_checkpointing: bool = pydantic.Field(
        default=False, description="keep only each block's inputs and recompute its activations in the backward pass"
    )
    shard: bool = pydantic.Field(
        default=False,
        description="with several processes: shard weights, gradients and optimizer state per block "
        "(FSDP2 fully_shard) instead of replicating them (DDP)",
    )
    compile: bool = pydantic.Field(
        default=False,
        description="torch.compile each block; where compiling fails, train eagerly with a one-line warning",
    )
    precision: Literal["fp32", "bf16"] = pydantic.Field(
        default="fp32", description="bf16: autocast the forward pass (weights, gradients and AdamW moments stay fp32)"
    )
    adamw: Literal["auto", "fused", "foreach", "for-loop"] = pydantic.Field(
        default="auto", description="optimizer kernel: auto takes fused for unsharded weights, foreach for sharded ones"
    )


class CodesConfig(ConfigSection):
    """Where a stage that trains on the codes of a frozen network gets them (VAR's transformer
    on the tokenizer's token maps, VQ-VAE-2's priors on the autoencoder's codes). Neither
    way holds the data set in memory; `zoo.data.cache` describes both."""

    mode: Literal["on_the_fly", "disk"] = pydantic.Field(
        default="disk",
        description="on_the_fly: the stage reads images (augmented as configured) and encodes each batch on the "
        "training device, as the official VAR training does; disk: each split is encoded once, split over the "
        "processes, into the run's cache and read memory-mapped (fastest on small data sets)",
    )
    views: int = pydantic.Field(
        default=1,
        ge=1,
        le=MAX_DEPTH,
        description="disk: encoded views of each item, each differently augmented (the same without augmentation); "
        "an epoch reads every view once",
    )

    @pydantic.model_validator(mode="after")
    def _views_are_encoded(self) -> CodesConfig:
        if self.views > 1 and self.mode != "disk":
            raise ValueError("codes.views applies to codes.mode=disk; on the fly, every batch is a new view")
        return self


MAX_WORKERS = 256  # DataLoader processes per training process


class LoaderConfig(ConfigSection):
    """How training batches are read: worker processes decode and augment items while the
    step runs. Like `scale`, it changes the speed of a run, not its result (the data order
    and the augmentation are functions of the seed), so a run may be resumed with other values."""

    workers: int | Literal["auto"] = pydantic.Field(
        default="auto",
        description="DataLoader worker processes per training process; auto: none for data held in memory "
        "(the embedded sets, encoded codes), else a share of the CPUs (at most 8, one left for the step)",
    )
    prefetch: int = pydantic.Field(default=2, ge=1, le=64, description="batches each worker prepares ahead")
    persistent_workers: bool = pydantic.Field(
        default=True, description="keep the worker processes for the whole stage instead of restarting them"
    )
    pin_memory: bool = pydantic.Field(
        default=True, description="on CUDA: copy batches through pinned memory (ignored on other devices)"
    )

    @pydantic.field_validator("workers")
    @classmethod
    def _not_negative(cls, value: int | str) -> int | str:
        if isinstance(value, int) and not 0 <= value <= MAX_WORKERS:
            raise ValueError(f"must be 0 (read in the training process), a count up to {MAX_WORKERS}, or auto")
        return value


class AugmentConfig(ConfigSection):
    """What a training image goes through after decoding (image folders, caption sets and
    shards; the embedded sets are drawn at their size). With the defaults an image is
    centre-cropped to a square and resized: no augmentation. Held-out images get the same
    resize and a centre crop, never a flip. The random draws are a function of (seed,
    epoch, item): the same at any worker count."""

    resize_ratio: float = pydantic.Field(
        default=1.0,
        ge=1.0,
        le=8.0,  # the resized image is this squared times the training image
        description="resize the shorter side to this times the training size before cropping (VAR: 1.125)",
    )
    filter: Literal["lanczos", "bicubic", "bilinear", "box", "nearest"] = pydantic.Field(
        default="bicubic", description="resampling filter of the resize"
    )
    crop: Literal["center", "random"] = pydantic.Field(
        default="center", description="where the training crop is taken; held-out images are always centre-cropped"
    )
    flip: bool = pydantic.Field(default=False, description="mirror a training image left-right with probability 1/2")


class ValidationConfig(ConfigSection):
    """Distribution metrics measured at every validation of a stage (its interval is the
    model's own validation field), through zoo.metrics as `zoo eval --metrics` measures them,
    on a small sample set, and logged beside the validation loss. fid, isc, kid and prc
    measure the model's sample set at the last stage's validations (a style transfer's set
    at its own stage's); rfid a tokenizer's or autoencoder's held-out reconstructions at the
    validations of the stage that trains it."""

    metrics: list[Literal["fid", "isc", "kid", "prc", "rfid"]] = pydantic.Field(
        default_factory=list,
        description="distribution metrics at each validation, e.g. [fid]; needs torch-fidelity (zoo[metrics]) "
        "and the Inception weights (zoo train --inception-weights FILE or $ZOO_INCEPTION_WEIGHTS)",
    )
    samples: int = pydantic.Field(
        default=256,
        ge=10,  # the Inception Score's 10 splits
        le=MAX_ITEMS,
        description="images drawn (and held-out images reconstructed, and taken as the default reference) "
        "per validation",
    )
    ref: str | None = pydantic.Field(
        default=None,
        description="reference of fid, kid and prc, as zoo eval's --ref (a folder, shards, a data set name, an "
        "ADM .npz); default: the run's own held-out images",
    )

    @pydantic.field_validator("metrics")
    @classmethod
    def _once_each(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(value))


class ZooConfig(ConfigSection):
    """Base of every plugin's `Config`."""

    # numpy's generators take no negative seeds
    seed: int = pydantic.Field(0, ge=0, le=MAX_SEED, description="fixes data order, initialisation and sampling")
    sample_every: int = pydantic.Field(
        0,
        ge=0,
        le=MAX_STEPS,
        description="write the stage's grid to samples/STAGE/step_N.png every this many steps; 0 is off",
    )
    scale: ScaleConfig = pydantic.Field(default_factory=ScaleConfig, description="memory and speed levers")
    loader: LoaderConfig = pydantic.Field(default_factory=LoaderConfig, description="how training batches are read")
    augment: AugmentConfig = pydantic.Field(
        default_factory=AugmentConfig, description="augmentation of training images read from files"
    )
    validation: ValidationConfig = pydantic.Field(
        default_factory=ValidationConfig, description="distribution metrics (FID, ...) at each validation"
    )


class SampleOptionsBase(pydantic.BaseModel):
    """Base of every plugin's `SampleOptions`; each field becomes a `zoo sample` flag.

    The options several models share are defined here once, with one meaning and one
    description: `seed` (here), `classes` and `n` (ClassSampleOptions: `n` is images per
    class where classes are given, images in all otherwise), and `top_k`, `top_p`,
    `temperature` (the `*_option(default)` fields below: one description, each model's own
    default)."""

    model_config = pydantic.ConfigDict(extra="forbid", allow_inf_nan=False)

    seed: int = pydantic.Field(0, ge=0, le=MAX_SEED, description="random seed of the sampling loop")


# The type parameters of the plugin interfaces (zoo.plugin.ModelPlugin, zoo.runtime.ModelRuntime):
# a plugin's own Config and SampleOptions, so its methods take exactly those.
ConfigT = TypeVar("ConfigT", bound=ZooConfig)
SampleOptionsT = TypeVar("SampleOptionsT", bound=SampleOptionsBase)


# The `json_schema_extra` of a sample option that takes images (one, or a list): file paths
# on the command line, `data:` URIs anywhere (zoo.runtime.images reads both). `zoo serve`
# fills these options from uploads only, never from a path a client names, and its web page
# shows a file picker for them.
IMAGE_INPUT: dict[str, Any] = {"input": "image"}


def image_inputs(schema: type[pydantic.BaseModel]) -> dict[str, bool]:
    """The options of `schema` marked IMAGE_INPUT -> whether each takes a list of images."""
    return {
        name: _takes_list(field.annotation)
        for name, field in schema.model_fields.items()
        if isinstance(field.json_schema_extra, dict) and field.json_schema_extra.get("input") == "image"
    }


def _takes_list(annotation: Any) -> bool:
    if typing.get_origin(annotation) in (list, tuple):
        return True
    return any(_takes_list(arg) for arg in typing.get_args(annotation))


def check_sample_count(n: int, rows: int) -> None:
    """Refuse, before anything is allocated, a call that would draw over MAX_SAMPLES images."""
    if n * rows > MAX_SAMPLES:
        raise ConfigError(
            f"n x classes = {n} x {rows} = {n * rows} images; at most {MAX_SAMPLES} per call: "
            f"lower --n or give fewer --class labels"
        )


class ClassSampleOptions(SampleOptionsBase):
    """Options of a model that draws images per class label (or without one)."""

    # How many classes a call without --class draws (for the count check before sampling;
    # a loop that knows its model's class count checks again with check_sample_count).
    default_classes: ClassVar[int] = 1

    classes: list[int] | None = pydantic.Field(
        None,
        description="class labels to draw (--class, several allowed); default: every class, at most the first 10",
        json_schema_extra={"flags": ["--class"]},
    )
    n: int = pydantic.Field(
        8,
        ge=1,
        le=MAX_SAMPLES,
        description=f"images per class (one grid row per class); images in all for a model without classes; "
        f"n x classes <= {MAX_SAMPLES}",
    )

    @pydantic.model_validator(mode="after")
    def _bounded_count(self) -> ClassSampleOptions:
        rows = len(self.classes) if self.classes else self.default_classes
        if self.n * rows > MAX_SAMPLES:
            raise ValueError(f"n x classes = {self.n} x {rows} images; at most {MAX_SAMPLES} per call")
        return self


def top_k_option(default: int = 0) -> Any:
    return pydantic.Field(
        default, ge=0, description="draw among the k likeliest codes/tokens; 0 keeps all, 1 is greedy"
    )


def top_p_option(default: float = 1.0) -> Any:
    return pydantic.Field(
        default,
        gt=0,
        le=1,
        description="draw among the smallest set of likeliest codes/tokens holding this probability; 1 keeps all",
    )


def temperature_option(default: float = 1.0) -> Any:
    # Bounded both ways: logits divided by 1e-300 overflow to inf and the draw turns to NaN.
    return pydantic.Field(
        default, ge=0.01, le=100.0, description="divides the logits before drawing; lower is more conservative"
    )


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _field_annotation(schema: type[pydantic.BaseModel], dotted: str) -> Any:
    """The annotation of `a.b.c` in a nested pydantic schema, or None if unknown."""
    annotation: Any = schema
    for part in dotted.split("."):
        model = _model_in(annotation)
        part = getattr(model, "renamed_fields", {}).get(part, part)
        if model is None or part not in model.model_fields:
            return None
        annotation = model.model_fields[part].annotation
    return annotation


def _model_in(annotation: Any) -> type[pydantic.BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        model = _model_in(arg)
        if model is not None:
            return model
    return None


def _is_text(annotation: Any) -> bool:
    if annotation in (str, Path):
        return True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return bool(args) and all(_is_text(a) for a in args)
    return False


def parse_overrides(
    schema: type[pydantic.BaseModel], assignments: Iterable[str], flag: str = "--set", what: str = "config field"
) -> dict[str, Any]:
    """`["a.b=3", "name=x"]` -> nested dict, values typed by the schema. `flag` and `what`
    name the option and the fields in errors (`--option`, "sample option" for sample options).

    Text fields take the raw string; every other value is read as YAML, so `3`, `1e-4`,
    `true`, `[1,2,3]` and `{a: 1}` mean what they look like.
    """
    import yaml  # the training install's; the runtime reads no YAML

    result: dict[str, Any] = {}
    for assignment in assignments:
        key, sep, raw = assignment.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"{flag} expects key=value, got {assignment!r}")
        annotation = _field_annotation(schema, key)
        if annotation is None:
            raise ConfigError(f"{flag} {key}: no such {what}; `zoo info MODEL` lists them")
        try:
            value = raw if _is_text(annotation) else yaml.safe_load(raw)
        except yaml.YAMLError as error:  # a ReaderError (a control character) has no `problem`
            problem = error.problem if isinstance(error, yaml.MarkedYAMLError) else error
            raise ConfigError(f"{flag} {key}: cannot read value {raw!r}: {problem}") from None
        target = result
        *parents, leaf = key.split(".")
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = value
    return result


def load_config_file(path: Path) -> dict[str, Any]:
    import yaml  # the training install's; the runtime reads no YAML

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} {not_there(path)}")
    try:
        data = yaml.safe_load(path.read_text()) if path.suffix in (".yaml", ".yml") else json.loads(path.read_text())
    except (yaml.YAMLError, json.JSONDecodeError) as error:
        raise ConfigError(f"config file {path} is not valid YAML/JSON: {error}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of config fields")
    return data


def validation_message(error: pydantic.ValidationError, what: str = "config field") -> str:
    """pydantic's messages, one line per field."""
    lines = []
    for item in error.errors():
        location = ".".join(str(part) for part in item["loc"]) or "(root)"
        given = item.get("input")
        shown = "" if isinstance(given, Mapping) else f" (got {given!r})"
        lines.append(f"{what} '{location}': {item['msg']}{shown}")
    return "\n".join(lines)


Model = TypeVar("Model", bound=pydantic.BaseModel)


def validate(schema: type[Model], values: Mapping[str, Any], what: str = "config field") -> Model:
    try:
        return schema.model_validate(dict(values))
    except pydantic.ValidationError as error:
        raise ConfigError(validation_message(error, what)) from None


def resolve(
    schema: type[ZooConfig],
    preset: Mapping[str, Any] | None = None,
    registry_overrides: Mapping[str, Any] | None = None,
    config_file: Path | None = None,
    assignments: Iterable[str] = (),
    overrides: Mapping[str, Any] | None = None,
    base: Mapping[str, Any] | None = None,
) -> ZooConfig:
    """Merge every layer in order and validate once; `base` (a run's stored config, when
    resuming it) lies under all of them."""
    layers = [
        base,
        preset,
        registry_overrides,
        load_config_file(config_file) if config_file is not None else None,
        overrides,
        parse_overrides(schema, assignments),
    ]
    values: dict[str, Any] = {}
    for layer in layers:
        if layer:
            values = deep_merge(values, current_names(schema, layer))
    return validate(schema, values)


def config_differences(old: Any, new: Any, prefix: str = "") -> list[tuple[str, str, str]]:
    """Dotted field names whose values differ, with both values as JSON: [("lr", "0.001", "0.002")]."""
    if isinstance(old, dict) and isinstance(new, dict):
        found = []
        for key in sorted(set(old) | set(new), key=str):
            found.extend(config_differences(old.get(key), new.get(key), f"{prefix}{key}."))
        return found
    if old == new:
        return []
    return [(prefix.rstrip("."), json.dumps(old), json.dumps(new))]
