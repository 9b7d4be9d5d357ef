"""Reading and verifying an export directory's `manifest.json` (torch-free, onnx-free).

The exporter (`zoo_onnx`) writes what this module reads; the names and the format version
below are the contract between the two.

An export directory::

    manifest.json         what is here, how it was made, how to run it (see zoo_onnx.manifest)
    <component>.onnx      one graph per component (+ <component>.onnx.data past 2 GB)
    assets.safetensors    the arrays the sampling loop needs (if any)
    files/<name>          the files the sampling loop needs, as given (if any)
"""

from __future__ import annotations

import hashlib
import importlib
import json
from pathlib import Path
from typing import Any

from zoo.errors import ExportError

MANIFEST_NAME = "manifest.json"
FORMAT = "zoo-onnx-export"
FORMAT_VERSION = 1
ASSET_ARRAYS_NAME = "assets.safetensors"
ASSET_FILES_DIR = "files"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def major_minor(version: str) -> tuple[str, ...]:
    return tuple(version.split(".")[:2])


def read_manifest(export_dir: Path) -> dict[str, Any]:
    """Parse `manifest.json` and check that this zoo can read it; no file checks yet."""
    from zoo import __version__

    export_dir = Path(export_dir)
    if not export_dir.is_dir():
        raise ExportError(f"export directory {export_dir} does not exist; make one with `zoo export MODEL --out {export_dir}`")
    path = export_dir / MANIFEST_NAME
    if not path.is_file():
        raise ExportError(f"{export_dir} has no {MANIFEST_NAME}: it is not a finished export directory; export again with `zoo export`")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ExportError(f"{path} is not valid JSON ({error}); export again with `zoo export`") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ExportError(f"{path} is not a zoo export manifest (no \"format\": \"{FORMAT}\"); export again with `zoo export`")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ExportError(
            f"{path} has format version {manifest.get('format_version')!r}, this zoo reads version {FORMAT_VERSION}; "
            "export again with this zoo or install the zoo that made it"
        )
    made_by = str(manifest.get("zoo_version", "unknown"))
    if major_minor(made_by) != major_minor(__version__):
        raise ExportError(
            f"{export_dir} was exported by zoo {made_by}, this is zoo {__version__} (an export is read by the same "
            f"major.minor version); export again with this zoo or install zoo {'.'.join(major_minor(made_by))}"
        )
    for key in ("model", "components", "runtime", "options", "config"):
        if key not in manifest:
            raise ExportError(f"{path} lacks the {key!r} entry; export again with `zoo export`")
    return manifest


def listed_files(manifest: dict[str, Any]) -> list[dict[str, str]]:
    """Every file the manifest vouches for: [{"file": relative path, "sha256": ...}, ...]."""
    entries = []
    for component in manifest["components"].values():
        entries.append({"file": component["file"], "sha256": component["sha256"]})
        if component.get("external_data"):
            entries.append(component["external_data"])
    assets = manifest.get("assets", {})
    if assets.get("arrays"):
        entries.append({"file": assets["arrays"]["file"], "sha256": assets["arrays"]["sha256"]})
    entries.extend(assets.get("files", {}).values())
    return entries


def verify_files(export_dir: Path, manifest: dict[str, Any]) -> None:
    """Every listed file is present, inside the directory, and has its recorded sha256."""
    root = Path(export_dir).resolve()
    for entry in listed_files(manifest):
        path = (root / entry["file"]).resolve()
        if root not in path.parents:
            raise ExportError(f"{MANIFEST_NAME} in {export_dir} names {entry['file']!r}, outside the export directory; export again")
        if not path.is_file():
            raise ExportError(f"{export_dir}/{entry['file']} is missing (listed in {MANIFEST_NAME}); the export is incomplete: export again")
        if sha256_file(path) != entry["sha256"]:
            raise ExportError(
                f"{export_dir}/{entry['file']} does not match its sha256 in {MANIFEST_NAME}: the file was changed or "
                "corrupted; export again"
            )


def load_assets(export_dir: Path, manifest: dict[str, Any]) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The arrays (numpy) and files (bytes) the sampling loop gets."""
    assets = manifest.get("assets", {})
    arrays: dict[str, Any] = {}
    if assets.get("arrays"):
        from safetensors.numpy import load_file

        arrays = load_file(str(Path(export_dir) / assets["arrays"]["file"]))
    files = {name: (Path(export_dir) / entry["file"]).read_bytes() for name, entry in assets.get("files", {}).items()}
    return arrays, files


def import_object(spec: str, what: str) -> Any:
    """`"package.module:Outer.Inner"` -> the object; a one-line error if it is not importable."""
    module_name, _, qualname = spec.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            target = getattr(target, part)
    except ImportError as error:
        raise ExportError(
            f"the export's {what} {spec!r} cannot be imported ({error}); install the plugin that made this export"
        ) from None
    except AttributeError:
        raise ExportError(f"the export's {what} {spec!r} does not exist in {module_name}; install the plugin version that made this export") from None
    return target
