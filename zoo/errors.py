"""Errors a user can cause. The CLI prints them as one line and exits non-zero."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from pathlib import Path


class ZooError(Exception):
    """Base of every error whose message tells the user what to do.

    The message speaks Python (`resume=True`, `overrides={...}`): what a caller of the API
    reads. Where the fix is spelled differently on the command line, `cli` holds that
    wording (`--resume`, `--set`); the CLI prints `error.cli_message`.
    """

    def __init__(self, message: str = "", *, cli: str | None = None) -> None:
        super().__init__(message)
        self.cli_message = cli if cli is not None else message


class UnknownNameError(ZooError):
    """A model, preset, stage or component name that does not exist."""

    def __init__(self, kind: str, name: str, known: Iterable[str]) -> None:
        known = sorted(known)
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        listing = ", ".join(known) if known else "none"
        super().__init__(f"unknown {kind} {name!r}.{hint} Known: {listing}.")


class ConfigError(ZooError):
    """A config value that fails validation."""


class PluginError(ZooError):
    """A plugin that cannot be loaded or that conflicts with another."""


class RunError(ZooError):
    """A run directory that is missing, corrupt or belongs to another model."""


class DataError(ZooError):
    """A data set that cannot be read or is empty."""


class ExportError(ZooError):
    """An export that fails, or an export directory that is incomplete or tampered with."""


class TrainingError(ZooError):
    """A training run that has to stop (non-finite loss, bad stage selection)."""


def first_line(error: BaseException, limit: int = 200, *, with_type: bool = False) -> str:
    """The first line of `error`'s message, at most `limit` characters (its type's name if the
    message is empty): another library's exception inside a one-line error. `with_type`
    puts the type's name in front (`ValueError: ...`) where the message alone would not say
    what failed."""
    lines = str(error).strip().splitlines()
    if not lines:
        return type(error).__name__
    return f"{type(error).__name__}: {lines[0][:limit]}" if with_type else lines[0][:limit]


def not_there(path: Path, want: str = "file") -> str:
    """Why `path` is not the `want` ("file" or "directory") asked for: "does not exist" only
    when nothing is there. A path that cannot be looked at (a folder on the way without
    permission) raises PermissionError here, which the CLI prints as "Permission denied"."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return "does not exist"
    if path.is_symlink() and not path.exists():
        return "is a broken symbolic link"
    found = "directory" if path.is_dir() else "file" if path.is_file() else "special file"
    return f"is a {found}, not a {want}"
