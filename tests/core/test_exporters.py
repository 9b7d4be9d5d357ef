"""Exporters are plugins: a second format registered from a plugin file is found by
`zoo export --format`, `Run.export(format=...)` and `zoo plugins`; format names clash like
model names; the core imports no exporter and the built-in ONNX exporter loads cheaply."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import zoo
from tests.conftest import ROOT, cli
from tests.tolerances import EPS16
from zoo.errors import ConfigError, PluginError, UnknownNameError
from zoo.registry import Registry, reset_registry

# A third party's exporter, as a user would write it: weights of the whole model as one .npz.
NPZ_EXPORTER = textwrap.dedent("""
    import json
    from typing import Literal

    import numpy as np
    from pydantic import Field

    import zoo


    class NpzOptions(zoo.ExportOptions):
        dtype: Literal["float32", "float16"] = Field("float32", description="dtype of float weights")
        compress: bool = Field(False, description="zip-compress the archive")


    class NpzExporter(zoo.Exporter):
        name = "{name}"
        description = "the model's state_dict as one .npz"
        version = "2.0.0"
        precisions = ("fp32", "fp16")
        Options = NpzOptions

        def export(self, plugin, model, config, out_dir, options):
            out_dir.mkdir(parents=True, exist_ok=True)
            arrays = {{key: value.detach().cpu().numpy() for key, value in model.state_dict().items()}}
            arrays = {{key: value.astype(options.dtype) if value.dtype.kind == "f" else value
                      for key, value in arrays.items()}}
            (np.savez_compressed if options.compress else np.savez)(out_dir / "weights.npz", **arrays)
            manifest = {{"format": self.name, "model": plugin.name, "dtype": options.dtype,
                        "arrays": {{key: list(value.shape) for key, value in arrays.items()}}}}
            (out_dir / "manifest.json").write_text(json.dumps(manifest))
            return manifest

        def summary(self, manifest):
            return [{{"array": key, "shape": "x".join(map(str, shape))}} for key, shape in manifest["arrays"].items()]

        def notes(self, manifest, out_dir, options):
            return [f"{{len(manifest['arrays'])}} arrays as {{options.dtype}}"]


    @zoo.hookimpl
    def zoo_register_exporters():
        return [NpzExporter()]
""")


@pytest.fixture
def npz_env(tmp_path, monkeypatch) -> Path:
    """The tiny model (a module) and the npz exporter (a .py file) from a user registry
    file; no entry point, so not the ONNX exporter either."""
    (tmp_path / "npz_exporter.py").write_text(NPZ_EXPORTER.format(name="npz"))
    registry = tmp_path / "registry.yaml"
    registry.write_text("plugins:\n  - tests.exporter.tiny_export_plugin\n  - npz_exporter.py\n")
    monkeypatch.setenv("ZOO_REGISTRY", str(registry))
    monkeypatch.setenv("ZOO_LOAD_PLUGINS", "")
    reset_registry()
    yield tmp_path
    reset_registry()


def test_a_second_exporter_through_the_cli(npz_env, tiny_run, tmp_path, capsys):
    out = tmp_path / "npz"
    code, stdout, stderr = cli(
        capsys,
        "export",
        "tiny",
        "--format",
        "npz",
        "--run",
        str(tiny_run),
        "--out",
        str(out),
        "--dtype",
        "float16",
        "--compress",
    )
    assert code == 0, stderr
    run = zoo.load_run(tiny_run, device="cpu")
    state = run.model.state_dict()
    with np.load(out / "weights.npz") as archive:
        assert set(archive.files) == set(state)
        for name, value in state.items():
            assert archive[name].dtype == np.float16, name
            # float16 rounds to nearest: eps16 / 2 relative, half the subnormal step 2**-24 near zero
            np.testing.assert_allclose(archive[name], value.numpy(), rtol=EPS16 / 2, atol=2**-25, err_msg=name)
    # the exporter's summary rows and notes, not ONNX columns
    assert "array" in stdout
    assert "shape" in stdout
    assert "max abs error" not in stdout
    assert f"export directory: {out}" in stdout
    assert f"{len(state)} arrays as float16" in stdout
    # --format may also come before MODEL
    code, _, stderr = cli(
        capsys, "export", "--format", "npz", "tiny", "--run", str(tiny_run), "--out", str(tmp_path / "b")
    )
    assert code == 0, stderr
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["dtype"] == "float32", stderr


def test_the_exporter_options_become_flags_and_are_validated(npz_env, tiny_run, tmp_path, capsys):
    code, stdout, stderr = cli(capsys, "export", "tiny", "--format", "npz", "--help")
    assert code == 0, stderr
    assert "--dtype {float32,float16}" in stdout
    assert "npz export options" in stdout
    assert "--opset" not in stdout  # the ONNX exporter's flags belong to it
    code, _, stderr = cli(
        capsys,
        "export",
        "tiny",
        "--format",
        "npz",
        "--run",
        str(tiny_run),
        "--out",
        str(tmp_path / "x"),
        "--dtype",
        "int4",
    )
    assert code == 2, stderr
    assert "invalid choice: 'int4'" in stderr
    assert not (tmp_path / "x").exists()


def test_a_second_exporter_through_the_api(npz_env, tiny_run, tmp_path):
    run = zoo.load_run(tiny_run, device="cpu")
    manifest = run.export(tmp_path / "npz", format="npz", dtype="float16")
    assert manifest["dtype"] == "float16"
    assert (tmp_path / "npz" / "weights.npz").is_file()
    with pytest.raises(ConfigError, match="npz export option 'precision'"):
        run.export(tmp_path / "other", format="npz", precision="int8")
    with pytest.raises(UnknownNameError, match="unknown export format 'npy'. Did you mean 'npz'?"):
        run.export(tmp_path / "other", format="npy")
    with pytest.raises(UnknownNameError, match="ZOO_LOAD_PLUGINS is set"):
        run.export(tmp_path / "other")  # "onnx", whose entry point this environment filters out
    assert not (tmp_path / "other").exists()


def test_unknown_format_through_the_cli_is_one_line(npz_env, tiny_run, tmp_path, capsys):
    code, _, stderr = cli(
        capsys, "export", "tiny", "--format", "npy", "--run", str(tiny_run), "--out", str(tmp_path / "x")
    )
    assert code == 1, stderr
    assert stderr.count("\n") == 1
    assert "Did you mean 'npz'?" in stderr


def test_zoo_plugins_lists_exporters(npz_env, capsys):
    code, stdout, _ = cli(capsys, "plugins", "--json")
    infos = {Path(info["name"]).name: info for info in json.loads(stdout)}
    assert infos["npz_exporter.py"]["exporters"] == ["npz"]
    assert infos["npz_exporter.py"]["models"] == []
    assert infos["npz_exporter.py"]["version"] == "2.0.0"
    assert infos["tests.exporter.tiny_export_plugin"]["exporters"] == []
    code, stdout, _ = cli(capsys, "plugins")
    assert "exporters" in stdout
    assert "npz" in stdout


def test_an_export_format_claimed_twice_fails_the_later_plugin(tmp_path, monkeypatch):
    monkeypatch.setenv("ZOO_LOAD_PLUGINS", "")
    (tmp_path / "first.py").write_text(NPZ_EXPORTER.format(name="npz"))
    # the second plugin also brings a model: it fails as a whole, so its model is not registered
    (tmp_path / "second.py").write_text(
        NPZ_EXPORTER.format(name="npz")
        + textwrap.dedent("""
        from tests.core.toy_plugin import ToyPlugin

        @zoo.hookimpl
        def zoo_register_models():
            return [ToyPlugin()]
    """)
    )
    (tmp_path / "third.py").write_text(NPZ_EXPORTER.format(name="npz16"))
    registry_file = tmp_path / "reg.yaml"
    registry_file.write_text("plugins: [first.py, second.py, third.py]\n")
    registry = Registry(registry_file)
    assert set(registry.exporters) == {"npz", "npz16"}
    assert "toy" not in registry.models
    assert registry.exporters["npz"].module.endswith("first.py")
    [failure] = registry.failures
    assert failure.name.endswith("second.py")
    assert f"export format 'npz' is already registered by {tmp_path / 'first.py'}" in failure.error
    with pytest.raises(PluginError, match="export format 'npz' is already registered"):
        Registry(registry_file, strict=True)


def test_an_exporter_hook_must_return_exporters(tmp_path, monkeypatch):
    monkeypatch.setenv("ZOO_LOAD_PLUGINS", "")
    (tmp_path / "wrong.py").write_text("import zoo\n@zoo.hookimpl\ndef zoo_register_exporters():\n    return ['npz']\n")
    (tmp_path / "reg.yaml").write_text("plugins: [wrong.py]\n")
    [failure] = Registry(tmp_path / "reg.yaml").failures
    assert "zoo_register_exporters returned str, not a zoo.Exporter" in failure.error


def test_onnx_options_keep_the_old_flags():
    from zoo.cli import parse_options
    from zoo_onnx.options import OnnxOptions

    common = {"--out": {"required": True}}
    _, options = parse_options(
        OnnxOptions,
        "zoo export",
        ["--out", "e", "--components", "decode,step", "--sign", "key.pem", "--precision", "int8", "--opset", "18"],
        common,
    )
    assert options.components == ["decode", "step"]
    assert options.sign_key == Path("key.pem")
    assert (options.precision, options.opset) == ("int8", 18)
    _, options = parse_options(OnnxOptions, "zoo export", ["--out", "e", "--components", "decode", "step"], common)
    assert options.components == ["decode", "step"]
    assert options.precision == "fp32"


def test_the_onnx_exporter_is_an_entry_point_plugin_that_loads_without_torch():
    """Found like a third party's plugin (no registry file names it), and cheap to load."""
    script = textwrap.dedent("""
        import json, sys
        from zoo.registry import Registry
        registry = Registry()
        entry = registry.exporters["onnx"]
        print(json.dumps([entry.module, entry.source, sorted(registry.models), list(entry.exporter.precisions),
                          "torch" in sys.modules, "onnx" in sys.modules]))
    """)
    env = {"ZOO_LOAD_PLUGINS": "zoo_onnx", "PATH": "", "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=ROOT / "tests")
    assert result.returncode == 0, result.stderr
    module, source, models, precisions, torch_loaded, onnx_loaded = json.loads(result.stdout)
    assert (module, source, models) == ("zoo_onnx.plugin", "entry point zoo", [])
    assert precisions == ["fp32", "fp16", "int8"]
    assert not torch_loaded
    assert not onnx_loaded


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at top level or inside functions."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def test_the_core_imports_no_exporter_and_no_plugin():
    offenders = {
        str(path.relative_to(ROOT)): sorted(name for name in _imports(path) if name.split(".")[0].startswith("zoo_"))
        for path in (ROOT / "zoo").rglob("*.py")
    }
    assert {path: names for path, names in offenders.items() if names} == {}


def test_components_and_exporter_interfaces_are_leaf_modules():
    """zoo.components imports nothing of zoo (so zoo.plugin, zoo.torch_components and the
    exporters share it without importing each other); zoo.torch_components does not import
    zoo.plugin (which imports it to sample)."""
    assert not {name for name in _imports(ROOT / "zoo" / "components.py") if name.split(".")[0] == "zoo"}
    assert {name for name in _imports(ROOT / "zoo" / "exporter.py") if name.split(".")[0] == "zoo"} <= {
        "zoo.config",  # for type checking only
        "zoo.plugin",  # for type checking only
        "zoo.version",  # a leaf: one constant
    }
    assert "zoo.plugin" not in _imports(ROOT / "zoo" / "torch_components.py")
    assert zoo.plugin.Component is zoo.Component
    assert zoo.plugin.ExportAssets is zoo.ExportAssets
