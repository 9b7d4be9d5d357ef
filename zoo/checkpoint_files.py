"""Reading published `.pth` / `.ckpt` files without running anything they contain.

A pickle is a program: loading one with plain `pickle` can import any module and call any
function. Published checkpoints are read in two ways only:

1. `torch.load(weights_only=True)`: torch's own restricted unpickler, which builds
   tensors and plain containers and refuses everything else (a plain state dict, as the
   official VAR and rosinality files are);
2. when that refuses the file because it names other classes (a Lightning `.ckpt` holds
   callbacks and hyper-parameter objects next to `state_dict`), `InertUnpickler`: tensors
   and plain containers are built as usual, and every other class the file names becomes
   an inert stub that is never imported and never called. A stub keeps the names it was
   given (for error messages) and nothing else.

Either way the caller gets nested dicts/lists of tensors, and any non-weight object is a
`Stub`. A file that is not a torch checkpoint at all is a one-line `CheckpointError`.
"""

from __future__ import annotations

import collections
import pickle
import re
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import torch

from zoo.config import ZooConfig, validate
from zoo.errors import ConfigError, ZooError, first_line, not_there

ZooConfigT = TypeVar("ZooConfigT", bound=ZooConfig)


class CheckpointError(ZooError):
    """A published checkpoint that cannot be read, or does not hold what the importer needs."""


class Stub:
    """What an unknown class in a checkpoint becomes: inert, whatever it is called with."""

    module: str = ""
    qualname: str = ""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass  # the object's state is dropped, never interpreted

    def __repr__(self) -> str:
        return f"<stub of {self.module}.{self.qualname}>"


def _stub_class(module: str, qualname: str) -> type[Stub]:
    return type(f"Stub[{qualname}]", (Stub,), {"module": module, "qualname": qualname})


# What a tensor or a plain container needs, and nothing that can act on the world.
_ALLOWED: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor"): torch._utils._rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): torch._utils._rebuild_parameter_with_state,
    ("torch", "Size"): torch.Size,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "slice"): slice,
    ("builtins", "complex"): complex,
}


class InertUnpickler(pickle.Unpickler):
    """Resolves only tensor rebuilders, dtypes and plain containers; every other global
    becomes a stub class, without importing its module."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[module, name]
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        return _stub_class(module, name)


def _inert_load(file: Any, **kwargs: Any) -> Any:
    return InertUnpickler(file, **kwargs).load()


def _inert_pickle_module() -> ModuleType:
    """A stand-in for the `pickle` module in which every way to unpickle is InertUnpickler:
    torch.load subclasses its Unpickler (to resolve storages, deferring every other name to
    it) and, for files in the legacy format, calls its `load` directly."""
    module = ModuleType("zoo_inert_pickle")
    # A ModuleType declares no attributes: these two are the whole of this module.
    module.Unpickler = InertUnpickler  # type: ignore[attr-defined]
    module.load = _inert_load  # type: ignore[attr-defined]
    return module


def load_checkpoint(path: str | Path) -> Any:
    """The object a published checkpoint holds, with tensors on the CPU (see module doc)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} {not_there(path)}")
    # Zip-format files (torch >= 1.6) are memory-mapped: a model's weights are then read
    # from the page cache as they are copied into it, not held twice (VAR d30: 8 GiB).
    mmap = zipfile.is_zipfile(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as error:
        if "weights_only" not in str(error) and "Unsupported global" not in str(error):
            raise CheckpointError(
                f"{path} is not a readable torch checkpoint ({first_line(error, 160, with_type=True)})"
            ) from None
    except Exception as error:  # a truncated or foreign file fails in many ways; each is one line
        raise CheckpointError(
            f"{path} is not a readable torch checkpoint ({first_line(error, 160, with_type=True)}); is the download complete?"
        ) from None
    try:
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_inert_pickle_module(), mmap=mmap)
    except Exception as error:  # whatever a malformed pickle raises, it is one line
        raise CheckpointError(
            f"{path} is not a readable torch checkpoint ({first_line(error, 160, with_type=True)})"
        ) from None


def tensors_in(obj: Any, what: str, path: Path) -> dict[str, torch.Tensor]:
    """The `name -> tensor` mapping of a loaded checkpoint (the object itself, or its
    `state_dict` / `model` entry as Lightning and others store it)."""
    for candidate in (obj, _entry(obj, "state_dict"), _entry(obj, "model")):
        if isinstance(candidate, dict) and candidate and all(isinstance(v, torch.Tensor) for v in candidate.values()):
            return {str(k): v for k, v in candidate.items()}
    raise CheckpointError(f"{path} holds no {what} state dict (a mapping of names to tensors); is it the right file?")


def _entry(obj: Any, key: str) -> Any:
    return obj.get(key) if isinstance(obj, dict) else None


Rule = tuple[str, "str | None"]
"""(official key pattern, zoo key template or None to drop the tensor), for `re.sub`."""


RuleT = TypeVar("RuleT", bound=Rule)  # an importer's rules may all keep their tensor: tuple[str, str]


def matching_rule(rules: Sequence[RuleT], key: str) -> RuleT | None:
    """The first rule whose pattern matches the whole of `key`, or None."""
    return next((rule for rule in rules if re.fullmatch(rule[0], key)), None)


@dataclass
class PublishedFile:
    """The tensors of one published checkpoint, whose errors name the file and the key."""

    path: Path
    tensors: dict[str, torch.Tensor]
    kind: str  # what the file should be, for messages: "an official VAR file"

    def fail(self, key: str, problem: str) -> CheckpointError:
        return CheckpointError(f"{self.path}: {key!r} {problem}")

    def get(self, key: str, problem: str = "is missing") -> torch.Tensor:
        if key not in self.tensors:
            raise self.fail(key, f"{problem}; is this {self.kind}?")
        return self.tensors[key]

    def count(self, pattern: str) -> int:
        """How many distinct values the one group of `pattern` takes over the keys."""
        return len({m.group(1) for key in self.tensors if (m := re.match(pattern, key))})


def config_from_tensors(schema: type[ZooConfigT], values: Mapping[str, Any], path: Path, model: str) -> ZooConfigT:
    """The plugin's config validated from what an importer read off `path`; one line if invalid."""
    try:
        return validate(schema, dict(values))
    except ConfigError as error:
        reason = " ".join(str(error).split())  # pydantic's lines, as one
        raise CheckpointError(f"{path}: the tensors give no valid {model} config ({reason})") from None


def meta_shapes(build: Callable[[], torch.nn.Module]) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the state dict of the module `build` makes, built on the meta device
    (no memory, no initialisation): what converted tensors must fit."""
    with torch.device("meta"):
        return {key: tuple(value.shape) for key, value in build().state_dict().items()}
