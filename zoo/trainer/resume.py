"""Checkpoints and resume: the weights a run starts from (its own last checkpoint when it
resumes or runs one stage, else an earlier run's with `from_run`), a stage's checkpoint
every `checkpoint_every` steps and at its end, and a stage continued from one (step,
optimizers, RNG, EMA, early stopping: the same steps as a run never stopped)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from zoo import checkpoint as ckpt
from zoo.distributed import Engine, WorldInfo
from zoo.errors import RunError, TrainingError
from zoo.trainer.options import TrainOptions
from zoo.trainer.state import StageState, ValidationState


def initial_weights(model: nn.Module, run_dir: Path, model_name: str, options: TrainOptions) -> dict[str, Any] | None:
    """Load the weights the run starts from into `model`; the trainer state saved with
    them (`completed` stages, and mid-stage the step, optimizers, RNG...), or None."""
    found = ckpt.read_trainer_checkpoint(run_dir)
    if found is not None and (options.resume or options.stage):
        weights, state = found
        ckpt.load_weights(model, weights)
        return state
    if options.from_run is not None:
        source = Path(options.from_run)
        record = ckpt.read_run_record(source)
        if record["model"] != model_name:
            what = f"{source} holds a {record['model']!r} run, not {model_name!r}"
            raise RunError(f"from_run {what}", cli=f"--from {what}")
        ckpt.load_weights(model, source / ckpt.WEIGHTS_FILE)
        return {"completed": list(record.get("completed", []))}
    return None


def restore(state: StageState, resume: dict[str, Any], engine: Engine) -> None:
    """Continue from a mid-stage checkpoint: step, optimizers, RNG, EMA, validation."""
    state.start = state.step = resume["step"]
    if len(resume["optimizers"]) != len(state.optimizers):
        raise TrainingError(
            f"the checkpoint of stage {state.stage.name!r} holds {len(resume['optimizers'])} optimizer states but the "
            f"stage has {len(state.optimizers)} optimizers; resume with the code that wrote it, or start the stage anew"
        )
    for optimizer, saved in zip(state.optimizers, resume["optimizers"], strict=True):
        engine.load_optimizer_state(optimizer, saved)
    torch.set_rng_state(resume["rng"]["cpu"])
    if torch.cuda.is_available() and resume["rng"].get("cuda"):
        torch.cuda.set_rng_state_all(resume["rng"]["cuda"])
    state.ema = engine.like_parameters(resume.get("ema"), state.model) or state.ema
    if resume.get("validation"):
        state.validation = ValidationState.from_dict(resume["validation"])
        state.validation.best_weights = engine.like_parameters(state.validation.best_weights, state.model)


def write_checkpoint(run_dir: Path, state: StageState, done: int, engine: Engine, world: WorldInfo) -> None:
    """The stage's checkpoint after `done` steps: every process gathers whole tensors
    (collective when sharded), rank 0 saves."""
    model = state.model
    weights = engine.model_state(model)
    optimizers = [engine.optimizer_state(o) for o in state.optimizers]
    validation = {**state.validation.as_dict(), "best_weights": engine.full(state.validation.best_weights)}
    ema = engine.full(state.ema)
    if not world.is_main:
        return
    rng: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    saved = {
        "completed": state.completed,
        "stage": state.stage.name,
        "step": done,
        "rng": rng,
        "optimizers": optimizers,
        "ema": ema,
        "validation": validation,
    }
    ckpt.write_trainer_checkpoint(run_dir, f"{state.stage.name}-{done}", weights, saved)


def save_finished_stage(run_dir: Path, state: StageState, finished: list[str]) -> None:
    """The finished stage's weights as the run's model file and as its `-done` checkpoint (rank 0)."""
    ckpt.save_weights(state.model, run_dir / ckpt.WEIGHTS_FILE)
    weights = state.model.state_dict()
    ckpt.write_trainer_checkpoint(run_dir, f"{state.stage.name}-done", weights, {"completed": finished})
