"""Shared fixtures and helpers. Tests run on one torch thread each (pytest-xdist runs two
at a time), each in a temporary working directory, and the suite fails if it changed the
checkout (tests write into tmp_path, never into the tree)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "tiny_autoencoder"

os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_configure(config):
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass


# -- nothing writes into the checkout ---------------------------------------------------------


CHECKOUT_BEFORE = pytest.StashKey[dict[str, str] | None]()
CHECKOUT_CHANGED = pytest.StashKey[list[str]]()


def checkout_state() -> dict[str, str] | None:
    """Each changed or untracked, non-ignored path of the checkout (`git status --porcelain`)
    with a hash of its content, so that a file already edited before the run and written
    again during it counts too. None where ROOT is no git checkout of its own (an sdist)."""
    git = ["git", "-C", str(ROOT)]
    try:
        top = subprocess.run([*git, "rev-parse", "--show-toplevel"], capture_output=True, text=True, timeout=60)
        if top.returncode != 0 or Path(top.stdout.strip()).resolve() != ROOT:
            return None
        status = subprocess.run(
            [*git, "status", "--porcelain", "--untracked-files=all"],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):  # no git here
        return None
    state = {}
    for line in status.stdout.splitlines():  # "XY path" (or "XY old -> new", or a quoted path)
        path = ROOT / line[3:]
        state[line[3:]] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else line[:2]
    return state


def pytest_sessionstart(session):
    if not hasattr(session.config, "workerinput"):  # the xdist controller, or a run without xdist
        session.config.stash[CHECKOUT_BEFORE] = checkout_state()


@pytest.hookimpl(tryfirst=True)  # before the terminal reporter's summary, which prints the paths
def pytest_sessionfinish(session, exitstatus):
    before = session.config.stash.get(CHECKOUT_BEFORE, None)
    if before is None:
        return
    after = checkout_state() or {}
    changed = sorted({path for path, _ in before.items() ^ after.items()})
    if changed:
        session.config.stash[CHECKOUT_CHANGED] = changed
        if session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    changed = config.stash.get(CHECKOUT_CHANGED, [])
    if changed:
        terminalreporter.section("the tests changed the checkout", red=True, bold=True)
        terminalreporter.line(f"{len(changed)} path(s) under {ROOT} changed; tests must write into tmp_path:")
        for path in changed[:20]:
            terminalreporter.line(f"  {path}")


@pytest.fixture(autouse=True)
def temporary_working_directory(tmp_path_factory, monkeypatch) -> Path:
    """Every test runs in an empty directory of its own: a default output (runs/MODEL,
    MODEL_sample.png) of a CLI call lands there, never in the checkout."""
    directory = tmp_path_factory.mktemp("cwd")
    monkeypatch.chdir(directory)
    return directory


def write_entry_point_dist(site: Path) -> Path:
    """A real installed distribution (dist-info on a sys.path entry) for the example plugin."""
    dist_info = site / "zoo_tiny_autoencoder-0.1.0.dist-info"
    dist_info.mkdir(parents=True, exist_ok=True)
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: zoo-tiny-autoencoder\nVersion: 0.1.0\n")
    (dist_info / "entry_points.txt").write_text(
        "[zoo.plugins]\ntiny_autoencoder = zoo_tiny_autoencoder.plugin\n\n"
        "[zoo.runtimes]\ntiny_autoencoder = zoo_tiny_autoencoder.runtime:TinyAutoencoderRuntime\n"
    )
    return site


@pytest.fixture(scope="session")
def example_site(tmp_path_factory) -> Path:
    return write_entry_point_dist(tmp_path_factory.mktemp("site"))


@pytest.fixture
def example_plugin_env(example_site, monkeypatch):
    """The example plugin discoverable through its entry point, in this process and in subprocesses."""
    from zoo.registry import reset_registry

    for path in (str(EXAMPLE), str(example_site)):
        monkeypatch.syspath_prepend(path)
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(EXAMPLE), str(example_site), os.environ.get("PYTHONPATH", "")])
    )
    monkeypatch.delenv("ZOO_REGISTRY", raising=False)
    monkeypatch.setenv("ZOO_LOAD_PLUGINS", "tiny_autoencoder")  # the built-in plugins have their own tests
    reset_registry()
    yield
    reset_registry()


BLOCK_TORCH = """
import importlib.abc, sys

class BlockTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")
        return None

sys.meta_path.insert(0, BlockTorch())
"""
"""Python source that makes `import torch` fail: for proving the runtime needs no torch."""


def zoo_command(*args: str) -> list[str]:
    """`zoo ARGS` in a subprocess, as a user runs it."""
    return [sys.executable, "-m", "zoo", *args]


def cli(capsys, *args: str) -> tuple[int, str, str]:
    """`zoo ARGS` in this process -> exit code, stdout, stderr."""
    from zoo.cli import main

    try:
        main(list(args))
        code = 0
    except SystemExit as exit:
        code = exit.code or 0
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# A VAR of a few thousand parameters at 16 px (over the `digits` preset): four scales, ten classes.
TINY_VAR = {
    "tokenizer": {
        "resolution": 16,
        "channels": 8,
        "channel_multipliers": [1, 2, 2],
        "res_blocks": 1,
        "attention_resolutions": [],
        "code_dim": 8,
        "codebook_size": 32,
        "patch_nums": [1, 2, 3, 4],
    },
    "transformer": {"depth": 2, "width": 32, "heads": 2, "num_classes": 10},
}


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A run directory of the exporter tests' tiny plugin (tests/exporter/tiny_export_plugin.py),
    untrained: the tests that use it need its files, not its skill."""
    from tests.exporter.tiny_export_plugin import TinyPlugin
    from zoo.checkpoint import CONFIG_FILE, WEIGHTS_FILE, atomic_write_json, run_record, save_weights

    plugin = TinyPlugin()
    config = plugin.Config()
    run_dir = tmp_path_factory.mktemp("runs") / "tiny"
    save_weights(plugin.build(config), run_dir / WEIGHTS_FILE)
    atomic_write_json(
        run_dir / CONFIG_FILE, run_record(plugin.name, plugin.version, None, config.model_dump(mode="json"))
    )
    return run_dir
