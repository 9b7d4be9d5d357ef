"""The whole plugin contract.

A plugin is an importable module (or a `.py` file named in a registry file) with
functions marked `@zoo.hookimpl`. zoo finds it through the `zoo.plugins` entry-point
group of an installed package, or through a registry file (see `zoo.registry`).

Example, a complete plugin module::

    import zoo

    class MyModel(zoo.ModelPlugin[MyConfig, MySampleOptions, MyNetwork]):
        name = "my_model"
        ...  # build(config: MyConfig) -> MyNetwork, stages(config) -> list[zoo.Stage[MyConfig, MyNetwork]], ...

    @zoo.hookimpl
    def zoo_register_models():
        return [MyModel()]

One module may implement several hooks (a package with a model and its own exporter);
each hook below is optional. Hooks are prefixed `zoo_` and called with keyword arguments; an implementation whose
name matches no spec below is rejected when the plugin loads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from zoo.exporter import Exporter
    from zoo.importer import Importer
    from zoo.plugin import ModelPlugin

hookspec = pluggy.HookspecMarker("zoo")
hookimpl = pluggy.HookimplMarker("zoo")


@hookspec
def zoo_register_models() -> list[ModelPlugin[Any, Any, Any]]:
    """Return the models this plugin provides, one `ModelPlugin` instance each.

    Model names are global: two plugins returning the same name is an error that names
    both. Importing the plugin module must be cheap; build nothing heavy here.
    """


@hookspec
def zoo_register_exporters() -> list[Exporter[Any]]:
    """Return the export formats this plugin provides, one `zoo.Exporter` instance each.

    `zoo export MODEL --format NAME` and `Run.export(out_dir, format=NAME, **options)` find
    an exporter by its `name`; `zoo export` builds its flags from the exporter's `Options`
    (a pydantic model, one flag per field) and prints the rows of its `summary`. The built-in
    ONNX exporter (format "onnx", the default) registers through this hook from its own
    entry point, like any third party's::

        class NpzExporter(zoo.Exporter[NpzOptions]):
            name = "npz"
            description = "each component's weights as one .npz"
            Options = NpzOptions  # a zoo.ExportOptions subclass

            def export(self, plugin, model, config, out_dir, options):
                ...  # write files into out_dir
                return {"files": [...]}

        @zoo.hookimpl
        def zoo_register_exporters():
            return [NpzExporter()]

    Format names are global like model names: a plugin returning a name another plugin
    already holds fails to load (reported by `zoo plugins`), the rest still load. Import
    the heavy machinery (torch, onnx) inside `export`, not at module level.
    """


@hookspec
def zoo_register_importers() -> list[Importer]:
    """Return converters of published checkpoints, one `zoo.Importer` instance each.

    An importer turns the files of one published format of one model into zoo's config
    values and state dict (`Importer.convert`); `zoo import MODEL FILE... --out RUN [--format
    F]` and `zoo.import_checkpoint(...)` run it and write an ordinary run directory, so that
    sample, eval, export and `train --from` work on it unchanged. Read the files with
    `zoo.checkpoint_files.load_checkpoint`, which never runs code from a pickle::

        class OfficialImporter(zoo.Importer):
            model = "my_model"
            format = "official"
            description = "model.pth from the authors' release page"
            # what `zoo pull NAME` can fetch (optional): the Hub (repo=) or a plain url=
            checkpoints = (
                zoo.PublishedCheckpoint(
                    "my-model-base", (zoo.RemoteFile("model.pth", repo="me/my-model"),), "the base model", "MIT"
                ),
            )

            def convert(self, files):
                tensors = load_checkpoint(files[0])
                return zoo.Converted(config={...}, tensors={...}, stages=["main"])

        @zoo.hookimpl
        def zoo_register_importers():
            return [OfficialImporter()]

    `model/format` names are global like model names, and so are the names of published
    checkpoints (`zoo pull --list`).
    """
