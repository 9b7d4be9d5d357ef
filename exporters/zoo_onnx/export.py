"""`export_model`: a plugin's components -> a validated export directory."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

import torch

from zoo.config import ZooConfig
from zoo.errors import ConfigError, ExportError, UnknownNameError
from zoo.plugin import Component, ModelPlugin
from zoo.runtime.manifest import MANIFEST_NAME
from zoo_onnx.manifest import build_manifest, component_entry, write_assets, write_manifest
from zoo_onnx.precision import PRECISIONS, PRECISION_BOUNDS, convert_precision
from zoo_onnx.trace import DEFAULT_OPSET, check_graph, finish_graph, trace_component
from zoo_onnx.validate import VALIDATION_PROVIDER, VALIDATION_SIZES, validate_component

COMPONENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # becomes a file name


def export_model(
    plugin: ModelPlugin,
    model: torch.nn.Module,
    config: ZooConfig,
    out_dir: str | Path,
    opset: int | None = None,
    precision: str = "fp32",
    components: list[str] | None = None,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Export the plugin's components (all, or those named) to `out_dir` and return the
    manifest written there.

    Each component is traced on `make_inputs(0)`, converted to `precision`, checked with
    onnx.checker and validated against torch on `make_inputs(1)` and `make_inputs(2)`;
    any failure raises a one-line ExportError and leaves `out_dir` as it was. The
    directory is built beside `out_dir` and renamed into place at the end; an existing
    export there is replaced, any other existing directory is refused.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    opset = opset or DEFAULT_OPSET
    device = torch.device(device)
    out_dir = Path(out_dir)
    check_destination(out_dir)
    model.to(device).eval()
    selected = select_components(plugin.export_components(model, config), components)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        entries = {}
        with tempfile.TemporaryDirectory(prefix="zoo-onnx-") as scratch:
            for component in selected:
                entries[component.name] = export_component(component, staging, Path(scratch), opset, precision, device)
        assets = write_assets(staging, plugin.export_assets(model, config))
        validation = {
            "provider": VALIDATION_PROVIDER,
            "sizes": list(VALIDATION_SIZES),
            "rule": "float outputs: max|onnx - torch| <= max(precision_bound * max|torch|, tolerance * max(1, "
            "max|torch|)); integer outputs: fraction of differing elements <= precision_bound",
            "precision_bounds": PRECISION_BOUNDS,
        }
        manifest = build_manifest(plugin, config, opset, precision, entries, assets, validation)
        write_manifest(staging, manifest)
        os.chmod(staging, 0o755)  # mkdtemp makes it private
        replace_directory(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def select_components(declared: list[Component], names: list[str] | None) -> list[Component]:
    by_name: dict[str, Component] = {}
    for component in declared:
        if component.name in by_name:
            raise ExportError(f"the plugin declares two components named {component.name!r}; rename one")
        if not COMPONENT_NAME.match(component.name):
            raise ExportError(f"component name {component.name!r} must be letters, digits, '_', '-' or '.' (it names a file)")
        by_name[component.name] = component
    if names is None:
        return declared
    for name in names:
        if name not in by_name:
            raise UnknownNameError("component", name, by_name)
    return [by_name[name] for name in dict.fromkeys(names)]


def export_component(
    component: Component, out_dir: Path, scratch: Path, opset: int, precision: str, device: torch.device
) -> dict[str, Any]:
    inputs = component.make_inputs(0)
    if set(inputs) != set(component.input_names):
        raise ExportError(
            f"component {component.name!r}: make_inputs gives {sorted(inputs)}, input_names are {component.input_names}"
        )
    component.module.to(device).eval()
    traced = scratch / f"{component.name}.traced.onnx"
    trace_component(component, {name: tensor.to(device) for name, tensor in inputs.items()}, traced, opset)
    fp32 = scratch / f"{component.name}.fp32.onnx"
    finish_graph(traced, fp32, component)
    file = f"{component.name}.onnx"
    convert_precision(fp32, out_dir / file, precision, component.name)
    check_graph(out_dir / file, component.name)
    validation = validate_component(component, out_dir / file, precision, device)
    return component_entry(component, out_dir, file, precision, validation)


def check_destination(out_dir: Path) -> None:
    """Refuse to replace anything but an earlier export (a directory with a manifest)."""
    if out_dir.is_file():
        raise ExportError(f"{out_dir} is a file; choose a directory for --out")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / MANIFEST_NAME).is_file():
        raise ExportError(f"{out_dir} exists and is not an export directory; choose another --out or empty it")


def replace_directory(staging: Path, out_dir: Path) -> None:
    check_destination(out_dir)
    if not out_dir.exists():
        staging.rename(out_dir)
        return
    previous = out_dir.with_name(f".{out_dir.name}.previous-{uuid.uuid4().hex[:8]}")
    out_dir.rename(previous)
    staging.rename(out_dir)
    shutil.rmtree(previous)
