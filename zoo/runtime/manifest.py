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
import importlib.machinery
import json
from pathlib import Path
from typing import Any

import pydantic

from zoo.errors import ExportError, not_there

MANIFEST_NAME = "manifest.json"
FORMAT = "zoo-onnx-export"
FORMAT_VERSION = 1
ASSET_ARRAYS_NAME = "assets.safetensors"
ASSET_FILES_DIR = "files"


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file, read in 1 MiB blocks (model files are gigabytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def major_minor(version: str) -> tuple[str, ...]:
    return tuple(version.split(".")[:2])


def read_manifest(export_dir: Path, public_key: Path | None = None) -> dict[str, Any]:
    """Parse `manifest.json` and check that this zoo can read it; no file checks yet.

    With `public_key` (an Ed25519 public key in PEM), the manifest's exact bytes must carry
    a valid `manifest.sig` first (see zoo.runtime.signing)."""
    export_dir = Path(export_dir)
    if not export_dir.is_dir():
        raise ExportError(
            f"export directory {export_dir} {not_there(export_dir, 'directory')}; "
            f"make one with `zoo export MODEL --out {export_dir}`"
        )
    path = export_dir / MANIFEST_NAME
    if not path.is_file():
        raise ExportError(
            f"{export_dir} has no {MANIFEST_NAME}: it is not a finished export directory; export again with `zoo export`"
        )
    refuse_code(export_dir)
    data = path.read_bytes()  # read once: the bytes verified are the bytes parsed
    if public_key is not None:
        from zoo.runtime.signing import verify_signature

        verify_signature(export_dir, data, public_key)
    return parse_manifest(path, data)


def refuse_code(export_dir: Path) -> None:
    """An export is graphs, arrays and a manifest, never code: a module in it (`numpy.py`,
    a package, a compiled extension) would be imported instead of the installed one by a
    Python started there with the directory on sys.path (`python -m zoo run .` puts the
    working directory first before zoo can drop it; `zoo run` and `python -P` do not)."""
    suffixes = tuple(importlib.machinery.all_suffixes())
    found = sorted(p.relative_to(export_dir).as_posix() for p in export_dir.rglob("*") if p.name.endswith(suffixes))
    if found:
        shown = ", ".join(found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
        raise ExportError(
            f"{export_dir} holds Python code ({shown}), which no export carries; it is refused unread: "
            "remove the files or export again"
        )


def parse_manifest(path: Path, data: bytes) -> dict[str, Any]:
    from zoo.version import __version__

    manifest = load_json(path, data)
    if not is_export_manifest(manifest):
        raise ExportError(
            f'{path} is not a zoo export manifest (no "format": "{FORMAT}"); export again with `zoo export`'
        )
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ExportError(
            f"{path} has format version {manifest.get('format_version')!r}, this zoo reads version {FORMAT_VERSION}; "
            "export again with this zoo or install the zoo that made it"
        )
    made_by = str(manifest.get("zoo_version", "unknown"))
    if major_minor(made_by) != major_minor(__version__):
        raise ExportError(
            f"{path.parent} was exported by zoo {made_by}, this is zoo {__version__} (an export is read by the same "
            f"major.minor version); export again with this zoo or install zoo {'.'.join(major_minor(made_by))}"
        )
    check_entries(path, manifest)
    return manifest


def load_json(path: Path, data: bytes) -> Any:
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ExportError(f"{path} is not valid JSON ({error}); export again with `zoo export`") from None


def is_export_manifest(manifest: Any) -> bool:
    return isinstance(manifest, dict) and manifest.get("format") == FORMAT


def manifest_at(directory: Path) -> bool:
    """Whether `directory` holds a manifest.json that parses as a zoo export manifest (of
    any version): what the exporter may replace."""
    path = Path(directory) / MANIFEST_NAME
    try:
        return is_export_manifest(json.loads(path.read_bytes()))
    except (OSError, ValueError):  # missing, unreadable, not JSON
        return False


# The entries the runtime reads, with their JSON types. strict: a number where a string
# belongs (or a list where a mapping belongs) is damage, not something to coerce.
class _Entry(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(strict=True)


class _FileEntry(_Entry):
    file: str
    sha256: str


class _TensorEntry(_Entry):
    name: str
    dtype: str
    shape: list[int | str | None]


class _ComponentEntry(_FileEntry):
    external_data: _FileEntry | None = None
    inputs: list[_TensorEntry]
    outputs: list[_TensorEntry]


class _AssetsEntry(_Entry):
    arrays: _FileEntry | None = None
    files: dict[str, _FileEntry] = {}


class _ManifestEntries(_Entry):
    model: str
    config: dict[str, Any] = pydantic.Field(min_length=1)  # every model has a config
    components: dict[str, _ComponentEntry] = pydantic.Field(min_length=1)
    assets: _AssetsEntry = _AssetsEntry()


def check_entries(path: Path, manifest: dict[str, Any]) -> None:
    """One line naming the first damaged entry, instead of a KeyError or TypeError later."""
    try:
        _ManifestEntries.model_validate(manifest)
    except pydantic.ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "(root)"
        raise ExportError(
            f"{path} is damaged: entry {where!r}: {first['msg']}; export again with `zoo export`"
        ) from None


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
            raise ExportError(
                f"{MANIFEST_NAME} in {export_dir} names {entry['file']!r}, outside the export directory; export again"
            )
        if not path.is_file():
            raise ExportError(
                f"{export_dir}/{entry['file']} is missing (listed in {MANIFEST_NAME}); the export is incomplete: export again"
            )
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
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        path = Path(export_dir) / assets["arrays"]["file"]
        try:
            arrays = load_file(str(path))
        except (SafetensorError, ValueError) as error:
            raise ExportError(f"{path} is not a readable safetensors file ({error}); export again") from None
    files = {name: (Path(export_dir) / entry["file"]).read_bytes() for name, entry in assets.get("files", {}).items()}
    return arrays, files
