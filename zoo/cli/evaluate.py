"""`zoo eval`: a trained run's metrics on held-out data, also written to RUN/eval.json."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from zoo.cli.common import add_subcommand, print_table


def register(commands: Any) -> None:
    evaluate = add_subcommand(
        commands,
        "eval",
        "evaluate a trained run (writes RUN/eval.json)",
        "Evaluate a trained run on held-out data; the metrics are also written to RUN/eval.json.",
        "examples:\n  zoo eval var\n  zoo eval var --run runs/var-big --json",
    )
    evaluate.add_argument("model", help="installed model (`zoo list`)")
    evaluate.add_argument("--run", type=Path, help="run directory (default: runs/MODEL)")
    evaluate.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to evaluate")
    evaluate.add_argument("--json", action="store_true", help="print the metrics as JSON")
    evaluate.set_defaults(handler=cmd_eval, needs_train=True)


def cmd_eval(args: argparse.Namespace) -> None:
    from zoo import api

    run = api.load_run(args.run or Path("runs") / args.model, model=args.model, device=args.device)
    metrics = run.evaluate()
    from zoo.checkpoint import atomic_write_json

    atomic_write_json(run.run_dir / "eval.json", metrics)
    if args.json:
        print(json.dumps(metrics, indent=2))
    else:
        print_table(
            ["metric", "value"], [[k, f"{v:.4g}" if isinstance(v, float) else str(v)] for k, v in metrics.items()]
        )
