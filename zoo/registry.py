"""The plugin registry: finds plugin modules, loads them with pluggy, collects their models.

Plugin modules come from three places, in this order:
1. installed packages' entry points in the group `zoo.plugins` (the built-in plugins too);
2. the repository's `registry.yaml` (`plugins:` list of module names);
3. a user registry file, `--registry FILE` or `$ZOO_REGISTRY`, in the same format, whose
   `plugins:` may also name `.py` files (relative to the file).
Registry files may also add or override presets: `presets: {MODEL: {PRESET: {...}}}`.

A module named twice loads once. A plugin that fails to import or to register is
recorded in `failures` and the rest still load, unless strict (`ZOO_STRICT=1`), for CI.
`ZOO_LOAD_PLUGINS=a,b` restricts entry points to the named ones; empty loads none.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pluggy
import yaml

from zoo import hookspecs
from zoo.config import deep_merge
from zoo.errors import PluginError, UnknownNameError
from zoo.plugin import ModelPlugin

ENTRY_POINT_GROUP = "zoo.plugins"
REPO_REGISTRY = Path(__file__).resolve().parent.parent / "registry.yaml"


@dataclass
class PluginInfo:
    name: str  # module name
    source: str  # "entry point <dist>", "registry.yaml", or the user registry path
    version: str | None = None
    models: list[str] = field(default_factory=list)
    error: str | None = None


@dataclass
class ModelEntry:
    plugin: ModelPlugin
    module: str
    source: str


class Registry:
    def __init__(self, registry_file: Path | None = None, strict: bool = False) -> None:
        self.strict = strict
        self.manager = pluggy.PluginManager("zoo")
        self.manager.add_hookspecs(hookspecs)
        self.plugins: dict[str, PluginInfo] = {}
        self.models: dict[str, ModelEntry] = {}
        self.preset_overrides: dict[str, dict[str, dict[str, Any]]] = {}
        for name, source, version, loader in self._discover(registry_file):
            if name not in self.plugins:
                self._load(name, source, version, loader)

    # discovery -----------------------------------------------------------------------

    def _discover(self, registry_file: Path | None):
        wanted = os.environ.get("ZOO_LOAD_PLUGINS")
        allowed = None if wanted is None else {n.strip() for n in wanted.split(",") if n.strip()}
        for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            if allowed is not None and entry_point.name not in allowed and entry_point.value not in allowed:
                continue
            dist = entry_point.dist
            source = f"entry point {dist.name if dist else '?'}"
            yield entry_point.value, source, dist.version if dist else None, entry_point.load
        registry_files = [(REPO_REGISTRY, "registry.yaml")] if REPO_REGISTRY.is_file() else []
        user_file = registry_file or os.environ.get("ZOO_REGISTRY")
        if user_file:
            user_path = Path(user_file)
            if not user_path.is_file():
                raise PluginError(f"registry file {user_path} does not exist; fix --registry or $ZOO_REGISTRY")
            registry_files.append((user_path, str(user_path)))
        for path, source in registry_files:
            data = self._read_registry_file(path)
            for model, presets in (data.get("presets") or {}).items():
                for preset, values in (presets or {}).items():
                    current = self.preset_overrides.setdefault(model, {}).get(preset, {})
                    self.preset_overrides[model][preset] = deep_merge(current, values or {})
            for spec in data.get("plugins") or []:
                spec = str(spec)
                if spec.endswith(".py"):
                    file = (path.parent / spec).resolve()
                    yield str(file), source, None, lambda file=file: _import_file(file)
                else:
                    yield spec, source, None, lambda spec=spec: importlib.import_module(spec)

    @staticmethod
    def _read_registry_file(path: Path) -> dict[str, Any]:
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise PluginError(f"registry file {path} is not valid YAML: {error}") from None
        if not isinstance(data, dict) or not set(data) <= {"plugins", "presets"}:
            raise PluginError(f"registry file {path} must be a mapping with keys 'plugins' and/or 'presets'")
        return data

    # loading -------------------------------------------------------------------------

    def _load(self, name: str, source: str, version: str | None, loader) -> None:
        info = PluginInfo(name=name, source=source, version=version)
        self.plugins[name] = info
        try:
            module = loader()
            if self.manager.is_registered(module):
                return  # the same module reached under another name
            self.manager.register(module, name=name)
            try:
                self.manager.check_pending()
            except pluggy.PluginValidationError as error:
                self.manager.unregister(name=name)
                raise PluginError(f"unknown hook: {error}") from None
            models = self._call_register(name)
        except Exception as error:  # any failure of third-party code is reported, not fatal
            info.error = f"{type(error).__name__}: {error}".splitlines()[0]
            if self.strict:
                raise PluginError(f"plugin {name} ({source}) failed to load: {info.error}") from None
            return
        for model in models:
            existing = self.models.get(model.name)
            if existing is not None:
                raise PluginError(
                    f"model name {model.name!r} is registered twice: by {existing.module} ({existing.source}) "
                    f"and by {name} ({source}); uninstall or rename one of them"
                )
            self.models[model.name] = ModelEntry(model, name, source)
            info.models.append(model.name)
            info.version = info.version or model.version

    def _call_register(self, plugin_name: str) -> list[ModelPlugin]:
        models: list[ModelPlugin] = []
        for impl in self.manager.hook.zoo_register_models.get_hookimpls():
            if impl.plugin_name == plugin_name:
                result = impl.function() or []
                for model in result:
                    if not isinstance(model, ModelPlugin):
                        raise PluginError(f"zoo_register_models returned {type(model).__name__}, not a ModelPlugin")
                models.extend(result)
        return models

    # queries -------------------------------------------------------------------------

    @property
    def failures(self) -> list[PluginInfo]:
        return [info for info in self.plugins.values() if info.error]

    def get(self, model: str) -> ModelPlugin:
        if model not in self.models:
            raise UnknownNameError("model", model, self.models)
        return self.models[model].plugin

    def presets(self, model: str) -> dict[str, dict[str, Any]]:
        """The model's presets with registry-file overrides applied (and presets they add)."""
        presets = dict(self.get(model).presets)
        for preset, values in self.preset_overrides.get(model, {}).items():
            presets[preset] = deep_merge(presets.get(preset, {}), values)
        return presets

    def preset(self, model: str, preset: str | None) -> tuple[str | None, dict[str, Any]]:
        plugin = self.get(model)
        presets = self.presets(model)
        name = preset or plugin.default_preset
        if name is None:
            return None, {}
        if name not in presets:
            raise UnknownNameError(f"preset of {model}", name, presets)
        return name, presets[name]


def _import_file(path: Path) -> ModuleType:
    if not path.is_file():
        raise FileNotFoundError(f"plugin file {path} does not exist")
    module_name = f"zoo_user_plugin_{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


_default: Registry | None = None
_cli_choice: dict[str, Any] = {}


def configure_registry(registry_file: Path | None = None, strict: bool = False) -> None:
    """What `zoo --registry FILE --strict` asked for; overrides the environment."""
    global _default
    _cli_choice.update(registry_file=registry_file, strict=strict)
    _default = None


def get_registry() -> Registry:
    """The process-wide registry, built on first use."""
    global _default
    if _default is None:
        strict = _cli_choice.get("strict") or os.environ.get("ZOO_STRICT", "") not in ("", "0")
        _default = Registry(_cli_choice.get("registry_file"), strict)
    return _default


def reset_registry() -> None:
    global _default
    _default = None
    _cli_choice.clear()
