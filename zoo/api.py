"""The Python API; the CLI is a thin layer over it.

Usage:

    import zoo
    zoo.list_models()
    plugin, config, model = zoo.create_model("var", preset="digits", seed=1)
    run = zoo.train("var", run_dir="runs/var")
    run = zoo.load_run("runs/var"); run.sample(classes=[3]).save("three.png"); run.evaluate()
    run.export("exports/var", precision="int8")           # ONNX, the default format
    run.export("exports/var_x", format="NAME")            # any registered exporter (`zoo plugins`)
    zoo.pull("var-d16", "runs/var-d16")                   # published weights (`zoo pull --list`)
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zoo import checkpoint as ckpt
from zoo.config import ZooConfig, resolve, validate
from zoo.device import Precision, choose_device
from zoo.errors import RunError
from zoo.exporter import DEFAULT_FORMAT
from zoo.importing import import_checkpoint as import_checkpoint  # re-exported as zoo.import_checkpoint
from zoo.outputs import SampleOutput
from zoo.plugin import ModelPlugin
from zoo.progress import Mode
from zoo.pulling import pull as pull  # re-exported as zoo.pull
from zoo.registry import get_registry
from zoo.trainer import Trainer, TrainOptions


def list_models(pattern: str | None = None) -> list[str]:
    """Installed model names, sorted; `pattern` is a shell glob (`"v*"`, `"*caption*"`)."""
    names = sorted(get_registry().models)
    return names if pattern is None else [n for n in names if fnmatch.fnmatchcase(n, pattern)]


def get_plugin(name: str) -> ModelPlugin[Any, Any, Any]:
    return get_registry().get(name)


def resolve_config(
    name: str,
    preset: str | None = None,
    config_file: Path | None = None,
    assignments: Iterable[str] = (),
    overrides: Mapping[str, Any] | None = None,
    base: Mapping[str, Any] | None = None,
) -> tuple[ModelPlugin[Any, Any, Any], str | None, ZooConfig]:
    """defaults < preset < registry overrides < config file < overrides < --set assignments.

    With `base` (a run's stored config, when resuming it), the layers go on top of it
    instead of the defaults, and a preset applies only when one is named."""
    registry = get_registry()
    plugin = registry.get(name)
    if base is not None and preset is None:
        preset_name, preset_values = None, None
    else:
        preset_name, preset_values = registry.preset(name, preset)
    config = resolve(plugin.Config, preset_values, None, config_file, assignments, overrides, base=base)
    return plugin, preset_name, config


def create_model(
    name: str, preset: str | None = None, **overrides: Any
) -> tuple[ModelPlugin[Any, Any, Any], ZooConfig, nn.Module]:
    """Build a model with fresh weights, like `timm.create_model`."""
    plugin, _, config = resolve_config(name, preset, overrides=overrides)
    torch.manual_seed(config.seed)
    return plugin, config, plugin.build(config)


@dataclass
class Run:
    """A trained model loaded from its run directory."""

    plugin: ModelPlugin[Any, Any, Any]
    config: ZooConfig
    model: nn.Module
    run_dir: Path
    device: torch.device

    def sample(self, **options: Any) -> SampleOutput:
        parsed = validate(self.plugin.SampleOptions, options, what="sample option")
        return self.plugin.sample(self.model, self.config, parsed, self.device)

    def evaluate(self, metrics: str | list[str] | None = None, **options: Any) -> dict[str, Any]:
        """The plugin's own metrics on the held-out split; with `metrics` ("fid,isc,prc,kid,rfid")
        the distribution metrics instead, through torch-fidelity, with `options` the fields of
        `zoo.metrics.evaluate.MetricOptions` (ref, samples, keep_samples, inception_weights, ...)."""
        self.model.eval()
        if metrics is not None:
            from zoo.metrics.evaluate import MetricOptions, evaluate_metrics, parse_metrics, run_target

            parsed = MetricOptions(parse_metrics(metrics), **options)
            target = run_target(self.plugin, self.config, self.model, self.run_dir, self.device)
            return evaluate_metrics(target, parsed, self.device)
        with torch.no_grad():
            return self.plugin.evaluate(self.model, self.config, self.device)

    def export(self, out_dir: Path | str, format: str = DEFAULT_FORMAT, **options: Any) -> dict[str, Any]:
        """Export with the exporter registered for `format`; `options` are its `Options`
        fields (ONNX: opset, precision, components, sign_key, device). Returns its manifest."""
        exporter = get_registry().get_exporter(format)
        parsed = validate(exporter.Options, options, what=f"{exporter.name} export option")
        return exporter.export(self.plugin, self.model, self.config, Path(out_dir), parsed)


def load_run(run_dir: Path | str, model: str | None = None, device: str = "auto") -> Run:
    """Load a run directory; `model`, when given, must be the model the run holds."""
    run_dir = Path(run_dir)
    record = ckpt.read_run_record(run_dir, model)
    if model is not None and record["model"] != model:
        what = f"{run_dir} holds a {record['model']!r} run, not {model!r}"
        raise RunError(
            f"{what}; load it with zoo.load_run({str(run_dir)!r}) or give another run directory",
            cli=f"{what}; use `zoo ... {record['model']} --run {run_dir}` or another --run",
        )
    plugin = get_registry().get(record["model"])
    config = validate(plugin.Config, record["config"])
    weights = run_dir / ckpt.WEIGHTS_FILE
    if not weights.is_file():
        what = f"{run_dir} has no {ckpt.WEIGHTS_FILE} yet: no stage has finished; continue training with"
        raise RunError(
            f"{what} zoo.train({plugin.name!r}, run_dir={str(run_dir)!r}, resume=True)",
            cli=f"{what} `zoo train {plugin.name} --out {run_dir} --resume`",
        )
    torch_device = choose_device(device)
    net = plugin.build(config)
    ckpt.load_weights(net, weights)
    net.to(torch_device).eval()
    return Run(plugin, config, net, run_dir, torch_device)


def train(
    name: str | None = None,
    preset: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    run_dir: Path | str | None = None,
    config_file: Path | None = None,
    assignments: Iterable[str] = (),
    stage: str | None = None,
    resume: bool = False,
    from_run: Path | None = None,
    device: str = "auto",
    precision: Precision | None = None,
    progress: Mode = "quiet",
    checkpoint_every: int = 200,
    log_every: int = 10,
    log_every_seconds: float = 30.0,
    tensorboard: Path | str | None = None,
    inception_weights: Path | str | None = None,
    command: list[str] | None = None,
) -> Run:
    """Train every stage (or one) of a model; returns the trained run.

    Resuming (`resume=True`) or training one stage (`stage=`) of an existing run takes the
    run's stored config: `name` may be left out, and only the fields given here change it
    (which is refused when they differ from the run's). `progress` is "quiet" (default),
    "auto" (a bar on a terminal, else plain lines every `log_every_seconds`), "bar",
    "plain" or "json"; `tensorboard` is a directory for TensorBoard event files;
    `inception_weights` the file of the config's validation metrics (`validation.metrics`;
    default: $ZOO_INCEPTION_WEIGHTS, else torch hub's copy)."""
    if run_dir is None and name is not None:
        run_dir = Path("runs") / name
    record = _existing_record(Path(run_dir)) if run_dir is not None and (resume or stage) else None
    if name is None:
        if record is None:
            raise RunError(
                "name the model to train, or resume an existing run: zoo.train(run_dir=RUN, resume=True)",
                cli="name the MODEL to train, or resume an existing run: zoo train --resume --out RUN",
            )
        name = str(record["model"])
    stored = record["config"] if record is not None and record["model"] == name else None
    plugin, preset_name, config = resolve_config(name, preset, config_file, assignments, overrides, base=stored)
    if stored is not None and preset is None:
        preset_name = record.get("preset") if record is not None else None
    run_dir = Path(run_dir or Path("runs") / name)
    options = TrainOptions(
        device=device,
        precision=precision,
        progress=progress,
        stage=stage,
        resume=resume,
        from_run=Path(from_run) if from_run else None,
        checkpoint_every=checkpoint_every,
        log_every=log_every,
        log_every_seconds=log_every_seconds,
        tensorboard=Path(tensorboard) if tensorboard is not None else None,
        inception_weights=Path(inception_weights) if inception_weights is not None else None,
        command=command,
    )
    trainer = Trainer(plugin, config, run_dir, preset_name, options)
    model = trainer.run()
    model.eval()
    return Run(plugin, config, model, run_dir, trainer.device)


def _existing_record(run_dir: Path) -> dict[str, Any] | None:
    """The run record of `run_dir`, or None when it holds no run yet."""
    if not (run_dir / ckpt.CONFIG_FILE).is_file():
        return None
    return ckpt.read_run_record(run_dir)
