"""The reference pages, generated from the code when the site is built (a mkdocs hook).

- `reference/config.md`: every field of every registered model's `Config` (nested sections
  flattened to `section.field`, as `--set` spells them) and `SampleOptions`, its presets,
  and every exporter's options, from the pydantic schemas;
- `reference/cli.md`: every `zoo` command and flag, from the argparse parser in `zoo/cli/`
  (the commands whose flags depend on the model print their own `--help`, captured);
- `reference/importers.md`: every importer of published checkpoints and the checkpoints
  `zoo pull` can fetch, from each importer's `checkpoints`;
- `reference/http.md`: the HTTP API, from the routes of `zoo.runtime.serve.app.create_app`
  and their handlers' docstrings.

The Python API page is mkdocstrings' (`docs/reference/python.md`). Nothing here downloads
anything or imports timm: loading the registry imports the plugins, which import torch only.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import io
import json
import os
import sys
import types
import typing
from pathlib import Path
from typing import Any

import pydantic

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "tiny_autoencoder"
GENERATED = "This page is generated from the code when the site is built (`docs/hooks/references.py`)."


def on_config(config: Any) -> Any:
    # The checkout's packages, whether or not it is the one installed; and the example
    # plugin, which the config reference documents beside the built-in ones.
    for path in (ROOT / "exporters", ROOT / "plugins", ROOT, EXAMPLE):
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))
    return config


def on_files(files: Any, config: Any) -> Any:
    from mkdocs.structure.files import File

    pages = {
        "reference/config.md": config_reference,
        "reference/cli.md": cli_reference,
        "reference/http.md": http_reference,
        "reference/importers.md": importers_reference,
    }
    for path, make in pages.items():
        files.append(File.generated(config, path, content=make()))
    return files


# -- markdown helpers --------------------------------------------------------------------------


def one_line(text: Any) -> str:
    """Table cell content: one line, pipes escaped (a table's separator even in code spans)."""
    return " ".join(str(text).split()).replace("|", "\\|")


def cell(text: Any) -> str:
    """Prose in a table cell: markdown's emphasis and HTML characters shown as written
    (`Linear(1024 -> 512*32*32)`, `timm:<model name>`)."""
    return one_line(text).replace("*", "\\*").replace("<", "&lt;")


def code(text: Any) -> str:
    return f"`{one_line(text)}`" if str(text) else ""


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return [*lines, ""]


# -- config fields -----------------------------------------------------------------------------


def type_name(annotation: Any) -> str:
    """`int`, `float | None`, `list[int]`, `"fp32" | "bf16"`: as a user writes the value."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(arg) for arg in typing.get_args(annotation))
    if origin is typing.Literal:
        return " | ".join(json.dumps(choice) for choice in typing.get_args(annotation))
    if origin is typing.Annotated:
        return type_name(typing.get_args(annotation)[0])
    if origin is not None:
        args = ", ".join(type_name(arg) for arg in typing.get_args(annotation))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    if annotation is type(None):
        return "None"
    return getattr(annotation, "__name__", str(annotation).replace("typing.", ""))


BOUNDS = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<", "min_length": "length >=", "max_length": "length <="}


def bounds(field: Any) -> str:
    parts = []
    for item in field.metadata:
        for name, symbol in BOUNDS.items():
            value = getattr(item, name, None)
            if value is not None:
                parts.append(f"{symbol} {value:,}" if isinstance(value, int) else f"{symbol} {value}")
    return ", ".join(parts)


def shown(value: Any) -> str:
    if isinstance(value, pydantic.BaseModel):
        value = value.model_dump(mode="json")
    if isinstance(value, Path):
        value = str(value)
    text = json.dumps(value, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


def is_section(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel)


def field_rows(schema: type[pydantic.BaseModel], prefix: str = "") -> list[list[str]]:
    """One row per leaf field; a nested section's fields follow under `section.`."""
    rows: list[list[str]] = []
    for name, field in schema.model_fields.items():
        if is_section(field.annotation):
            section = field.annotation
            rows.append([f"**`{prefix}{name}`**", "section", "", "", cell(field.description or "")])
            rows.extend(field_rows(section, f"{prefix}{name}."))
            continue
        default = field.get_default(call_default_factory=True)
        rows.append(
            [
                code(prefix + name),
                code(type_name(field.annotation)),
                code(shown(default)),
                cell(bounds(field)),
                cell(field.description or ""),
            ]
        )
    return rows


FIELD_HEADER = ["field", "type", "default", "bounds", "description"]


def option_rows(schema: type[pydantic.BaseModel]) -> list[list[str]]:
    rows = []
    for name, field in schema.model_fields.items():
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        flags = [f"--{name.replace('_', '-')}", *typing.cast("list[str]", extra.get("flags", []))]
        description = field.description or ""
        if extra.get("input") == "image":
            description += " (an image: a file path on the command line, a file part or data URI over HTTP)"
        default = field.get_default(call_default_factory=True)
        rows.append(
            [
                code(name),
                " ".join(code(flag) for flag in flags),
                code(type_name(field.annotation)),
                code(shown(default)),
                cell(bounds(field)),
                cell(description),
            ]
        )
    return rows


OPTION_HEADER = ["option", "flags", "type", "default", "bounds", "description"]


def example_registry() -> Any:
    """The built-in plugins and the example plugin, as `zoo` sees them once it is installed:
    a registry file names the example's module unless its entry point is installed."""
    import importlib.metadata
    import tempfile

    from zoo.registry import Registry

    installed = any(ep.name == "tiny_autoencoder" for ep in importlib.metadata.entry_points(group="zoo.plugins"))
    if installed:
        return Registry()
    with tempfile.TemporaryDirectory() as directory:
        registry_file = Path(directory) / "registry.yaml"
        registry_file.write_text("plugins: [zoo_tiny_autoencoder.plugin]\n")
        return Registry(registry_file)


def config_reference() -> str:
    registry = example_registry()
    lines = [
        "# Config and sample options",
        "",
        GENERATED,
        "",
        "Every field of every model's config, as `zoo train MODEL --set field=value` (nested "
        "sections: `--set section.field=value`) and `--config FILE.yaml` take it; a preset is a "
        "partial config over these defaults (`zoo info MODEL --preset P` prints the resolved one). "
        "Sample options are `zoo sample` / `zoo run` flags, the JSON fields of `POST "
        "/v1/models/NAME/sample`, and keywords of `Run.sample` and `LoadedExport.sample`.",
        "",
    ]
    for name in sorted(registry.models):
        plugin = registry.get(name)
        presets = registry.presets(name)
        lines += [f"## `{name}`", "", cell(plugin.description), ""]
        lines += [f"Config class `{plugin.Config.__module__}.{plugin.Config.__name__}`. Stages: "]
        default_config = plugin.Config.model_validate(presets.get(plugin.default_preset, {}))
        lines[-1] += ", ".join(f"`{stage}`" for stage in plugin.stage_names(default_config)) + "."
        lines += ["", f"### `{name}` presets", ""]
        rows = [
            [code(preset) + (" (default)" if preset == plugin.default_preset else ""), code(shown_preset(values))]
            for preset, values in presets.items()
        ]
        lines += table(["preset", "values over the defaults"], rows)
        lines += [f"### `{name}` config", ""]
        lines += table(FIELD_HEADER, field_rows(plugin.Config))
        options = plugin.SampleOptions
        lines += [f"### `{name}` sample options", "", f"`{options.__module__}.{options.__name__}`", ""]
        lines += table(OPTION_HEADER, option_rows(options))
    lines += ["## Exporters", ""]
    for format_name in sorted(registry.exporters):
        exporter = registry.get_exporter(format_name)
        doc = inspect.getdoc(exporter.Options) or ""
        lines += [f"### `{format_name}` export options", "", cell(doc), ""]
        lines += table(OPTION_HEADER, option_rows(exporter.Options))
    return "\n".join(lines) + "\n"


def shown_preset(values: dict[str, Any]) -> str:
    return json.dumps(values, default=str) if values else "{}"


# -- importers and published checkpoints ---------------------------------------------------------


def importers_reference() -> str:
    from zoo.registry import get_registry

    registry = get_registry()
    importers = [registry.importers[name].importer for name in sorted(registry.importers)]
    lines = [
        "# Importers and published checkpoints",
        "",
        GENERATED,
        "",
        "`zoo import MODEL FILE... --format FORMAT` converts the files each importer reads; "
        "`zoo pull NAME` downloads a checkpoint listed below and imports it "
        "([Published weights](../guides/weights.md)).",
        "",
        "## Importers",
        "",
    ]
    rows = [[code(importer.model), code(importer.format), cell(importer.description)] for importer in importers]
    lines += table(["model", "`--format`", "the files, and where they are published"], rows)
    lines += ["## Checkpoints `zoo pull` fetches", ""]
    rows = []
    for importer in importers:
        for checkpoint in importer.checkpoints:
            sources = "<br>".join(code(file.source) for file in checkpoint.files)
            rows.append(
                [
                    code(checkpoint.name),
                    code(importer.model),
                    code(checkpoint.preset or "-"),
                    cell(checkpoint.description),
                    cell(checkpoint.figure or "-"),
                    cell(checkpoint.licence),
                    sources,
                ]
            )
    lines += table(["name", "model", "preset", "what", "paper's figure", "licence", "files"], rows)
    lines += [
        "An importer without a row here reads files that are published with no stable address "
        "(for example, as Google Drive links): download them by hand and `zoo import` them.",
        "",
    ]
    return "\n".join(lines) + "\n"


# -- the CLI ------------------------------------------------------------------------------------


def subcommands(parser: argparse.ArgumentParser) -> tuple[dict[str, argparse.ArgumentParser], dict[str, str]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            return dict(action.choices), helps
    return {}, {}


def argument_rows(parser: argparse.ArgumentParser) -> list[list[str]]:
    rows = []
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        names = ", ".join(code(flag) for flag in action.option_strings) or code(action.metavar or action.dest)
        if action.option_strings and action.nargs != 0:
            names += " " + code(action.metavar or action.dest.upper())
        default = action.default
        shown_default = (
            "" if default in (None, False, argparse.SUPPRESS) or not action.option_strings else code(default)
        )
        choices = ", ".join(code(choice) for choice in action.choices) if action.choices else ""
        rows.append([names, cell(action.help or ""), choices, shown_default])
    return rows


def captured_help(argv: list[str]) -> str:
    """What `zoo ARGV` prints: the commands whose flags depend on the model build their
    parser when they run."""
    from zoo.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        main(argv)
    return out.getvalue()


def command_section(title: str, parser: argparse.ArgumentParser, help_text: str, pass_through: bool) -> list[str]:
    lines = [f"## `{title}`", "", cell(help_text), ""]
    if pass_through:
        command = title.split()[1:]
        lines += ["```text", captured_help([*command, "--help"]).rstrip(), "```", ""]
        if command == ["export"]:
            where = "the exporter's options, listed under [Exporters](config.md#exporters)"
        else:
            where = "the model's sample options, listed per model in the [config reference](config.md)"
        lines += [f"Its other flags are {where}, and by `{title} MODEL --help`.", ""]
        return lines
    lines += ["```text", parser.format_usage().removeprefix("usage: ").rstrip(), "```", ""]
    if parser.description:
        lines += [parser.description, ""]
    rows = argument_rows(parser)
    if rows:
        lines += table(["argument", "what", "choices", "default"], rows)
    if parser.epilog:
        lines += ["```text", parser.epilog.rstrip(), "```", ""]
    return lines


def cli_reference() -> str:
    from zoo.cli import PASS_THROUGH, build_parser

    os.environ["COLUMNS"] = "100"  # argparse wraps usage and help to the terminal's width: one width for the page
    parser = build_parser()
    lines = [
        "# Command line",
        "",
        GENERATED,
        "",
        "```text",
        parser.format_usage().removeprefix("usage: ").rstrip(),
        "```",
        "",
    ]
    lines += table(["argument", "what", "choices", "default"], argument_rows(parser))
    commands, helps = subcommands(parser)
    for name, sub in commands.items():
        nested, nested_helps = subcommands(sub)
        lines += command_section(f"zoo {name}", sub, helps[name], name in PASS_THROUGH)
        for action_name, action_parser in nested.items():
            lines += command_section(f"zoo {name} {action_name}", action_parser, nested_helps[action_name], False)
    return "\n".join(lines) + "\n"


# -- the HTTP API -------------------------------------------------------------------------------


def http_reference() -> str:
    from starlette.routing import Route

    from zoo.runtime.serve import access, app as app_module
    from zoo.runtime.serve.settings import ServeSettings

    # An app over no model: its routes and handlers are the same for every export served.
    app = app_module.create_app({}, ServeSettings(export_dirs=[Path("export")]))

    lines = [
        "# HTTP API",
        "",
        GENERATED,
        "",
        "`zoo serve EXPORT_DIR ...` serves each export under its directory's name with these routes "
        "(see [Deploy and serve](../guides/deploy.md) and the [flags](cli.md#zoo-serve)). A sample "
        "request's fields are the model's sample options, listed per model in the "
        "[config reference](config.md) and served as a JSON schema by `GET /v1/models`.",
        "",
    ]
    for route in app.routes:
        if not isinstance(route, Route):
            continue
        methods = " ".join(sorted((route.methods or set()) - {"HEAD"}))
        lines += [f"## `{methods} {route.path}`", "", inspect.getdoc(route.endpoint) or "", ""]
    lines += ["## Who may call", "", body_of(access), "", "## How a request is handled", "", body_of(app_module), ""]
    return "\n".join(lines) + "\n"


def body_of(module: types.ModuleType) -> str:
    """A module's docstring without its title line."""
    doc = inspect.getdoc(module) or ""
    return doc.partition("\n\n")[2] or doc
