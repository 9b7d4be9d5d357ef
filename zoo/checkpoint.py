"""Run directories: what a training run writes, written atomically, read without pickle.

    RUN/config.json          model, plugin version, zoo version, preset, resolved config
    RUN/model.safetensors    weights after the last finished stage
    RUN/metrics.jsonl        one JSON object per logged step
    RUN/samples/STAGE.png    the sample grid written when a stage ends
    RUN/cache/               data a stage derives once (e.g. token indices)
    RUN/state/latest.json    points at the newest complete trainer checkpoint:
    RUN/state/ckpt-N/        model.safetensors, tensors.safetensors, trainer.json

A trainer checkpoint is a folder written in full before `latest.json` is switched to it
(temp file + rename), so a kill at any moment leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

import zoo
from zoo.errors import RunError

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
METRICS_FILE = "metrics.jsonl"
STATE_DIR = "state"


# atomic writes ---------------------------------------------------------------------------


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_bytes(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def atomic_save_tensors(path: Path, tensors: Mapping[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp")
    # safetensors refuses shared storage; contiguous copies also fix non-contiguous views.
    save_file({k: v.detach().contiguous().clone() for k, v in tensors.items()}, str(temp), metadata=metadata)
    os.replace(temp, path)


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise RunError(f"{path} is not a readable safetensors file ({error}); the run directory is corrupt") from None


# run configs -----------------------------------------------------------------------------


def run_record(model: str, plugin_version: str, preset: str | None, config: dict[str, Any]) -> dict[str, Any]:
    return {"model": model, "plugin_version": plugin_version, "zoo_version": zoo.__version__,
            "preset": preset, "config": config}


def read_run_record(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise RunError(f"{run_dir} is not a run directory (no {CONFIG_FILE}); train one with `zoo train MODEL --out {run_dir}`")
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise RunError(f"{path} is not valid JSON ({error}); the run directory is corrupt") from None
    if not isinstance(record, dict) or not {"model", "config"} <= set(record):
        raise RunError(f"{path} lacks 'model' or 'config'; the run directory is corrupt")
    return record


def load_weights(model: torch.nn.Module, path: Path) -> None:
    """Load weights by name; a missing or unexpected tensor means another model's weights."""
    tensors = load_tensors(path)
    own = model.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    # A module's extra state (torch's get_extra_state, e.g. a tokenizer serialised as bytes)
    # is opaque: its size is known only once it is set, so only its presence is checked.
    mismatched = sorted(k for k in set(own) & set(tensors)
                        if not k.endswith("_extra_state") and own[k].shape != tensors[k].shape)
    if missing or unexpected or mismatched:
        detail = (f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}" if unexpected
                  else f"shape mismatch in {mismatched[:3]}")
        raise RunError(f"{path} does not fit this model ({detail}); it belongs to another model or config")
    model.load_state_dict(tensors)


def save_weights(model: torch.nn.Module, path: Path) -> None:
    atomic_save_tensors(path, model.state_dict())


# trainer checkpoints ---------------------------------------------------------------------


def flatten_state(state: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Split a nested state (optimizer/RNG state dicts) into JSON with tensor references.

    Tensors move into `tensors` under a path key; the JSON keeps {"__tensor__": key}.
    """
    if isinstance(state, torch.Tensor):
        tensors[prefix] = state
        return {"__tensor__": prefix}
    if isinstance(state, Mapping):
        return {"__dict__": [[_json_key(k), flatten_state(v, f"{prefix}/{k}", tensors)] for k, v in state.items()]}
    if isinstance(state, (list, tuple)):
        return [flatten_state(v, f"{prefix}/{i}", tensors) for i, v in enumerate(state)]
    return state


def unflatten_state(data: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    if isinstance(data, dict) and "__tensor__" in data:
        return tensors[data["__tensor__"]]
    if isinstance(data, dict) and "__dict__" in data:
        return {_from_json_key(k): unflatten_state(v, tensors) for k, v in data["__dict__"]}
    if isinstance(data, list):
        return [unflatten_state(v, tensors) for v in data]
    return data


def _json_key(key: Any) -> Any:
    # optimizer state is keyed by int parameter ids; JSON object keys would turn them to str
    return {"int": key} if isinstance(key, int) else key


def _from_json_key(key: Any) -> Any:
    return key["int"] if isinstance(key, dict) else key


def write_trainer_checkpoint(run_dir: Path, step_name: str, model: torch.nn.Module, state: dict[str, Any]) -> None:
    """Write model + trainer state into a fresh folder, then point `latest.json` at it."""
    state_dir = Path(run_dir) / STATE_DIR
    folder = state_dir / f"ckpt-{step_name}"
    partial = state_dir / f".ckpt-{step_name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    tensors: dict[str, torch.Tensor] = {}
    skeleton = flatten_state(state, "state", tensors)
    save_file({k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}, str(partial / WEIGHTS_FILE))
    save_file({k: v.detach().contiguous().clone() for k, v in tensors.items()}, str(partial / "tensors.safetensors"))
    (partial / "trainer.json").write_text(json.dumps(skeleton))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(partial, folder)
    atomic_write_json(state_dir / "latest.json", {"checkpoint": folder.name})
    for old in state_dir.glob("ckpt-*"):
        if old.name != folder.name:
            shutil.rmtree(old, ignore_errors=True)


def read_trainer_checkpoint(run_dir: Path) -> tuple[Path, dict[str, Any]] | None:
    """(weights path, trainer state) of the newest complete checkpoint, or None."""
    state_dir = Path(run_dir) / STATE_DIR
    latest = state_dir / "latest.json"
    if not latest.is_file():
        return None
    folder = state_dir / json.loads(latest.read_text())["checkpoint"]
    try:
        skeleton = json.loads((folder / "trainer.json").read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise RunError(f"trainer checkpoint {folder} is unreadable ({error}); delete {state_dir} to restart the stage") from None
    tensors = load_tensors(folder / "tensors.safetensors")
    return folder / WEIGHTS_FILE, unflatten_state(skeleton, tensors)
