"""`zoo info`: a model's description, presets, stages, levers, components and config
fields; or a run directory's record."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pydantic

from zoo.cli.common import add_subcommand, default_config, describe_fields
from zoo.errors import ZooError


def register(commands: Any) -> None:
    info = add_subcommand(
        commands,
        "info",
        "a model's description, presets, config fields, stages",
        "A model's presets, stages, export components and every config field; or a run's record.",
        "examples:\n  zoo info var\n  zoo info var --preset d16 --json\n  zoo info --run runs/var",
    )
    info.add_argument("model", nargs="?", help="installed model (`zoo list`)")
    info.add_argument("--preset", help="show this preset's resolved config (default: the model's default preset)")
    info.add_argument("--run", type=Path, help="print a run directory's record (config, sessions) as JSON instead")
    info.add_argument("--json", action="store_true", help="print the model's description as JSON")
    info.set_defaults(handler=cmd_info, needs_train=True)


def cmd_info(args: argparse.Namespace) -> None:
    if args.run:
        from zoo.checkpoint import read_run_record

        print(json.dumps(read_run_record(Path(args.run), args.model), indent=2))
        return
    if not args.model:
        raise ZooError("zoo info needs a MODEL or --run DIR")
    from zoo.registry import get_registry

    registry = get_registry()
    plugin = registry.get(args.model)
    preset, config = default_config(args.model, args.preset)
    stages = plugin.stages(config)
    if args.json:
        info = {
            "name": plugin.name,
            "version": plugin.version,
            "description": plugin.description,
            "default_preset": plugin.default_preset,
            "preset": preset,
            "presets": registry.presets(args.model),
            "stages": [
                {
                    "name": stage.name,
                    "steps": stage.steps,
                    "batch_size": stage.batch_size,
                    "optimizers": [{"name": o.name, "lr": o.lr} for o in stage.optimizers],
                }
                for stage in stages
            ],
            "components": plugin.component_names(config),
            "levers": _levers_line(plugin, config),
            "data": _data_line(config),
            "config": config.model_dump(mode="json"),
            "fields": _field_descriptions(plugin.Config),
        }
        print(json.dumps(info, indent=2))
        return
    print(f"{plugin.name} {plugin.version}: {plugin.description}\n")
    print(f"presets (default {plugin.default_preset}):")
    for name, values in registry.presets(args.model).items():
        print(f"  {name}: {json.dumps(values)}")
    print(f"\nstages ({preset or 'defaults'}):")
    for stage in stages:
        optimizers = ", ".join(f"{o.name} lr {o.lr:g}" for o in stage.optimizers)
        print(f"  {stage.name}: {stage.steps} steps, batch {stage.batch_size}, optimizers: {optimizers}")
    print(f"\nlevers (scale): {_levers_line(plugin, config)}")
    print(f"data (loader, augment): {_data_line(config)}")
    print(f"\nexport components: {', '.join(plugin.component_names(config))}")
    print("\nconfig fields (set with --set key=value):")
    for line in describe_fields(plugin.Config, config.model_dump()):
        print(f"  {line}")


def _data_line(config: Any) -> str:
    """The config's `loader` and `augment` sections in one line."""
    loader, augment = config.loader, config.augment
    on = {True: "on", False: "off"}
    workers = (
        "auto (none for data in memory, a share of the CPUs for files)" if loader.workers == "auto" else loader.workers
    )
    if augment.resize_ratio == 1.0 and augment.crop == "center" and not augment.flip:
        augmented = f"none (centre square, {augment.filter})"
    else:
        flip = ", flip" if augment.flip else ""
        augmented = f"shorter side x{augment.resize_ratio:g} ({augment.filter}), {augment.crop} crop{flip}"
    return (
        f"workers {workers}, prefetch {loader.prefetch}, persistent workers {on[loader.persistent_workers]}, "
        f"pinned memory (CUDA) {on[loader.pin_memory]}; augment {augmented}"
    )


def _levers_line(plugin: Any, config: Any) -> str:
    """The config's `scale` section in one line, with how many blocks the levers act on."""
    import torch

    scale = config.scale
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        blocks = plugin.blocks(plugin.build(config))
    on = {True: "on", False: "off"}
    return (
        f"accumulate {scale.accumulate}, activation checkpointing {on[scale.activation_checkpointing]}, "
        f"shard {on[scale.shard]}, compile {on[scale.compile]}, precision {scale.precision}, adamw {scale.adamw}; "
        f"{len(blocks)} blocks (ModelPlugin.blocks)"
    )


def _field_descriptions(schema: type[pydantic.BaseModel], prefix: str = "") -> dict[str, str]:
    """{"a.b": description} for every leaf field."""
    found: dict[str, str] = {}
    for name, field in schema.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
            found.update(_field_descriptions(annotation, f"{prefix}{name}."))
        else:
            found[f"{prefix}{name}"] = field.description or ""
    return found
