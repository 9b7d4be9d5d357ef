"""zoo_onnx.export_model: tracing, precision, validation against torch, the manifest."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from safetensors.numpy import load_file
from torch import nn

import zoo
from tests.exporter.tiny_export_plugin import TinyPlugin, TorchScriptTinyPlugin, area_downsample_module
from tests.tolerances import depth_of, rounding_bound
from zoo.errors import ConfigError, ExportError, UnknownNameError
from zoo.plugin import Component, ExportAssets
from zoo_onnx import DEFAULT_OPSET, export_model


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_fp32_errors_are_rounding(manifest: dict, depth: int) -> None:
    """Every float output of every validation run within rounding through `depth` layers of
    torch's output (tests.tolerances): onnxruntime's kernels against torch's."""
    for name, component in manifest["components"].items():
        for run in component["validation"]:
            for output, errors in run["outputs"].items():
                if "max_rel_error" in errors:
                    bound = rounding_bound(errors["max_abs_reference"], depth)
                    assert errors["max_abs_error"] <= bound, (name, output, errors, bound)


def float_errors(manifest: dict) -> list[float]:
    return [
        errors["max_abs_error"]
        for component in manifest["components"].values()
        for run in component["validation"]
        for errors in run["outputs"].values()
        if "max_rel_error" in errors
    ]


class OneComponentPlugin(TinyPlugin):
    """The tiny plugin's identity with a single, test-made component."""

    def __init__(self, component: Component) -> None:
        self.component = component

    def export_components(self, model, config):
        return [self.component]

    def export_assets(self, model, config):
        return ExportAssets()


def batch_inputs(size: int) -> dict[str, torch.Tensor]:
    return {"x": torch.randn(2 + size, 3, 16, 16)}


def test_fp32_manifest_records_graphs_validation_and_assets(tiny, fp32_export):
    plugin, config, _ = tiny
    out_dir, manifest = fp32_export
    assert json.loads((out_dir / "manifest.json").read_text()) == manifest
    assert manifest["format"] == "zoo-onnx-export"
    assert manifest["zoo_version"] == zoo.__version__
    assert (manifest["model"], manifest["plugin_version"]) == ("tiny", "0.0.1")
    assert manifest["config"] == config.model_dump(mode="json")
    assert (manifest["opset"], manifest["precision"]) == (DEFAULT_OPSET, "fp32")
    assert "runtime" not in manifest
    assert "options" not in manifest  # the runtime is found by model name
    assert set(manifest["tools"]) == {"torch", "onnx", "onnxruntime", "onnxscript"}
    assert manifest["tools"]["onnx"] == onnx.__version__
    assert set(manifest["components"]) == {"encode", "decode", "step"}

    step = manifest["components"]["step"]
    assert step["exporter"] == "dynamo"
    assert step["opset"] == DEFAULT_OPSET
    assert step["inputs"] == [
        {"name": "tokens", "dtype": "int64", "shape": ["batch"]},
        {"name": "cache", "dtype": "float32", "shape": ["batch", "cache_length", 16]},
    ]
    # dynamo names this axis "cache_length + 1"; the exporter applies the declared name
    assert step["outputs"][1] == {"name": "new_cache", "dtype": "float32", "shape": ["batch", "new_cache_length", 16]}
    assert step["dynamic_axes"]["cache"] == {"0": "batch", "1": "cache_length"}
    # two validation sizes with different batch sizes and cache lengths
    shapes = [run["input_shapes"]["cache"] for run in step["validation"]]
    assert [run["size"] for run in step["validation"]] == [1, 2]
    assert shapes[0][:2] != shapes[1][:2]

    for component in manifest["components"].values():
        assert component["sha256"] == sha256(out_dir / component["file"])
        assert component["external_data"] is None
        onnx.checker.check_model(str(out_dir / component["file"]))
    assert_fp32_errors_are_rounding(manifest, depth_of(tiny[2]))
    indices = manifest["components"]["encode"]["validation"][0]["outputs"]["indices"]
    assert indices["mismatch_fraction"] == 0.0  # integer outputs match exactly at fp32

    arrays = manifest["assets"]["arrays"]
    assert arrays["sha256"] == sha256(out_dir / arrays["file"])
    np.testing.assert_array_equal(
        load_file(str(out_dir / arrays["file"]))["codebook"], tiny[2].autoencoder.codebook.detach().numpy()
    )
    notes = manifest["assets"]["files"]["notes.txt"]
    assert (out_dir / notes["file"]).read_bytes() == b"tiny export test\n"
    assert not list(out_dir.parent.glob(".tiny.partial-*"))  # the staging directory was renamed


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_reduced_precision_is_converted_validated_and_bounded(precision, request):
    out_dir, manifest = request.getfixturevalue(f"{precision}_export")
    assert manifest["precision"] == precision
    # conversion changed the arithmetic (nonzero error) and stayed within the documented bound
    assert 0 < max(float_errors(manifest))
    for component in manifest["components"].values():
        relative = {"fp32": 0.0, "fp16": 1e-2, "int8": 0.1}[component["precision"]]
        for run in component["validation"]:
            for output in run["outputs"].values():
                if "max_rel_error" in output:
                    reference = output["max_abs_reference"]
                    assert output["allowed_error"] == max(
                        relative * reference, component["tolerance"] * max(1, reference)
                    )
                    assert output["max_abs_error"] <= output["allowed_error"]
                else:
                    assert output["mismatch_fraction"] <= output["allowed_mismatch"] == relative
    precisions = {name: entry["precision"] for name, entry in manifest["components"].items()}
    if precision == "int8":  # a graph without MatMul/Gemm has nothing to quantize and says so
        graphs = {name: onnx.load(str(out_dir / f"{name}.onnx")).graph for name in precisions}
        for name, graph in graphs.items():
            quantized = any(node.op_type == "MatMulInteger" for node in graph.node)
            assert precisions[name] == ("int8" if quantized else "fp32"), name
        assert "int8" in precisions.values()
    else:
        assert set(precisions.values()) == {"fp16"}
    graph = onnx.load(str(out_dir / "step.onnx"))
    if precision == "fp16":
        assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in graph.graph.initializer)
        assert graph.graph.input[1].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # IO kept fp32
    else:
        assert "MatMulInteger" in {node.op_type for node in graph.graph.node}
        decode_ops = {node.op_type for node in onnx.load(str(out_dir / "decode.onnx")).graph.node}
        assert "Conv" in decode_ops
        assert "ConvInteger" not in decode_ops  # Conv stays fp32 (faster here)


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_a_component_declared_keep_fp32_stays_fp32_at_reduced_precision(precision, tiny, tmp_path):
    _, config, model = tiny

    class EncoderKeptFP32(TorchScriptTinyPlugin):
        def export_components(self, model, config):
            return [
                dataclasses.replace(c, keep_fp32=c.name == "encode") for c in super().export_components(model, config)
            ]

    manifest = export_model(EncoderKeptFP32(), model, config, tmp_path / "export", precision=precision)
    assert manifest["precision"] == precision
    precisions = {name: entry["precision"] for name, entry in manifest["components"].items()}
    assert precisions["encode"] == "fp32"
    assert precisions["step"] == precision
    encoder_ops = {node.op_type for node in onnx.load(str(tmp_path / "export" / "encode.onnx")).graph.node}
    assert "Cast" not in encoder_ops
    assert "MatMulInteger" not in encoder_ops
    step = onnx.load(str(tmp_path / "export" / "step.onnx"))
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in step.graph.initializer) or "MatMulInteger" in {
        node.op_type for node in step.graph.node
    }


def test_int8_quantization_of_conv_works_when_asked(fp32_export, tmp_path):
    from zoo_onnx.precision import to_int8

    to_int8(fp32_export[0] / "decode.onnx", tmp_path / "decode.onnx", ops=("Conv",))
    graph = onnx.load(str(tmp_path / "decode.onnx"))
    assert "ConvInteger" in {node.op_type for node in graph.graph.node}
    indices = np.random.default_rng(0).integers(0, 16, (2, 4, 4))
    fp32_session = ort.InferenceSession(str(fp32_export[0] / "decode.onnx"), providers=["CPUExecutionProvider"])
    int8_session = ort.InferenceSession(str(tmp_path / "decode.onnx"), providers=["CPUExecutionProvider"])
    reference = fp32_session.run(None, {"indices": indices})[0]
    error = np.abs(int8_session.run(None, {"indices": indices})[0] - reference).max()
    assert 0 < error <= 0.1 * np.abs(reference).max()


def test_a_graph_that_differs_from_eager_fails_validation(tmp_path):
    class DifferentWhenExported(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if torch.compiler.is_exporting():
                return x * 1.01
            return x

    component = Component(
        "scaled", DifferentWhenExported(), batch_inputs, ["x"], ["y"], {"x": {0: "batch"}, "y": {0: "batch"}}
    )
    plugin = OneComponentPlugin(component)
    out_dir = tmp_path / "export"
    with pytest.raises(ExportError, match=r"'scaled' output 'y' at fp32 .* max abs error") as error:
        export_model(plugin, nn.Module(), plugin.Config(), out_dir)
    assert "\n" not in str(error.value)
    assert not out_dir.exists()
    assert list(tmp_path.iterdir()) == []  # nothing left behind


def test_integer_outputs_must_match_exactly(tmp_path):
    class ShiftedWhenExported(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            indices = x.flatten(1).argmax(dim=1)
            return indices + 1 if torch.compiler.is_exporting() else indices

    component = Component(
        "pick", ShiftedWhenExported(), batch_inputs, ["x"], ["index"], {"x": {0: "batch"}, "index": {0: "batch"}}
    )
    plugin = OneComponentPlugin(component)
    with pytest.raises(ExportError, match=r"100\.00% of the integer outputs differ"):
        export_model(plugin, nn.Module(), plugin.Config(), tmp_path / "export")


def test_data_dependent_control_flow_is_a_one_line_error(tmp_path):
    class BranchOnValues(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 2 if x.sum() > 0 else x

    component = Component("branchy", BranchOnValues(), batch_inputs, ["x"], ["y"], {"x": {0: "batch"}})
    plugin = OneComponentPlugin(component)
    with pytest.raises(ExportError, match="'branchy': the dynamo exporter failed") as error:
        export_model(plugin, nn.Module(), plugin.Config(), tmp_path / "export")
    assert "\n" not in str(error.value)


def test_area_downsampling_to_non_dividing_sizes_exports_with_dynamo(tmp_path):
    """VAR's multi-scale quantizer area-downsamples 16 -> 13 and the like."""
    component = Component(
        "area",
        area_downsample_module(),
        batch_inputs,
        ["x"],
        ["area", "pooled"],
        {"x": {0: "batch"}, "area": {0: "batch"}, "pooled": {0: "batch"}},
    )
    plugin = OneComponentPlugin(component)
    manifest = export_model(plugin, nn.Module(), plugin.Config(), tmp_path / "export")
    entry = manifest["components"]["area"]
    assert entry["exporter"] == "dynamo"
    assert [output["shape"] for output in entry["outputs"]] == [["batch", 3, 13, 13], ["batch", 3, 5, 7]]
    assert_fp32_errors_are_rounding(manifest, depth=1)  # averages: one sum each
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(area_downsample_module()(x)[0], F.adaptive_avg_pool2d(x, (13, 13)))  # one kernel


def test_torchscript_exporter_is_used_when_asked_and_recorded(tiny, tmp_path):
    plugin, config, model = tiny
    decode = next(c for c in plugin.export_components(model, config) if c.name == "decode")
    single = OneComponentPlugin(dataclasses.replace(decode, exporter="torchscript"))
    manifest = export_model(single, model, config, tmp_path / "export")
    assert manifest["components"]["decode"]["exporter"] == "torchscript"
    assert_fp32_errors_are_rounding(manifest, depth_of(model.autoencoder))


def test_graphs_past_the_size_threshold_use_external_data(tiny, tmp_path, monkeypatch):
    import zoo.runtime
    from zoo_onnx import trace

    monkeypatch.setattr(trace, "EXTERNAL_DATA_THRESHOLD", 0)  # as if every graph passed 2 GB
    _, config, model = tiny
    plugin = TorchScriptTinyPlugin()
    out_dir = tmp_path / "export"
    manifest = export_model(plugin, model, config, out_dir, components=["decode"])
    data = manifest["components"]["decode"]["external_data"]
    assert data["file"] == "decode.onnx.data"
    assert data["sha256"] == sha256(out_dir / data["file"])
    graph = onnx.load(str(out_dir / "decode.onnx"), load_external_data=False)
    assert any(t.data_location == onnx.TensorProto.EXTERNAL for t in graph.graph.initializer)
    onnx.checker.check_model(str(out_dir / "decode.onnx"))
    indices = np.zeros((1, 4, 4), np.int64)
    images = zoo.runtime.load(out_dir, provider="cpu").components("decode", indices=indices)["images"]
    assert images.shape == (1, 3, 16, 16)


def test_component_selection_and_bad_arguments(tiny, tmp_path):
    _, config, model = tiny
    plugin = TorchScriptTinyPlugin()
    manifest = export_model(plugin, model, config, tmp_path / "export", components=["decode"])
    assert list(manifest["components"]) == ["decode"]
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == [
        "assets.safetensors",
        "decode.onnx",
        "files",
        "manifest.json",
    ]
    with pytest.raises(UnknownNameError, match="unknown component 'decoder'. Did you mean 'decode'"):
        export_model(plugin, model, config, tmp_path / "other", components=["decoder"])
    with pytest.raises(ConfigError, match="precision must be one of fp32, fp16, int8"):
        export_model(plugin, model, config, tmp_path / "other", precision="int4")


def test_an_export_replaces_an_export_but_nothing_else(tiny, tmp_path):
    _, config, model = tiny
    plugin = TorchScriptTinyPlugin()
    out_dir = tmp_path / "export"
    export_model(plugin, model, config, out_dir, components=["decode"])
    export_model(plugin, model, config, out_dir, components=["encode"])
    assert not (out_dir / "decode.onnx").exists()
    assert (out_dir / "encode.onnx").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["export"]
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "thesis.tex").write_text("precious")
    with pytest.raises(ExportError, match="exists and is not an export directory"):
        export_model(plugin, model, config, occupied, components=["decode"])
    assert [p.name for p in occupied.iterdir()] == ["thesis.tex"]
