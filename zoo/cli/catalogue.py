"""`zoo list` and `zoo plugins`: what is installed. In the torch-free base install, where
plugin modules cannot be imported, both list the sampling loops the installed plugins
declare."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from zoo.cli.common import add_subcommand, default_config, print_table
from zoo.extras import TRAIN_INSTALL, missing_train_modules


def register(commands: Any) -> None:
    listing = add_subcommand(
        commands,
        "list",
        "models, their presets, stages and components",
        "The installed models; PATTERN is a shell glob on the model name.",
        "examples:\n  zoo list\n  zoo list 'v*' --json",
    )
    listing.add_argument("pattern", nargs="?", help="glob on model names, e.g. 'v*'")
    listing.add_argument("--json", action="store_true", help="print the rows as JSON")
    listing.set_defaults(handler=cmd_list)

    plugins = add_subcommand(
        commands,
        "plugins",
        "loaded plugins and the ones that failed",
        "Every plugin module found (entry points, registry files), with its models, exporters and status.",
        "examples:\n  zoo plugins\n  zoo plugins --json",
    )
    plugins.add_argument("--json", action="store_true", help="print the plugins as JSON")
    plugins.set_defaults(handler=cmd_plugins)


def cmd_list(args: argparse.Namespace) -> None:
    if missing_train_modules():
        _list_runtimes(args)
        return
    from zoo.api import list_models
    from zoo.registry import get_registry

    registry = get_registry()
    rows: list[dict[str, Any]] = []
    for name in list_models(args.pattern):
        entry = registry.models[name]
        plugin = entry.plugin
        presets = registry.presets(name)
        _, config = default_config(name)
        rows.append(
            {
                "name": name,
                "plugin": entry.module,
                "source": entry.source,
                "version": plugin.version,
                "presets": list(presets),
                "default_preset": plugin.default_preset,
                "stages": plugin.stage_names(config),
                "components": plugin.component_names(config),
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    if not rows and args.pattern:
        print(f"no model matches {args.pattern!r}; installed: {', '.join(sorted(registry.models))}", file=sys.stderr)
    print_table(
        ["model", "version", "presets", "stages", "components", "source"],
        [
            [
                r["name"],
                r["version"],
                ", ".join(r["presets"]),
                ", ".join(r["stages"]),
                ", ".join(r["components"]),
                r["source"],
            ]
            for r in rows
        ],
    )
    _report_failures(registry)


def cmd_plugins(args: argparse.Namespace) -> None:
    if missing_train_modules():
        _list_runtimes(args)
        return
    from zoo.registry import get_registry

    registry = get_registry()
    infos = [vars(info) for info in registry.plugins.values()]
    if args.json:
        print(json.dumps(infos, indent=2))
        return
    print_table(
        ["plugin", "version", "models", "exporters", "source", "status"],
        [
            [
                i["name"],
                i["version"] or "",
                ", ".join(i["models"]),
                ", ".join(i["exporters"]),
                i["source"],
                _plugin_status(i),
            ]
            for i in infos
        ],
    )


def _list_runtimes(args: argparse.Namespace) -> None:
    """`zoo list` / `zoo plugins` of the runtime-only install: plugin modules import torch,
    so only the sampling loops the installed plugins declare are listed."""
    from zoo.runtime_entry_points import installed_runtimes

    runtimes = installed_runtimes()
    if args.json:
        print(json.dumps([{"name": model, "runtimes": targets} for model, targets in runtimes.items()], indent=2))
        return
    print(f"runtime-only install: `zoo run` and `zoo serve` run exports of {', '.join(runtimes) or 'no model'}")
    for model, targets in runtimes.items():
        print(f"  {model}: {', '.join(targets)}")
    print(f"to train, sample from runs, evaluate, export or import: {TRAIN_INSTALL}")


def _plugin_status(info: dict[str, Any]) -> str:
    if info["error"]:
        return f"FAILED: {info['error']}"
    return "; ".join(f"warning: {w}" for w in info["warnings"]) or "ok"


def _report_failures(registry) -> None:
    for info in registry.failures:
        print(f"warning: plugin {info.name} ({info.source}) failed to load: {info.error}", file=sys.stderr)
    for info in registry.plugins.values():
        for warning in info.warnings:
            print(f"warning: plugin {info.name} ({info.source}): {warning}", file=sys.stderr)
