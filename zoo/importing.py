"""Published checkpoints -> ordinary run directories (`zoo import`, `zoo.import_checkpoint`).

Converters are the plugins' business: a plugin offers `Importer`s through the
`zoo_register_importers` hook, each turning the files of one published format into zoo's
config values and state dict. The core does the rest, the same for every model:

    files --Importer.convert--> (config values, tensors, stages they cover, notes)
          --resolve/check-----> a config validated by the plugin, checked against a preset
          --build + compare---> every tensor must fit the model built from that config
          --write-------------> RUN/config.json (+ where the weights came from), model.safetensors

Files are read through `zoo.checkpoint_files.load_checkpoint`, which runs nothing they
contain. Nothing is written to the run directory unless every check passes; it is written
beside it and renamed into place.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from zoo import checkpoint as ckpt
from zoo.checkpoint_files import CheckpointError
from zoo.config import ZooConfig, deep_merge, validate
from zoo.errors import RunError, UnknownNameError
from zoo.importer import Converted
from zoo.plugin import ModelPlugin
from zoo.registry import get_registry
from zoo.runtime.manifest import sha256_file


@dataclass
class ImportedRun:
    run_dir: Path
    config: ZooConfig
    preset: str | None  # the preset the inferred config matches, if any
    notes: list[str]


def import_checkpoint(
    model: str,
    files: Iterable[str | Path],
    out: str | Path,
    preset: str | None = None,
    format: str | None = None,
    published: Mapping[str, Any] | None = None,
) -> ImportedRun:
    """Convert published checkpoint `files` of `model` into the run directory `out`.

    `preset`: the preset the files must match (an error names the first field that does
    not); by default the config is inferred and the matching preset, if any, reported.
    `published`: where the files came from (`zoo pull`), recorded beside their hashes.
    """
    registry = get_registry()
    plugin = registry.get(model)
    importer = registry.importer(model, format)
    paths = [Path(file) for file in files]
    out = Path(out)
    check_new_run_dir(out)
    for path in paths:
        if not path.is_file():
            raise CheckpointError(f"checkpoint {path} does not exist")
    converted = importer.convert(paths)
    config, matched = _config_for(plugin, registry.presets(model), converted.config, preset)
    torch.manual_seed(config.seed)
    net = plugin.build(config)
    _load_converted(net, converted, plugin.stage_names(config), paths)
    stages, notes = converted.stages, converted.notes
    del converted  # the files' tensors: the model holds its copy now, the writer needs the memory
    record = ckpt.run_record(plugin.name, plugin.version, matched, config.model_dump(mode="json"))
    record["completed"] = [stage for stage in plugin.stage_names(config) if stage in stages]
    record["imported"] = {
        "format": importer.format,
        "converter_version": importer.version,
        "files": [_describe_file(path) for path in paths],
        "notes": notes,
    }
    if published is not None:
        record["imported"]["published"] = dict(published)
    _write_run(out, record, net)
    return ImportedRun(out, config, matched, notes)


def check_new_run_dir(out: Path) -> None:
    """`out` must not exist, or be an empty folder: an import never writes over a run."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RunError(f"--out {out} already exists; choose a new run directory")


def _config_for(
    plugin: ModelPlugin[Any, Any, Any],
    presets: Mapping[str, Mapping[str, Any]],
    inferred: dict[str, Any],
    preset: str | None,
) -> tuple[ZooConfig, str | None]:
    """The config: the inferred values over the named preset (which must agree with them),
    or over the first preset they all agree with, or over the defaults."""
    if preset is not None:
        if preset not in presets:
            raise UnknownNameError(f"preset of {plugin.name}", preset, presets)
        base = validate(plugin.Config, dict(presets[preset]))
        conflict = _first_conflict(base.model_dump(mode="json"), inferred)
        if conflict:
            raise CheckpointError(f"the files do not match preset {preset!r}: {conflict}; import without --preset")
        return validate(plugin.Config, deep_merge(dict(presets[preset]), inferred)), preset
    for name, values in presets.items():
        base = validate(plugin.Config, dict(values))
        if not _first_conflict(base.model_dump(mode="json"), inferred):
            return validate(plugin.Config, deep_merge(dict(values), inferred)), name
    return validate(plugin.Config, inferred), None


def _first_conflict(config: Mapping[str, Any], inferred: Mapping[str, Any], prefix: str = "") -> str | None:
    for key, value in inferred.items():
        have = config.get(key)
        if isinstance(value, Mapping) and isinstance(have, Mapping):
            found = _first_conflict(have, value, f"{prefix}{key}.")
            if found:
                return found
        elif _normal(have) != _normal(value):
            return f"{prefix}{key} is {value!r} in the files, {have!r} in the preset"
    return None


def _normal(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _load_converted(net: torch.nn.Module, converted: Converted, stages: list[str], paths: list[Path]) -> None:
    """Every converted tensor must name a parameter or buffer of the model, with its shape."""
    own = net.state_dict()
    files = ", ".join(str(path) for path in paths)
    shapes = {key: tuple(value.shape) for key, value in own.items()}
    check_fit(converted.tensors, shapes, f"the {net.__class__.__name__}", lambda key: (files, key))
    unknown = [stage for stage in converted.stages if stage not in stages]
    if unknown:
        raise CheckpointError(f"the importer names stages {unknown} the model does not have")
    net.load_state_dict({**own, **{k: v.to(own[k].dtype) for k, v in converted.tensors.items()}})


def check_fit(
    tensors: Mapping[str, torch.Tensor],
    shapes: Mapping[str, tuple[int, ...]],
    model: str,
    origin: Callable[[str], tuple[str | Path, str]],
    file_layout: Callable[[str, tuple[int, ...]], tuple[int, ...]] = lambda key, shape: shape,
) -> list[str]:
    """Every converted tensor (zoo key -> tensor) must be a key of `shapes`, the state dict
    of `model` built from the inferred config (`zoo.checkpoint_files.meta_shapes` builds it
    on the meta device), with its shape. Returns the keys of `shapes` no tensor fills, in
    order: which of them may stay at their initialisation is the importer's call.

    A misfit is a one-line `CheckpointError` naming where the tensor came from:
    `origin(key)` is (file, the tensor's name in it); `file_layout(key, shape)` is a shape
    of zoo's layout in the file's (for an importer that transposes some tensors)."""
    for key, tensor in tensors.items():
        file, name = origin(key)
        where = f"{file}: {key}" if name == key else f"{file}: {name!r} (zoo's {key})"
        if key not in shapes:
            raise CheckpointError(
                f"{where} fits no layer of {model} built from the inferred config; "
                "the files belong to another model or version"
            )
        if tuple(tensor.shape) != shapes[key]:
            have, need = file_layout(key, tuple(tensor.shape)), file_layout(key, shapes[key])
            raise CheckpointError(
                f"{where} has shape {have} in the files, {need} in {model} built from the inferred config"
            )
    return [key for key in shapes if key not in tensors]


def _describe_file(path: Path) -> dict[str, Any]:
    return {"name": path.name, "sha256": sha256_file(path), "bytes": path.stat().st_size}


def _write_run(out: Path, record: dict[str, Any], net: torch.nn.Module) -> None:
    """Write the run beside `out`, then rename it into place: all of it or nothing."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.importing-", dir=out.parent))
    try:
        ckpt.atomic_write_json(staging / ckpt.CONFIG_FILE, record)
        ckpt.save_weights(net, staging / ckpt.WEIGHTS_FILE)
        staging.chmod(ckpt.DIR_MODE)
        if out.is_dir():
            out.rmdir()  # empty, checked above
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
