"""A model's sampling loop is declared once: the `zoo.runtimes` entry point named after the
model. `zoo run` imports it without torch (zoo.runtime.discovery) and `zoo sample` runs it
on the torch modules (`ModelPlugin.runtime_target`). A plugin's own `runtime` is for a
plugin loaded without an installed distribution, and must agree with an installed one."""

from __future__ import annotations

import pytest

from tests.core.toy_plugin import ToyPlugin
from zoo.errors import PluginError
from zoo.registry import get_registry, reset_registry
from zoo.runtime.discovery import runtime_class
from zoo.runtime.loop import ModelRuntime
from zoo.runtime_entry_points import installed_runtimes

BUILT_IN = {"var", "vqvae2_pixelcnn", "quantart", "multimodal_caption"}


@pytest.fixture
def installed_plugins(example_plugin_env, monkeypatch):
    """The model plugins of installed distributions: the built-in ones and the example."""
    monkeypatch.delenv("ZOO_LOAD_PLUGINS")  # every entry point, not only the example's
    reset_registry()
    models = get_registry().models
    yield {name: entry.plugin for name, entry in models.items() if entry.source.startswith("entry point")}
    reset_registry()


def test_every_installed_plugin_declares_its_loop_once_and_both_paths_run_it(installed_plugins, tmp_path):
    assert BUILT_IN | {"tiny_autoencoder"} <= set(installed_plugins)
    declared = installed_runtimes()
    for name, plugin in installed_plugins.items():
        assert type(plugin).runtime is None, f"{name}: `runtime` repeats its zoo.runtimes entry point"
        assert declared.get(name) == [plugin.runtime_target()], f"{name}: `zoo sample` runs the installed loop"
        loop = plugin.runtime_class()
        assert loop is runtime_class(name, tmp_path), f"{name}: `zoo run` imports the loop `zoo sample` runs"
        assert issubclass(loop, ModelRuntime), name
        assert loop.options_class is plugin.SampleOptions, f"{name}: `zoo run` takes the options `zoo sample` takes"


def test_a_plugin_runtime_must_agree_with_the_installed_one(example_plugin_env):
    from zoo_tiny_autoencoder.plugin import TinyAutoencoderPlugin

    class Same(TinyAutoencoderPlugin):
        runtime = "zoo_tiny_autoencoder.runtime:TinyAutoencoderRuntime"

    class Other(TinyAutoencoderPlugin):
        runtime = "tests.core.toy_plugin:NoRuntime"

    assert Same().runtime_target() == "zoo_tiny_autoencoder.runtime:TinyAutoencoderRuntime"
    with pytest.raises(PluginError, match=r"`zoo sample` and `zoo run` would differ"):
        Other().runtime_class()


def test_a_plugin_without_a_distribution_names_its_loop_itself():
    assert "toy" not in installed_runtimes()
    assert ToyPlugin().runtime_target() == "tests.core.toy_plugin:NoRuntime"

    class Nowhere(ToyPlugin):
        runtime = None

    with pytest.raises(PluginError, match="has no sampling loop"):
        Nowhere().runtime_target()
