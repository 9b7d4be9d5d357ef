"""`zoo eval`: a trained run's metrics on held-out data, also written to RUN/eval.json; with
--metrics, the papers' distribution metrics through torch-fidelity (zoo.metrics)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from zoo.cli.common import add_subcommand, print_table

EPILOG = """examples:
  zoo eval var
  zoo eval var --run runs/var-big --json
  zoo eval var --run runs/var-d16 --metrics fid,isc,prc --ref VIRTUAL_imagenet256_labeled.npz --samples 50000
  zoo eval var --export exports/var --metrics fid --ref data/val --samples 10000
  zoo eval vqvae2_pixelcnn --metrics rfid --inception-weights weights-inception-2015-12-05-6726825d.pth"""


def register(commands: Any) -> None:
    evaluate = add_subcommand(
        commands,
        "eval",
        "evaluate a trained run (writes RUN/eval.json)",
        "Evaluate a trained run on held-out data; the metrics are also written to RUN/eval.json. "
        "--metrics measures the papers' distribution metrics instead (FID, IS, KID, precision/recall, "
        "reconstruction FID) with torch-fidelity: pip install 'zoo[metrics]'.",
        EPILOG,
    )
    evaluate.add_argument("model", help="installed model (`zoo list`)")
    evaluate.add_argument("--run", type=Path, help="run directory (default: runs/MODEL)")
    evaluate.add_argument("--export", type=Path, help="measure an export directory (onnxruntime) instead of a run")
    evaluate.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to evaluate")
    evaluate.add_argument("--json", action="store_true", help="print the metrics as JSON")
    metrics = evaluate.add_argument_group("distribution metrics (torch-fidelity)")
    metrics.add_argument("--metrics", help="comma-separated: fid, isc, kid, prc (the sample set), rfid (tokenizers)")
    metrics.add_argument("--ref", help="reference: image folder, shards, data set name, ADM .npz or torch-fidelity .pt")
    metrics.add_argument("--samples", type=int, default=50_000, help="images in the sample set (default: 50000)")
    metrics.add_argument("--keep-samples", type=Path, help="folder of the sample set (default: RUN/metric_samples)")
    metrics.add_argument(
        "--inception-weights", type=Path, help="Inception weights file (default: $ZOO_INCEPTION_WEIGHTS, torch hub)"
    )
    metrics.add_argument("--seed", type=int, default=0, help="seed of the sample set's first chunk")
    metrics.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a sampling option over the model's metric options (JSON value), e.g. cfg=1.5",
    )
    metrics.add_argument("--cache-dir", type=Path, help="reference feature cache (default: ~/.cache/zoo/metrics)")
    evaluate.set_defaults(handler=cmd_eval, needs_train=True)


def cmd_eval(args: argparse.Namespace) -> None:
    from zoo.checkpoint import atomic_write_json

    if args.metrics is None:
        if args.export is not None:
            from zoo.errors import ConfigError

            raise ConfigError("--export measures distribution metrics only: give --metrics")
        from zoo import api

        run = api.load_run(args.run or Path("runs") / args.model, model=args.model, device=args.device)
        metrics = run.evaluate()
        atomic_write_json(run.run_dir / "eval.json", metrics)
        show(metrics, args.json)
        return
    record, home = distribution_metrics(args)
    if home is not None:  # a run: its eval.json keeps the plugin's figures beside these
        path = home / "eval.json"
        previous = json.loads(path.read_text()) if path.is_file() else {}
        atomic_write_json(path, {**previous, **record})
    show(record, args.json)


def distribution_metrics(args: argparse.Namespace) -> tuple[dict[str, Any], Path | None]:
    from zoo.config import parse_overrides
    from zoo.device import choose_device
    from zoo.errors import ConfigError
    from zoo.metrics.evaluate import MetricOptions, evaluate_metrics, export_target, parse_metrics
    from zoo.registry import get_registry

    schema = get_registry().get(args.model).SampleOptions
    sample_options = parse_overrides(schema, map(underscored, args.option), flag="--option", what="sample option")
    options = MetricOptions(
        parse_metrics(args.metrics),
        ref=args.ref,
        samples=args.samples,
        keep_samples=args.keep_samples,
        inception_weights=args.inception_weights,
        cache_dir=args.cache_dir,
        seed=args.seed,
        sample_options=sample_options,
    )
    device = choose_device(args.device)
    if args.export is not None:
        target = export_target(args.export)
        if target.plugin.name != args.model:
            raise ConfigError(f"{args.export} is an export of {target.plugin.name!r}, not {args.model!r}")
        return evaluate_metrics(target, options, device), None
    from zoo import api

    run = api.load_run(args.run or Path("runs") / args.model, model=args.model, device=args.device)
    return run.evaluate(options.metrics, **{k: v for k, v in vars(options).items() if k != "metrics"}), run.run_dir


def underscored(assignment: str) -> str:
    """`top-k=5` -> `top_k=5`: option names as `zoo sample` spells its flags are accepted too."""
    key, equals, value = assignment.partition("=")
    return key.replace("-", "_") + equals + value


def show(metrics: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(metrics, indent=2))
    else:
        print_table(
            ["metric", "value"], [[k, f"{v:.4g}" if isinstance(v, float) else str(v)] for k, v in metrics.items()]
        )
