"""fp16 and int8 versions of an fp32 graph, and the error each precision may add.

fp16 (for GPUs): onnxruntime's float16 converter turns weights and arithmetic to
float16 but keeps the graph's inputs and outputs float32 (`keep_io_types`), so the same
sampling loop feeds it; ops without a float16 kernel stay float32 behind casts. It runs
on CPU too (slower than fp32 there).

int8 (for CPUs): onnxruntime's dynamic quantization: MatMul and Gemm weights stored as
int8, activations quantized on the fly per call. Conv stays float32: onnxruntime's
dynamic ConvInteger is correct but measured 2-4x slower than its float32 Conv on this
machine (benchmarks/results/export_quantart.md), so quantizing it would make "int8"
slower; `to_int8(..., ops=[..., "Conv"])` does it where that is wanted.

Error bounds, checked by validate.py on every float output (`reference` is the largest
magnitude of the torch output):

    fp32: max |onnx - torch| <= component.tolerance * max(1, reference)   (default 1e-4)
    fp16: max |onnx - torch| <= max(1e-2 * reference, the fp32 allowance)
    int8: max |onnx - torch| <= max(0.1 * reference, the fp32 allowance)

so fp32 is absolute for outputs below 1 and relative above, and the reduced precisions
are relative (never stricter than fp32). Integer outputs (token indices): fp32 must
match exactly; at fp16/int8 the fraction of differing elements must stay within
1 % / 10 %, since an index flips when two distances are closer than the rounding.
"""

from __future__ import annotations

import logging
import tempfile
from collections import Counter
from pathlib import Path

import onnx
import onnx_ir as ir

from zoo.errors import ExportError
from zoo_onnx.trace import is_large, root_cause, save_graph

PRECISION_BOUNDS = {"fp32": 0.0, "fp16": 1e-2, "int8": 0.1}  # relative error each precision may add
QUANTIZED_OPS = ("MatMul", "Gemm")
INTEGER_OPS = {"MatMulInteger", "ConvInteger", "DynamicQuantizeLinear"}  # what quantize_dynamic writes


def allowed_error(precision: str, tolerance: float, reference: float) -> float:
    """The largest max abs error an output whose largest magnitude is `reference` may have."""
    return max(PRECISION_BOUNDS[precision] * reference, tolerance * max(1.0, reference))


def allowed_mismatch(precision: str) -> float:
    """The largest fraction of an integer output's elements that may differ."""
    return PRECISION_BOUNDS[precision]


def convert_precision(model: ir.Model, destination: Path, precision: str, component_name: str, scratch: Path) -> str:
    """Write the `precision` version of the fp32 graph `model` to `destination`; returns the
    precision the graph really has: "fp32" where int8 found no MatMul/Gemm weight to quantize
    (a graph of convolutions), so that the manifest does not claim an int8 graph."""
    if precision == "fp32":
        save_graph(model, destination)
        return precision
    source = scratch / f"{component_name}.fp32.onnx"
    save_graph(model, source)
    try:
        if precision == "fp16":
            to_fp16(source, destination)
            return precision
        return precision if to_int8(source, destination) else "fp32"
    except ExportError:
        raise
    except Exception as error:
        raise ExportError(
            f"component {component_name!r}: {precision} conversion failed: {root_cause(error)}; export it at fp32 "
            "(--precision fp32) or leave it out (--components)"
        ) from None


def to_fp16(source: Path, destination: Path) -> None:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    large = is_large(source)
    model = onnx.load(str(source))
    model = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=large)
    drop_duplicate_nodes(model.graph)
    with tempfile.TemporaryDirectory() as scratch:
        staged = Path(scratch) / "fp16.onnx"
        onnx.save_model(model, str(staged), save_as_external_data=large, location="fp16.onnx.data")
        converted = ir.load(str(staged))
        converted.graph.sort()  # the converter appends the input casts after their consumers
        save_graph(converted, destination)


def drop_duplicate_nodes(graph: onnx.GraphProto) -> None:
    """The float16 converter inserts one Cast per consumer of a blocked op's input, all
    with the same output name (e.g. twice `val_9_cast_to_fp32` before two Resize
    nodes); the duplicates compute the same value, so keep the first."""
    seen = set()
    kept = []
    for node in graph.node:
        key = node.SerializeToString(deterministic=True)
        if key in seen:
            continue
        seen.add(key)
        kept.append(node)
    if len(kept) != len(graph.node):
        del graph.node[:]
        graph.node.extend(kept)
    duplicates = [name for name, count in Counter(node.name for node in graph.node if node.name).items() if count > 1]
    for index, node in enumerate(graph.node):
        if node.name in duplicates:
            node.name = f"{node.name}_{index}"


def to_int8(source: Path, destination: Path, ops: tuple[str, ...] = QUANTIZED_OPS) -> bool:
    """Write the dynamically quantized graph; whether any weight was quantized."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    large = is_large(source)
    model = onnx.load(str(source))
    # The quantizer re-runs shape inference and rejects the exporter's value_info when it
    # disagrees with its own (seen with einsum), so let it infer shapes afresh.
    model.graph.ClearField("value_info")
    quantizer_log = logging.getLogger()  # the quantizer warns about pre-processing on the root logger
    level = quantizer_log.level
    quantizer_log.setLevel(logging.ERROR)
    try:
        with tempfile.TemporaryDirectory() as scratch:
            staged, quantized = Path(scratch) / "fp32.onnx", Path(scratch) / "int8.onnx"
            onnx.save_model(model, str(staged), save_as_external_data=large, location="fp32.onnx.data")
            # 7-bit weights (reduce_range): x86 CPUs without VNNI (AVX2, AVX-512 without
            # VNNI) add u8 x s8 pairs in saturating int16, which overflows on full-range
            # weights; an export may run on any CPU, so it is made safe for all of them.
            quantize_dynamic(
                staged,
                quantized,
                op_types_to_quantize=list(ops),
                weight_type=QuantType.QInt8,
                reduce_range=True,
                use_external_data_format=large,
            )
            graph = ir.load(str(quantized))
            save_graph(graph, destination)
            return any(node.op_type in INTEGER_OPS for node in graph.graph.all_nodes())
    finally:
        quantizer_log.setLevel(level)
