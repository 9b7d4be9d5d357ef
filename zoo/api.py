"""The Python API; the CLI is a thin layer over it.

Usage:

    import zoo
    zoo.list_models()
    plugin, config, model = zoo.create_model("var", preset="digits", seed=1)
    run = zoo.train("var", run_dir="runs/var")
    run = zoo.load_run("runs/var"); run.sample(classes=[3]).save("three.png"); run.evaluate()
    run.export("exports/var", precision="int8")           # ONNX, the default format
    run.export("exports/var_x", format="NAME")            # any registered exporter (`zoo plugins`)
"""

from __future__ import annotations

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
from zoo.registry import get_registry
from zoo.trainer import Trainer, TrainOptions


def list_models() -> list[str]:
    return sorted(get_registry().models)


def get_plugin(name: str) -> ModelPlugin:
    return get_registry().get(name)


def resolve_config(
    name: str,
    preset: str | None = None,
    config_file: Path | None = None,
    assignments: Iterable[str] = (),
    overrides: Mapping[str, Any] | None = None,
) -> tuple[ModelPlugin, str | None, ZooConfig]:
    """defaults < preset < registry overrides < config file < --set assignments < overrides."""
    registry = get_registry()
    plugin = registry.get(name)
    preset_name, preset_values = registry.preset(name, preset)
    config = resolve(plugin.Config, preset_values, None, config_file, assignments, overrides)
    return plugin, preset_name, config


def create_model(name: str, preset: str | None = None, **overrides: Any) -> tuple[ModelPlugin, ZooConfig, nn.Module]:
    """Build a model with fresh weights, like `timm.create_model`."""
    plugin, _, config = resolve_config(name, preset, overrides=overrides)
    torch.manual_seed(config.seed)
    return plugin, config, plugin.build(config)


@dataclass
class Run:
    """A trained model loaded from its run directory."""

    plugin: ModelPlugin
    config: ZooConfig
    model: nn.Module
    run_dir: Path
    device: torch.device

    def sample(self, **options: Any) -> SampleOutput:
        parsed = validate(self.plugin.SampleOptions, options, what="sample option")
        return self.plugin.sample(self.model, self.config, parsed, self.device)

    def evaluate(self) -> dict[str, float]:
        self.model.eval()
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
    record = ckpt.read_run_record(run_dir)
    if model is not None and record["model"] != model:
        raise RunError(
            f"{run_dir} holds a {record['model']!r} run, not {model!r}; "
            f"use `zoo ... {record['model']} --run {run_dir}` or another --run"
        )
    plugin = get_registry().get(record["model"])
    config = validate(plugin.Config, record["config"])
    weights = run_dir / ckpt.WEIGHTS_FILE
    if not weights.is_file():
        raise RunError(
            f"{run_dir} has no {ckpt.WEIGHTS_FILE} yet: no stage has finished; "
            f"continue training with `zoo train {plugin.name} --out {run_dir} --resume`"
        )
    torch_device = choose_device(device)
    net = plugin.build(config)
    ckpt.load_weights(net, weights)
    net.to(torch_device).eval()
    return Run(plugin, config, net, run_dir, torch_device)


def train(
    name: str,
    preset: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    run_dir: Path | str | None = None,
    config_file: Path | None = None,
    assignments: Iterable[str] = (),
    stage: str | None = None,
    resume: bool = False,
    from_run: Path | None = None,
    device: str = "auto",
    precision: Precision = "fp32",
    progress: Mode = "quiet",
    checkpoint_every: int = 200,
    log_every: int = 10,
) -> Run:
    """Train every stage (or one) of a model; returns the trained run."""
    plugin, preset_name, config = resolve_config(name, preset, config_file, assignments, overrides)
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
    )
    trainer = Trainer(plugin, config, run_dir, preset_name, options)
    model = trainer.run()
    model.eval()
    return Run(plugin, config, model, run_dir, trainer.device)
