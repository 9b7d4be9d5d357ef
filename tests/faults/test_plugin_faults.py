"""Plugins that misbehave: each is reported as its own failure or warning; the rest load."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.conftest import zoo_command
from tests.core.test_registry import GOOD_PLUGIN, write
from zoo.errors import PluginError
from zoo.registry import Registry

CLAIMS_VAR = GOOD_PLUGIN.format(name="var")


def test_a_plugin_claiming_a_built_in_name_fails_alone(tmp_path, monkeypatch):
    monkeypatch.setenv("ZOO_LOAD_PLUGINS", "zoo_var")
    write(tmp_path / "impostor.py", CLAIMS_VAR)
    registry = Registry(write(tmp_path / "reg.yaml", "plugins: [impostor.py]\n"))
    assert registry.models["var"].module == "zoo_var.plugin"
    [failure] = registry.failures
    assert failure.name.endswith("impostor.py")
    assert "'var' is already registered by zoo_var.plugin" in failure.error
    with pytest.raises(PluginError, match="already registered"):
        Registry(tmp_path / "reg.yaml", strict=True)


def test_a_built_in_name_clash_does_not_stop_commands(tmp_path):
    write(tmp_path / "impostor.py", CLAIMS_VAR)
    write(tmp_path / "reg.yaml", "plugins: [impostor.py]\n")
    result = subprocess.run(
        zoo_command("--registry", str(tmp_path / "reg.yaml"), "info", "var"), capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("var ")


def test_the_later_of_two_plugins_with_one_name_fails(tmp_path, monkeypatch):
    monkeypatch.setenv("ZOO_LOAD_PLUGINS", "")
    write(tmp_path / "first.py", GOOD_PLUGIN.format(name="clash"))
    write(tmp_path / "second.py", GOOD_PLUGIN.format(name="clash"))
    registry = Registry(write(tmp_path / "reg.yaml", "plugins: [first.py, second.py]\n"))
    assert registry.models["clash"].module.endswith("first.py")
    [failure] = registry.failures
    assert failure.name.endswith("second.py")
    assert "first.py" in failure.error


def test_sys_exit_at_import_is_a_reported_failure(tmp_path, monkeypatch):
    monkeypatch.setenv("ZOO_LOAD_PLUGINS", "")
    write(tmp_path / "quitter.py", "import sys\nsys.exit(3)\n")
    registry = Registry(write(tmp_path / "reg.yaml", "plugins: [quitter.py]\n"))
    [failure] = registry.failures
    assert "sys.exit(3)" in failure.error


def test_sys_exit_at_import_does_not_end_the_cli_silently(tmp_path):
    write(tmp_path / "quitter.py", "import sys\nsys.exit(3)\n")
    write(tmp_path / "reg.yaml", "plugins: [quitter.py]\n")
    result = subprocess.run(
        zoo_command("--registry", str(tmp_path / "reg.yaml"), "plugins"), capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "FAILED: the plugin called sys.exit(3)" in result.stdout


def test_an_unmarked_hook_is_a_warning(tmp_path, monkeypatch):
    monkeypatch.setenv("ZOO_LOAD_PLUGINS", "")
    write(tmp_path / "unmarked.py", "def zoo_register_modles():\n    return []\n")
    registry = Registry(write(tmp_path / "reg.yaml", "plugins: [unmarked.py]\n"))
    info = next(info for name, info in registry.plugins.items() if name.endswith("unmarked.py"))
    assert info.error is None
    assert any("zoo_register_modles" in w and "did you mean 'zoo_register_models'" in w for w in info.warnings)
    assert any("implements no hook" in w for w in info.warnings)


def test_an_unmarked_hook_shows_in_zoo_plugins(tmp_path):
    write(tmp_path / "unmarked.py", "def zoo_register_models():\n    return []\n")
    write(tmp_path / "reg.yaml", "plugins: [unmarked.py]\n")
    result = subprocess.run(
        zoo_command("--registry", str(tmp_path / "reg.yaml"), "plugins", "--json"), capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    [info] = [info for info in json.loads(result.stdout) if info["name"].endswith("unmarked.py")]
    assert info["error"] is None
    assert any("not marked @zoo.hookimpl" in warning for warning in info["warnings"])
    table = subprocess.run(
        zoo_command("--registry", str(tmp_path / "reg.yaml"), "plugins"), capture_output=True, text=True
    )
    assert "warning:" in table.stdout  # the status column says so (its text may wrap)
