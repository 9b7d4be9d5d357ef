"""One component -> one checked ONNX file.

The dynamo exporter (`torch.onnx.export(..., dynamo=True)`) runs by default; a
component that sets `exporter="torchscript"` gets the TorchScript exporter. Either way
the graph's dynamic axes carry the names the component declared, and a graph whose
weights pass 2 GB is written with its weights in `<file>.data` beside it.
"""

from __future__ import annotations

import inspect
import warnings
from pathlib import Path
from typing import Any

import onnx
import onnx_ir as ir
import torch

from zoo.components import Component
from zoo.errors import ConfigError, ExportError, first_line
from zoo_onnx.options import DEFAULT_OPSET, SUPPORTED_OPSETS

# Protobuf cannot serialise a message past 2 GiB; keep a margin for the graph itself.
EXTERNAL_DATA_THRESHOLD = 2**31 - 2**27


def trace_component(component: Component, inputs: dict[str, torch.Tensor], scratch: Path, opset: int) -> ir.Model:
    """The graph of `component` traced on `inputs`, in memory, its output axes named as the
    component declares them (`scratch`: where the TorchScript exporter writes its file)."""
    args = tuple(inputs[name] for name in component.input_names)
    module = component.module.eval()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            if component.exporter == "torchscript":
                path = scratch / f"{component.name}.torchscript.onnx"
                torch.onnx.export(
                    module,
                    args,
                    str(path),
                    input_names=component.input_names,
                    output_names=component.output_names,
                    dynamic_axes=component.dynamic_axes,
                    opset_version=opset,
                    dynamo=False,
                )
                model = load_graph(path, component.name)
            else:
                # Axis names as strings: torch makes them Dim.DYNAMIC and names the graph's axes after them.
                dynamic_shapes: tuple[Any, ...] = tuple(
                    {axis: name for axis, name in component.dynamic_axes.get(input_name, {}).items()} or None
                    for input_name in component.input_names
                )
                if takes_varargs(module):  # forward(self, *inputs), e.g. zoo's method graphs: one entry for them all
                    dynamic_shapes = (dynamic_shapes,)
                # Kept in memory and saved once by the caller: a file written here and read
                # back would cost two more passes over every weight (minutes and GiB at VAR d30).
                program = torch.onnx.export(
                    module,
                    args,
                    None,
                    input_names=component.input_names,
                    output_names=component.output_names,
                    dynamic_shapes=dynamic_shapes,
                    opset_version=opset,
                    dynamo=True,
                    verbose=False,
                )
                assert program is not None  # None only with dynamo=False
                model = program.model
    except (ExportError, OSError):  # OSError: the disk, not the module (the CLI reports it)
        raise
    except Exception as error:
        hint = (
            "avoid Python control flow on tensor values and in-place updates in the module, or set "
            "Component.exporter='torchscript'"
            if component.exporter == "dynamo"
            else "check the module's forward"
        )
        raise ExportError(
            f"component {component.name!r}: the {component.exporter} exporter failed: {root_cause(error)}; {hint}"
        ) from None
    name_output_axes(model, component)
    return model


def takes_varargs(module: torch.nn.Module) -> bool:
    parameters = inspect.signature(module.forward).parameters.values()
    return any(parameter.kind is inspect.Parameter.VAR_POSITIONAL for parameter in parameters)


def check_opset(opset: int) -> None:
    if opset not in SUPPORTED_OPSETS:
        raise ConfigError(
            f"--opset {opset} is not supported: the exporters write opsets {SUPPORTED_OPSETS.start} to "
            f"{SUPPORTED_OPSETS.stop - 1} (default {DEFAULT_OPSET})"
        )


def load_graph(path: Path, component_name: str) -> ir.Model:
    try:
        return ir.load(str(path))
    except Exception as error:  # the exporter wrote a graph that is not valid ONNX
        raise ExportError(
            f"component {component_name!r}: the exported graph is not valid ONNX: {root_cause(error)}"
        ) from None


def name_output_axes(model: ir.Model, component: Component) -> None:
    """Dynamo names output axes by expression (e.g. `cache_length + 1`); use the declared names."""
    for value in model.graph.outputs:
        declared = component.dynamic_axes.get(value.name, {}) if value.name is not None else {}
        if not declared or value.shape is None:
            continue
        dims: list[int | ir.SymbolicDim | str] = list(value.shape)
        for axis, axis_name in declared.items():
            if axis < len(dims) and isinstance(dims[axis], ir.SymbolicDim):
                dims[axis] = axis_name
        value.shape = ir.Shape(dims)


def save_graph(model: ir.Model, destination: Path) -> None:
    """Weights inline, or past 2 GB in `destination.name + ".data"` (written tensor by tensor)."""
    weight_bytes = sum(
        value.const_value.nbytes for value in model.graph.initializers.values() if value.const_value is not None
    )
    external = destination.name + ".data" if weight_bytes > EXTERNAL_DATA_THRESHOLD else None
    ir.save(model, str(destination), external_data=external)


def is_large(path: Path) -> bool:
    """Whether the graph at `path` (with its external data, if any) passes 2 GB."""
    data = path.with_name(path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0) > EXTERNAL_DATA_THRESHOLD


def check_graph(path: Path, component_name: str) -> None:
    """onnx.checker on the path, which also works past 2 GB."""
    try:
        onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as error:
        raise ExportError(
            f"component {component_name!r}: onnx.checker rejects the graph: {root_cause(error)}"
        ) from None


def root_cause(error: BaseException) -> str:
    """The innermost cause's first non-empty line: torch wraps the useful message in
    several generic ones."""
    while error.__cause__ is not None:
        error = error.__cause__
    return first_line(error, 300).split(" [Caused by")[0].rstrip()  # the TorchScript exporter appends its IR
