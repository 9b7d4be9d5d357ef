"""The interface every exporter implements.

An exporter turns a trained model into files another program runs: the built-in ONNX
exporter writes one graph per component plus a manifest that `zoo run` reads. A plugin
module hands the registry `Exporter` objects through the `zoo_register_exporters` hook
(see `zoo.hookspecs`), exactly as it hands over models; `zoo export MODEL --format NAME`
and `Run.export(out_dir, format=NAME, **options)` look them up by `name`.

    class NpzExporter(zoo.Exporter[NpzOptions]):
        name = "npz"
        description = "the model's weights as one .npz"
        Options = NpzOptions            # a zoo.ExportOptions subclass: one CLI flag per field

        def export(self, plugin, model, config, out_dir, options):
            ...                         # write into out_dir
            return {"files": [...]}     # the manifest / summary, JSON-serialisable

A leaf module beside zoo.components: it imports no torch and no exporter.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

import pydantic

from zoo.version import __version__

if TYPE_CHECKING:
    from torch import nn

    from zoo.config import ZooConfig
    from zoo.plugin import ModelPlugin

DEFAULT_FORMAT = "onnx"
"""What `zoo export` and `Run.export` use when no format is named."""


class ExportOptions(pydantic.BaseModel):
    """Base of an exporter's options. Every field becomes a `zoo export` flag (`sign_key`
    -> `--sign-key`, more flags from `json_schema_extra={"flags": [...]}`) and a keyword
    of `Run.export`; give each a description, it is the flag's help. Unknown options are
    errors."""

    model_config = pydantic.ConfigDict(extra="forbid")


ExportOptionsT = TypeVar("ExportOptionsT", bound=ExportOptions)


class Exporter(Generic[ExportOptionsT]):
    """Base class of an exporter. Subclasses set the class attributes and override `export`;
    `summary` and `notes` shape what `zoo export` prints.

    The type parameter is the exporter's `Options` class (`Exporter[NpzOptions]`): the core
    validates the user's options with `Options` and passes the result to `export` and `notes`.
    (`Options` itself stays typed as any ExportOptions class: it has a default, and a class
    attribute cannot name the type parameter.)"""

    name: ClassVar[str]  # the format, `zoo export --format NAME`; global like model names
    description: ClassVar[str]
    version: ClassVar[str] = __version__  # a third-party exporter sets its own
    precisions: ClassVar[tuple[str, ...]] = ("fp32",)  # numeric precisions it can write
    Options: ClassVar[type[ExportOptions]] = ExportOptions

    def export(
        self,
        plugin: ModelPlugin[Any, Any, Any],
        model: nn.Module,
        config: ZooConfig,
        out_dir: Path,
        options: ExportOptionsT,
    ) -> dict[str, Any]:
        """Write the export of `model` (built by `plugin` from `config`) to `out_dir` and
        return its manifest (or a summary of what was written). Fail with a ZooError whose
        message says what to do; leave no half-written `out_dir` behind."""
        raise NotImplementedError

    def summary(self, manifest: dict[str, Any]) -> list[dict[str, Any]]:
        """The rows of the table `zoo export` prints (one per written part, the same keys
        in every row); none prints no table."""
        return []

    def notes(self, manifest: dict[str, Any], out_dir: Path, options: ExportOptionsT) -> list[str]:
        """Lines `zoo export` prints after the table and the export directory."""
        return []
