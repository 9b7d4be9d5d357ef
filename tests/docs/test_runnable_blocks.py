"""Every code block that a page marks as runnable is run, so the docs cannot drift.

A page marks a block with the HTML comment `<!-- runnable -->` on the line before its
opening fence (invisible on GitHub and on the site). The marked blocks of one file run in
order, in one empty temporary directory, so a later block may use what an earlier one
wrote (a run directory, an export). `python` blocks run as a script in a subprocess;
`bash` and `sh` blocks run with `bash -e -o pipefail`, with `zoo` being this checkout's
command. The example plugin is installed for them (a real entry point), as its README's
first step does. A block fails the test when it exits non-zero.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import EXAMPLE, ROOT, write_entry_point_dist

MARKER = "<!-- runnable -->"
FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>```+|~~~+)\s*(?P<lang>[\w+-]*)")
LANGUAGES = {"python", "bash", "sh"}
BLOCK_TIMEOUT = 300  # seconds: a marked block takes a few; this only stops one that hangs


@dataclass(frozen=True)
class Block:
    source: str  # the file, relative to the checkout
    line: int  # of the opening fence, 1-based
    language: str
    code: str

    def __str__(self) -> str:
        return f"{self.source}:{self.line} ({self.language})"


def documentation_files() -> list[Path]:
    """The README, every page of the site, and each example's README."""
    pages = sorted(path for path in (ROOT / "docs").rglob("*.md"))
    return [ROOT / "README.md", *pages, *sorted(ROOT.glob("examples/*/README.md"))]


def runnable_blocks(path: Path) -> list[Block]:
    return parse_blocks(str(path.relative_to(ROOT)), path.read_text(encoding="utf-8"))


def parse_blocks(source: str, text: str) -> list[Block]:
    """The marked blocks of one file; a marker not followed by a fenced block is an error.
    A marker inside a fenced block (a page showing the marker) is text, not a marker."""
    lines = text.splitlines()
    blocks: list[Block] = []
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if opening is not None:  # an unmarked block: skip it whole
            index = closing_line(lines, index, opening) + 1
            continue
        if lines[index].strip() != MARKER:
            index += 1
            continue
        where = f"{source}:{index + 1}"
        opening = FENCE.match(lines[index + 1]) if index + 1 < len(lines) else None
        if opening is None:
            raise ValueError(f"{where}: {MARKER} must stand on the line right before a code fence")
        language = opening["lang"]
        if language not in LANGUAGES:
            raise ValueError(f"{where}: a runnable block is one of {sorted(LANGUAGES)}, not {language!r}")
        end = closing_line(lines, index + 1, opening)
        if end == len(lines):
            raise ValueError(f"{where}: the runnable block is never closed")
        body = [line.removeprefix(opening["indent"]) for line in lines[index + 2 : end]]
        blocks.append(Block(source, index + 2, language, "\n".join(body) + "\n"))
        index = end + 1
    return blocks


def closing_line(lines: list[str], start: int, opening: re.Match[str]) -> int:
    """The index of the fence that closes the block opened at `start` (len(lines): none)."""
    fence = opening["fence"]
    for end in range(start + 1, len(lines)):
        stripped = lines[end].strip()
        if stripped.startswith(fence) and not stripped.strip(fence[0]):
            return end
    return len(lines)


FILES_WITH_BLOCKS = [path for path in documentation_files() if runnable_blocks(path)]


def test_the_docs_mark_blocks_as_runnable() -> None:
    """The README, the example's tutorial and the site's pages each have runnable blocks."""
    names = {str(path.relative_to(ROOT)) for path in FILES_WITH_BLOCKS}
    assert {"README.md", "examples/tiny_autoencoder/README.md", "docs/getting-started.md"} <= names, names


def test_a_marker_without_a_block_is_refused() -> None:
    with pytest.raises(ValueError, match="right before a code fence"):
        parse_blocks("page.md", f"{MARKER}\nno fence here\n")


def test_a_marker_shown_inside_a_block_is_not_one() -> None:
    text = f"````markdown\n{MARKER}\n```bash\nzoo list\n```\n````\n"
    assert parse_blocks("page.md", text) == []


def test_a_marked_block_is_read_whole() -> None:
    text = f"intro\n{MARKER}\n```bash\nzoo list\n\nzoo plugins\n```\n\n```bash\nnot marked\n```\n"
    (block,) = parse_blocks("page.md", text)
    assert (block.line, block.language, block.code) == (3, "bash", "zoo list\n\nzoo plugins\n")


@pytest.fixture(scope="module")
def docs_environment(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """This checkout's `zoo` (this interpreter, this source tree) with the example plugin installed."""
    site = write_entry_point_dist(tmp_path_factory.mktemp("site"))
    bin_dir = tmp_path_factory.mktemp("bin")
    shim = bin_dir / "zoo"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m zoo "$@"\n')
    shim.chmod(0o755)
    (bin_dir / "python").symlink_to(sys.executable)
    paths = [ROOT, ROOT / "plugins", ROOT / "exporters", EXAMPLE, site]
    env = {key: value for key, value in os.environ.items() if not key.startswith("ZOO_")}
    env["PYTHONPATH"] = os.pathsep.join([*map(str, paths), os.environ.get("PYTHONPATH", "")])
    env["PATH"] = os.pathsep.join([str(bin_dir), os.environ.get("PATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    return env


@pytest.mark.parametrize("path", FILES_WITH_BLOCKS, ids=lambda path: str(path.relative_to(ROOT)))
def test_runnable_blocks_run(path: Path, docs_environment: dict[str, str], tmp_path: Path) -> None:
    for block in runnable_blocks(path):
        if block.language == "python":
            script = tmp_path / f"block_{block.line}.py"
            script.write_text(block.code)
            command = [sys.executable, str(script)]
        else:
            command = ["bash", "-e", "-o", "pipefail", "-c", block.code]
        done = subprocess.run(
            command, cwd=tmp_path, env=docs_environment, capture_output=True, text=True, timeout=BLOCK_TIMEOUT
        )
        assert done.returncode == 0, f"{block} exited {done.returncode}:\n{block.code}\n{done.stdout}\n{done.stderr}"
