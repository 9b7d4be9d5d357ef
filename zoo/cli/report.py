"""`zoo report`: one HTML page of a run, or of several compared."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from zoo.cli.common import add_subcommand
from zoo.errors import ZooError


def register(commands: Any) -> None:
    report = add_subcommand(
        commands,
        "report",
        "one HTML page of a run (curves, grids, config, environment), or comparing runs",
        "One self-contained HTML page: the resolved config, every stage's curves from metrics.jsonl, every "
        "grid, eval.json, the environment; with several runs, a metrics table, config differences and "
        "overlaid curves.",
        "examples:\n  zoo report runs/var\n  zoo report runs/var --export exports/var --out var.html\n"
        "  zoo report runs/var-a runs/var-b --out compare.html",
    )
    report.add_argument("runs", nargs="+", metavar="RUN", help="run directories (several: a comparison)")
    report.add_argument("--out", type=Path, help="HTML file (default: RUN/report.html, or report.html for several)")
    report.add_argument("--export", type=Path, metavar="DIR", help="include this export directory's validation")
    report.add_argument("--json", action="store_true", help="print what was written as JSON")
    report.set_defaults(handler=cmd_report, needs_train=True)


def cmd_report(args: argparse.Namespace) -> None:
    from zoo.report import write_report

    runs = [Path(run) for run in args.runs]
    out = args.out or (runs[0] / "report.html" if len(runs) == 1 else Path("report.html"))
    if out.suffix.lower() not in (".html", ".htm"):
        raise ZooError(f"--out {out}: a report is an HTML file; give a name ending in .html")
    write_report(runs, out, export_dir=args.export)
    if args.json:
        print(json.dumps({"report": str(out), "runs": [str(r) for r in runs]}))
    else:
        print(f"wrote {out}")
