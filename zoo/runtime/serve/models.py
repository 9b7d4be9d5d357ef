"""The served models: each export directory loaded once at startup (manifest, sha256 and,
with a key, signature checks: zoo.runtime.load) and shared by every request.

A model is named by its export directory's name (`exports/var-digits` -> `var-digits`),
so two exports of one model can be served side by side.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from zoo import runtime
from zoo.config import image_inputs
from zoo.errors import ConfigError
from zoo.runtime.serve.settings import ServeSettings


@dataclass
class ServedModel:
    name: str
    loaded: runtime.LoadedExport
    image_options: dict[str, bool] = field(init=False)  # option -> takes a list of images

    def __post_init__(self) -> None:
        self.image_options = image_inputs(self.loaded.options_class)

    def summary(self) -> dict[str, Any]:
        """What GET /v1/models says of this model: the manifest's description, not its config."""
        manifest = self.loaded.manifest
        return {
            "name": self.name,
            "model": self.loaded.model,
            "zoo_version": manifest.get("zoo_version"),
            "opset": manifest.get("opset"),
            "precision": manifest.get("precision"),
            "components": sorted(manifest["components"]),
            "provider": self.loaded.providers.get("used"),
            "image_options": sorted(self.image_options),
            "progress": self.loaded.runtime.reports_progress,  # ?stream=1 sends each step's images
            "options": self.loaded.options_class.model_json_schema(),
        }


def load_models(settings: ServeSettings) -> dict[str, ServedModel]:
    """Load every export directory; a broken one stops the server before it listens."""
    models: dict[str, ServedModel] = {}
    for export_dir in settings.export_dirs:
        name = export_dir.resolve().name
        if name in models:
            raise ConfigError(
                f"two export directories are named {name!r}; a model is served under its directory's name: rename one"
            )
        loaded = runtime.load(
            export_dir,
            provider=settings.provider,
            intra_op_threads=settings.session_threads,
            verify_key=settings.verify_key,
        )
        models[name] = ServedModel(name, loaded)
    return models
