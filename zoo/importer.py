"""What a plugin hands the core to import published checkpoints (`zoo import`).

A leaf module like zoo.exporter: it imports no torch at run time, so the registry can
collect importers without loading the machinery they use. See zoo.importing for what the
core does with them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from zoo.version import __version__

if TYPE_CHECKING:
    import torch


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
    plain pickle), and return an instance from `zoo_register_importers`."""

    model: ClassVar[str]  # the zoo model the files become
    format: ClassVar[str]  # e.g. "official"
    description: ClassVar[str]  # the published files, and where they are published
    version: ClassVar[str] = __version__  # recorded in the run directory

    @property
    def name(self) -> str:
        return f"{self.model}/{self.format}"

    def convert(self, files: list[Path]) -> Converted:
        raise NotImplementedError
