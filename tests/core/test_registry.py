"""Plugin discovery: entry points, registry files, failures, strictness, name clashes."""

from __future__ import annotations

import textwrap

import pytest

from zoo.errors import PluginError, UnknownNameError
from zoo.registry import Registry

GOOD_PLUGIN = textwrap.dedent("""
    import zoo
    from tests.core.toy_plugin import ToyPlugin

    class Renamed(ToyPlugin):
        name = "{name}"
        presets = {{"base": {{"steps": 3}}}}
        default_preset = "base"

    @zoo.hookimpl
    def zoo_register_models():
        return [Renamed()]
""")


def write(path, text):
    path.write_text(text)
    return path


def test_example_plugin_is_found_through_its_entry_point(example_plugin_env):
    registry = Registry()
    entry = registry.models["tiny_autoencoder"]
    assert entry.source == "entry point zoo-tiny-autoencoder"
    assert registry.plugins["zoo_tiny_autoencoder.plugin"].version == "0.1.0"


def test_broken_plugin_is_reported_and_the_rest_load(example_plugin_env, tmp_path):
    write(tmp_path / "broken.py", "import zoo\nraise RuntimeError('boom at import')\n")
    registry_file = write(tmp_path / "reg.yaml", "plugins: [broken.py]\n")
    registry = Registry(registry_file)
    assert "tiny_autoencoder" in registry.models
    [failure] = [info for info in registry.failures if info.name.endswith("broken.py")]
    assert "boom at import" in failure.error
    with pytest.raises(PluginError, match="boom at import"):
        Registry(registry_file, strict=True)


def test_misspelled_hook_is_rejected(example_plugin_env, tmp_path):
    write(tmp_path / "typo.py", "import zoo\n@zoo.hookimpl\ndef zoo_register_model():\n    return []\n")
    registry = Registry(write(tmp_path / "reg.yaml", "plugins: [typo.py]\n"))
    [failure] = registry.failures
    assert "unknown hook" in failure.error
    assert "zoo_register_model" in failure.error


def test_a_module_named_twice_loads_once(tmp_path, monkeypatch):
    monkeypatch.setenv("ZOO_LOAD_PLUGINS", "")
    write(tmp_path / "once.py", GOOD_PLUGIN.format(name="once"))
    registry = Registry(write(tmp_path / "reg.yaml", "plugins: [once.py, once.py]\n"))
    assert list(registry.models) == ["once"]
    assert not registry.failures


def test_load_plugins_filter(example_plugin_env, monkeypatch):
    monkeypatch.setenv("ZOO_LOAD_PLUGINS", "")
    assert "tiny_autoencoder" not in Registry().models
    monkeypatch.setenv("ZOO_LOAD_PLUGINS", "tiny_autoencoder")
    assert set(Registry().plugins) == {"zoo_tiny_autoencoder.plugin"}


def test_user_registry_adds_and_overrides_presets(tmp_path, monkeypatch):
    monkeypatch.setenv("ZOO_LOAD_PLUGINS", "")
    write(tmp_path / "mine.py", GOOD_PLUGIN.format(name="mine"))
    registry = Registry(
        write(
            tmp_path / "reg.yaml",
            textwrap.dedent("""
        plugins: [mine.py]
        presets:
          mine:
            base: {batch_size: 4}
            extra: {steps: 9}
    """),
        )
    )
    assert registry.presets("mine") == {"base": {"steps": 3, "batch_size": 4}, "extra": {"steps": 9}}
    assert registry.preset("mine", None) == ("base", {"steps": 3, "batch_size": 4})
    with pytest.raises(UnknownNameError, match="Did you mean 'extra'"):
        registry.preset("mine", "extr")
    with pytest.raises(UnknownNameError, match="Did you mean 'mine'"):
        registry.get("mien")


def test_missing_registry_file_is_a_clear_error(tmp_path):
    with pytest.raises(PluginError, match="does not exist"):
        Registry(tmp_path / "nope.yaml")
