"""The plumbing every `zoo` command shares: the help layout, sub-parsers, tables, the
one-line errors and warnings, shell completion."""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

import pydantic

from zoo.errors import ZooError


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every flag's default after its help (unless the help already says it, or there is
    none to say); descriptions and example epilogs kept as written."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if "default" in text or default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


def command_parser(prog: str, description: str | None = None, epilog: str | None = None, **kwargs: Any):
    return argparse.ArgumentParser(
        prog=prog, description=description, epilog=epilog, formatter_class=HelpFormatter, **kwargs
    )


def add_subcommand(commands: Any, name: str, help: str, description: str, epilog: str, **kwargs: Any):
    return commands.add_parser(
        name, help=help, description=description, epilog=epilog, formatter_class=HelpFormatter, **kwargs
    )


@contextmanager
def one_line_errors() -> Iterator[None]:
    """Run a command: errors users cause, and errors of the disk (full, read-only, a file
    where a folder should be), print as one line in the CLI's wording (`ZooError.cli_message`)
    and exit 1; a closed pipe exits as SIGPIPE would, Ctrl-C with 130."""
    try:
        yield
        sys.stdout.flush()  # a closed pipe shows here, inside the handler below
    except BrokenPipeError:
        # `zoo info var | head -1`: the reader left. Python's advice: point stdout at devnull
        # so the interpreter's final flush does not fail again, and exit as SIGPIPE would.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(141)
    except ZooError as error:
        print(f"error: {error.cli_message}", file=sys.stderr)
        sys.exit(1)
    except OSError as error:
        print(f"error: {describe_os_error(error)}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


# A write that fails for these is the disk's doing, whatever the path.
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}


def describe_os_error(error: OSError) -> str:
    """`cannot write PATH: No space left on device`: the path and the reason, no traceback."""
    verb = "cannot write" if error.errno in WRITE_ERRNOS else "cannot access"
    where = f" {error.filename}" if error.filename else ""
    return f"{verb}{where}: {error.strerror or error}"


def show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    """Warnings (a renamed config field, an option's old value) as one line, like errors."""
    print(f"warning: {message}", file=sys.stderr)


def enable_completion(parser: argparse.ArgumentParser) -> None:
    """Shell completion (bash, zsh) when argcomplete is installed and the shell asks:
    `eval "$(register-python-argcomplete zoo)"`. Costs nothing otherwise."""
    if "_ARGCOMPLETE" not in os.environ:
        return
    try:
        import argcomplete
    except ImportError:
        return
    argcomplete.autocomplete(parser)


def int_in(low: int, high: int | None = None) -> Any:
    """An argparse type: a whole number in [low, high] (no upper end when high is None)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low or (high is not None and value > high):
            where = f"at least {low}" if high is None else f"from {low} to {high}"
            raise argparse.ArgumentTypeError(f"must be {where}, got {value}")
        return value

    return parse


def positive_float(text: str) -> float:
    """An argparse type: a finite number above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number above 0, got {text}")
    return value


# what commands print -----------------------------------------------------------------------


def default_config(model: str, preset: str | None = None):
    from zoo.api import resolve_config

    _, preset_name, config = resolve_config(model, preset)
    return preset_name, config


def describe_fields(schema: type[pydantic.BaseModel], values: dict[str, Any], prefix: str = "") -> list[str]:
    lines = []
    for name, field in schema.model_fields.items():
        value = values.get(name)
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
            lines.extend(describe_fields(annotation, value or {}, f"{prefix}{name}."))
            continue
        type_name = getattr(annotation, "__name__", str(annotation)).replace("typing.", "")
        lines.append(f"{prefix}{name}: {type_name} = {json.dumps(value)}  {field.description or ''}")
    return lines


def emit(output, out: Path, as_json: bool = False) -> None:
    output.save(out)
    if as_json:
        written = {"out": str(out) if output.images is not None else None, "texts": output.texts}
        if output.images is not None:
            written["images"] = len(output.images)
        if output.texts is not None:
            written["texts_file"] = str(out if output.images is None else out.with_suffix(".txt"))
        print(json.dumps(written))
        return
    if output.texts:
        for text in output.texts:
            print(text)
    if output.images is not None:
        print(f"wrote {out}")


def print_table(header: list[str], rows: list[list[str]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(*header)
    for row in rows:
        table.add_row(*[str(cell) for cell in row])
    # Piped output is read by people and scripts alike: do not truncate cells to 80 columns.
    Console(width=None if sys.stdout.isatty() else 200).print(table)
