"""The sampling loops installed plugins declare (torch-free; imports nothing it names).

A model's loop is declared once, where the torch-free `zoo run` can find it: the entry
point named after the model in the group `zoo.runtimes` of the plugin's distribution
(value: "package.module:Class", a zoo.runtime.loop.ModelRuntime subclass). `zoo sample`
finds the same one through `ModelPlugin.runtime_target`. Only a plugin with no installed
distribution (a module named by a registry file) sets `ModelPlugin.runtime` instead; where
both exist they must agree.
"""

from __future__ import annotations

import importlib.metadata

from zoo.errors import ExportError, PluginError

RUNTIME_GROUP = "zoo.runtimes"


def installed_runtimes() -> dict[str, list[str]]:
    """Model name -> the "package.module:Class" values its `zoo.runtimes` entry points declare."""
    runtimes: dict[str, set[str]] = {}
    for entry in importlib.metadata.entry_points(group=RUNTIME_GROUP):
        runtimes.setdefault(entry.name, set()).add(entry.value)
    return {model: sorted(values) for model, values in sorted(runtimes.items())}


def installed_runtime(model: str) -> str | None:
    """The one "package.module:Class" installed for `model`, None when there is none."""
    values = installed_runtimes().get(model, [])
    if len(values) > 1:
        raise ExportError(
            f"installed plugins declare several runtimes for model {model!r} ({', '.join(values)}); uninstall all but one"
        )
    return values[0] if values else None


def plugin_runtime(model: str, declared: str | None) -> str:
    """The loop of a registered plugin's model: its installed entry point, else the
    plugin's own `runtime` (`declared`); when both exist, they must name the same class."""
    installed = installed_runtime(model)
    if declared is None:
        if installed is None:
            raise PluginError(
                f"model {model!r} has no sampling loop: no installed distribution declares one in the entry-point "
                f'group {RUNTIME_GROUP!r} ({model} = "package.module:Class") and its ModelPlugin sets no `runtime`; '
                "install the plugin's package, or set `runtime` on a plugin loaded from a registry file"
            )
        return installed
    if installed is not None and installed != declared:
        raise PluginError(
            f"model {model!r}: its ModelPlugin's runtime {declared!r} is not the installed one ({installed!r}, "
            f"entry point in {RUNTIME_GROUP!r}), so `zoo sample` and `zoo run` would differ; declare the loop once, "
            "in the entry point, and drop `runtime` from the plugin"
        )
    return declared
