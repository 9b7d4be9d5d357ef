"""The ONNX exporter: a plugin's declared components -> a validated export directory
that `zoo.runtime.load` (torch-free) runs on onnxruntime.

    from zoo_onnx import export_model

    manifest = export_model(plugin, model, config, "exports/tiny", precision="int8")

See export.py (the steps), trace.py (torch -> ONNX), precision.py (fp16/int8 and the
error bounds), validate.py (onnxruntime against torch) and manifest.py (what is written).
"""

from zoo_onnx.export import export_model
from zoo_onnx.precision import PRECISION_BOUNDS, PRECISIONS
from zoo_onnx.trace import DEFAULT_OPSET

__all__ = ["DEFAULT_OPSET", "PRECISIONS", "PRECISION_BOUNDS", "export_model"]
