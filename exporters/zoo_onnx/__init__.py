"""The ONNX exporter: a plugin's declared components -> a validated export directory
that `zoo.runtime.load` (torch-free) runs on onnxruntime.

    zoo export MODEL --out exports/tiny --precision int8          # the CLI (format "onnx")
    zoo.load_run("runs/tiny").export("exports/tiny", precision="int8")

    from zoo_onnx import export_model                             # or directly
    manifest = export_model(plugin, model, config, "exports/tiny", precision="int8")

plugin.py registers the exporter with zoo (entry point `zoo_onnx` in the `zoo.plugins`
group, the `zoo_register_exporters` hook); options.py holds its options. See export.py
(the steps), trace.py (torch -> ONNX), precision.py (fp16/int8 and the error bounds),
validate.py (onnxruntime against torch) and manifest.py (what is written).

`export_model` and `PRECISION_BOUNDS` are imported on first use, so that loading the plugin
(`zoo list`, `zoo plugins`) imports neither torch nor onnx.
"""

from __future__ import annotations

from typing import Any

from zoo_onnx.options import DEFAULT_OPSET, PRECISIONS


def __getattr__(name: str) -> Any:
    if name == "export_model":
        from zoo_onnx.export import export_model

        return export_model
    if name == "PRECISION_BOUNDS":
        from zoo_onnx.precision import PRECISION_BOUNDS

        return PRECISION_BOUNDS
    raise AttributeError(f"module 'zoo_onnx' has no attribute {name!r}")


__all__ = ["DEFAULT_OPSET", "PRECISIONS", "PRECISION_BOUNDS", "export_model"]
