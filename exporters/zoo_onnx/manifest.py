"""Writing an export directory's `manifest.json` and assets (read by zoo.runtime.manifest).

manifest.json::

    format, format_version        "zoo-onnx-export", 1
    zoo_version                   the zoo that exported (read by the same major.minor)
    model, plugin_version         the plugin's name and version
    config                        the resolved config (config.model_dump(mode="json"))
    opset                         one for all components (read back from the graphs)
    precision                     the one asked for; components.<name>.precision is what each graph
                                  has (fp32 if declared keep_fp32, or if int8 found no MatMul/Gemm)
    tools                         versions of torch, onnx, onnxruntime, onnxscript used
    validation                    provider, sizes, the error rule and precision bounds
    components.<name>             file, sha256, external_data ({file, sha256} or null),
                                  exporter ("dynamo" | "torchscript"), inputs and outputs
                                  ([{name, dtype, shape}], axis names for dynamic axes),
                                  dynamic_axes, precision (its own), tolerance, validation (per
                                  size: input shapes and per output max_abs_error,
                                  max_rel_error, max_abs_reference, allowed_error, or
                                  mismatch_fraction, allowed_mismatch for integers)
    assets.arrays                 {file: assets.safetensors, sha256, arrays: {name: {dtype, shape}}} or null
    assets.files.<name>           {file: files/<name>, sha256}

No module path: the runtime finds the sampling loop by `model` among installed plugins
(zoo.runtime.discovery). With a signing key, `manifest.sig` holds an Ed25519 signature of
manifest.json's exact bytes (zoo.runtime.signing).
"""

from __future__ import annotations

import json
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from onnx import helper

from zoo.config import ZooConfig
from zoo.errors import ExportError
from zoo.plugin import Component, ExportAssets, ModelPlugin
from zoo.runtime.manifest import (
    ASSET_ARRAYS_NAME,
    ASSET_FILES_DIR,
    FORMAT,
    FORMAT_VERSION,
    MANIFEST_NAME,
    sha256_file,
)
from zoo.runtime.signing import SIGNATURE_NAME, signature


def graph_signature(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]], int]:
    """The graph's inputs and outputs as [{name, dtype, shape}] and its default-domain opset."""
    model = onnx.load(str(path), load_external_data=False)

    def describe(value: onnx.ValueInfoProto) -> dict[str, Any]:
        tensor = value.type.tensor_type
        shape = [dim.dim_value if dim.HasField("dim_value") else (dim.dim_param or None) for dim in tensor.shape.dim]
        return {
            "name": value.name,
            "dtype": str(np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type))),
            "shape": shape,
        }

    opset = next(entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx"))
    return [describe(v) for v in model.graph.input], [describe(v) for v in model.graph.output], opset


def component_entry(
    component: Component, out_dir: Path, file: str, precision: str, validation: list[dict[str, Any]]
) -> dict[str, Any]:
    inputs, outputs, opset = graph_signature(out_dir / file)
    data = out_dir / (file + ".data")
    return {
        "file": file,
        "sha256": sha256_file(out_dir / file),
        "external_data": {"file": data.name, "sha256": sha256_file(data)} if data.exists() else None,
        "exporter": component.exporter,
        "opset": opset,
        "inputs": inputs,
        "outputs": outputs,
        "dynamic_axes": {
            name: {str(axis): axis_name for axis, axis_name in axes.items()}
            for name, axes in component.dynamic_axes.items()
        },
        "precision": precision,
        "tolerance": component.tolerance,
        "validation": validation,
    }


def write_assets(out_dir: Path, assets: ExportAssets) -> dict[str, Any]:
    entry: dict[str, Any] = {"arrays": None, "files": {}}
    if assets.arrays:
        from safetensors.numpy import save

        arrays = {name: np.ascontiguousarray(array) for name, array in assets.arrays.items()}
        # Serialised here and written by Python: a full disk is then an OSError naming the
        # file, not a SafetensorError wrapping it.
        (out_dir / ASSET_ARRAYS_NAME).write_bytes(save(arrays))
        entry["arrays"] = {
            "file": ASSET_ARRAYS_NAME,
            "sha256": sha256_file(out_dir / ASSET_ARRAYS_NAME),
            "arrays": {name: {"dtype": str(array.dtype), "shape": list(array.shape)} for name, array in arrays.items()},
        }
    for name, content in assets.files.items():
        if Path(name).name != name or name in ("", ".", ".."):
            raise ExportError(f"export asset file name {name!r} must be a plain file name (no folders)")
        relative = f"{ASSET_FILES_DIR}/{name}"
        (out_dir / ASSET_FILES_DIR).mkdir(exist_ok=True)
        (out_dir / relative).write_bytes(content)
        entry["files"][name] = {"file": relative, "sha256": sha256_file(out_dir / relative)}
    return entry


def build_manifest(
    plugin: ModelPlugin[Any, Any, Any],
    config: ZooConfig,
    opset: int,
    precision: str,
    components: dict[str, dict[str, Any]],
    assets: dict[str, Any],
    validation: dict[str, Any],
) -> dict[str, Any]:
    from zoo.version import __version__

    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "zoo_version": __version__,
        "model": plugin.name,
        "plugin_version": plugin.version,
        "config": config.model_dump(mode="json"),
        "opset": opset,
        "precision": precision,
        "tools": {name: package_version(name) for name in ("torch", "onnx", "onnxruntime", "onnxscript")},
        "validation": validation,
        "components": components,
        "assets": assets,
    }


def package_version(name: str) -> str | None:
    for distribution in (name, f"{name}-gpu"):
        try:
            return version(distribution)
        except PackageNotFoundError:
            continue
    return None


def write_manifest(out_dir: Path, manifest: dict[str, Any], key: Ed25519PrivateKey | None = None) -> None:
    """manifest.json, and with a key manifest.sig (the signature of exactly these bytes)."""
    data = (json.dumps(manifest, indent=2, allow_nan=False) + "\n").encode()
    (out_dir / MANIFEST_NAME).write_bytes(data)
    if key is not None:
        (out_dir / SIGNATURE_NAME).write_bytes(signature(data, key))
