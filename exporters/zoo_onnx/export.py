"""`export_model`: a plugin's components -> a validated export directory."""

from __future__ import annotations

import ctypes
import errno
import json
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from zoo.components import Component
from zoo.config import ZooConfig
from zoo.errors import ConfigError, ExportError, UnknownNameError
from zoo.plugin import ModelPlugin
from zoo.runtime.manifest import MANIFEST_NAME, listed_files, manifest_at
from zoo.runtime.signing import SIGNATURE_NAME, load_private_key
from zoo.temporary import forget, new_name, record, recorded, remove, temporary_folder
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
    export there is replaced (swapped in one step on Linux), any other existing directory,
    or an export holding files it did not write, is refused. `sign_key`: an
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
        with temporary_folder(out_dir.parent, f".{out_dir.name}") as staging:
            entries = {}
            with tempfile.TemporaryDirectory(prefix="zoo-onnx-") as scratch:
                for component in selected:
                    entries[component.name] = export_component(
                        component, staging, Path(scratch), opset, precision, device
                    )
            assets = write_assets(staging, plugin.export_assets(model, config))
            validation = {
                "provider": VALIDATION_PROVIDER,
                "sizes": list(VALIDATION_SIZES),
                "rule": "float outputs: max|onnx - torch| <= max(precision_bound * max|torch|, tolerance * max(1, "
                "max|torch|)); integer outputs: fraction of differing elements <= precision_bound",
                "precision_bounds": PRECISION_BOUNDS,
            }
            opset = written_opset(entries, opset)
            manifest = build_manifest(plugin, config, opset, precision, entries, assets, validation)
            write_manifest(staging, manifest, key)
            apply_umask(staging)
            replace_directory(staging, out_dir)  # an old export there is now at `staging`, deleted with it
    except OSError as error:  # name --out, not the hidden staging file that failed
        raise OSError(error.errno, error.strerror, str(out_dir)) from None
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
    if not names:  # an export without a graph would be written, and fail only when run
        raise ConfigError(f"name at least one component to export: {', '.join(by_name)}")
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
    """Refuse to replace anything but an earlier export, whole: a directory whose
    manifest.json parses as a zoo export manifest (a web app's manifest.json does not) and
    that holds only the files that export wrote (a file a user added would be deleted)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"--out {out_dir} is a file; choose a directory for --out")
    if not out_dir.is_dir() or not any(out_dir.iterdir()):
        return
    if not manifest_at(out_dir):
        raise ExportError(f"--out {out_dir} exists and is not an export directory; choose another --out or empty it")
    added = files_not_written_by_export(out_dir)
    if added:
        shown = ", ".join(added[:3]) + (f" and {len(added) - 3} more" if len(added) > 3 else "")
        raise ExportError(
            f"--out {out_dir} holds files the export did not write ({shown}); replacing it would delete them: "
            "move them elsewhere or choose another --out"
        )


def files_not_written_by_export(out_dir: Path) -> list[str]:
    """The paths in an export directory (relative, sorted) that its manifest does not list."""
    try:
        manifest = json.loads((out_dir / MANIFEST_NAME).read_bytes())
        written = {entry["file"] for entry in listed_files(manifest)}
    except (ValueError, KeyError, TypeError, AttributeError):  # a damaged manifest: trust nothing in it
        written = set()
    written |= {MANIFEST_NAME, SIGNATURE_NAME}
    folders = {str(parent) for file in written for parent in Path(file).parents if str(parent) != "."}
    return sorted(
        relative
        for path in out_dir.rglob("*")
        if (relative := path.relative_to(out_dir).as_posix()) not in written | folders
    )


# Replacing an export swaps two directory entries in one step where the platform can
# (Linux: renameat2 RENAME_EXCHANGE), so --out always holds a complete export. Elsewhere it
# is two renames, and between them --out does not exist for an instant; a kill there leaves
# the old export under a recorded name (zoo.temporary) and the next export to that --out
# puts it back (recover_destination) before it starts.
ASIDE = "previous"  # the kind of the old export's recorded name while the new one comes in


def replace_directory(staging: Path, out_dir: Path) -> None:
    """Put `staging` at `out_dir`; an export already there ends up at `staging`."""
    check_destination(out_dir)
    if not out_dir.exists():
        staging.rename(out_dir)
        return
    if exchange(staging, out_dir):
        return
    aside = new_name(f".{out_dir.name}", ASIDE)
    record(out_dir.parent, aside)
    out_dir.rename(out_dir.parent / aside)
    try:
        staging.rename(out_dir)
    except BaseException:
        (out_dir.parent / aside).rename(out_dir)
        raise
    (out_dir.parent / aside).rename(staging)  # deleted with the staging folder
    forget(out_dir.parent, aside)


def recover_destination(out_dir: Path) -> None:
    """Undo what a killed export left beside `out_dir`: put the old export back if it was
    set aside and the new one never came in; delete the rest of what it recorded."""
    parent = out_dir.parent
    if not parent.is_dir():
        return
    asides = [parent / name for name in recorded(parent, f".{out_dir.name}", ASIDE)]
    if not out_dir.exists():
        whole = [aside for aside in asides if manifest_at(aside)]
        if whole:
            whole[-1].rename(out_dir)
    for name in recorded(parent, f".{out_dir.name}", ASIDE) + recorded(parent, f".{out_dir.name}"):
        remove(parent, name)


def exchange(first: Path, second: Path) -> bool:
    """Swap two directory entries atomically (Linux renameat2 RENAME_EXCHANGE); False where
    the platform or the file system cannot, and nothing was changed."""
    if sys.platform != "linux":
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):  # glibc before 2.28, or no libc to load
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(first), at_fdcwd, os.fsencode(second), rename_exchange) == 0:
        return True
    number = ctypes.get_errno()
    if number in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # a file system without exchange
        return False
    raise OSError(number, os.strerror(number), str(second))


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
