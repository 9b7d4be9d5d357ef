"""Run directories: what a training run writes, written atomically, read without pickle.

    RUN/config.json          model, plugin version, zoo version, preset, resolved config,
                             finished stages, and `sessions`: one per `zoo train` call (start
                             and end time, status, command line, device, precision, versions)
    RUN/model.safetensors    weights after the last finished stage
    RUN/metrics.jsonl        one JSON object per logged step, one `end` event per stage
    RUN/samples/STAGE.png    the stage's grid (sample or reconstructions) written when it ends
    RUN/samples/STAGE/step_N.png   the same every `sample_every` steps (0: none)
    RUN/eval.json            `zoo eval`'s metrics
    RUN/cache/               data a stage derives once (e.g. token indices)
    RUN/state/latest.json    points at the newest complete trainer checkpoint:
    RUN/state/ckpt-N/        model.safetensors, tensors.safetensors, trainer.json
    RUN/.lock                held by the process training the run; holds its PID
    .zoo-temporary           (in RUN, RUN/state, RUN/cache) the names of temporary folders
                             being written; what a kill leaves there is removed by name

A trainer checkpoint is a folder written in full before `latest.json` is switched to it
(temp file + rename), so a kill at any moment leaves the previous checkpoint intact.
Files get the mode the umask allows (0644 by default), like any other tool's output.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from zoo import temporary
from zoo.errors import RunError
from zoo.version import __version__

if sys.platform == "win32":
    import msvcrt
else:
    import fcntl

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
METRICS_FILE = "metrics.jsonl"
STATE_DIR = "state"
CACHE_DIR = "cache"
LATEST_FILE = "latest.json"
LOCK_FILE = ".lock"
# The names write_trainer_checkpoint gives its folders; latest.json may point at nothing else.
CHECKPOINT_NAME = re.compile(r"ckpt-[A-Za-z0-9_.-]+")


def _read_umask() -> int:
    # The umask can only be read by setting it. This runs once, at import, before any
    # thread of ours creates files; a file another thread creates in between gets the
    # stricter 0o077, never a looser mode.
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


UMASK = _read_umask()
FILE_MODE = 0o666 & ~UMASK
DIR_MODE = 0o777 & ~UMASK  # what mkdir gives; tempfile.mkdtemp makes 0o700


# atomic writes ---------------------------------------------------------------------------


def _naming(error: OSError, path: Path) -> OSError:
    """The error with the file it concerns: a failed write() (disk full) names none."""
    return error if error.filename else OSError(error.errno, error.strerror, str(path))


@contextmanager
def _replacing(path: Path) -> Iterator[Path]:
    """A fresh temp file beside `path`, in a recorded folder of its own (zoo.temporary):
    it replaces `path` when the block succeeds; the folder goes either way."""
    with temporary.temporary_folder(path.parent, f".{path.name}") as folder:
        temp = folder / path.name
        try:
            yield temp
            if temp.exists():
                os.chmod(temp, FILE_MODE)  # safetensors creates 0600
            os.replace(temp, path)
        except OSError as error:
            raise _naming(error, path) from None


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with _replacing(Path(path)) as temp, open(temp, "xb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_bytes(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


# safetensors reports I/O failures as "... (os error 28) ..." (0.4: "IoError(Os { code: 28, ...")
_OS_ERROR_CODE = re.compile(r"os error (\d+)|code: (\d+)")


def _save_tensors_file(path: Path, tensors: Mapping[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """safetensors' save_file, failing with a plain OSError naming `path` when the disk does."""
    try:
        save_file(_storable(tensors), str(path), metadata=metadata)
    except SafetensorError as error:
        code = _OS_ERROR_CODE.search(str(error))
        if code is None:
            raise
        number = int(code.group(1) or code.group(2))
        raise OSError(number, os.strerror(number), str(path)) from None
    os.chmod(path, FILE_MODE)  # safetensors writes through a 0600 temp file of its own


def _storable(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors as safetensors takes them: contiguous, no two sharing storage (tied
    weights). Only those get a copy: a copy of every tensor would double the peak memory
    of saving a model (8 GiB more for VAR d30)."""
    storages: set[int] = set()
    storable = {}
    for key, tensor in tensors.items():
        tensor = tensor.detach()
        storage = tensor.untyped_storage().data_ptr()
        if not tensor.is_contiguous() or storage in storages:
            tensor = tensor.contiguous().clone()
        storages.add(storage)
        storable[key] = tensor
    return storable


def atomic_save_tensors(
    path: Path, tensors: Mapping[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> None:
    with _replacing(Path(path)) as temp:
        _save_tensors_file(temp, tensors, metadata)


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise RunError(f"{path} is not a readable safetensors file ({error}); the run directory is corrupt") from None


# run configs -----------------------------------------------------------------------------


def run_record(model: str, plugin_version: str, preset: str | None, config: dict[str, Any]) -> dict[str, Any]:
    return {
        "model": model,
        "plugin_version": plugin_version,
        "zoo_version": __version__,
        "preset": preset,
        "config": config,
    }


def read_run_record(run_dir: Path, model: str | None = None) -> dict[str, Any]:
    """config.json of a run directory; `model` (when known) names the model in the hint."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        what = f"{run_dir} is not a run directory (no {CONFIG_FILE}); train one with"
        name = model or "MODEL"
        raise RunError(
            f"{what} zoo.train({name!r}, run_dir={str(run_dir)!r})", cli=f"{what} `zoo train {name} --out {run_dir}`"
        )
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
    mismatched = sorted(
        k for k in set(own) & set(tensors) if not k.endswith("_extra_state") and own[k].shape != tensors[k].shape
    )
    if missing or unexpected or mismatched:
        detail = (
            f"missing {missing[:3]}"
            if missing
            else f"unexpected {unexpected[:3]}"
            if unexpected
            else f"shape mismatch in {mismatched[:3]}"
        )
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


def write_trainer_checkpoint(
    run_dir: Path, step_name: str, weights: Mapping[str, torch.Tensor], state: dict[str, Any]
) -> None:
    """Write the model's weights + trainer state into a fresh folder, point `latest.json` at
    it, then delete the checkpoint it pointed at before (that one only: the folders of a
    state directory are the user's to keep or delete otherwise)."""
    state_dir = Path(run_dir) / STATE_DIR
    folder = state_dir / f"ckpt-{step_name}"
    try:
        previous = latest_checkpoint(run_dir)
    except RunError:  # a corrupt pointer is replaced; what it named is left alone
        previous = None
    with temporary.temporary_folder(state_dir, f".ckpt-{step_name}") as partial:
        tensors: dict[str, torch.Tensor] = {}
        skeleton = flatten_state(state, "state", tensors)
        _save_tensors_file(partial / WEIGHTS_FILE, weights)
        _save_tensors_file(partial / "tensors.safetensors", tensors)
        (partial / "trainer.json").write_text(json.dumps(skeleton, indent=2, sort_keys=True) + "\n")
        os.chmod(partial / "trainer.json", FILE_MODE)
        if folder.exists() and folder != previous:
            _discard(state_dir, folder)  # a stale folder of this name, written before a kill
        if folder.exists():
            _swap_in(state_dir, partial, folder)
        else:
            os.replace(partial, folder)
    atomic_write_json(state_dir / LATEST_FILE, {"checkpoint": folder.name})
    if previous is not None and previous.name != folder.name and previous.is_dir():
        _discard(state_dir, previous)


def _swap_in(state_dir: Path, partial: Path, folder: Path) -> None:
    """Replace the folder latest.json points at with a new one of the same name (a stage
    written again at the same step): the old one is renamed to a recorded name first."""
    aside = temporary.new_name(f".{folder.name}")
    temporary.record(state_dir, aside)
    os.replace(folder, state_dir / aside)
    os.replace(partial, folder)
    temporary.remove(state_dir, aside)


def _discard(directory: Path, path: Path) -> None:
    """Delete a folder zoo wrote, renamed to a recorded name first: a kill during the
    deletion leaves a leftover that the next start removes, never half a checkpoint."""
    doomed = temporary.new_name(f".{path.name}")
    temporary.record(directory, doomed)
    os.replace(path, directory / doomed)
    temporary.remove(directory, doomed)


def _corrupt_latest(run_dir: Path, reason: str) -> RunError:
    return RunError(
        f"{STATE_DIR}/{LATEST_FILE} in {run_dir} is corrupt ({reason}); "
        f"delete {Path(run_dir) / STATE_DIR} to restart the stage"
    )


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The folder `latest.json` points at, or None before the first checkpoint.

    The pointer must name a checkpoint folder inside RUN/state: a tampered or truncated
    file never makes the trainer read from elsewhere."""
    state_dir = Path(run_dir) / STATE_DIR
    latest = state_dir / LATEST_FILE
    if not latest.is_file():
        return None
    try:
        pointer = json.loads(latest.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise _corrupt_latest(run_dir, "not JSON") from None
    if not isinstance(pointer, dict):
        raise _corrupt_latest(run_dir, "not a JSON object")
    name = pointer.get("checkpoint")
    if not isinstance(name, str) or not CHECKPOINT_NAME.fullmatch(name):
        raise _corrupt_latest(run_dir, f"'checkpoint' is {name!r}, not a checkpoint folder name")
    folder = state_dir / name
    if folder.resolve().parent != state_dir.resolve():  # e.g. a symlink to another directory
        raise _corrupt_latest(run_dir, f"{name} leads outside {state_dir}")
    return folder


def read_trainer_checkpoint(run_dir: Path) -> tuple[Path, dict[str, Any]] | None:
    """(weights path, trainer state) of the newest complete checkpoint, or None."""
    folder = latest_checkpoint(run_dir)
    if folder is None:
        return None
    state_dir = folder.parent
    try:
        skeleton = json.loads((folder / "trainer.json").read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise RunError(
            f"trainer checkpoint {folder} is unreadable ({error}); delete {state_dir} to restart the stage"
        ) from None
    tensors = load_tensors(folder / "tensors.safetensors")
    problem: str | None
    try:
        state = unflatten_state(skeleton, tensors)
    except (KeyError, TypeError, ValueError) as error:
        state, problem = None, f"it names a tensor the checkpoint lacks ({error})"
    else:
        problem = _trainer_state_problem(state, folder.name)
    if problem is not None:
        # resuming from it would restart the stage at step 0 without a word
        raise RunError(f"trainer checkpoint {folder} is damaged: {problem}; delete {state_dir} to restart the stage")
    return folder / WEIGHTS_FILE, state


# What write_trainer_checkpoint writes mid-stage besides `completed` (a stage's end holds only that).
_MID_STAGE = {"stage": str, "step": int, "rng": dict, "optimizers": list, "validation": dict}


def _trainer_state_problem(state: Any, folder: str) -> str | None:
    """What is wrong with a trainer state read back, or None: the shapes the trainer reads,
    and the stage and step its folder is named after (`ckpt-STAGE-STEP`, `ckpt-STAGE-done`)."""
    if not isinstance(state, dict):
        return "trainer.json holds no JSON object"
    completed = state.get("completed")
    if not isinstance(completed, list) or not all(isinstance(name, str) for name in completed):
        return "'completed' is not a list of stage names"
    if folder.endswith("-done"):
        return None if set(state) == {"completed"} else "a stage's end holds only 'completed'"
    for key, kind in _MID_STAGE.items():
        if not isinstance(state.get(key), kind) or (kind is int and isinstance(state[key], bool)):
            return f"{key!r} is missing or not a {kind.__name__}"
    if state["step"] < 1 or folder != f"ckpt-{state['stage']}-{state['step']}":
        return f"it says stage {state['stage']!r} step {state['step']}, its folder is {folder}"
    if not isinstance(state["rng"].get("cpu"), torch.Tensor):
        return "'rng' holds no CPU generator state"
    return None


# the life of a run directory -------------------------------------------------------------


@contextmanager
def locked(run_dir: Path) -> Iterator[None]:
    """Hold an OS advisory lock on RUN/.lock, so a second trainer of the same run directory
    stops at once instead of interleaving metrics and reading half-written checkpoints.

    The OS drops the lock when the process ends, even by SIGKILL, so a lock file left
    behind never blocks anyone; the PID in it only names the holder in the message."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunError(f"{run_dir} is a file, not a run directory; pick another --out / run_dir")
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_FILE
    handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        if not _try_lock(handle):
            os.lseek(handle, 0, os.SEEK_SET)
            holder = os.read(handle, 32).decode(errors="replace").strip() or "unknown"
            raise RunError(
                f"{run_dir} is being trained by another process (PID {holder}); "
                f"wait for it to end or pick another --out / run_dir"
            )
        os.ftruncate(handle, 0)
        os.lseek(handle, 0, os.SEEK_SET)
        os.write(handle, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(handle)  # releases the lock


# Windows locks byte ranges, and a locked byte cannot be read by others: lock one far past the PID.
_WINDOWS_LOCK_OFFSET = 1 << 20


def _try_lock(handle: int) -> bool:
    try:
        if sys.platform == "win32":
            os.lseek(handle, _WINDOWS_LOCK_OFFSET, os.SEEK_SET)
            msvcrt.locking(handle, msvcrt.LK_NBLCK, 1)
        else:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def remove_temporary_files(run_dir: Path) -> None:
    """Delete the leftovers of killed writes: the names zoo recorded (zoo.temporary), never
    a file by the look of its name. Only while holding the lock: a live writer's temporary
    folders are recorded too."""
    run_dir = Path(run_dir)
    for folder in (run_dir, run_dir / STATE_DIR, run_dir / CACHE_DIR):
        temporary.remove_recorded(folder)


def discard_untrained(run_dir: Path) -> None:
    """Forget an attempt that failed before its first checkpoint: its metrics and the data
    its stage derived (from a config that is now replaced)."""
    run_dir = Path(run_dir)
    (run_dir / METRICS_FILE).unlink(missing_ok=True)
    shutil.rmtree(run_dir / CACHE_DIR, ignore_errors=True)


# metrics ---------------------------------------------------------------------------------


def append_metrics(run_dir: Path, record: dict[str, Any]) -> None:
    path = Path(run_dir) / METRICS_FILE
    try:
        with open(path, "a") as file:
            file.write(json.dumps(record) + "\n")
    except OSError as error:
        raise _naming(error, path) from None


def drop_metrics_after(run_dir: Path, stage: str, step: int) -> None:
    """Drop the stage's records past `step`, and lines a kill cut short: a stage that
    restarts from `step` logs the later steps again, and each (stage, step) is kept once."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return
    lines = path.read_text().splitlines()
    kept = [line for line in lines if _keeps(line, stage, step)]
    if kept != lines:
        atomic_write_bytes(path, "".join(line + "\n" for line in kept).encode())


def _keeps(line: str, stage: str, step: int) -> bool:
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return False
    if not isinstance(record, dict):
        return False
    return record.get("stage") != stage or not isinstance(record.get("step"), int) or record["step"] <= step


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """metrics.jsonl's records in order; lines a kill cut short are skipped."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


# Logged beside the metrics but not a measure of the model.
BOOKKEEPING = ("stage", "step", "event", "seconds", "lr", "images_per_s")


def stage_summaries(run_dir: Path) -> dict[str, dict[str, Any]]:
    """Per stage, in the order they ran: `steps`, `seconds` (when it ended) and the last
    logged value of every metric (`loss`, `val_loss`, ...)."""
    summaries: dict[str, dict[str, Any]] = {}
    for record in read_metrics(run_dir):
        stage = record.get("stage")
        if not isinstance(stage, str):
            continue
        summary = summaries.setdefault(stage, {"steps": 0, "seconds": None, "metrics": {}})
        if isinstance(record.get("step"), int):
            summary["steps"] = max(summary["steps"], record["step"])
        if record.get("event") == "end":
            summary["seconds"] = record.get("seconds")
            continue
        for key, value in record.items():
            if key not in BOOKKEEPING and isinstance(value, (int, float)):
                summary["metrics"][key] = value
    return summaries
