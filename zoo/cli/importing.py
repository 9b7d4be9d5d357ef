"""`zoo import`: published checkpoint files of a model -> a run directory."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zoo.cli.common import add_subcommand, describe_fields

if TYPE_CHECKING:
    from zoo.importing import ImportedRun


def register(commands: Any) -> None:
    importing = add_subcommand(
        commands,
        "import",
        "published checkpoints -> a run directory",
        "Convert published checkpoint files of MODEL into a run directory (config inferred from the "
        "tensors). Files are read without running code they contain.",
        "example:\n  zoo import var vae_ch160v4096z32.pth var_d16.pth --out runs/var-d16",
    )
    importing.add_argument("model", help="installed model (`zoo list`)")
    importing.add_argument("files", nargs="+", type=Path, metavar="FILE", help="published checkpoint files")
    importing.add_argument("--out", type=Path, help="run directory to create (default: runs/MODEL)")
    importing.add_argument("--preset", help="the preset the files must match (default: inferred)")
    importing.add_argument("--format", help="published format, if the model has importers for several")
    importing.add_argument("--json", action="store_true", help="print the result as JSON")
    importing.set_defaults(handler=cmd_import, needs_train=True)


def cmd_import(args: argparse.Namespace) -> None:
    from zoo.importing import import_checkpoint

    out = args.out or Path("runs") / args.model
    imported = import_checkpoint(args.model, args.files, out, preset=args.preset, format=args.format)
    show_imported(imported, args.model, args.json)


def show_imported(imported: ImportedRun, model: str, as_json: bool) -> None:
    """The inferred config, the importer's notes and what to run next (or all of it as JSON)."""
    if as_json:
        print(
            json.dumps(
                {
                    "run_dir": str(imported.run_dir),
                    "preset": imported.preset,
                    "notes": imported.notes,
                    "config": imported.config.model_dump(mode="json"),
                },
                indent=2,
            )
        )
        return
    matched = f"matches preset {imported.preset!r}" if imported.preset else "matches no preset"
    print(f"config inferred from the files ({matched}):")
    for line in describe_fields(type(imported.config), imported.config.model_dump()):
        print(f"  {line}")
    for note in imported.notes:
        print(f"note: {note}")
    print(f"run directory: {imported.run_dir}")
    print(
        f"next: zoo sample {model} --run {imported.run_dir}  |  zoo export {model} --run "
        f"{imported.run_dir} --out exports/{imported.run_dir.name}"
    )
