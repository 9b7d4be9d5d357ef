"""Exports of the tiny test plugin, made once per session and shared by the exporter tests
(a dynamo export of its three components takes a few seconds). The plugin's runtime is
installed for them as a real plugin's is: a `zoo.runtimes` entry point."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.exporter.tiny_export_plugin import TinyPlugin

TINY_RUNTIME = "tests.exporter.tiny_export_runtime:TinyRuntime"


@pytest.fixture(scope="session", autouse=True)
def tiny_runtime_installed(tmp_path_factory):
    """A dist-info declaring the tiny runtime, on sys.path here and in subprocesses."""
    site = tmp_path_factory.mktemp("tiny_site")
    dist_info = site / "zoo_tiny_export_test-0.0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: zoo-tiny-export-test\nVersion: 0.0.1\n")
    (dist_info / "entry_points.txt").write_text(f"[zoo.runtimes]\ntiny = {TINY_RUNTIME}\n")
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(site))
        # no empty entry: it would put the working directory on subprocesses' sys.path
        entries = [str(ROOT), str(site), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
        patch.setenv("PYTHONPATH", os.pathsep.join(entries))
        yield site


@pytest.fixture(scope="session")
def tiny():
    plugin = TinyPlugin()
    config = plugin.Config()
    return plugin, config, plugin.build(config)


def _export(tiny, tmp_path_factory, precision: str) -> tuple[Path, dict]:
    from zoo_onnx import export_model

    plugin, config, model = tiny
    out_dir = tmp_path_factory.mktemp(f"export_{precision}") / "tiny"
    return out_dir, export_model(plugin, model, config, out_dir, precision=precision)


@pytest.fixture(scope="session")
def fp32_export(tiny, tmp_path_factory):
    return _export(tiny, tmp_path_factory, "fp32")


@pytest.fixture(scope="session")
def fp16_export(tiny, tmp_path_factory):
    return _export(tiny, tmp_path_factory, "fp16")


@pytest.fixture(scope="session")
def int8_export(tiny, tmp_path_factory):
    return _export(tiny, tmp_path_factory, "int8")


@pytest.fixture
def export_copy(fp32_export, tmp_path) -> Path:
    """A private copy of the fp32 export, for tests that tamper with it."""
    copy = tmp_path / "tiny"
    shutil.copytree(fp32_export[0], copy)
    return copy
