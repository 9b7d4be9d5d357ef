"""Run an exported graph in onnxruntime and its module in torch on the same fresh inputs,
and fail the export when they disagree beyond the precision's bound (see precision.py).

The inputs come from `component.make_inputs(size)` for sizes 1 and 2, which differ from
the traced size 0 in their dynamic axes, so a graph that froze a dynamic axis during
tracing fails here instead of in a user's hands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from zoo.components import Component
from zoo.errors import ExportError
from zoo_onnx.precision import allowed_error, allowed_mismatch
from zoo_onnx.trace import root_cause

VALIDATION_SIZES = (1, 2)
VALIDATION_PROVIDER = "CPUExecutionProvider"
COMPARE_SLICE = 1 << 22  # elements compared at a time


def validate_component(component: Component, graph: Path, precision: str, device: torch.device) -> list[dict[str, Any]]:
    """One record per validation size: input shapes and, per output, the errors found."""
    options = ort.SessionOptions()
    options.log_severity_level = 4  # failures become ExportErrors; onnxruntime's own log would repeat them
    # Weights stay in the memory-mapped file instead of prepacked copies: torch holds the
    # model beside this session, and two copies of VAR d30's 8 GB did not fit in 24 GiB.
    options.add_session_config_entry("session.disable_prepacking", "1")
    try:
        session = ort.InferenceSession(str(graph), options, providers=[VALIDATION_PROVIDER])
    except Exception as error:
        raise ExportError(
            f"component {component.name!r}: onnxruntime cannot load the exported graph: {root_cause(error)}"
        ) from None
    runs = []
    for size in VALIDATION_SIZES:
        inputs = component.make_inputs(size)
        shapes = {name: list(inputs[name].shape) for name in component.input_names}
        expected = run_torch(component, inputs, device)
        feeds = {name: inputs[name].detach().cpu().numpy() for name in component.input_names}
        try:
            actual = session.run(component.output_names, feeds)
        except Exception as error:
            raise ExportError(
                f"component {component.name!r}: onnxruntime fails on validation inputs {shapes}: {root_cause(error)}; "
                "a dynamic axis was probably fixed while tracing: make make_inputs(0) use sizes >= 2 on every dynamic "
                "axis and do not branch on shapes in forward"
            ) from None
        outputs = {}
        for name, got, want in zip(component.output_names, actual, expected, strict=True):
            errors = compare(got, want)
            if "mismatch_fraction" in errors:
                errors["allowed_mismatch"] = allowed_mismatch(precision)
            elif "max_abs_error" in errors:
                errors["allowed_error"] = allowed_error(precision, component.tolerance, errors["max_abs_reference"])
            check_bound(f"component {component.name!r} output {name!r} at {precision} on inputs {shapes}", errors)
            outputs[name] = errors
        runs.append({"size": size, "input_shapes": shapes, "outputs": outputs})
    return runs


@torch.inference_mode()
def run_torch(component: Component, inputs: dict[str, torch.Tensor], device: torch.device) -> list[np.ndarray]:
    outputs = component.module(*[inputs[name].to(device) for name in component.input_names])
    if isinstance(outputs, torch.Tensor):
        outputs = (outputs,)
    return [value.float().cpu().numpy() if value.is_floating_point() else value.cpu().numpy() for value in outputs]


def compare(actual: np.ndarray, expected: np.ndarray) -> dict[str, Any]:
    """Errors of one output. `max_rel_error` is the max abs error over the output's
    largest magnitude (element-wise ratios explode where the reference is near zero)."""
    if actual.shape != expected.shape:
        return {"shape_mismatch": [list(actual.shape), list(expected.shape)]}
    if expected.dtype.kind in "biu":
        differing = actual != expected
        return {
            "dtype": str(expected.dtype),
            "mismatch_fraction": float(differing.mean()) if differing.size else 0.0,
            "max_abs_error": float(np.abs(actual.astype(np.float64) - expected).max()) if differing.size else 0.0,
        }
    max_abs, reference = 0.0, 0.0
    # In slices: float64 copies of a whole output (VAR d30's cache: 2 GB at float32) would
    # take several times its size at once.
    flat_actual, flat_expected = actual.reshape(-1), expected.reshape(-1)
    for start in range(0, flat_expected.size, COMPARE_SLICE):
        got = flat_actual[start : start + COMPARE_SLICE].astype(np.float64)
        want = flat_expected[start : start + COMPARE_SLICE].astype(np.float64)
        same = (got == want) | (np.isnan(got) & np.isnan(want))  # equal infinities count as equal
        with np.errstate(invalid="ignore"):
            difference = np.where(same, 0.0, np.abs(got - want))
        max_abs = max(max_abs, float(np.nan_to_num(difference, nan=np.inf, posinf=np.inf).max()))
        finite = np.abs(want[np.isfinite(want)])
        reference = max(reference, float(finite.max()) if finite.size else 0.0)
    return {
        "dtype": str(expected.dtype),
        "max_abs_error": max_abs,
        "max_rel_error": max_abs / reference if reference > 0 else None,  # undefined for an all-zero output
        "max_abs_reference": reference,
    }


def check_bound(where: str, errors: dict[str, Any]) -> None:
    if "shape_mismatch" in errors:
        got, want = errors["shape_mismatch"]
        raise ExportError(
            f"{where}: onnxruntime gives shape {got}, torch {want}; a dynamic axis was fixed while tracing"
        )
    if "mismatch_fraction" in errors:
        if errors["mismatch_fraction"] > errors["allowed_mismatch"]:
            raise ExportError(
                f"{where}: {errors['mismatch_fraction']:.2%} of the integer outputs differ from torch (allowed "
                f"{errors['allowed_mismatch']:.2%}); the graph does not compute what the module does: look for code "
                "that behaves differently while exporting (torch.compiler.is_exporting, Python-side state), or use fp32"
            )
        return
    if not errors["max_abs_error"] <= errors["allowed_error"]:
        raise ExportError(
            f"{where}: max abs error {errors['max_abs_error']:.3g} exceeds the allowed {errors['allowed_error']:.3g} "
            f"(max |torch output| {errors['max_abs_reference']:.3g}); the graph does not compute what the module does: "
            "look for code that behaves differently while exporting, or raise Component.tolerance if it is expected"
        )
