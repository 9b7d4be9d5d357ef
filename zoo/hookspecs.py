"""The whole plugin contract.

A plugin is an importable module (or a `.py` file named in a registry file) with
functions marked `@zoo.hookimpl`. zoo finds it through the `zoo.plugins` entry-point
group of an installed package, or through a registry file (see `zoo.registry`).

Example, a complete plugin module::

    import zoo

    class MyModel(zoo.ModelPlugin):
        name = "my_model"
        ...

    @zoo.hookimpl
    def zoo_register_models():
        return [MyModel()]

Hooks are prefixed `zoo_` and called with keyword arguments; an implementation whose
name matches no spec below is rejected when the plugin loads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from zoo.plugin import ModelPlugin

hookspec = pluggy.HookspecMarker("zoo")
hookimpl = pluggy.HookimplMarker("zoo")


@hookspec
def zoo_register_models() -> list[ModelPlugin]:
    """Return the models this plugin provides, one `ModelPlugin` instance each.

    Model names are global: two plugins returning the same name is an error that names
    both. Importing the plugin module must be cheap; build nothing heavy here.
    """
