"""What a plugin hands the core to import published checkpoints (`zoo import`, `zoo pull`).

A leaf module like zoo.exporter: it imports no torch at run time, so the registry can
collect importers without loading the machinery they use. See zoo.importing for what the
core does with them, and zoo.pulling for the published checkpoints an importer lists.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from zoo.version import __version__

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class RemoteFile:
    """One published file: on the Hugging Face Hub (`repo` + `filename`) or at a plain `url`
    (saved under `filename`). `sha256` where its publisher states one (or it was measured
    on the published file); without it, `zoo pull` records the hash of what it got."""

    filename: str
    repo: str | None = None  # Hugging Face model repo, "FoundationVision/var"
    url: str | None = None
    revision: str | None = None  # Hub only: a branch, tag or commit (default: main)
    sha256: str | None = None

    def __post_init__(self) -> None:
        if (self.repo is None) == (self.url is None):
            raise ValueError(f"{self.filename}: give exactly one of repo= (Hugging Face) and url=")

    @property
    def source(self) -> str:
        """Where the file is published, as a reader finds it."""
        if self.repo is not None:
            at = f"@{self.revision}" if self.revision else ""
            return f"hf://{self.repo}{at}/{self.filename}"
        return str(self.url)


@dataclass(frozen=True)
class PublishedCheckpoint:
    """A checkpoint its authors publish, by the name `zoo pull NAME` takes: the files that
    together make one run of the importer's model."""

    name: str  # global like model names: "var-d16"
    files: tuple[RemoteFile, ...]
    description: str
    licence: str  # the licence the files are published under, and by whom
    figure: str | None = None  # the paper's (or release's) figure for these weights
    preset: str | None = None  # the preset the files fit; the import checks it


@dataclass
class Converted:
    """What an importer makes of the files: zoo's names, zoo's layout."""

    config: dict[str, Any]  # config values read off the tensors (partial; merged over the preset)
    tensors: dict[str, torch.Tensor]  # zoo state-dict key -> tensor
    stages: list[str]  # the stages whose weights these are (the rest keep their initialisation)
    notes: list[str] = field(default_factory=list)  # what was skipped or approximated, and why


class Importer:
    """Converts one published format of one model. Subclass, set the class attributes,
    implement `convert` (read files with `zoo.checkpoint_files.load_checkpoint`, never
    plain pickle), and return an instance from `zoo_register_importers`. List in
    `checkpoints` the files of this format published at stable addresses (the Hub or a
    plain URL): `zoo pull NAME` fetches them and runs `convert`."""

    model: ClassVar[str]  # the zoo model the files become
    format: ClassVar[str]  # e.g. "official"
    description: ClassVar[str]  # the published files, and where they are published
    version: ClassVar[str] = __version__  # recorded in the run directory
    checkpoints: ClassVar[tuple[PublishedCheckpoint, ...]] = ()  # what `zoo pull` can fetch for it

    @property
    def name(self) -> str:
        return f"{self.model}/{self.format}"

    def convert(self, files: list[Path]) -> Converted:
        raise NotImplementedError
