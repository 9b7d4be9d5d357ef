"""`zoo run`: sample from an export directory with onnxruntime, no torch; its flags are the
model's SampleOptions, which the installed runtime loop declares. The onnxruntime flags
(`RUN_FLAGS`) are `zoo serve`'s too."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from zoo.cli.common import add_subcommand, emit, int_in
from zoo.cli.options import first_pass, parse_options, usage_without_positional
from zoo.outputs import SampleOutput, check_output_path

# onnxruntime allocates per thread: 100000 threads grow memory until the process dies
MAX_THREADS = 1024

RUN_FLAGS: dict[str, dict[str, Any]] = {
    "--provider": {
        "choices": ["cpu", "cuda", "tensorrt"],
        "default": None,
        "help": "onnxruntime provider (default: CUDA when usable, else CPU)",
    },
    "--threads": {
        "type": int_in(1, MAX_THREADS),
        "default": None,
        "help": "onnxruntime intra-op threads (default: onnxruntime's choice)",
    },
    "--verify": {
        "type": Path,
        "metavar": "KEY.pub.pem",
        "default": None,
        "help": "refuse the export unless manifest.sig is this Ed25519 public key's signature",
    },
}


RUN_EPILOG = """examples:
  zoo run exports/var --class 3 --n 8 --out onnx_grid.png
  zoo run exports/var --threads 1 --provider cpu --top-k 1
  zoo run exports/var --class 3 --progress-dir scales   (scales/scale-01.png: each scale's image)
  zoo run exports/var --verify deploy.pub.pem --json   (EXPORT_DIR --help: the model's options)"""


def register(commands: Any) -> None:
    run = add_subcommand(
        commands,
        "run",
        "sample from an export with onnxruntime (no torch)",
        "Sample from an export directory with onnxruntime.",
        RUN_EPILOG,
        add_help=False,
    )
    run.set_defaults(handler=cmd_run)


def cmd_run(args: argparse.Namespace) -> None:
    from zoo import runtime

    common: dict[str, dict[str, Any]] = {
        **RUN_FLAGS,
        "--out": {"default": None, "help": "output image; texts go beside it (default: MODEL_run.png)"},
        "--json": {"action": "store_true", "help": "print what was written as JSON"},
        "--progress-dir": {
            "type": Path,
            "metavar": "DIR",
            "default": None,
            "help": "also write the images after each step there (VAR: scale-01.png, ...)",
        },
    }
    export_dir, known = first_pass(args.rest, "export_dir", common)
    description = "Sample from an export directory with onnxruntime (no torch needed)."
    if export_dir is None:
        usage_without_positional("zoo run", "EXPORT_DIR", common, args.rest, description, RUN_EPILOG)
        return
    if known.out is not None:
        check_output_path(known.out)  # before loading the graphs
    loaded = runtime.load(
        Path(export_dir), provider=known.provider, intra_op_threads=known.threads, verify_key=known.verify
    )
    command, options = parse_options(
        loaded.options_class,
        "zoo run",
        args.rest,
        common,
        positional=("export_dir", "export directory (`zoo export MODEL --out DIR`)"),
        description=description,
        epilog=RUN_EPILOG,
    )
    out = check_output_path(command["out"] or f"{loaded.manifest['model']}_run.png")
    progress_dir: Path | None = command["progress_dir"]
    if progress_dir is None:
        emit(loaded.sample(options), out, command["json"])
        return
    steps: list[SampleOutput] = []
    output = loaded.sample(options, on_step=steps.append)  # refused at once by a loop without steps
    for index, step in enumerate(steps, start=1):
        step.save(progress_dir / f"scale-{index:02d}.png")
    emit(output, out, command["json"])
