"""`export_model`: a plugin's components -> a validated export directory."""

from __future__ import annotations

import re
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

import torch

from zoo.components import Component
from zoo.config import ZooConfig
from zoo.errors import ConfigError, ExportError, UnknownNameError
from zoo.plugin import ModelPlugin
from zoo.runtime.manifest import manifest_at
from zoo.runtime.signing import load_private_key
from zoo_onnx.manifest import build_manifest, component_entry, write_assets, write_manifest
from zoo_onnx.options import DEFAULT_OPSET, PRECISIONS
from zoo_onnx.precision import PRECISION_BOUNDS, convert_precision
from zoo_onnx.trace import check_graph, check_opset, trace_component
from zoo_onnx.validate import VALIDATION_PROVIDER, VALIDATION_SIZES, validate_component

COMPONENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # becomes a file name


def export_model(
    plugin: ModelPlugin[Any, Any, Any],
    model: torch.nn.Module,
    config: ZooConfig,
    out_dir: str | Path,
    opset: int | None = None,
    precision: str = "fp32",
    components: list[str] | None = None,
    device: str | torch.device = "cpu",
    sign_key: str | Path | None = None,
) -> dict[str, Any]:
    """Export the plugin's components (all, or those named) to `out_dir` and return the
    manifest written there.

    Each component is traced on `make_inputs(0)`, converted to `precision`, checked with
    onnx.checker and validated against torch on `make_inputs(1)` and `make_inputs(2)`;
    any failure raises a one-line ExportError and leaves `out_dir` as it was. The
    directory is built beside `out_dir` and renamed into place at the end; an existing
    export there is replaced, any other existing directory is refused. `sign_key`: an
    Ed25519 private key (PEM file) that signs manifest.json into manifest.sig.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    opset = DEFAULT_OPSET if opset is None else opset
    check_opset(opset)
    key = load_private_key(Path(sign_key)) if sign_key is not None else None
    device = torch.device(device)
    out_dir = Path(out_dir)
    recover_destination(out_dir)
    check_destination(out_dir)
    model.to(device).eval()
    selected = select_components(plugin.export_components(model, config), components)
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}{PARTIAL}", dir=out_dir.parent))
    except OSError as error:
        raise OSError(error.errno, error.strerror, str(out_dir)) from None
    try:
        entries = {}
        with tempfile.TemporaryDirectory(prefix="zoo-onnx-") as scratch:
            for component in selected:
                entries[component.name] = export_component(component, staging, Path(scratch), opset, precision, device)
        assets = write_assets(staging, plugin.export_assets(model, config))
        validation = {
            "provider": VALIDATION_PROVIDER,
            "sizes": list(VALIDATION_SIZES),
            "rule": "float outputs: max|onnx - torch| <= max(precision_bound * max|torch|, tolerance * max(1, "
            "max|torch|)); integer outputs: fraction of differing elements <= precision_bound",
            "precision_bounds": PRECISION_BOUNDS,
        }
        manifest = build_manifest(plugin, config, written_opset(entries, opset), precision, entries, assets, validation)
        write_manifest(staging, manifest, key)
        apply_umask(staging)
        replace_directory(staging, out_dir)
    except BaseException as error:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(error, OSError):  # name --out, not the hidden staging file that failed
            raise OSError(error.errno, error.strerror, str(out_dir)) from None
        raise
    return manifest


def written_opset(entries: dict[str, dict[str, Any]], requested: int) -> int:
    """The opset the graphs really have (read back from each), which must be the one asked for."""
    for name, entry in entries.items():
        if entry["opset"] != requested:
            raise ExportError(
                f"component {name!r} was written at opset {entry['opset']}, not the requested {requested}; "
                f"export with --opset {DEFAULT_OPSET}"
            )
    return requested


def select_components(declared: list[Component], names: list[str] | None) -> list[Component]:
    by_name: dict[str, Component] = {}
    for component in declared:
        if component.name in by_name:
            raise ExportError(f"the plugin declares two components named {component.name!r}; rename one")
        if not COMPONENT_NAME.match(component.name):
            raise ExportError(
                f"component name {component.name!r} must be letters, digits, '_', '-' or '.' (it names a file)"
            )
        by_name[component.name] = component
    if names is None:
        return declared
    for name in names:
        if name not in by_name:
            raise UnknownNameError("component", name, by_name)
    return [by_name[name] for name in dict.fromkeys(names)]


def export_component(
    component: Component, out_dir: Path, scratch: Path, opset: int, precision: str, device: torch.device
) -> dict[str, Any]:
    inputs = component.make_inputs(0)
    if set(inputs) != set(component.input_names):
        raise ExportError(
            f"component {component.name!r}: make_inputs gives {sorted(inputs)}, input_names are {component.input_names}"
        )
    component.module.to(device).eval()
    graph = trace_component(component, {name: tensor.to(device) for name, tensor in inputs.items()}, scratch, opset)
    file = f"{component.name}.onnx"
    precision = "fp32" if component.keep_fp32 else precision
    precision = convert_precision(graph, out_dir / file, precision, component.name, scratch)
    del graph  # it may hold weight copies made by constant folding: free them before validation loads the file
    check_graph(out_dir / file, component.name)
    validation = validate_component(component, out_dir / file, precision, device)
    return component_entry(component, out_dir, file, precision, validation)


def check_destination(out_dir: Path) -> None:
    """Refuse to replace anything but an earlier export: a directory whose manifest.json
    parses as a zoo export manifest (a web app's manifest.json does not)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"--out {out_dir} is a file; choose a directory for --out")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not manifest_at(out_dir):
        raise ExportError(f"--out {out_dir} exists and is not an export directory; choose another --out or empty it")


# Replacing an export is three renames, each atomic: the old export goes aside, the new
# one comes in, the old one is marked for deletion and deleted. A kill between any two
# leaves a complete export at --out or in the aside, and the next export to that --out
# puts the aside back (recover_destination) before it starts.
PARTIAL = ".partial-"  # `.NAME.partial-*`: a new export being written
ASIDE = ".previous-"  # `.NAME.previous-*`: the old export, whole, while the new one comes in
DISCARD = ".discard-"  # `.NAME.discard-*`: an old export being deleted


def replace_directory(staging: Path, out_dir: Path) -> None:
    check_destination(out_dir)
    if not out_dir.exists():
        staging.rename(out_dir)
        return
    aside = out_dir.with_name(f".{out_dir.name}{ASIDE}{uuid.uuid4().hex[:8]}")
    out_dir.rename(aside)
    try:
        staging.rename(out_dir)
    except BaseException:
        aside.rename(out_dir)
        raise
    discard(aside)


def recover_destination(out_dir: Path) -> None:
    """Undo what a killed export left beside `out_dir`: put the old export back if it was
    set aside and the new one never came in; delete stale asides and partial exports."""
    if not out_dir.parent.is_dir():
        return
    leftovers = {
        kind: [p for p in out_dir.parent.iterdir() if p.name.startswith(f".{out_dir.name}{kind}") and p.is_dir()]
        for kind in (PARTIAL, ASIDE, DISCARD)
    }
    asides = sorted((p for p in leftovers[ASIDE] if manifest_at(p)), key=lambda p: p.stat().st_mtime, reverse=True)
    if asides and not out_dir.exists():
        asides.pop(0).rename(out_dir)
    for aside in asides:
        discard(aside)
    for path in leftovers[PARTIAL] + leftovers[DISCARD]:
        shutil.rmtree(path, ignore_errors=True)


def discard(aside: Path) -> None:
    # Renamed first: a deletion cut short must not leave a half export under a name that
    # recover_destination would put back at --out.
    head, _, tag = aside.name.rpartition(ASIDE)
    doomed = aside.with_name(f"{head}{DISCARD}{tag}")
    aside.rename(doomed)
    shutil.rmtree(doomed, ignore_errors=True)  # the new export is in place; a leftover goes next time


def apply_umask(directory: Path) -> None:
    """Give every file and folder the mode a plain mkdir/open gives under the user's umask
    (0755 and 0644 with umask 022): mkdtemp makes the staging directory 0700, and some
    writers make files 0600. The umask is read from a probe folder, not os.umask, which
    would change it for every thread while it is read."""
    probe = directory / ".umask-probe"
    probe.mkdir(0o777)
    folder_mode = probe.stat().st_mode & 0o777
    probe.rmdir()
    file_mode = folder_mode & 0o666
    directory.chmod(folder_mode)
    for path in directory.rglob("*"):
        path.chmod(folder_mode if path.is_dir() else file_mode)
