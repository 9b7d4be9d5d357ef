"""Loading a backbone's weights from a local safetensors file (nothing is downloaded)."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from zoo.errors import ConfigError


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
