"""zoo: a plugin-based model zoo for discrete-latent image generation and image/text models.

The names below import no torch; the training and model-building API is loaded on first
use so that `zoo run` and the runtime stay torch-free.
"""

from __future__ import annotations

from typing import Any

from zoo.config import ConfigSection, SampleOptionsBase, ZooConfig
from zoo.errors import ZooError
from zoo.hookspecs import hookimpl
from zoo.outputs import SampleOutput
from zoo.plugin import Component, ExportAssets, ModelPlugin, Optimizer, Stage, StageContext, StepContext, Validation

__version__ = "0.1.0"

_API = {"list_models", "get_plugin", "create_model", "resolve_config", "train", "load_run"}


def __getattr__(name: str) -> Any:
    if name in _API:
        from zoo import api

        return getattr(api, name)
    raise AttributeError(f"module 'zoo' has no attribute {name!r}")


__all__ = [
    "Component", "ConfigSection", "ExportAssets", "ModelPlugin", "Optimizer", "SampleOptionsBase", "SampleOutput",
    "Stage", "StageContext", "StepContext", "Validation", "ZooConfig", "ZooError", "hookimpl",
    *sorted(_API),
]
