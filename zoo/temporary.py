"""Temporary folders zoo writes beside their destination, recorded by name, so that what a
killed write leaves is removed later and nothing else ever is (no pattern that a user's
`.tmpfoo` could match).

A write makes a fresh folder `DIR/STEM.zoo-XXXXXXXX` (random), after appending that name
to `DIR/.zoo-temporary`; the file is written inside it (a library's own temp file, like
safetensors', lands there too) and renamed to its destination; the folder and its line
go when the write ends. `remove_recorded(DIR)` deletes the folders the register names,
and the register. A line lost to two processes rewriting the register at once costs a
leftover kept, never a file deleted: a name is only ever added before its folder exists.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REGISTER = ".zoo-temporary"
# what `new_name` makes: a register line of another shape (cut short by a kill) is ignored
_NAME = re.compile(r"(?P<stem>[^/\\]+)\.zoo(?:-(?P<kind>[a-z]+))?-[0-9a-f]{8}")


def new_name(stem: str, kind: str = "") -> str:
    """`STEM.zoo-XXXXXXXX`, or `STEM.zoo-KIND-XXXXXXXX` for a second kind of name beside
    the same destination (an old export set aside): no stem of one kind makes the other."""
    return f"{stem}.zoo{f'-{kind}' if kind else ''}-{secrets.token_hex(4)}"


def record(directory: Path, name: str) -> None:
    """Add `name` to the register of `directory` (created) before anything of that name exists."""
    directory.mkdir(parents=True, exist_ok=True)
    handle = os.open(directory / REGISTER, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        os.write(handle, f"{name}\n".encode())
    finally:
        os.close(handle)


def recorded(directory: Path, stem: str | None = None, kind: str = "") -> list[str]:
    """The names in the register of `directory` (those made from `stem` and `kind`, if given)."""
    try:
        lines = (directory / REGISTER).read_text().splitlines()
    except FileNotFoundError:
        return []
    names = []
    for line in lines:
        match = _NAME.fullmatch(line)
        if match and (stem is None or (match["stem"], match["kind"] or "") == (stem, kind)) and line not in names:
            names.append(line)
    return names


def forget(directory: Path, name: str) -> None:
    """Drop `name` from the register; drop the register when nothing is left in it."""
    path = directory / REGISTER
    rest = [line for line in recorded(directory) if line != name]
    try:
        if rest:
            path.write_text("".join(f"{line}\n" for line in rest))
        else:
            path.unlink(missing_ok=True)
    except OSError:
        pass  # a register we cannot rewrite keeps a finished name: removing it later is a no-op


def remove(directory: Path, name: str) -> None:
    """Delete the recorded `name` in `directory` (a folder zoo made, or a file), then its line."""
    path = directory / name
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
    if not path.exists():
        forget(directory, name)


def remove_recorded(directory: Path) -> None:
    """Delete what killed writes left in `directory`: only names its register holds. Call it
    where no live writer is at work (the trainer holds the run's lock)."""
    for name in recorded(directory):
        remove(directory, name)


@contextmanager
def temporary_folder(directory: Path, stem: str) -> Iterator[Path]:
    """A fresh, recorded folder `directory/STEM.zoo-XXXXXXXX`, deleted (whatever it then
    holds) with its line when the block ends. Renaming it away inside the block keeps it."""
    directory.mkdir(parents=True, exist_ok=True)
    name = new_name(stem)
    record(directory, name)
    try:
        (directory / name).mkdir()
        yield directory / name
    finally:
        remove(directory, name)
