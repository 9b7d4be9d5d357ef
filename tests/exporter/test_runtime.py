"""zoo.runtime: loading an export, sampling like the torch path, verification, providers,
input checks, and running with torch unimportable."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import zoo.runtime
from tests.conftest import BLOCK_TORCH, ROOT
from tests.exporter.tiny_export_runtime import TinyRuntime, TinySampleOptions
from tests.tolerances import EPS16, assert_within_rounding, depth_of, magnitude
from zoo.config import SampleOptionsBase
from zoo.errors import ConfigError, ExportError, UnknownNameError
from zoo.runtime.resident import ForeignResident, Resident
from zoo.runtime.sessions import binding_device
from zoo.torch_components import TorchComponents


def torch_sample(tiny, **options):
    plugin, config, model = tiny
    return plugin.sample(model, config, TinySampleOptions(**options), "cpu")


@pytest.mark.parametrize(
    "options", [{"count": 3, "seed": 1, "top_k": 1}, {"count": 2, "seed": 5, "top_k": 4, "temperature": 1.5}]
)
def test_sampling_through_onnxruntime_matches_the_torch_path(tiny, fp32_export, options):
    loaded = zoo.runtime.load(fp32_export[0])
    onnx_output = loaded.sample(options)
    torch_output = torch_sample(tiny, **options)
    np.testing.assert_array_equal(onnx_output.extras["indices"], torch_output.extras["indices"])
    assert onnx_output.images.shape == (options["count"], 16, 16, 3)
    assert np.abs(onnx_output.images.astype(int) - torch_output.images).max() <= 1  # uint8 rounding


def test_runtime_methods_are_reachable_on_the_loaded_export(tiny, fp32_export):
    plugin, config, model = tiny
    images = np.random.default_rng(0).uniform(-1, 1, (2, 3, 16, 16)).astype(np.float32)
    loaded = zoo.runtime.load(fp32_export[0])
    torch_runtime = TinyRuntime(TorchComponents(plugin.export_components(model, config), "cpu"), loaded.config, {}, {})
    # onnxruntime's kernels against torch's: rounding through the autoencoder
    assert_within_rounding(loaded.reconstruct(images), torch_runtime.reconstruct(images), depth_of(model.autoencoder))
    with pytest.raises(AttributeError):
        loaded.no_such_method  # noqa: B018  (the attribute access is what raises)


# int8 (onnxruntime's dynamic quantization, zoo_onnx/precision.py): weights 7-bit per tensor,
# rounded to half a step of max|w| / 63; activations uint8, half a step of their range / 255.
INT8_ROUNDING = 1 / 126 + 1 / 510


def reduced_precision_bound(precision: str, reference: np.ndarray, layers: int) -> float:
    """The largest difference from the fp32 export that the format's rounding explains,
    through `layers` layers whose roundings add like a random walk (tests.tolerances).

    fp16: every weight and activation rounds to 11 significant bits, eps16 / 2 relative, once
    a layer (sums run in float32); 4x that. Measured on this tiny model: at most 0.4
    eps16 * max|reference| over the 6 layers (the bound: 4.9 eps16).
    int8: INT8_ROUNDING relative a quantized layer, 2x that. The integer sums are exact on
    every CPU (VNNI, AMX; AVX2 adds in saturating int16, which 7-bit weights never fill), so
    the error is the same everywhere: at most 1.7 % of max|reference| on the step graph's 5
    quantized MatMuls (the bound: 4.4 %)."""
    if precision == "fp16":
        return 4 * EPS16 / 2 * magnitude(reference) * math.sqrt(layers)
    return 2 * INT8_ROUNDING * magnitude(reference) * math.sqrt(layers)


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_reduced_precision_exports_stay_within_their_rounding_of_fp32(tiny, fp32_export, precision, request):
    plugin, config, model = tiny
    out_dir, manifest = request.getfixturevalue(f"{precision}_export")
    reduced, exact = zoo.runtime.load(out_dir, verify=False), zoo.runtime.load(fp32_export[0], verify=False)
    for component in plugin.export_components(model, config):
        graph = onnx.load(str(out_dir / f"{component.name}.onnx")).graph
        quantized = sum(node.op_type == "MatMulInteger" for node in graph.node)
        layers = depth_of(component.module) if precision == "fp16" else quantized
        converted = manifest["components"][component.name]["precision"]
        for size in (1, 2):  # the validation sizes: other batch sizes and cache lengths
            inputs = {name: value.numpy() for name, value in component.make_inputs(size).items()}
            expected, found = exact.components(component.name, **inputs), reduced.components(component.name, **inputs)
            for name, value in expected.items():
                where = f"{component.name}.{name} at {precision}, size {size}"
                if converted == "fp32":  # int8 found nothing to quantize: the fp32 graph itself
                    np.testing.assert_array_equal(found[name], value, err_msg=where)
                elif value.dtype.kind == "f":
                    error = np.abs(found[name] - value).max()
                    bound = reduced_precision_bound(precision, value, layers)
                    assert error <= bound, (where, error, bound)
                else:  # an index flips where two distances are closer than the rounding: 1 % at most
                    assert (found[name] != value).mean() <= 0.01, where
    if precision == "int8":
        assert manifest["components"]["step"]["precision"] == "int8"  # the MatMuls were quantized


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_reduced_precision_exports_sample(precision, request):
    loaded = zoo.runtime.load(request.getfixturevalue(f"{precision}_export")[0])
    output = loaded.sample({"count": 2, "top_k": 1})
    assert output.images.shape == (2, 16, 16, 3)
    assert output.images.dtype == np.uint8


def test_example_plugin_export_runs_like_zoo_sample(tmp_path, example_plugin_env):
    from zoo_onnx import export_model
    from zoo_tiny_autoencoder.plugin import TinyAutoencoderPlugin

    plugin = TinyAutoencoderPlugin()
    config = plugin.Config(width=8)
    model = plugin.build(config)
    export_model(plugin, model, config, tmp_path / "export")
    loaded = zoo.runtime.load(tmp_path / "export")
    onnx_output = loaded.sample({"n": 4, "seed": 3})
    torch_output = plugin.sample(model, config, plugin.SampleOptions(n=4, seed=3), "cpu")
    np.testing.assert_array_equal(onnx_output.extras["codes"], torch_output.extras["codes"])
    assert np.abs(onnx_output.images.astype(int) - torch_output.images).max() <= 1


def test_loaded_export_describes_itself_and_validates_options(fp32_export):
    loaded = zoo.runtime.load(fp32_export[0], graph_optimization_level="basic", intra_op_threads=1, inter_op_threads=1)
    assert loaded.model == "tiny"
    assert loaded.config == fp32_export[1]["config"]
    assert loaded.options_class is TinySampleOptions
    assert isinstance(loaded.runtime, TinyRuntime)
    assert set(loaded.components) == {"encode", "decode", "step"}
    assert "step" in loaded.components
    assert loaded.providers["used"] == "CPUExecutionProvider"
    assert loaded.providers["tried"][-1] == "CPUExecutionProvider"
    with pytest.raises(
        ConfigError, match=r"^sample option 'top_k': Input should be greater than or equal to 1 \(got 0\)$"
    ):
        loaded.sample({"top_k": 0})
    with pytest.raises(ConfigError, match="sample option 'colour': Extra inputs are not permitted"):
        loaded.sample({"colour": "red"})
    with pytest.raises(ConfigError, match="takes TinySampleOptions options, got SampleOptionsBase"):
        loaded.sample(SampleOptionsBase())
    with pytest.raises(ConfigError, match="graph_optimization_level must be one of disable, basic, extended, all"):
        zoo.runtime.load(fp32_export[0], graph_optimization_level="fast")


def test_provider_choice_is_silent_and_forced_providers_must_work(fp32_export, capfd):
    loaded = zoo.runtime.load(fp32_export[0])
    captured = capfd.readouterr()
    assert captured.out == ""
    assert captured.err == ""  # no CUDA error spam on a machine without CUDA
    if "CUDAExecutionProvider" in ort.get_available_providers():
        assert loaded.providers["tried"][0] == "CUDAExecutionProvider"
    if loaded.providers["used"] == "CPUExecutionProvider":  # CUDA unusable here: forcing it is an error
        with pytest.raises(
            ExportError, match="^--provider cuda: CUDAExecutionProvider cannot run here .*use --provider cpu"
        ):
            zoo.runtime.load(fp32_export[0], provider="cuda")
    with pytest.raises(UnknownNameError, match="unknown provider 'cdua'. Did you mean 'cuda'"):
        zoo.runtime.load(fp32_export[0], provider="cdua")
    assert zoo.runtime.load(fp32_export[0], provider="cpu").providers["tried"] == ["CPUExecutionProvider"]


@pytest.mark.parametrize(
    "inputs, message",
    [
        (
            {"tokens": np.zeros(2, np.int32), "cache": np.zeros((2, 1, 16), np.float32)},
            "input 'tokens' of component 'step' must be int64, got int32",
        ),
        (
            {"tokens": np.zeros(2, np.int64), "cache": np.zeros((2, 16), np.float32)},
            r"input 'cache' of component 'step' must have 3 dimensions \(batch, cache_length, 16\), got shape \(2, 16\)",
        ),
        (
            {"tokens": np.zeros(2, np.int64), "cache": np.zeros((2, 1, 8), np.float32)},
            "axis 2 is fixed at 16 in the exported graph",
        ),
        (
            {"tokens": np.zeros(2, np.int64), "cache": np.zeros((3, 1, 16), np.float32)},
            "inputs of component 'step' disagree on axis 'batch': 'tokens' has 2, 'cache' has 3",
        ),
        ({"tokens": np.zeros(2, np.int64)}, "component 'step' needs input 'cache'; its inputs are tokens, cache"),
    ],
)
def test_wrong_inputs_are_one_line_errors_before_onnxruntime(fp32_export, inputs, message):
    loaded = zoo.runtime.load(fp32_export[0], verify=False)
    with pytest.raises(ExportError, match=message) as error:
        loaded.components("step", **inputs)
    assert "\n" not in str(error.value)


def test_inputs_the_graph_does_not_take_are_ignored_like_the_torch_engine(tiny, fp32_export):
    plugin, config, model = tiny
    inputs = {"tokens": np.array([1, 2], np.int64), "cache": np.ones((2, 3, 16), np.float32), "labels": np.ones(2)}
    onnx_outputs = zoo.runtime.load(fp32_export[0], verify=False).components("step", **inputs)
    torch_outputs = TorchComponents(plugin.export_components(model, config), "cpu")("step", **inputs)
    assert_within_rounding(onnx_outputs["logits"], torch_outputs["logits"], depth_of(model.step))


def test_io_binding_path_gives_the_same_outputs(fp32_export):
    """Every call goes through IO binding (the path CUDA takes), on the CPU too: it equals
    onnxruntime's plain `session.run`."""
    loaded = zoo.runtime.load(fp32_export[0], provider="cpu", verify=False)
    inputs = {
        "tokens": np.array([3, 16], np.int64),
        "cache": np.random.default_rng(0).normal(size=(2, 5, 16)).astype(np.float32),
    }
    session = loaded.components.sessions["step"]
    plain = dict(zip(["logits", "new_cache"], session.run(["logits", "new_cache"], inputs), strict=True))
    through_binding = loaded.components("step", **inputs)
    assert set(through_binding) == {"logits", "new_cache"}
    for name in plain:
        np.testing.assert_array_equal(plain[name], through_binding[name])
    assert binding_device("CUDAExecutionProvider") == "cuda"
    assert binding_device("CPUExecutionProvider") == "cpu"


@pytest.mark.parametrize("engine", ["onnxruntime", "torch"])
def test_a_resident_output_feeds_back_and_is_fetched_once(tiny, fp32_export, engine):
    plugin, config, model = tiny
    if engine == "onnxruntime":
        components = zoo.runtime.load(fp32_export[0], provider="cpu", verify=False).components
    else:
        components = TorchComponents(plugin.export_components(model, config), "cpu")
    tokens = np.array([3, 16], np.int64)
    cache = np.random.default_rng(0).normal(size=(2, 5, 16)).astype(np.float32)
    first = components("step", tokens=tokens, cache=cache)
    kept = components("step", resident=("new_cache",), tokens=tokens, cache=cache)
    handle = kept["new_cache"]
    assert isinstance(handle, Resident) and isinstance(kept["logits"], np.ndarray)
    assert (handle.shape, handle.dtype, handle.device) == (first["new_cache"].shape, np.dtype(np.float32), "cpu")
    components.host_transfers.clear()
    from_handle = components("step", tokens=tokens, cache=handle)
    from_array = components("step", tokens=tokens, cache=first["new_cache"])
    np.testing.assert_array_equal(from_handle["new_cache"], from_array["new_cache"])
    np.testing.assert_array_equal(components.to_host(handle), first["new_cache"])
    # the handle went in without a copy; fetching it counts once, under the output that made it
    assert components.host_transfers[("step", "cache")] == 1
    assert components.host_transfers[("step", "new_cache")] == 2 + 1


def test_resident_values_are_checked_and_stay_with_their_engine(tiny, fp32_export):
    plugin, config, model = tiny
    onnx_components = zoo.runtime.load(fp32_export[0], provider="cpu", verify=False).components
    torch_components = TorchComponents(plugin.export_components(model, config), "cpu")
    tokens = np.array([3, 16], np.int64)
    cache = np.zeros((2, 5, 16), np.float32)
    handles = {
        "onnxruntime": onnx_components("step", resident=("new_cache",), tokens=tokens, cache=cache)["new_cache"],
        "torch": torch_components("step", resident=("new_cache",), tokens=tokens, cache=cache)["new_cache"],
    }
    with pytest.raises(ForeignResident, match=r"made by another engine \(Tensor\): fetch it with that engine's"):
        onnx_components("step", tokens=tokens, cache=handles["torch"])
    with pytest.raises(ForeignResident, match="made by another engine"):
        torch_components("step", tokens=tokens, cache=handles["onnxruntime"])
    # onnxruntime's values go to any of its sessions (zoo's benchmarks mix the components of exports)
    other_export = zoo.runtime.load(fp32_export[0], provider="cpu", verify=False).components
    np.testing.assert_array_equal(
        other_export("step", tokens=tokens, cache=handles["onnxruntime"])["logits"],
        onnx_components("step", tokens=tokens, cache=handles["onnxruntime"])["logits"],
    )
    with pytest.raises(ExportError, match="disagree on axis 'batch': 'tokens' has 3, 'cache' has 2"):
        onnx_components("step", tokens=np.zeros(3, np.int64), cache=handles["onnxruntime"])
    for components in (onnx_components, torch_components):
        with pytest.raises(UnknownNameError, match="unknown output of component 'step' 'new_cahce'"):
            components("step", resident=("new_cahce",), tokens=tokens, cache=cache)


def test_unknown_component(fp32_export):
    with pytest.raises(UnknownNameError, match="unknown component 'steps'. Did you mean 'step'"):
        zoo.runtime.load(fp32_export[0], verify=False).components("steps")


def _flip_last_byte(path):
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def _edit_manifest(directory, **changes):
    path = directory / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest.update(changes)
    path.write_text(json.dumps(manifest))


TAMPERING = {
    "missing graph": (lambda d: (d / "decode.onnx").unlink(), r"decode.onnx is missing \(listed in manifest.json\)"),
    "missing asset file": (lambda d: (d / "files" / "notes.txt").unlink(), "files/notes.txt is missing"),
    "changed graph": (
        lambda d: _flip_last_byte(d / "step.onnx"),
        "step.onnx does not match its sha256 in manifest.json",
    ),
    "changed arrays": (
        lambda d: _flip_last_byte(d / "assets.safetensors"),
        "assets.safetensors does not match its sha256",
    ),
    "other zoo version": (
        lambda d: _edit_manifest(d, zoo_version="9.3.0"),
        r"was exported by zoo 9.3.0, this is zoo .*export again with this zoo or install zoo 9.3",
    ),
    "other format version": (
        lambda d: _edit_manifest(d, format_version=2),
        "has format version 2, this zoo reads version 1",
    ),
    "not a manifest": (lambda d: _edit_manifest(d, format="something-else"), "is not a zoo export manifest"),
    "broken manifest": (lambda d: (d / "manifest.json").write_text("{"), "manifest.json is not valid JSON"),
    "missing manifest": (lambda d: (d / "manifest.json").unlink(), "has no manifest.json: it is not a finished export"),
    "model without a runtime": (
        lambda d: _edit_manifest(d, model="nonexistent"),
        "no installed plugin provides a runtime for model 'nonexistent'; install the plugin",
    ),
}


@pytest.mark.parametrize("case", TAMPERING)
def test_a_tampered_export_directory_is_a_one_line_error(export_copy, case):
    tamper, message = TAMPERING[case]
    tamper(export_copy)
    with pytest.raises(ExportError, match=message) as error:
        zoo.runtime.load(export_copy)
    assert "\n" not in str(error.value)


def test_missing_directory(tmp_path):
    with pytest.raises(ExportError, match="does not exist; make one with `zoo export"):
        zoo.runtime.load(tmp_path / "nowhere")


BLOCK_AND_CHECK = (
    BLOCK_TORCH
    + """
import json
import math
try:
    import torch
    sys.exit("torch was importable")
except ImportError:
    pass
"""
)


def test_an_export_loads_and_samples_with_torch_unimportable(tiny, fp32_export):
    script = BLOCK_AND_CHECK + textwrap.dedent(f"""
        import zoo.runtime
        loaded = zoo.runtime.load({str(fp32_export[0])!r})
        output = loaded.sample({{"count": 2, "seed": 7, "top_k": 3}})
        assert not any(name == "torch" or name.startswith("torch.") for name in sys.modules)
        print(json.dumps({{"indices": output.extras["indices"].tolist(), "images": output.images.tolist()}}))
    """)
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": path},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    printed = json.loads(result.stdout)
    torch_output = torch_sample(tiny, count=2, seed=7, top_k=3)
    np.testing.assert_array_equal(np.array(printed["indices"]), torch_output.extras["indices"])
    assert np.abs(np.array(printed["images"]) - torch_output.images.astype(int)).max() <= 1
