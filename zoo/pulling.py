"""Published weights in one command (`zoo pull NAME --out RUN`, `zoo.pull`).

Each importer lists the checkpoints its authors publish at stable addresses
(`Importer.checkpoints`: name, files on the Hugging Face Hub or at a plain URL, sha256
where known, the preset they fit, licence, the paper's figure). A pull is

    NAME --catalogue--> (importer, files) --zoo.downloads.fetch--> local files, hashes checked
         --zoo.importing.import_checkpoint--> RUN, recording where each file came from

The run directory is checked before anything is downloaded, and written only by the
import, all at once: a failed download, a wrong hash or a file that does not convert
leaves `--out` as it was.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zoo.downloads import fetch
from zoo.errors import PluginError, UnknownNameError
from zoo.importer import Importer, PublishedCheckpoint, RemoteFile
from zoo.importing import ImportedRun, check_new_run_dir, import_checkpoint
from zoo.registry import get_registry
from zoo.runtime.manifest import sha256_file


@dataclass(frozen=True)
class Listed:
    checkpoint: PublishedCheckpoint
    importer: Importer

    @property
    def model(self) -> str:
        return self.importer.model


@dataclass
class PulledFile:
    path: Path  # in the Hub's cache or zoo's
    source: str
    sha256: str
    checked: bool  # True: equal to the published sha256; False: none published, recorded


@dataclass
class PulledRun:
    name: str
    model: str
    imported: ImportedRun
    files: list[PulledFile]


def catalogue() -> dict[str, Listed]:
    """Every published checkpoint the installed importers list, by name."""
    listed: dict[str, Listed] = {}
    for entry in get_registry().importers.values():
        for checkpoint in entry.importer.checkpoints:
            if checkpoint.name in listed:
                other = listed[checkpoint.name].importer.name
                raise PluginError(
                    f"published checkpoint {checkpoint.name!r} is listed by importers {other} and "
                    f"{entry.importer.name}; rename one"
                )
            listed[checkpoint.name] = Listed(checkpoint, entry.importer)
    return dict(sorted(listed.items()))


def pull(name: str, out: str | Path | None = None, cache_dir: str | Path | None = None) -> PulledRun:
    """Fetch the published checkpoint `name` (`zoo pull --list`) and import it into the run
    directory `out` (default `runs/NAME`). Hub files land in the Hub's cache, plain URLs
    in `cache_dir` (default `~/.cache/zoo/pull`); files already there are not fetched again."""
    known = catalogue()
    if name not in known:
        raise UnknownNameError("published checkpoint", name, known)
    listed = known[name]
    out = Path(out) if out is not None else Path("runs") / name
    check_new_run_dir(out)  # before gigabytes of downloads, not after
    files = []
    for remote in listed.checkpoint.files:
        path = fetch(remote, Path(cache_dir) if cache_dir is not None else None)
        checked = remote.sha256 is not None  # fetch raised if it differed
        files.append(PulledFile(path, _source(remote, path), remote.sha256 or sha256_file(path), checked))
    imported = import_checkpoint(
        listed.model,
        [file.path for file in files],
        out,
        preset=listed.checkpoint.preset,
        format=listed.importer.format,
        published=_record(listed.checkpoint, files),
    )
    return PulledRun(name, listed.model, imported, files)


def _source(remote: RemoteFile, path: Path) -> str:
    """Where the file came from; a Hub file pinned to the commit it was read at (its snapshot folder)."""
    if remote.repo is not None and path.parent.parent.name == "snapshots":
        return f"hf://{remote.repo}@{path.parent.name}/{remote.filename}"
    return remote.source


def _record(checkpoint: PublishedCheckpoint, files: list[PulledFile]) -> dict[str, Any]:
    return {
        "name": checkpoint.name,
        "licence": checkpoint.licence,
        "figure": checkpoint.figure,
        "files": [
            {
                "name": file.path.name,
                "source": file.source,
                "sha256": "checked against the published value" if file.checked else "none published: recorded",
            }
            for file in files
        ],
    }
