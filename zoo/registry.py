"""The plugin registry: finds plugin modules, loads them with pluggy, collects their models
and exporters.

Plugin modules come from three places, in this order:
1. installed packages' entry points in the group `zoo.plugins` (the built-in plugins too);
2. the repository's `registry.yaml` (`plugins:` list of module names);
3. a user registry file, `--registry FILE` or `$ZOO_REGISTRY`, in the same format, whose
   `plugins:` may also name `.py` files (relative to the file).
Registry files may also add or override presets: `presets: {MODEL: {PRESET: {...}}}`.

A module named twice loads once. A plugin that fails to import or to register (an
exception, `sys.exit`, a model or export format name another plugin already holds) is recorded in
`failures` and the rest still load, unless strict (`ZOO_STRICT=1`), for CI. The built-in
plugins (the `zoo` distribution's entry points) load first, so a third party that claims
a built-in name is the one that fails. A function named like a hook (`zoo_*`) but not
marked `@zoo.hookimpl` would be ignored silently by pluggy: it is kept as a warning.
`ZOO_LOAD_PLUGINS=a,b` restricts entry points to the named ones; empty loads none. That
includes exporters' entry points: name them too where `zoo export` is used.
"""

from __future__ import annotations

import difflib
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
from zoo.errors import PluginError, UnknownNameError, not_there
from zoo.exporter import Exporter
from zoo.importer import Importer
from zoo.plugin import ModelPlugin

ENTRY_POINT_GROUP = "zoo.plugins"
BUILT_IN_DISTRIBUTION = "zoo"
REPO_REGISTRY = Path(__file__).resolve().parent.parent / "registry.yaml"


@dataclass
class PluginInfo:
    name: str  # module name
    source: str  # "entry point <dist>", "registry.yaml", or the user registry path
    version: str | None = None
    models: list[str] = field(default_factory=list)
    exporters: list[str] = field(default_factory=list)  # export format names
    importers: list[str] = field(default_factory=list)  # "model/format" names
    error: str | None = None
    warnings: list[str] = field(default_factory=list)


@dataclass
class ModelEntry:
    plugin: ModelPlugin[Any, Any, Any]
    module: str
    source: str


@dataclass
class ExporterEntry:
    exporter: Exporter[Any]
    module: str
    source: str


@dataclass
class ImporterEntry:
    importer: Importer
    module: str
    source: str


# What each registration hook must return, and the word for its names in error messages.
REGISTRATIONS = {
    "zoo_register_models": (ModelPlugin, "model name"),
    "zoo_register_exporters": (Exporter, "export format"),
    "zoo_register_importers": (Importer, "importer"),
}


class Registry:
    def __init__(self, registry_file: Path | None = None, strict: bool = False) -> None:
        self.strict = strict
        self.manager = pluggy.PluginManager("zoo")
        self.manager.add_hookspecs(hookspecs)
        self.plugins: dict[str, PluginInfo] = {}
        self.models: dict[str, ModelEntry] = {}
        self.exporters: dict[str, ExporterEntry] = {}
        self.importers: dict[str, ImporterEntry] = {}
        self.preset_overrides: dict[str, dict[str, dict[str, Any]]] = {}
        for name, source, version, loader in self._discover(registry_file):
            if name not in self.plugins:
                self._load(name, source, version, loader)

    # discovery -----------------------------------------------------------------------

    def _discover(self, registry_file: Path | None):
        wanted = os.environ.get("ZOO_LOAD_PLUGINS")
        allowed = None if wanted is None else {n.strip() for n in wanted.split(",") if n.strip()}
        entry_points = sorted(
            importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: not _is_built_in(ep)
        )
        for entry_point in entry_points:
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
                raise PluginError(f"registry file {user_path} {not_there(user_path)}; fix --registry or $ZOO_REGISTRY")
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
        # A string is iterable too: `plugins: "./x.py"` would import each character as a module.
        plugins = data.get("plugins") or []
        if not isinstance(plugins, list) or not all(isinstance(spec, str) and spec.strip() for spec in plugins):
            raise PluginError(
                f"registry file {path}: 'plugins' must be a list of module names or .py files, "
                f"e.g. plugins: [my_plugin, ./my_plugin.py]; got {_shown(plugins)}"
            )
        presets = data.get("presets") or {}
        if not isinstance(presets, dict) or not all(
            isinstance(model, str)
            and isinstance(named or {}, dict)
            and all(isinstance(values or {}, dict) for values in (named or {}).values())
            for model, named in presets.items()
        ):
            raise PluginError(
                f"registry file {path}: 'presets' must map models to named presets of config fields, "
                f"e.g. presets: {{var: {{small: {{seed: 1}}}}}}; got {_shown(presets)}"
            )
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
                models = self._call_register("zoo_register_models", name)
                exporters = self._call_register("zoo_register_exporters", name)
                importers = self._call_register("zoo_register_importers", name)
                self._check_names(models, self.models, "model name", name)
                self._check_names(exporters, self.exporters, "export format", name)
                self._check_names(importers, self.importers, "importer", name)
            except BaseException:
                self.manager.unregister(name=name)
                raise
        except pluggy.PluginValidationError as error:
            self._fail(info, f"unknown hook: {error}")
            return
        except (Exception, SystemExit) as error:  # any failure of third-party code is reported, not fatal
            self._fail(info, _describe(error))
            return
        info.warnings.extend(hook_warnings(module))
        for model in models:
            self.models[model.name] = ModelEntry(model, name, source)
            info.models.append(model.name)
            info.version = info.version or model.version
        for exporter in exporters:
            self.exporters[exporter.name] = ExporterEntry(exporter, name, source)
            info.exporters.append(exporter.name)
            info.version = info.version or exporter.version
        for importer in importers:
            self.importers[importer.name] = ImporterEntry(importer, name, source)
            info.importers.append(importer.name)

    def _fail(self, info: PluginInfo, message: str) -> None:
        info.error = message.splitlines()[0] if message else "failed"
        if self.strict:
            raise PluginError(f"plugin {info.name} ({info.source}) failed to load: {info.error}") from None

    @staticmethod
    def _check_names(items: list[Any], registered: dict[str, Any], kind: str, name: str) -> None:
        """A name another plugin holds, or one returned twice, fails this plugin (all of it)."""
        seen: set[str] = set()
        for item in items:
            existing = registered.get(item.name)
            if existing is not None:
                raise PluginError(
                    f"{kind} {item.name!r} is already registered by {existing.module} ({existing.source}); "
                    f"uninstall or rename one of them"
                )
            if item.name in seen:
                raise PluginError(f"{kind} {item.name!r} is returned twice by {name}")
            seen.add(item.name)

    def _call_register(self, hook_name: str, plugin_name: str) -> list[Any]:
        expected, kind = REGISTRATIONS[hook_name]
        items: list[Any] = []
        for impl in getattr(self.manager.hook, hook_name).get_hookimpls():
            if impl.plugin_name == plugin_name:
                result = impl.function() or []
                for item in result:
                    if not isinstance(item, expected):
                        raise PluginError(f"{hook_name} returned {type(item).__name__}, not a zoo.{expected.__name__}")
                    item_name = getattr(item, "name", None)
                    if not isinstance(item_name, str) or not item_name:
                        raise PluginError(f"{hook_name} returned a {type(item).__name__} without a {kind} (set `name`)")
                items.extend(result)
        return items

    # queries -------------------------------------------------------------------------

    @property
    def failures(self) -> list[PluginInfo]:
        return [info for info in self.plugins.values() if info.error]

    def get(self, model: str) -> ModelPlugin[Any, Any, Any]:
        if model not in self.models:
            raise UnknownNameError("model", model, self.models)
        return self.models[model].plugin

    def get_exporter(self, format: str) -> Exporter[Any]:
        """The exporter of an export format ("onnx", ...)."""
        if format not in self.exporters:
            error = UnknownNameError("export format", format, self.exporters)
            if os.environ.get("ZOO_LOAD_PLUGINS") is not None:
                error.args = (f"{error.args[0]} ($ZOO_LOAD_PLUGINS is set: name the exporter's plugin there too)",)
            raise error
        return self.exporters[format].exporter

    def importer(self, model: str, format: str | None = None) -> Importer:
        """The importer of `model`'s published `format` (the only one, if `format` is None)."""
        self.get(model)
        formats = {
            entry.importer.format: entry.importer for entry in self.importers.values() if entry.importer.model == model
        }
        if format is None and len(formats) == 1:
            return next(iter(formats.values()))
        if format is None:
            if not formats:
                raise UnknownNameError(f"importer of {model}", "(any)", [])
            raise PluginError(
                f"{model} has importers for several formats ({', '.join(sorted(formats))}); choose one with --format"
            )
        if format not in formats:
            raise UnknownNameError(f"import format of {model}", format, formats)
        return formats[format]

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


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def _is_built_in(entry_point: importlib.metadata.EntryPoint) -> bool:
    dist = entry_point.dist
    return dist is not None and dist.name == BUILT_IN_DISTRIBUTION


def _describe(error: BaseException) -> str:
    if isinstance(error, SystemExit):
        return f"the plugin called sys.exit({error.code!r}) while loading"
    return f"{type(error).__name__}: {error}"


def hook_warnings(module: ModuleType) -> list[str]:
    """Functions named like a zoo hook but lacking `@zoo.hookimpl` (pluggy ignores them),
    and modules that implement no hook at all."""
    known = {name for name in dir(hookspecs) if name.startswith("zoo_")}
    warnings = []
    if not any(hasattr(value, "zoo_impl") for value in vars(module).values()):
        warnings.append("implements no hook (no function marked @zoo.hookimpl): it provides nothing")
    for attribute, value in vars(module).items():
        if not (attribute.startswith("zoo_") and callable(value)) or hasattr(value, "zoo_impl"):
            continue
        if attribute in known:
            warnings.append(f"{attribute} is not marked @zoo.hookimpl and is ignored; add the marker")
        else:
            close = difflib.get_close_matches(attribute, sorted(known), n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r} (with @zoo.hookimpl)?" if close else ""
            warnings.append(f"{attribute} looks like a hook but is neither marked nor a known hook{hint}")
    return warnings


def _import_file(path: Path) -> ModuleType:
    if not path.is_file():
        raise FileNotFoundError(f"plugin file {path} {not_there(path)}")
    module_name = f"zoo_user_plugin_{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:  # not a .py file
        raise ImportError(f"plugin file {path} is not a Python module; give a .py file")
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
