"""Shared fixtures. Tests run on one torch thread each (pytest-xdist runs two at a time)."""

from __future__ import annotations

import os
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
    return [sys.executable, "-m", "zoo", *args]
