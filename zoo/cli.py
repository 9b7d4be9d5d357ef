"""`zoo list | plugins | info | train | sample | eval | export | import | run | serve | keygen`.

A thin layer over `zoo.api`; torch is imported only by the commands that need it, so
`zoo run` and `zoo serve` work from the torch-free base install. There, the commands that
need the `train` extra say so in one line, and `zoo list` / `zoo plugins` show the
installed sampling loops. Errors users cause, and errors of the disk (full, read-only, a
file where a folder should be), print as one line.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
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


def parse_options(
    schema: type[pydantic.BaseModel],
    prog: str,
    argv: list[str],
    common: dict[str, dict[str, Any]],
    what: str = "sample option",
) -> tuple[dict[str, Any], Any]:
    """Parse the command's own flags plus the model's (or exporter's) options; validate the options."""
    parser = argparse.ArgumentParser(prog=prog)
    for flag, kwargs in common.items():
        parser.add_argument(flag, **kwargs)
    add_option_flags(parser, schema, title=f"{what}s")
    namespace = vars(parser.parse_args(argv))
    own = {key.lstrip("-").replace("-", "_") for key in common}
    command_args = {k: v for k, v in namespace.items() if k in own}
    options = validate(schema, {k: v for k, v in namespace.items() if k not in own}, what=what)
    return command_args, options


# commands --------------------------------------------------------------------------------


def cmd_list(args: argparse.Namespace) -> None:
    if missing_train_modules():
        _list_runtimes(args)
        return
    from zoo.registry import get_registry

    registry = get_registry()
    rows: list[dict[str, Any]] = []
    for name, entry in sorted(registry.models.items()):
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

        print(json.dumps(read_run_record(Path(args.run)), indent=2))
        return
    if not args.model:
        raise ZooError("zoo info needs a MODEL or --run DIR")
    from zoo.registry import get_registry

    registry = get_registry()
    plugin = registry.get(args.model)
    preset, config = _default_config(args.model, args.preset)
    print(f"{plugin.name} {plugin.version}: {plugin.description}\n")
    print(f"presets (default {plugin.default_preset}):")
    for name, values in registry.presets(args.model).items():
        print(f"  {name}: {json.dumps(values)}")
    print(f"\nstages ({preset or 'defaults'}):")
    for stage in plugin.stages(config):
        optimizers = ", ".join(f"{o.name} lr {o.lr:g}" for o in stage.optimizers)
        print(f"  {stage.name}: {stage.steps} steps, batch {stage.batch_size}, optimizers: {optimizers}")
    print(f"\nexport components: {', '.join(plugin.component_names(config))}")
    print("\nconfig fields (set with --set key=value):")
    for line in _describe_fields(plugin.Config, config.model_dump()):
        print(f"  {line}")


def cmd_train(args: argparse.Namespace) -> None:
    if args.nproc_per_node and args.nproc_per_node > 1:
        sys.exit(_launch_torchrun(args.nproc_per_node))
    from zoo import api

    overrides = {"seed": args.seed} if args.seed is not None else None
    progress: Mode = "json" if args.json else "quiet" if args.quiet else "bar"
    run = api.train(
        args.model,
        preset=args.preset,
        overrides=overrides,
        run_dir=args.out,
        config_file=args.config,
        assignments=args.set or [],
        stage=args.stage,
        resume=args.resume,
        from_run=args.from_run,
        device=args.device,
        precision=args.precision,
        progress=progress,
        checkpoint_every=args.checkpoint_every,
    )
    if progress != "json" and int(os.environ.get("RANK", "0")) == 0:
        grids = sorted((run.run_dir / "samples").glob("*.png"))
        print(f"run directory: {run.run_dir}")
        if grids:
            print(f"sample grid: {grids[-1]}")


def cmd_sample(args: argparse.Namespace) -> None:
    from zoo import api
    from zoo.registry import get_registry

    plugin = get_registry().get(args.model)
    common = {
        "--run": {"default": str(Path("runs") / args.model), "help": "run directory (default: runs/MODEL)"},
        "--out": {"default": f"{args.model}_sample.png", "help": "output image (texts go beside it)"},
        "--device": {"default": "auto", "help": "auto, cpu or cuda"},
    }
    command, options = parse_options(plugin.SampleOptions, f"zoo sample {args.model}", args.rest, common)
    out = check_output_path(command["out"])
    run = api.load_run(command["run"], model=args.model, device=command["device"])
    output = plugin.sample(run.model, run.config, options, run.device)
    _emit(output, out)


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


def cmd_export(args: argparse.Namespace) -> None:
    """`zoo export MODEL [--format NAME] --out DIR [--run DIR] [the exporter's options]`:
    the flags after --format come from that exporter's `Options` (`zoo export MODEL
    --format NAME --help` lists them)."""
    from zoo import api
    from zoo.registry import get_registry

    registry = get_registry()
    registry.get(args.model)  # an unknown model fails before the flags are read
    chosen = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    chosen.add_argument("--format", default=args.format)
    exporter = registry.get_exporter(chosen.parse_known_args(args.rest)[0].format)
    common = {
        "--format": {
            "default": exporter.name,
            "help": f"export format: {', '.join(sorted(registry.exporters))} (default {DEFAULT_EXPORT_FORMAT})",
        },
        "--run": {"type": Path, "default": Path("runs") / args.model, "help": "run directory (default: runs/MODEL)"},
        "--out": {"type": Path, "required": True, "help": "export directory"},
    }
    command, options = parse_options(
        exporter.Options,
        f"zoo export {args.model} --format {exporter.name}",
        args.rest,
        common,
        what=f"{exporter.name} export option",
    )
    run = api.load_run(command["run"], model=args.model, device="cpu")
    manifest = run.export(command["out"], format=exporter.name, **options.model_dump(exclude_unset=True))
    rows = exporter.summary(manifest)
    if rows:
        _print_table(list(rows[0]), [list(row.values()) for row in rows])
    print(f"export directory: {command['out']}")
    for line in exporter.notes(manifest, command["out"], options):
        print(line)


def cmd_run(args: argparse.Namespace) -> None:
    from zoo import runtime

    # `zoo run`'s own flags may also follow DIR, among the model's options.
    late = argparse.ArgumentParser(prog=f"zoo run {args.export_dir}", add_help=False, allow_abbrev=False)
    _add_run_flags(late, default=argparse.SUPPRESS)
    _, args.rest = late.parse_known_args(args.rest, namespace=args)
    loaded = runtime.load(
        Path(args.export_dir), provider=args.provider, intra_op_threads=args.threads, verify_key=args.verify
    )
    common = {
        "--out": {"default": f"{loaded.manifest['model']}_run.png", "help": "output image (texts go beside it)"},
    }
    command, options = parse_options(loaded.options_class, f"zoo run {args.export_dir}", args.rest, common)
    out = check_output_path(command["out"])
    _emit(loaded.sample(options), out)


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


def _emit(output, out: Path) -> None:
    output.save(out)
    if output.texts:
        for text in output.texts:
            print(text)
    if output.images is not None:
        print(f"wrote {out}")


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


def _add_run_flags(parser: argparse.ArgumentParser, default: Any) -> None:
    parser.add_argument("--provider", choices=["cpu", "cuda", "tensorrt"], default=default)
    parser.add_argument("--threads", type=int, default=default, help="onnxruntime intra-op threads")
    parser.add_argument(
        "--verify",
        type=Path,
        metavar="KEY.pub.pem",
        default=default,
        help="refuse the export unless manifest.sig is this Ed25519 public key's signature",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zoo", description="A model zoo for discrete-latent image generation.")
    parser.add_argument("--registry", type=Path, help="user registry file (also $ZOO_REGISTRY)")
    parser.add_argument("--strict", action="store_true", help="fail when a plugin fails to load (also $ZOO_STRICT=1)")
    commands = parser.add_subparsers(dest="command", required=True)

    listing = commands.add_parser("list", help="models, their presets, stages and components")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=cmd_list)

    plugins = commands.add_parser("plugins", help="loaded plugins and the ones that failed")
    plugins.add_argument("--json", action="store_true")
    plugins.set_defaults(handler=cmd_plugins)

    info = commands.add_parser("info", help="a model's description, presets, config fields, stages")
    info.add_argument("model", nargs="?")
    info.add_argument("--preset")
    info.add_argument("--run", type=Path, help="print a run directory's resolved config instead")
    info.set_defaults(handler=cmd_info, needs_train=True)

    train = commands.add_parser("train", help="train a model's stages into a run directory")
    train.add_argument("model")
    train.add_argument("--preset")
    train.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field (repeatable)")
    train.add_argument("--config", type=Path, help="YAML/JSON file of config fields")
    train.add_argument("--out", type=Path, help="run directory (default: runs/MODEL)")
    train.add_argument("--stage", help="run only this stage")
    train.add_argument("--from", dest="from_run", type=Path, help="take earlier stages' weights from this run")
    train.add_argument("--resume", action="store_true", help="continue from the run directory's last checkpoint")
    train.add_argument("--seed", type=int)
    train.add_argument("--device", default="auto", help="auto, cpu or cuda")
    train.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="bf16 autocast (CUDA or CPU)")
    train.add_argument("--checkpoint-every", type=int, default=200, help="steps between trainer checkpoints")
    train.add_argument("--nproc-per-node", type=int, help="start torchrun with N processes (DDP)")
    mode = train.add_mutually_exclusive_group()
    mode.add_argument("--quiet", action="store_true", help="no progress bar")
    mode.add_argument("--json", action="store_true", help="progress as JSON lines")
    train.set_defaults(handler=cmd_train, needs_train=True)

    sample = commands.add_parser("sample", add_help=False, help="sample from a trained run (MODEL --help: options)")
    sample.add_argument("model")
    sample.add_argument("rest", nargs=argparse.REMAINDER)
    sample.set_defaults(handler=cmd_sample, needs_train=True)

    evaluate = commands.add_parser("eval", help="evaluate a trained run")
    evaluate.add_argument("model")
    evaluate.add_argument("--run", type=Path, help="run directory (default: runs/MODEL)")
    evaluate.add_argument("--device", default="auto")
    evaluate.add_argument("--json", action="store_true")
    evaluate.set_defaults(handler=cmd_eval, needs_train=True)

    export = commands.add_parser(
        "export", add_help=False, help="export a trained run (ONNX by default; MODEL [--format F] --help: options)"
    )
    export.add_argument("--format", default=DEFAULT_EXPORT_FORMAT, help=argparse.SUPPRESS)  # also before MODEL
    export.add_argument("model")
    export.add_argument("rest", nargs=argparse.REMAINDER)
    export.set_defaults(handler=cmd_export, needs_train=True)

    run = commands.add_parser("run", add_help=False, help="sample from an export with onnxruntime (no torch)")
    run.add_argument("export_dir")
    _add_run_flags(run, default=None)
    run.add_argument("rest", nargs=argparse.REMAINDER)
    run.set_defaults(handler=cmd_run)

    importing = commands.add_parser(
        "import",
        help="published checkpoints -> a run directory",
        description="Convert published checkpoint files of MODEL into a run directory (config inferred from the "
        "tensors). Files are read without running code they contain.",
        epilog="example: zoo import var vae_ch160v4096z32.pth var_d16.pth --out runs/var-d16",
    )
    importing.add_argument("model")
    importing.add_argument("files", nargs="+", type=Path, metavar="FILE")
    importing.add_argument("--out", type=Path, help="run directory to create (default: runs/MODEL)")
    importing.add_argument("--preset", help="the preset the files must match (default: inferred)")
    importing.add_argument("--format", help="published format, if the model has importers for several")
    importing.add_argument("--json", action="store_true", help="print the result as JSON")
    importing.set_defaults(handler=cmd_import, needs_train=True)

    serving = commands.add_parser(
        "serve",
        help="serve exports over HTTP: a JSON API and a web page (onnxruntime, no torch)",
        description="Serve export directories over HTTP (Starlette on uvicorn): GET /v1/models, "
        "POST /v1/models/NAME/sample, GET /healthz, GET /metrics and a web page at /. A model is named by "
        "its export directory's name.",
    )
    serving.add_argument("export_dirs", nargs="+", type=Path, metavar="EXPORT_DIR")
    serving.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)"
    )
    serving.add_argument("--port", type=int, default=8000)
    serving.add_argument(
        "--workers", type=int, default=2, help="requests sampled at once, sharing the sessions (default 2)"
    )
    serving.add_argument(
        "--max-queue", type=int, default=32, help="requests waiting for a worker; more get 503 (default 32)"
    )
    serving.add_argument(
        "--max-upload-mb", type=float, default=16, help="largest request body, uploaded images included (default 16)"
    )
    _add_run_flags(serving, default=None)
    serving.set_defaults(handler=cmd_serve)

    keygen = commands.add_parser("keygen", help="make an Ed25519 key pair for signing exports")
    keygen.add_argument(
        "--out", type=Path, required=True, metavar="KEY", help="writes KEY.pem (private) and KEY.pub.pem"
    )
    keygen.set_defaults(handler=cmd_keygen)
    return parser


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
    args = parser.parse_args(argv)
    warnings.showwarning = _show_warning
    try:
        if getattr(args, "needs_train", False):
            require_train(f"zoo {args.command}")
        if args.strict or args.registry:
            require_train("zoo --registry/--strict")  # the registry loads plugin modules, which import torch
            from zoo.registry import configure_registry

            configure_registry(args.registry, args.strict)
        args.handler(args)
    except ZooError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    except OSError as error:
        print(f"error: {describe_os_error(error)}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


# A write that fails for these is the disk's doing, whatever the path.
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}


def describe_os_error(error: OSError) -> str:
    """`cannot write PATH: No space left on device`: the path and the reason, no traceback."""
    verb = "cannot write" if error.errno in WRITE_ERRNOS else "cannot access"
    where = f" {error.filename}" if error.filename else ""
    return f"{verb}{where}: {error.strerror or error}"


if __name__ == "__main__":
    main()
