"""Exports of the tiny test plugin, made once per session and shared by the exporter tests
(a dynamo export of its three components takes a few seconds)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.exporter.tiny_export_plugin import TinyPlugin


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
