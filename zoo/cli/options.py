"""Flags that depend on the model or exporter: `sample`, `run` and `export` read their own
flags and the MODEL / EXPORT_DIR first (`first_pass`), then everything with the model's
(or exporter's) options as flags made from its pydantic schema (`parse_options`), so every
flag may come before or after the positional argument."""

from __future__ import annotations

import argparse
import types
import typing
from pathlib import Path
from typing import Any, cast

import pydantic

from zoo.cli.common import command_parser
from zoo.config import validate


def flag_type(annotation: Any) -> tuple[Any, dict[str, Any]]:
    """argparse keyword arguments for a pydantic field annotation."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(annotation) if a is not type(None)]
        return flag_type(inner[0]) if len(inner) == 1 else (str, {})
    if origin is typing.Literal:
        choices = typing.get_args(annotation)
        return type(choices[0]), {"choices": choices}
    if origin in (list, tuple, set):
        args = typing.get_args(annotation)
        item_type, extra = flag_type(args[0] if args else str)
        return item_type, {**extra, "nargs": "+"}
    if annotation is bool:
        return bool, {"action": argparse.BooleanOptionalAction}
    if annotation in (int, float, str):
        return annotation, {}
    if annotation is Path:
        return str, {}
    return str, {}


def add_option_flags(
    parser: argparse.ArgumentParser, schema: type[pydantic.BaseModel], title: str = "sample options"
) -> None:
    """One flag per field (`top_k` -> `--top-k`, plus aliases from json_schema_extra)."""
    group = parser.add_argument_group(title)
    for name, field in schema.model_fields.items():
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        aliases = cast("list[str]", extra.get("flags", []))  # json_schema_extra={"flags": [...]}: strings
        flags = [f"--{name.replace('_', '-')}", *aliases]
        value_type, kwargs = flag_type(field.annotation)
        if "action" not in kwargs:
            kwargs["type"] = value_type
        default = field.get_default(call_default_factory=True)
        group.add_argument(
            *flags,
            dest=name,
            default=argparse.SUPPRESS,
            help=f"{field.description or ''} (default: {default})",
            **kwargs,
        )


def add_flags(parser: argparse.ArgumentParser, common: dict[str, dict[str, Any]]) -> None:
    for flag, kwargs in common.items():
        parser.add_argument(flag, **kwargs)


def first_pass(
    argv: list[str], positional: str, common: dict[str, dict[str, Any]]
) -> tuple[str | None, argparse.Namespace]:
    """The positional argument (MODEL, EXPORT_DIR) wherever it stands among the command's
    own flags; model options (unknown here) must follow it."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    add_flags(parser, {flag: {k: v for k, v in kw.items() if k != "required"} for flag, kw in common.items()})
    parser.add_argument(positional, nargs="?")
    known, _ = parser.parse_known_args(argv)
    return getattr(known, positional), known


def parse_options(
    schema: type[pydantic.BaseModel],
    prog: str,
    argv: list[str],
    common: dict[str, dict[str, Any]],
    what: str = "sample option",
    positional: tuple[str, str] | None = None,
    description: str | None = None,
    epilog: str | None = None,
) -> tuple[dict[str, Any], Any]:
    """Parse the command's own flags, its positional argument (`(dest, help)`, consumed
    wherever it stands) and the model's (or exporter's) options; validate the options."""
    parser = command_parser(prog, description, epilog, allow_abbrev=False)
    if positional is not None:
        parser.add_argument(positional[0], help=positional[1])
    add_flags(parser, common)
    add_option_flags(parser, schema, title=f"{what}s")
    namespace = vars(parser.parse_intermixed_args(argv))
    own = {key.lstrip("-").replace("-", "_") for key in common} | ({positional[0]} if positional else set())
    command_args = {k: v for k, v in namespace.items() if k in own}
    options = validate(schema, {k: v for k, v in namespace.items() if k not in own}, what=what)
    return command_args, options


def usage_without_positional(
    prog: str, positional: str, common: dict[str, dict[str, Any]], argv: list[str], description: str, epilog: str
) -> None:
    parser = command_parser(prog, description, epilog)
    what = "export directory (`zoo export MODEL --out DIR`)" if positional == "EXPORT_DIR" else "installed model"
    parser.add_argument(
        positional.lower(),
        metavar=positional,
        help=f"{what}; `zoo {prog.split()[-1]} {positional} --help` lists its options too",
    )
    add_flags(parser, common)
    if "-h" in argv or "--help" in argv:
        parser.print_help()
        return
    parser.error(f"the following arguments are required: {positional}")
