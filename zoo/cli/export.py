"""`zoo export`: a trained run's graphs, validated against torch; its flags are the
exporter's Options."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from zoo.cli.common import add_subcommand, print_table
from zoo.cli.options import first_pass, parse_options, usage_without_positional
from zoo.exporter import DEFAULT_FORMAT as DEFAULT_EXPORT_FORMAT

EXPORT_EPILOG = """examples:
  zoo export var --out exports/var
  zoo export var --run runs/var-big --out exports/var-int8 --precision int8
  zoo export var --out exports/var --json           (MODEL --help: the exporter's options)"""


def register(commands: Any) -> None:
    export = add_subcommand(
        commands,
        "export",
        "export a trained run (ONNX by default; MODEL --help: options)",
        "Export a trained run.",
        EXPORT_EPILOG,
        add_help=False,
    )
    export.set_defaults(handler=cmd_export, needs_train=True)


def cmd_export(args: argparse.Namespace) -> None:
    """`zoo export MODEL [--format NAME] --out DIR [--run DIR] [the exporter's options]`:
    the exporter's flags come from its `Options` (`zoo export MODEL --format NAME --help`)."""
    from zoo.registry import get_registry

    registry = get_registry()
    common: dict[str, dict[str, Any]] = {
        "--format": {"default": DEFAULT_EXPORT_FORMAT, "help": "export format (`zoo plugins` lists the exporters)"},
        "--run": {"type": Path, "default": None, "help": "run directory (default: runs/MODEL)"},
        "--out": {"type": Path, "required": True, "help": "export directory"},
        "--json": {"action": "store_true", "help": "print the manifest as JSON"},
    }
    model, known = first_pass(args.rest, "model", common)
    description = "Export a trained run's graphs (ONNX by default), validated against torch."
    if model is None:
        usage_without_positional("zoo export", "MODEL", common, args.rest, description, EXPORT_EPILOG)
        return
    registry.get(model)  # an unknown model fails before the flags are read
    exporter = registry.get_exporter(known.format)
    common["--format"]["help"] = f"export format: {', '.join(sorted(registry.exporters))}"
    command, options = parse_options(
        exporter.Options,
        "zoo export",
        args.rest,
        common,
        what=f"{exporter.name} export option",
        positional=("model", "installed model (`zoo list`)"),
        description=description,
        epilog=EXPORT_EPILOG,
    )
    from zoo import api

    run = api.load_run(command["run"] or Path("runs") / model, model=model, device="cpu")
    components = run.plugin.component_names(run.config)
    if not command["json"]:  # a status line, so that a minute of exporting is not silence
        print(
            f"exporting {model} ({', '.join(components)}) to {command['out']} as {exporter.name}, "
            f"then validating every graph against torch; large models take minutes",
            flush=True,
        )
    manifest = run.export(command["out"], format=exporter.name, **options.model_dump(exclude_unset=True))
    if command["json"]:
        print(json.dumps({"export_dir": str(command["out"]), "manifest": manifest}, indent=2, default=str))
        return
    rows = exporter.summary(manifest)
    if rows:
        print_table(list(rows[0]), [list(row.values()) for row in rows])
    print(f"export directory: {command['out']}")
    for line in exporter.notes(manifest, command["out"], options):
        print(line)
