# PYTHON_ARGCOMPLETE_OK
"""`zoo list | plugins | info | data | train | sample | eval | export | import | pull | run | serve | report | keygen`.

A thin layer over `zoo.api`; torch is imported only by the commands that need it, so
`zoo run` and `zoo serve` work from the torch-free base install. There, the commands that
need the `train` extra say so in one line, and `zoo list` / `zoo plugins` show the
installed sampling loops. Errors users cause, and errors of the disk (full, read-only, a
file where a folder should be), print as one line, in the CLI's wording
(`ZooError.cli_message`: `--resume`, where the API's says `resume=True`).

One module per command (`list` and `plugins` share `catalogue`), each declaring its
sub-parser (`register`) next to its handler; `common` holds what they share (the help
layout, tables, one-line errors and warnings, completion). `sample`, `run` and `export`
take options that depend on the model (or exporter): their arguments are parsed in two
passes (`options`), so every flag may come before or after the positional argument.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from zoo.cli import (
    catalogue,
    data,
    evaluate,
    export,
    importing,
    info,
    keygen,
    pull,
    report,
    run,
    sample,
    serve,
    train,
)
from zoo.cli.common import command_parser, enable_completion, one_line_errors, show_warning
from zoo.cli.options import parse_options as parse_options
from zoo.extras import require_train
from zoo.version import __version__

# The sub-parsers in the order `zoo --help` lists them.
REGISTER = (
    catalogue.register,  # list, plugins
    info.register,
    data.register,  # pack, info
    train.register,
    sample.register,
    evaluate.register,
    export.register,
    run.register,
    report.register,
    importing.register,
    pull.register,
    serve.register,
    keygen.register,
)

# Commands whose flags depend on the model or exporter: argparse hands them the rest of the line.
PASS_THROUGH = {"sample", "run", "export"}


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(
        "zoo",
        "A model zoo for discrete-latent image generation: train, sample, evaluate, export, report.",
        "examples:\n  zoo list\n  zoo train var\n  zoo report runs/var\n  zoo COMMAND --help",
    )
    parser.add_argument("--version", action="version", version=f"zoo {__version__}")
    parser.add_argument("--registry", type=Path, help="user registry file (also $ZOO_REGISTRY)")
    parser.add_argument("--strict", action="store_true", help="fail when a plugin fails to load (also $ZOO_STRICT=1)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", help="`zoo COMMAND --help` for its flags")
    for register in REGISTER:
        register(commands)
    return parser


def split_pass_through(argv: list[str]) -> tuple[list[str], list[str]]:
    """`[global flags] COMMAND rest`: for sample/run/export, argparse reads up to COMMAND
    and the command reads the rest itself."""
    index = 0
    while index < len(argv):
        item = argv[index]
        if item == "--registry":
            index += 2
        elif item.startswith("--registry=") or item == "--strict":
            index += 1
        else:
            break
    if index < len(argv) and argv[index] in PASS_THROUGH:
        return argv[: index + 1], argv[index + 1 :]
    return argv, []


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    enable_completion(parser)
    argv = list(sys.argv[1:] if argv is None else argv)
    head, rest = split_pass_through(argv)
    args = parser.parse_args(head)
    args.rest, args.argv = rest, argv
    if args.command is None:  # bare `zoo`: the help, not a usage error
        parser.print_help()
        return
    warnings.showwarning = show_warning
    with one_line_errors():
        if getattr(args, "needs_train", False):
            require_train(f"zoo {args.command}")
        if args.strict or args.registry:
            require_train("zoo --registry/--strict")  # the registry loads plugin modules, which import torch
            from zoo.registry import configure_registry

            configure_registry(args.registry, args.strict)
        args.handler(args)


if __name__ == "__main__":
    main()
