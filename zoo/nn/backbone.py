"""timm backbones: the one lazy import of timm, and loading a backbone's weights from a
local safetensors file (nothing is downloaded)."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

from torch import nn

from zoo.errors import ConfigError, ZooError


def import_timm(needed_by: str, instead: str) -> ModuleType:
    """`import timm`, lazily: timm is optional and pulls in torchvision. On failure a
    ZooError says that `needed_by` needs timm and what to do `instead` without it."""
    try:
        import timm
    except Exception as error:  # a torchvision built for another torch raises RuntimeError, not ImportError
        raise ZooError(
            f"{needed_by} needs timm, which failed to import ({type(error).__name__}: {error}); "
            f"install a timm/torchvision that matches your torch, or {instead}"
        ) from None
    return timm


def create_timm_model(name: str, needed_by: str, instead: str, **options: Any) -> nn.Module:
    """timm's model `name`, randomly initialised (`pretrained=False`: weights come from a
    local file, `load_backbone_weights`); a ConfigError when timm cannot build it."""
    timm = import_timm(needed_by, instead)
    try:
        return timm.create_model(name, pretrained=False, **options)
    except Exception as error:
        described = ", ".join(f"{key}={value!r}" for key, value in options.items())
        raise ConfigError(
            f"timm cannot build {name!r}{' with ' + described if described else ''} for {needed_by}: {error}"
        ) from None


def load_backbone_weights(backbone: nn.Module, path: Path, what: str = "backbone weights file") -> None:
    """Load a safetensors state dict into `backbone`. Keys the backbone lacks (e.g. a
    classifier head saved with the full model) are ignored; keys it needs must all be
    there with the right shapes. `what` names the setting in error messages."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} {path} does not exist")
    try:
        state = load_file(str(path))
    except Exception as error:
        raise ConfigError(f"{what} {path} is not a safetensors file: {error}") from None
    wanted = backbone.state_dict()
    missing = sorted(set(wanted) - set(state))
    if missing:
        raise ConfigError(
            f"{what} {path} lacks {len(missing)} of the backbone's {len(wanted)} tensors "
            f"(first: {', '.join(missing[:3])}); was it saved from the same model?"
        )
    mismatched = [key for key in wanted if state[key].shape != wanted[key].shape]
    if mismatched:
        key = mismatched[0]
        raise ConfigError(
            f"{what} {path}: {key} has shape {tuple(state[key].shape)}, the backbone expects {tuple(wanted[key].shape)}"
        )
    backbone.load_state_dict({key: state[key] for key in wanted})
