"""`zoo train`: the flags (the config's `scale` levers among them), the run, the summary
printed at its end, the message Ctrl-C leaves, and `--nproc-per-node` (torchrun)."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zoo.cli.common import add_subcommand, int_in, positive_float
from zoo.config import MAX_SEED
from zoo.errors import ZooError

if TYPE_CHECKING:
    from zoo.progress import Mode  # rich, imported only when training


CHECKPOINT_EVERY = 200
LOG_EVERY_SECONDS = 30.0


def register(commands: Any) -> None:
    train = add_subcommand(
        commands,
        "train",
        "train a model's stages into a run directory",
        "Train every stage of MODEL (or one, --stage) into a run directory. On a terminal a progress bar; "
        "in a pipe or file a plain line every --log-every-seconds.",
        "examples:\n  zoo train var\n  zoo train var --preset digits --set tokenizer_training.steps=100 --out runs/v\n"
        "  zoo train --resume --out runs/v          (continues with the run's stored config)\n"
        "  zoo train var --json > log.jsonl\n  zoo train var --tensorboard && tensorboard --logdir runs/var\n"
        "  zoo train var --preset d16 --nproc-per-node 8 --shard --activation-checkpointing",
    )
    train.add_argument("model", nargs="?", help="installed model (optional with --resume --out RUN)")
    train.add_argument("--preset", help="named preset (default: the model's default preset; the run's on --resume)")
    train.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field (repeatable)")
    train.add_argument("--config", type=Path, help="YAML/JSON file of config fields")
    train.add_argument("--out", type=Path, help="run directory (default: runs/MODEL)")
    train.add_argument("--stage", help="run only this stage")
    train.add_argument("--from", dest="from_run", type=Path, help="take earlier stages' weights from this run")
    train.add_argument("--resume", action="store_true", help="continue from the run directory's last checkpoint")
    train.add_argument("--seed", type=int_in(0, MAX_SEED), help="config field seed (default: the config's)")
    train.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to train")
    train.add_argument(
        "--checkpoint-every", type=int_in(1), default=CHECKPOINT_EVERY, help="steps between trainer checkpoints"
    )
    train.add_argument(
        "--log-every-seconds",
        type=positive_float,
        default=LOG_EVERY_SECONDS,
        help="seconds between progress lines when not on a terminal",
    )
    train.add_argument(
        "--tensorboard",
        nargs="?",
        const="",
        metavar="DIR",
        help="write TensorBoard scalars and grids to DIR (default DIR: RUN/tensorboard)",
    )
    train.add_argument(
        "--inception-weights",
        type=Path,
        metavar="FILE",
        help="Inception weights of the config's validation metrics (default: $ZOO_INCEPTION_WEIGHTS, torch hub)",
    )
    train.add_argument(
        "--nproc-per-node",
        type=int_in(1),
        help="start torchrun with N processes on this machine (replicate/DDP; --shard: FSDP2)",
    )
    levers = train.add_argument_group("memory and speed levers (the config's `scale` section; default: the preset's)")
    levers.add_argument(
        "--shard", action="store_true", default=None, help="with several processes: FSDP2 fully_shard per block"
    )
    levers.add_argument(
        "--activation-checkpointing",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="recompute each block's activations in the backward pass",
    )
    levers.add_argument("--accumulate", type=int_in(1), metavar="N", help="micro-batches per optimizer step")
    levers.add_argument("--precision", choices=["fp32", "bf16"], help="bf16 autocast (CUDA or CPU)")
    levers.add_argument(
        "--compile", action="store_true", default=None, help="torch.compile each block (falls back to eager)"
    )
    mode = train.add_mutually_exclusive_group()
    mode.add_argument("--quiet", action="store_true", help="no progress output")
    mode.add_argument("--json", action="store_true", help="progress as JSON lines, ending with a `done` event")
    train.set_defaults(handler=cmd_train, needs_train=True)


def cmd_train(args: argparse.Namespace) -> None:
    if args.nproc_per_node and args.nproc_per_node > 1:
        sys.exit(_launch_torchrun(args.nproc_per_node))
    from zoo import api

    if args.model is None and not (args.resume and args.out):
        raise ZooError("zoo train needs a MODEL (or, to continue a run: zoo train --resume --out RUN)")
    overrides = {"seed": args.seed} if args.seed is not None else None
    progress: Mode = "json" if args.json else "quiet" if args.quiet else "auto"
    run_dir = args.out or Path("runs") / str(args.model)
    try:
        run = api.train(
            args.model,
            preset=args.preset,
            overrides=overrides,
            run_dir=args.out,
            config_file=args.config,
            assignments=[*(args.set or []), *_lever_assignments(args)],
            stage=args.stage,
            resume=args.resume,
            from_run=args.from_run,
            device=args.device,
            progress=progress,
            checkpoint_every=args.checkpoint_every,
            log_every_seconds=args.log_every_seconds,
            tensorboard=_tensorboard_dir(args.tensorboard, run_dir),
            inception_weights=args.inception_weights,
            command=["zoo", *(args.argv or [])],
        )
    except KeyboardInterrupt:
        if int(os.environ.get("RANK", "0")) == 0:
            print(interrupted_message(args, run_dir), file=sys.stderr)
        sys.exit(130)
    if progress != "json" and int(os.environ.get("RANK", "0")) == 0:
        print(training_summary(run.plugin.name, run.run_dir, args.tensorboard is not None))


def _lever_assignments(args: argparse.Namespace) -> list[str]:
    """The `scale` flags as the `--set` assignments they stand for."""
    flags = {
        "shard": args.shard,
        "compile": args.compile,
        "activation_checkpointing": args.activation_checkpointing,
        "accumulate": args.accumulate,
        "precision": args.precision,
    }
    return [f"scale.{field}={json.dumps(value)}" for field, value in flags.items() if value is not None]


def _tensorboard_dir(flag: str | None, run_dir: Path) -> Path | None:
    if flag is None:
        return None
    return Path(flag) if flag else Path(run_dir) / "tensorboard"


def training_summary(model: str, run_dir: Path, tensorboard: bool = False) -> str:
    """Per stage: time and final metrics; the grids; the commands to go on with."""
    from zoo.checkpoint import stage_summaries
    from zoo.progress import format_duration, format_metrics

    lines = [f"run directory: {run_dir}"]
    summaries = stage_summaries(run_dir)
    width = max((len(name) for name in summaries), default=5)
    for name, summary in summaries.items():
        seconds = summary["seconds"]
        took = format_duration(seconds) if seconds is not None else "not finished"
        lines.append(f"  {name:<{width}}  {took:>7}  {summary['steps']} steps  {format_metrics(summary['metrics'])}")
    for grid in sorted((Path(run_dir) / "samples").glob("*.png")):
        lines.append(f"grid: {grid}")
    run = shlex.quote(str(run_dir))
    lines += [
        "next:",
        f"  zoo sample {model} --run {run} --out {model}_sample.png",
        f"  zoo eval {model} --run {run}",
        f"  zoo export {model} --run {run} --out exports/{Path(run_dir).name}",
        f"  zoo report {run} --out {shlex.quote(str(Path(run_dir) / 'report.html'))}",
    ]
    if tensorboard:
        lines.append(f"  tensorboard --logdir {run}")
    return "\n".join(lines)


def interrupted_message(args: argparse.Namespace, run_dir: Path) -> str:
    """What Ctrl-C leaves: the last checkpoint and the command that continues from it."""
    from zoo.checkpoint import read_trainer_checkpoint

    try:
        found = read_trainer_checkpoint(run_dir)
    except (ZooError, OSError):
        found = None
    command = ["zoo", "train"] + ([args.model] if args.model else []) + ["--resume", "--out", str(run_dir)]
    command += _run_flags(args)
    if found is None:
        return f"interrupted before the first checkpoint; nothing to resume in {run_dir}: start again"
    state = found[1]
    if "step" in state:
        where = f"stage {state['stage']}, step {state['step']}"
    else:
        where = f"the end of stage {(state.get('completed') or ['?'])[-1]}"
    return f"interrupted; the last checkpoint is at {where}. Resume with:\n  {shlex.join(command)}"


def _run_flags(args: argparse.Namespace) -> list[str]:
    """The flags of the interrupted command that are not config (the config is the run's):
    the resumed run keeps its device, stage, checkpoint interval, processes and output."""
    flags: list[str] = []
    if args.device != "auto":
        flags += ["--device", args.device]
    if args.stage is not None:
        flags += ["--stage", args.stage]
    if args.checkpoint_every != CHECKPOINT_EVERY:
        flags += ["--checkpoint-every", str(args.checkpoint_every)]
    if args.log_every_seconds != LOG_EVERY_SECONDS:
        flags += ["--log-every-seconds", str(args.log_every_seconds)]
    if args.nproc_per_node is not None:
        flags += ["--nproc-per-node", str(args.nproc_per_node)]
    if args.inception_weights is not None:
        flags += ["--inception-weights", str(args.inception_weights)]
    if args.tensorboard is not None:
        flags += ["--tensorboard", *([args.tensorboard] if args.tensorboard else [])]
    if args.json or args.quiet:
        flags.append("--json" if args.json else "--quiet")
    return flags


def _launch_torchrun(nproc: int) -> int:
    """Re-run this very command under torchrun, one process per device."""
    argv = sys.argv[1:]
    cleaned, skip = [], False
    for item in argv:
        if skip:
            skip = False
            continue
        if item == "--nproc-per-node":
            skip = True
            continue
        if item.startswith("--nproc-per-node="):
            continue
        cleaned.append(item)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "zoo",
        *cleaned,
    ]
    return subprocess.call(command)
