"""zoo: a plugin-based model zoo for discrete-latent image generation and image/text models.

The names below import no torch; the training and model-building API is loaded on first
use so that `zoo run`, `zoo serve` and the runtime stay torch-free (in the base install,
without the `train` extra, using it is a one-line error naming that extra).
"""

from __future__ import annotations

from typing import Any

from zoo.components import Component, ExportAssets
from zoo.config import ConfigSection, SampleOptionsBase, ZooConfig
from zoo.errors import ZooError
from zoo.exporter import Exporter, ExportOptions
from zoo.hookspecs import hookimpl
from zoo.importer import Converted, Importer, PublishedCheckpoint, RemoteFile
from zoo.outputs import SampleOutput
from zoo.plugin import ModelPlugin, Optimizer, Stage, StageContext, StepContext, Validation
from zoo.version import __version__

_API = {
    "list_models",
    "get_plugin",
    "create_model",
    "resolve_config",
    "train",
    "load_run",
    "import_checkpoint",
    "pull",
}


def __getattr__(name: str) -> Any:
    if name in _API:
        from zoo.extras import require_train

        require_train(f"zoo.{name}")
        from zoo import api

        return getattr(api, name)
    raise AttributeError(f"module 'zoo' has no attribute {name!r}")


__all__ = [
    "Component",
    "ConfigSection",
    "Converted",
    "ExportAssets",
    "ExportOptions",
    "Exporter",
    "Importer",
    "ModelPlugin",
    "Optimizer",
    "PublishedCheckpoint",
    "RemoteFile",
    "SampleOptionsBase",
    "SampleOutput",
    "Stage",
    "StageContext",
    "StepContext",
    "Validation",
    "ZooConfig",
    "ZooError",
    "__version__",
    "hookimpl",
    *sorted(_API),
]
