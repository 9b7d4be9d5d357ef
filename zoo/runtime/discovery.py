"""Which installed plugin runs an export (torch-free).

An export directory is data: whoever wrote it chooses its every byte. So the sampling
loop is looked up by the manifest's model name among *installed* plugins, never imported
from a module path the manifest names. A plugin declares its loop in the entry-point
group `zoo.runtimes` (name: the model, value: "package.module:RuntimeClass"); the loop's
`options_class` gives the sample options (zoo.runtime_entry_points). Plugin modules
themselves import torch, so they are consulted only as a fallback, when torch is
importable: a plugin loaded from a registry file, with no installed distribution, names
its loop in `ModelPlugin.runtime`.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

from zoo.config import SampleOptionsBase
from zoo.errors import ExportError, ZooError
from zoo.extras import installed
from zoo.runtime.loop import ModelRuntime
from zoo.runtime_entry_points import installed_runtime


def runtime_class(model: str, export_dir: Path) -> type[ModelRuntime]:
    """The installed runtime class for `model`, refused if the export directory shadows it."""
    target = declared_runtime(model)
    module_name, _, qualname = target.partition(":")
    refuse_shadowed(module_name, model, Path(export_dir))
    try:
        found: object = importlib.import_module(module_name)
        for part in qualname.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError) as error:
        raise ExportError(
            f"the runtime {target!r} installed for model {model!r} cannot be imported ({error}); reinstall its plugin"
        ) from None
    if not (isinstance(found, type) and issubclass(found, ModelRuntime)):
        raise ExportError(
            f"the runtime {target!r} installed for model {model!r} is not a zoo.runtime.ModelRuntime subclass"
        )
    options = getattr(found, "options_class", None)
    if not (isinstance(options, type) and issubclass(options, SampleOptionsBase)):
        raise ExportError(
            f"the runtime {target!r} for model {model!r} sets no options_class (a SampleOptions class); fix the plugin"
        )
    return found


def declared_runtime(model: str) -> str:
    """ "package.module:Class" from the `zoo.runtimes` entry point named `model`, else the
    `runtime` a registered plugin without an installed distribution sets (which needs torch)."""
    target = installed_runtime(model)
    if target is not None:
        return target
    missing = ExportError(
        f"no installed plugin provides a runtime for model {model!r}; install the plugin that made this export"
    )
    if not installed("torch"):
        raise missing
    from zoo.registry import get_registry

    try:
        declared = get_registry().get(model).runtime
    except ZooError:
        raise missing from None
    if declared is None:
        raise missing
    return declared


def refuse_shadowed(module_name: str, model: str, export_dir: Path) -> None:
    """Refuse a runtime package that would be imported from inside the export directory
    (a `zoo_var.py` dropped there by whoever wrote the export, found because the directory
    is on sys.path, e.g. as the working directory)."""
    package = module_name.split(".")[0]
    try:
        spec = importlib.util.find_spec(package)  # a top-level name: finds, imports nothing
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        raise ExportError(f"the runtime package {package!r} for model {model!r} is not installed; reinstall its plugin")
    root = export_dir.resolve()
    locations = [spec.origin, *(spec.submodule_search_locations or [])]
    for location in locations:
        if location and location not in ("built-in", "frozen"):
            path = Path(location).resolve()
            if path == root or root in path.parents:
                raise ExportError(
                    f"{path} in the export directory shadows the installed runtime package {package!r}; "
                    "remove it, or run from another directory"
                )
