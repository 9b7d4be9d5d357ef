# PYTHON_ARGCOMPLETE_OK
"""`zoo list | plugins | info | train | sample | eval | export | import | run | serve | report | keygen`.

A thin layer over `zoo.api`; torch is imported only by the commands that need it, so
`zoo run` and `zoo serve` work from the torch-free base install. There, the commands that
need the `train` extra say so in one line, and `zoo list` / `zoo plugins` show the
installed sampling loops. Errors users cause, and errors of the disk (full, read-only, a
file where a folder should be), print as one line, in the CLI's wording
(`ZooError.cli_message`: `--resume`, where the API's says `resume=True`).

`sample`, `run` and `export` take options that depend on the model (or exporter): their
arguments are parsed in two passes (the command's own flags and the MODEL / EXPORT_DIR
first, then everything with the model's options), so every flag may come before or
after the positional argument.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import shlex
import subprocess
import sys
import types
import typing
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, cast

import pydantic

from zoo.config import validate
from zoo.errors import ZooError
from zoo.exporter import DEFAULT_FORMAT as DEFAULT_EXPORT_FORMAT
from zoo.extras import TRAIN_INSTALL, missing_train_modules, require_train
from zoo.outputs import check_output_path
from zoo.version import __version__

if TYPE_CHECKING:
    from zoo.progress import Mode  # rich, imported only when training

# model-specific option flags -------------------------------------------------------------


def _flag_type(annotation: Any) -> tuple[Any, dict[str, Any]]:
    """argparse keyword arguments for a pydantic field annotation."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _flag_type(inner[0]) if len(inner) == 1 else (str, {})
    if origin is typing.Literal:
        choices = typing.get_args(annotation)
        return type(choices[0]), {"choices": choices}
    if origin in (list, tuple, set):
        args = typing.get_args(annotation)
        item_type, extra = _flag_type(args[0] if args else str)
        return item_type, {**extra, "nargs": "+"}
    if annotation is bool:
        return bool, {"action": argparse.BooleanOptionalAction}
    if annotation in (int, float, str):
        return annotation, {}
    if annotation is Path:
        return str, {}
    return str, {}


def add_option_flags(
    parser: argparse.ArgumentParser, schema: type[pydantic.BaseModel], title: str = "sample options"
) -> None:
    """One flag per field (`top_k` -> `--top-k`, plus aliases from json_schema_extra)."""
    group = parser.add_argument_group(title)
    for name, field in schema.model_fields.items():
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        aliases = cast("list[str]", extra.get("flags", []))  # json_schema_extra={"flags": [...]}: strings
        flags = [f"--{name.replace('_', '-')}", *aliases]
        value_type, kwargs = _flag_type(field.annotation)
        if "action" not in kwargs:
            kwargs["type"] = value_type
        default = field.get_default(call_default_factory=True)
        group.add_argument(
            *flags,
            dest=name,
            default=argparse.SUPPRESS,
            help=f"{field.description or ''} (default: {default})",
            **kwargs,
        )


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every flag's default after its help (unless the help already says it, or there is
    none to say); descriptions and example epilogs kept as written."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if "default" in text or default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


def _command_parser(prog: str, description: str | None = None, epilog: str | None = None, **kwargs: Any):
    return argparse.ArgumentParser(
        prog=prog, description=description, epilog=epilog, formatter_class=HelpFormatter, **kwargs
    )


def _add_common(parser: argparse.ArgumentParser, common: dict[str, dict[str, Any]]) -> None:
    for flag, kwargs in common.items():
        parser.add_argument(flag, **kwargs)


def first_pass(
    argv: list[str], positional: str, common: dict[str, dict[str, Any]]
) -> tuple[str | None, argparse.Namespace]:
    """The positional argument (MODEL, EXPORT_DIR) wherever it stands among the command's
    own flags; model options (unknown here) must follow it."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    _add_common(parser, {flag: {k: v for k, v in kw.items() if k != "required"} for flag, kw in common.items()})
    parser.add_argument(positional, nargs="?")
    known, _ = parser.parse_known_args(argv)
    return getattr(known, positional), known


def parse_options(
    schema: type[pydantic.BaseModel],
    prog: str,
    argv: list[str],
    common: dict[str, dict[str, Any]],
    what: str = "sample option",
    positional: tuple[str, str] | None = None,
    description: str | None = None,
    epilog: str | None = None,
) -> tuple[dict[str, Any], Any]:
    """Parse the command's own flags, its positional argument (`(dest, help)`, consumed
    wherever it stands) and the model's (or exporter's) options; validate the options."""
    parser = _command_parser(prog, description, epilog, allow_abbrev=False)
    if positional is not None:
        parser.add_argument(positional[0], help=positional[1])
    _add_common(parser, common)
    add_option_flags(parser, schema, title=f"{what}s")
    namespace = vars(parser.parse_intermixed_args(argv))
    own = {key.lstrip("-").replace("-", "_") for key in common} | ({positional[0]} if positional else set())
    command_args = {k: v for k, v in namespace.items() if k in own}
    options = validate(schema, {k: v for k, v in namespace.items() if k not in own}, what=what)
    return command_args, options


# commands --------------------------------------------------------------------------------


def cmd_list(args: argparse.Namespace) -> None:
    if missing_train_modules():
        _list_runtimes(args)
        return
    from zoo.api import list_models
    from zoo.registry import get_registry

    registry = get_registry()
    rows: list[dict[str, Any]] = []
    for name in list_models(args.pattern):
        entry = registry.models[name]
        plugin = entry.plugin
        presets = registry.presets(name)
        _, config = _default_config(name)
        rows.append(
            {
                "name": name,
                "plugin": entry.module,
                "source": entry.source,
                "version": plugin.version,
                "presets": list(presets),
                "default_preset": plugin.default_preset,
                "stages": plugin.stage_names(config),
                "components": plugin.component_names(config),
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    if not rows and args.pattern:
        print(f"no model matches {args.pattern!r}; installed: {', '.join(sorted(registry.models))}", file=sys.stderr)
    _print_table(
        ["model", "version", "presets", "stages", "components", "source"],
        [
            [
                r["name"],
                r["version"],
                ", ".join(r["presets"]),
                ", ".join(r["stages"]),
                ", ".join(r["components"]),
                r["source"],
            ]
            for r in rows
        ],
    )
    _report_failures(registry)


def cmd_plugins(args: argparse.Namespace) -> None:
    if missing_train_modules():
        _list_runtimes(args)
        return
    from zoo.registry import get_registry

    registry = get_registry()
    infos = [vars(info) for info in registry.plugins.values()]
    if args.json:
        print(json.dumps(infos, indent=2))
        return
    _print_table(
        ["plugin", "version", "models", "exporters", "source", "status"],
        [
            [
                i["name"],
                i["version"] or "",
                ", ".join(i["models"]),
                ", ".join(i["exporters"]),
                i["source"],
                _plugin_status(i),
            ]
            for i in infos
        ],
    )


def _list_runtimes(args: argparse.Namespace) -> None:
    """`zoo list` / `zoo plugins` of the runtime-only install: plugin modules import torch,
    so only the sampling loops the installed plugins declare are listed."""
    from zoo.runtime.discovery import installed_runtimes

    runtimes = installed_runtimes()
    if args.json:
        print(json.dumps([{"name": model, "runtimes": targets} for model, targets in runtimes.items()], indent=2))
        return
    print(f"runtime-only install: `zoo run` and `zoo serve` run exports of {', '.join(runtimes) or 'no model'}")
    for model, targets in runtimes.items():
        print(f"  {model}: {', '.join(targets)}")
    print(f"to train, sample from runs, evaluate, export or import: {TRAIN_INSTALL}")


def _plugin_status(info: dict[str, Any]) -> str:
    if info["error"]:
        return f"FAILED: {info['error']}"
    return "; ".join(f"warning: {w}" for w in info["warnings"]) or "ok"


def cmd_info(args: argparse.Namespace) -> None:
    if args.run:
        from zoo.checkpoint import read_run_record

        print(json.dumps(read_run_record(Path(args.run), args.model), indent=2))
        return
    if not args.model:
        raise ZooError("zoo info needs a MODEL or --run DIR")
    from zoo.registry import get_registry

    registry = get_registry()
    plugin = registry.get(args.model)
    preset, config = _default_config(args.model, args.preset)
    stages = plugin.stages(config)
    if args.json:
        info = {
            "name": plugin.name,
            "version": plugin.version,
            "description": plugin.description,
            "default_preset": plugin.default_preset,
            "preset": preset,
            "presets": registry.presets(args.model),
            "stages": [
                {
                    "name": stage.name,
                    "steps": stage.steps,
                    "batch_size": stage.batch_size,
                    "optimizers": [{"name": o.name, "lr": o.lr} for o in stage.optimizers],
                }
                for stage in stages
            ],
            "components": plugin.component_names(config),
            "levers": _levers_line(plugin, config),
            "config": config.model_dump(mode="json"),
            "fields": _field_descriptions(plugin.Config),
        }
        print(json.dumps(info, indent=2))
        return
    print(f"{plugin.name} {plugin.version}: {plugin.description}\n")
    print(f"presets (default {plugin.default_preset}):")
    for name, values in registry.presets(args.model).items():
        print(f"  {name}: {json.dumps(values)}")
    print(f"\nstages ({preset or 'defaults'}):")
    for stage in stages:
        optimizers = ", ".join(f"{o.name} lr {o.lr:g}" for o in stage.optimizers)
        print(f"  {stage.name}: {stage.steps} steps, batch {stage.batch_size}, optimizers: {optimizers}")
    print(f"\nlevers (scale): {_levers_line(plugin, config)}")
    print(f"\nexport components: {', '.join(plugin.component_names(config))}")
    print("\nconfig fields (set with --set key=value):")
    for line in _describe_fields(plugin.Config, config.model_dump()):
        print(f"  {line}")


def _levers_line(plugin: Any, config: Any) -> str:
    """The config's `scale` section in one line, with how many blocks the levers act on."""
    import torch

    scale = config.scale
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        blocks = plugin.blocks(plugin.build(config))
    on = {True: "on", False: "off"}
    return (
        f"accumulate {scale.accumulate}, activation checkpointing {on[scale.activation_checkpointing]}, "
        f"shard {on[scale.shard]}, compile {on[scale.compile]}, precision {scale.precision}, adamw {scale.adamw}; "
        f"{len(blocks)} blocks (ModelPlugin.blocks)"
    )


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
    if args.device != "auto":
        command += ["--device", args.device]
    if found is None:
        return f"interrupted before the first checkpoint; nothing to resume in {run_dir}: start again"
    state = found[1]
    if "step" in state:
        where = f"stage {state['stage']}, step {state['step']}"
    else:
        where = f"the end of stage {(state.get('completed') or ['?'])[-1]}"
    return f"interrupted; the last checkpoint is at {where}. Resume with:\n  {shlex.join(command)}"


SAMPLE_EPILOG = """examples:
  zoo sample var --class 3 7 --n 8 --seed 0 --out grid.png
  zoo sample var --run runs/var-big --top-k 1 --json
  zoo sample tiny_autoencoder --n 16 --out ae.png     (MODEL --help: the model's options)"""


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
        _usage_without_positional("zoo sample", "MODEL", common, args.rest, description, SAMPLE_EPILOG)
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
    _emit(output, out, command["json"])


def _usage_without_positional(
    prog: str, positional: str, common: dict[str, dict[str, Any]], argv: list[str], description: str, epilog: str
) -> None:
    parser = _command_parser(prog, description, epilog)
    what = "export directory (`zoo export MODEL --out DIR`)" if positional == "EXPORT_DIR" else "installed model"
    parser.add_argument(
        positional.lower(),
        metavar=positional,
        help=f"{what}; `zoo {prog.split()[-1]} {positional} --help` lists its options too",
    )
    _add_common(parser, common)
    if "-h" in argv or "--help" in argv:
        parser.print_help()
        return
    parser.error(f"the following arguments are required: {positional}")


def cmd_eval(args: argparse.Namespace) -> None:
    from zoo import api

    run = api.load_run(args.run or Path("runs") / args.model, model=args.model, device=args.device)
    metrics = run.evaluate()
    from zoo.checkpoint import atomic_write_json

    atomic_write_json(run.run_dir / "eval.json", metrics)
    if args.json:
        print(json.dumps(metrics, indent=2))
    else:
        _print_table(
            ["metric", "value"], [[k, f"{v:.4g}" if isinstance(v, float) else str(v)] for k, v in metrics.items()]
        )


EXPORT_EPILOG = """examples:
  zoo export var --out exports/var
  zoo export var --run runs/var-big --out exports/var-int8 --precision int8
  zoo export var --out exports/var --json           (MODEL --help: the exporter's options)"""


def cmd_export(args: argparse.Namespace) -> None:
    """`zoo export MODEL [--format NAME] --out DIR [--run DIR] [the exporter's options]`:
    the exporter's flags come from its `Options` (`zoo export MODEL --format NAME --help`)."""
    from zoo.registry import get_registry

    registry = get_registry()
    common: dict[str, dict[str, Any]] = {
        "--format": {"default": DEFAULT_EXPORT_FORMAT, "help": "export format (`zoo plugins` lists the exporters)"},
        "--run": {"type": Path, "default": None, "help": "run directory (default: runs/MODEL)"},
        "--out": {"type": Path, "required": True, "help": "export directory"},
        "--json": {"action": "store_true", "help": "print the manifest as JSON"},
    }
    model, known = first_pass(args.rest, "model", common)
    description = "Export a trained run's graphs (ONNX by default), validated against torch."
    if model is None:
        _usage_without_positional("zoo export", "MODEL", common, args.rest, description, EXPORT_EPILOG)
        return
    registry.get(model)  # an unknown model fails before the flags are read
    exporter = registry.get_exporter(known.format)
    common["--format"]["help"] = f"export format: {', '.join(sorted(registry.exporters))}"
    command, options = parse_options(
        exporter.Options,
        "zoo export",
        args.rest,
        common,
        what=f"{exporter.name} export option",
        positional=("model", "installed model (`zoo list`)"),
        description=description,
        epilog=EXPORT_EPILOG,
    )
    from zoo import api

    run = api.load_run(command["run"] or Path("runs") / model, model=model, device="cpu")
    components = run.plugin.component_names(run.config)
    if not command["json"]:  # a status line, so that a minute of exporting is not silence
        print(
            f"exporting {model} ({', '.join(components)}) to {command['out']} as {exporter.name}, "
            f"then validating every graph against torch; large models take minutes",
            flush=True,
        )
    manifest = run.export(command["out"], format=exporter.name, **options.model_dump(exclude_unset=True))
    if command["json"]:
        print(json.dumps({"export_dir": str(command["out"]), "manifest": manifest}, indent=2, default=str))
        return
    rows = exporter.summary(manifest)
    if rows:
        _print_table(list(rows[0]), [list(row.values()) for row in rows])
    print(f"export directory: {command['out']}")
    for line in exporter.notes(manifest, command["out"], options):
        print(line)


RUN_EPILOG = """examples:
  zoo run exports/var --class 3 --n 8 --out onnx_grid.png
  zoo run exports/var --threads 1 --provider cpu --top-k 1
  zoo run exports/var --verify deploy.pub.pem --json   (EXPORT_DIR --help: the model's options)"""


def cmd_run(args: argparse.Namespace) -> None:
    from zoo import runtime

    common: dict[str, dict[str, Any]] = {
        **RUN_FLAGS,
        "--out": {"default": None, "help": "output image; texts go beside it (default: MODEL_run.png)"},
        "--json": {"action": "store_true", "help": "print what was written as JSON"},
    }
    export_dir, known = first_pass(args.rest, "export_dir", common)
    description = "Sample from an export directory with onnxruntime (no torch needed)."
    if export_dir is None:
        _usage_without_positional("zoo run", "EXPORT_DIR", common, args.rest, description, RUN_EPILOG)
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
    _emit(loaded.sample(options), out, command["json"])


def cmd_serve(args: argparse.Namespace) -> None:
    from zoo.runtime.serve import ServeSettings, serve

    settings = ServeSettings(
        export_dirs=args.export_dirs,
        provider=args.provider,
        threads=args.threads,
        verify_key=args.verify,
        workers=args.workers,
        max_queue=args.max_queue,
        max_upload_bytes=round(args.max_upload_mb * 1024 * 1024),
    )
    serve(settings, host=args.host, port=args.port)


def cmd_import(args: argparse.Namespace) -> None:
    from zoo.importing import import_checkpoint

    out = args.out or Path("runs") / args.model
    imported = import_checkpoint(args.model, args.files, out, preset=args.preset, format=args.format)
    if args.json:
        print(
            json.dumps(
                {
                    "run_dir": str(imported.run_dir),
                    "preset": imported.preset,
                    "notes": imported.notes,
                    "config": imported.config.model_dump(mode="json"),
                },
                indent=2,
            )
        )
        return
    matched = f"matches preset {imported.preset!r}" if imported.preset else "matches no preset"
    print(f"config inferred from the files ({matched}):")
    for line in _describe_fields(type(imported.config), imported.config.model_dump()):
        print(f"  {line}")
    for note in imported.notes:
        print(f"note: {note}")
    print(f"run directory: {imported.run_dir}")
    print(
        f"next: zoo sample {args.model} --run {imported.run_dir}  |  zoo export {args.model} --run "
        f"{imported.run_dir} --out exports/{imported.run_dir.name}"
    )


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


def cmd_keygen(args: argparse.Namespace) -> None:
    from zoo.runtime.signing import generate_key_pair

    private, public = generate_key_pair(args.out)
    print(f"private key: {private} (keep it secret; sign with `zoo export ... --sign {private}`)")
    print(f"public key: {public} (give it to users; check with `zoo run DIR --verify {public}`)")


# helpers ---------------------------------------------------------------------------------


def _default_config(model: str, preset: str | None = None):
    from zoo.api import resolve_config

    _, preset_name, config = resolve_config(model, preset)
    return preset_name, config


def _describe_fields(schema: type[pydantic.BaseModel], values: dict[str, Any], prefix: str = "") -> list[str]:
    lines = []
    for name, field in schema.model_fields.items():
        value = values.get(name)
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
            lines.extend(_describe_fields(annotation, value or {}, f"{prefix}{name}."))
            continue
        type_name = getattr(annotation, "__name__", str(annotation)).replace("typing.", "")
        lines.append(f"{prefix}{name}: {type_name} = {json.dumps(value)}  {field.description or ''}")
    return lines


def _emit(output, out: Path, as_json: bool = False) -> None:
    output.save(out)
    if as_json:
        written = {"out": str(out) if output.images is not None else None, "texts": output.texts}
        if output.images is not None:
            written["images"] = len(output.images)
        if output.texts is not None:
            written["texts_file"] = str(out if output.images is None else out.with_suffix(".txt"))
        print(json.dumps(written))
        return
    if output.texts:
        for text in output.texts:
            print(text)
    if output.images is not None:
        print(f"wrote {out}")


def _field_descriptions(schema: type[pydantic.BaseModel], prefix: str = "") -> dict[str, str]:
    """{"a.b": description} for every leaf field."""
    found: dict[str, str] = {}
    for name, field in schema.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
            found.update(_field_descriptions(annotation, f"{prefix}{name}."))
        else:
            found[f"{prefix}{name}"] = field.description or ""
    return found


def _print_table(header: list[str], rows: list[list[str]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(*header)
    for row in rows:
        table.add_row(*[str(cell) for cell in row])
    # Piped output is read by people and scripts alike: do not truncate cells to 80 columns.
    Console(width=None if sys.stdout.isatty() else 200).print(table)


def _report_failures(registry) -> None:
    for info in registry.failures:
        print(f"warning: plugin {info.name} ({info.source}) failed to load: {info.error}", file=sys.stderr)
    for info in registry.plugins.values():
        for warning in info.warnings:
            print(f"warning: plugin {info.name} ({info.source}): {warning}", file=sys.stderr)


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


RUN_FLAGS: dict[str, dict[str, Any]] = {
    "--provider": {
        "choices": ["cpu", "cuda", "tensorrt"],
        "default": None,
        "help": "onnxruntime provider (default: CUDA when usable, else CPU)",
    },
    "--threads": {"type": int, "default": None, "help": "onnxruntime intra-op threads (default: onnxruntime's choice)"},
    "--verify": {
        "type": Path,
        "metavar": "KEY.pub.pem",
        "default": None,
        "help": "refuse the export unless manifest.sig is this Ed25519 public key's signature",
    },
}

# Commands whose flags depend on the model or exporter: argparse hands them the rest of the line.
PASS_THROUGH = {"sample", "run", "export"}


def _add_subcommand(commands: Any, name: str, help: str, description: str, epilog: str, **kwargs: Any):
    return commands.add_parser(
        name, help=help, description=description, epilog=epilog, formatter_class=HelpFormatter, **kwargs
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _command_parser(
        "zoo",
        "A model zoo for discrete-latent image generation: train, sample, evaluate, export, report.",
        "examples:\n  zoo list\n  zoo train var\n  zoo report runs/var\n  zoo COMMAND --help",
    )
    parser.add_argument("--version", action="version", version=f"zoo {__version__}")
    parser.add_argument("--registry", type=Path, help="user registry file (also $ZOO_REGISTRY)")
    parser.add_argument("--strict", action="store_true", help="fail when a plugin fails to load (also $ZOO_STRICT=1)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", help="`zoo COMMAND --help` for its flags")

    listing = _add_subcommand(
        commands,
        "list",
        "models, their presets, stages and components",
        "The installed models; PATTERN is a shell glob on the model name.",
        "examples:\n  zoo list\n  zoo list 'v*' --json",
    )
    listing.add_argument("pattern", nargs="?", help="glob on model names, e.g. 'v*'")
    listing.add_argument("--json", action="store_true", help="print the rows as JSON")
    listing.set_defaults(handler=cmd_list)

    plugins = _add_subcommand(
        commands,
        "plugins",
        "loaded plugins and the ones that failed",
        "Every plugin module found (entry points, registry files), with its models, exporters and status.",
        "examples:\n  zoo plugins\n  zoo plugins --json",
    )
    plugins.add_argument("--json", action="store_true", help="print the plugins as JSON")
    plugins.set_defaults(handler=cmd_plugins)

    info = _add_subcommand(
        commands,
        "info",
        "a model's description, presets, config fields, stages",
        "A model's presets, stages, export components and every config field; or a run's record.",
        "examples:\n  zoo info var\n  zoo info var --preset d16 --json\n  zoo info --run runs/var",
    )
    info.add_argument("model", nargs="?", help="installed model (`zoo list`)")
    info.add_argument("--preset", help="show this preset's resolved config (default: the model's default preset)")
    info.add_argument("--run", type=Path, help="print a run directory's record (config, sessions) as JSON instead")
    info.add_argument("--json", action="store_true", help="print the model's description as JSON")
    info.set_defaults(handler=cmd_info, needs_train=True)

    train = _add_subcommand(
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
    train.add_argument("--seed", type=int, help="config field seed (default: the config's)")
    train.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to train")
    train.add_argument("--checkpoint-every", type=int, default=200, help="steps between trainer checkpoints")
    train.add_argument(
        "--log-every-seconds", type=float, default=30.0, help="seconds between progress lines when not on a terminal"
    )
    train.add_argument(
        "--tensorboard",
        nargs="?",
        const="",
        metavar="DIR",
        help="write TensorBoard scalars and grids to DIR (default DIR: RUN/tensorboard)",
    )
    train.add_argument(
        "--nproc-per-node",
        type=int,
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
    levers.add_argument("--accumulate", type=int, metavar="N", help="micro-batches per optimizer step")
    levers.add_argument("--precision", choices=["fp32", "bf16"], help="bf16 autocast (CUDA or CPU)")
    levers.add_argument(
        "--compile", action="store_true", default=None, help="torch.compile each block (falls back to eager)"
    )
    mode = train.add_mutually_exclusive_group()
    mode.add_argument("--quiet", action="store_true", help="no progress output")
    mode.add_argument("--json", action="store_true", help="progress as JSON lines, ending with a `done` event")
    train.set_defaults(handler=cmd_train, needs_train=True)

    sample = _add_subcommand(
        commands,
        "sample",
        "sample from a trained run (MODEL --help: options)",
        "Sample from a trained run.",
        SAMPLE_EPILOG,
        add_help=False,
    )
    sample.set_defaults(handler=cmd_sample, needs_train=True)

    evaluate = _add_subcommand(
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

    export = _add_subcommand(
        commands,
        "export",
        "export a trained run (ONNX by default; MODEL --help: options)",
        "Export a trained run.",
        EXPORT_EPILOG,
        add_help=False,
    )
    export.set_defaults(handler=cmd_export, needs_train=True)

    run = _add_subcommand(
        commands,
        "run",
        "sample from an export with onnxruntime (no torch)",
        "Sample from an export directory with onnxruntime.",
        RUN_EPILOG,
        add_help=False,
    )
    run.set_defaults(handler=cmd_run)

    report = _add_subcommand(
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

    importing = _add_subcommand(
        commands,
        "import",
        "published checkpoints -> a run directory",
        "Convert published checkpoint files of MODEL into a run directory (config inferred from the "
        "tensors). Files are read without running code they contain.",
        "example:\n  zoo import var vae_ch160v4096z32.pth var_d16.pth --out runs/var-d16",
    )
    importing.add_argument("model", help="installed model (`zoo list`)")
    importing.add_argument("files", nargs="+", type=Path, metavar="FILE", help="published checkpoint files")
    importing.add_argument("--out", type=Path, help="run directory to create (default: runs/MODEL)")
    importing.add_argument("--preset", help="the preset the files must match (default: inferred)")
    importing.add_argument("--format", help="published format, if the model has importers for several")
    importing.add_argument("--json", action="store_true", help="print the result as JSON")
    importing.set_defaults(handler=cmd_import, needs_train=True)

    serving = _add_subcommand(
        commands,
        "serve",
        "serve exports over HTTP: a JSON API and a web page (onnxruntime, no torch)",
        "Serve export directories over HTTP (Starlette on uvicorn): GET /v1/models, "
        "POST /v1/models/NAME/sample, GET /healthz, GET /metrics and a web page at /. A model is named by "
        "its export directory's name.",
        "examples:\n  zoo serve exports/var\n  zoo serve exports/var exports/quantart --port 8080 --workers 4\n"
        '  curl -X POST localhost:8000/v1/models/var/sample -d \'{"classes": [3], "n": 4}\' -o grid.png '
        "-H 'Accept: image/png'",
    )
    serving.add_argument("export_dirs", nargs="+", type=Path, metavar="EXPORT_DIR", help="export directories")
    serving.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)"
    )
    serving.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    serving.add_argument(
        "--workers", type=int, default=2, help="requests sampled at once, sharing the sessions (default 2)"
    )
    serving.add_argument(
        "--max-queue", type=int, default=32, help="requests waiting for a worker; more get 503 (default 32)"
    )
    serving.add_argument(
        "--max-upload-mb", type=float, default=16, help="largest request body, uploaded images included (default 16)"
    )
    for flag, spec in RUN_FLAGS.items():
        serving.add_argument(flag, **spec)
    serving.set_defaults(handler=cmd_serve)

    keygen = _add_subcommand(
        commands,
        "keygen",
        "make an Ed25519 key pair for signing exports",
        "Write an Ed25519 key pair: KEY.pem (private, mode 0600) and KEY.pub.pem.",
        "example:\n  zoo keygen --out deploy && zoo export var --out exports/var --sign deploy.pem",
    )
    keygen.add_argument(
        "--out", type=Path, required=True, metavar="KEY", help="writes KEY.pem (private) and KEY.pub.pem"
    )
    keygen.set_defaults(handler=cmd_keygen)
    return parser


def split_pass_through(argv: list[str]) -> tuple[list[str], list[str]]:
    """`[global flags] COMMAND rest`: for sample/run/export, argparse reads up to COMMAND
    and the command reads the rest itself."""
    index = 0
    while index < len(argv):
        item = argv[index]
        if item == "--registry":
            index += 2
        elif item.startswith("--registry=") or item == "--strict":
            index += 1
        else:
            break
    if index < len(argv) and argv[index] in PASS_THROUGH:
        return argv[: index + 1], argv[index + 1 :]
    return argv, []


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    """Warnings (a renamed config field, an option's old value) as one line, like errors."""
    print(f"warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    _enable_completion(parser)
    argv = list(sys.argv[1:] if argv is None else argv)
    head, rest = split_pass_through(argv)
    args = parser.parse_args(head)
    args.rest, args.argv = rest, argv
    if args.command is None:  # bare `zoo`: the help, not a usage error
        parser.print_help()
        return
    warnings.showwarning = _show_warning
    try:
        if getattr(args, "needs_train", False):
            require_train(f"zoo {args.command}")
        if args.strict or args.registry:
            require_train("zoo --registry/--strict")  # the registry loads plugin modules, which import torch
            from zoo.registry import configure_registry

            configure_registry(args.registry, args.strict)
        args.handler(args)
        sys.stdout.flush()  # a closed pipe shows here, inside the handler below
    except BrokenPipeError:
        # `zoo info var | head -1`: the reader left. Python's advice: point stdout at devnull
        # so the interpreter's final flush does not fail again, and exit as SIGPIPE would.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(141)
    except ZooError as error:
        print(f"error: {error.cli_message}", file=sys.stderr)
        sys.exit(1)
    except OSError as error:
        print(f"error: {describe_os_error(error)}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


def _enable_completion(parser: argparse.ArgumentParser) -> None:
    """Shell completion (bash, zsh) when argcomplete is installed and the shell asks:
    `eval "$(register-python-argcomplete zoo)"`. Costs nothing otherwise."""
    if "_ARGCOMPLETE" not in os.environ:
        return
    try:
        import argcomplete
    except ImportError:
        return
    argcomplete.autocomplete(parser)


# A write that fails for these is the disk's doing, whatever the path.
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}


def describe_os_error(error: OSError) -> str:
    """`cannot write PATH: No space left on device`: the path and the reason, no traceback."""
    verb = "cannot write" if error.errno in WRITE_ERRNOS else "cannot access"
    where = f" {error.filename}" if error.filename else ""
    return f"{verb}{where}: {error.strerror or error}"


if __name__ == "__main__":
    main()
