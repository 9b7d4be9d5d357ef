"""The run directory's record, `config.json`, as the trainer keeps it: one run per
directory (another model or config is refused; a first attempt that trained nothing is
replaced), one session per `train` call with its environment, and the finished stages."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from zoo import checkpoint as ckpt
from zoo.config import ZooConfig, config_differences
from zoo.distributed import WorldInfo, barrier
from zoo.errors import RunError
from zoo.plugin import ModelPlugin
from zoo.trainer.options import TrainOptions


def claim_run_dir(
    run_dir: Path,
    plugin: ModelPlugin,
    config: ZooConfig,
    preset: str | None,
    options: TrainOptions,
    world: WorldInfo,
) -> None:
    """Refuse to mix runs, then record this run's config.

    A directory whose earlier attempt failed before finishing a stage or writing a
    checkpoint holds nothing trained: the corrected command replaces it, no --resume."""
    record = ckpt.run_record(plugin.name, plugin.version, preset, config.model_dump(mode="json"))
    config_path = run_dir / ckpt.CONFIG_FILE
    exists = config_path.exists()
    existing = ckpt.read_run_record(run_dir) if exists else {}
    untrained = exists and not existing.get("completed") and ckpt.latest_checkpoint(run_dir) is None
    if exists and not untrained:
        check_same_run(run_dir, plugin, options, existing, record)
    barrier(world)  # every process checks before rank 0 writes
    if world.is_main and untrained:
        ckpt.discard_untrained(run_dir)
    if world.is_main and (untrained or not exists):
        ckpt.atomic_write_json(config_path, record)


def check_same_run(
    run: Path, plugin: ModelPlugin, options: TrainOptions, existing: dict[str, Any], record: dict[str, Any]
) -> None:
    """The run directory holds a run of this model, continued (resume or one stage) with its config."""
    if existing["model"] != plugin.name:
        what = f"{run} holds a {existing['model']!r} run, not {plugin.name!r}"
        raise RunError(f"{what}; pick another run_dir", cli=f"{what}; pick another --out")
    if not (options.resume or options.stage):
        raise RunError(
            f"{run} already holds a run; continue it (resume=True), run one stage (stage=NAME), "
            f"or pick another run_dir",
            cli=f"{run} already holds a run; continue it (`zoo train --resume --out {run}`), "
            f"run one stage (--stage NAME), or pick another --out",
        )
    # The levers say how a step is computed and its data read, not what: a run resumes with other ones.
    differences = [
        difference
        for difference in config_differences(stored_config(plugin, existing["config"]), record["config"])
        if not difference[0].startswith(("scale.", "loader."))
    ]
    if differences:
        shown = "; ".join(f"{key}: the run has {old}, this call gives {new}" for key, old, new in differences[:3])
        raise RunError(
            f"{run} was trained with another config ({shown}); resume it without changing these "
            f"(leave them out of overrides/preset/config_file: the run's config is used) or pick another run_dir",
            cli=f"{run} was trained with another config ({shown.replace('this call', 'this command')}); "
            f"resume it without changing these (flags left out take the run's values) or pick another --out",
        )


def stored_config(plugin: ModelPlugin, stored: dict[str, Any]) -> dict[str, Any]:
    """A run's config as this code reads it (fields added since take their defaults)."""
    try:
        return plugin.Config.model_validate(stored).model_dump(mode="json")
    except ValueError:
        return stored


def start_session(run_dir: Path, environment: dict[str, Any]) -> int:
    """Append a running session with this call's environment to config.json's `sessions`;
    its index there."""
    record = ckpt.read_run_record(run_dir)
    session = {"started": _now(), "ended": None, "status": "running", **environment}
    record["sessions"] = [*record.get("sessions", []), session]
    ckpt.atomic_write_json(run_dir / ckpt.CONFIG_FILE, record)
    return len(record["sessions"]) - 1


def end_session(run_dir: Path, index: int, status: str) -> None:
    try:
        record = ckpt.read_run_record(run_dir)
        record["sessions"][index].update(ended=_now(), status=status)
        ckpt.atomic_write_json(run_dir / ckpt.CONFIG_FILE, record)
    except (RunError, OSError, IndexError, KeyError):
        pass  # the record of a failing disk: the error being raised is the one to show


def record_completed(run_dir: Path, completed: list[str]) -> None:
    record = ckpt.read_run_record(run_dir)
    record["completed"] = completed
    ckpt.atomic_write_json(run_dir / ckpt.CONFIG_FILE, record)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
