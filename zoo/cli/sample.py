"""`zoo sample`: sample from a trained run with torch (the loop `zoo run` drives with
onnxruntime); its flags are the model's SampleOptions."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from zoo.cli.common import add_subcommand, emit
from zoo.cli.options import first_pass, parse_options, usage_without_positional
from zoo.outputs import check_output_path

SAMPLE_EPILOG = """examples:
  zoo sample var --class 3 7 --n 8 --seed 0 --out grid.png
  zoo sample var --run runs/var-big --top-k 1 --json
  zoo sample tiny_autoencoder --n 16 --out ae.png     (MODEL --help: the model's options)"""


def register(commands: Any) -> None:
    sample = add_subcommand(
        commands,
        "sample",
        "sample from a trained run (MODEL --help: options)",
        "Sample from a trained run.",
        SAMPLE_EPILOG,
        add_help=False,
    )
    sample.set_defaults(handler=cmd_sample, needs_train=True)


def cmd_sample(args: argparse.Namespace) -> None:
    from zoo.registry import get_registry

    common: dict[str, dict[str, Any]] = {
        "--run": {"default": None, "help": "run directory (default: runs/MODEL)"},
        "--out": {
            "default": None,
            "help": "output image, .png/.jpg/...; texts go beside it (default: MODEL_sample.png)",
        },
        "--device": {"default": "auto", "choices": ["auto", "cpu", "cuda"], "help": "where torch samples"},
        "--json": {"action": "store_true", "help": "print what was written as JSON"},
    }
    model, _ = first_pass(args.rest, "model", common)
    description = "Sample from a trained run with torch (the same loop `zoo run` drives with onnxruntime)."
    if model is None:
        usage_without_positional("zoo sample", "MODEL", common, args.rest, description, SAMPLE_EPILOG)
        return
    plugin = get_registry().get(model)
    command, options = parse_options(
        plugin.SampleOptions,
        "zoo sample",
        args.rest,
        common,
        positional=("model", "installed model (`zoo list`)"),
        description=description,
        epilog=SAMPLE_EPILOG,
    )
    out = check_output_path(command["out"] or f"{model}_sample.png")  # before any work
    from zoo import api

    run = api.load_run(command["run"] or Path("runs") / model, model=model, device=command["device"])
    output = plugin.sample(run.model, run.config, options, run.device)
    emit(output, out, command["json"])
