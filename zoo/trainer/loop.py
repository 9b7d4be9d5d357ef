"""The Trainer: runs a plugin's stages one after another, each as a loop of steps over
its batches, on the engine of zoo.distributed, with the levers of zoo.scale, validation
and early stopping, EMA, progress, metrics, sample grids and TensorBoard. The run
directory's record is zoo.trainer.run_record's, checkpoints and resume
zoo.trainer.resume's."""

from __future__ import annotations

import json
import platform
import sys
import time
from collections import defaultdict
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, default_collate

from zoo import checkpoint as ckpt
from zoo.config import ZooConfig
from zoo.data.base import dataset_length
from zoo.data.loader import skipped_reports
from zoo.device import Precision, autocast, choose_device
from zoo.distributed import Engine, init_from_env, shutdown
from zoo.errors import ConfigError, DataError, TrainingError, UnknownNameError
from zoo.outputs import SampleOutput
from zoo.plugin import ModelPlugin, Optimizer, Stage, StageContext, StepContext, Validation
from zoo.progress import Reporter, make_reporter
from zoo.scale import adamw_kernel, checkpoint_activations, compile_blocks
from zoo.trainer.batches import split_batch, stage_loader, to_device
from zoo.trainer.optimizers import build_optimizer, freeze_all_but, lr_factor, trained_parameters
from zoo.trainer.options import TrainOptions
from zoo.trainer.resume import initial_weights, restore, save_finished_stage, write_checkpoint
from zoo.trainer.run_record import claim_run_dir, end_session, record_completed, start_session
from zoo.trainer.state import StageState

if TYPE_CHECKING:
    from zoo.metrics.validation import ValidationMetrics


class Trainer:
    def __init__(
        self, plugin: ModelPlugin, config: ZooConfig, run_dir: Path, preset: str | None, options: TrainOptions
    ) -> None:
        self.plugin, self.config, self.run_dir, self.preset, self.options = (
            plugin,
            config,
            Path(run_dir),
            preset,
            options,
        )
        self.device = choose_device(options.device)
        self.world = init_from_env(self.device.type)
        if self.world.world_size > 1 and self.device.type == "cuda":
            self.device = torch.device("cuda", self.world.local_rank)
            torch.cuda.set_device(self.device)
        self.reporter: Reporter = make_reporter(
            options.progress if self.world.is_main else "quiet", options.log_every_seconds
        )
        self.precision: Precision = options.precision or config.scale.precision
        self.engine = Engine(self.world, config.scale.shard, self.device, self._build_model, self._note)
        self.stages = plugin.stages(config)
        self.tensorboard: Any = None  # a SummaryWriter on rank 0 with options.tensorboard
        self.metrics: ValidationMetrics | None = None  # the config's validation metrics, if any

    # set-up ------------------------------------------------------------------------------

    def _check_stages(self) -> None:
        """Defence against a plugin whose config lets a stage have no steps: it would save
        an untrained model as trained."""
        parts = self.world.world_size * self.config.scale.accumulate
        for stage in self.stages:
            if self.options.stage not in (None, stage.name):
                continue
            if stage.steps < 1 or stage.batch_size < 1:
                raise TrainingError(
                    f"stage {stage.name} of {self.plugin.name} has {stage.steps} steps of batch size "
                    f"{stage.batch_size}; set both to at least 1 in the config"
                )
            if stage.batch_size % parts:
                raise TrainingError(
                    f"stage {stage.name}: batch size {stage.batch_size} does not split into "
                    f"{self.world.world_size} processes x {self.config.scale.accumulate} micro-batches "
                    f"(scale.accumulate); use a multiple of {parts}"
                )

    # the run -----------------------------------------------------------------------------

    def run(self) -> nn.Module:
        names = [stage.name for stage in self.stages]
        if self.options.stage is not None and self.options.stage not in names:
            raise UnknownNameError(f"stage of {self.plugin.name}", self.options.stage, names)
        self._check_stages()
        # Rank 0 alone writes, so rank 0 alone locks; the other ranks wait for it at barriers.
        with ckpt.locked(self.run_dir) if self.world.is_main else nullcontext():
            if self.world.is_main:
                ckpt.remove_temporary_files(self.run_dir)
            status = "failed"
            try:
                model = self._run_stages(names)
                status = "finished"
                return model
            except KeyboardInterrupt:
                status = "interrupted"
                raise
            finally:
                if self.tensorboard is not None:
                    self.tensorboard.close()
                self._end_session(status)

    # the run record: one session per `zoo train` call -------------------------------------

    def _start_session(self) -> None:
        """Append this call's environment to config.json's `sessions` (rank 0)."""
        if not self.world.is_main:
            return
        environment = {
            "command": list(self.options.command if self.options.command is not None else sys.argv),
            "device": str(self.device),
            "precision": self.precision,
            "world_size": self.world.world_size,
            "engine": self.engine.name,
            "scale": self.config.scale.model_dump(mode="json"),
            "resume": self.options.resume,
            "stage": self.options.stage,
            "versions": {
                "python": platform.python_version(),
                "torch": torch.__version__,
                "zoo": ckpt.__version__,
                "plugin": self.plugin.version,
            },
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
        }
        self._session = start_session(self.run_dir, environment)

    def _end_session(self, status: str) -> None:
        index = getattr(self, "_session", None)
        if index is None or not self.world.is_main:
            return
        end_session(self.run_dir, index, status)

    def _run_stages(self, names: list[str]) -> nn.Module:
        self.plugin.check_data(self.config)  # every stage's data, before anything trains or is written
        self.metrics = self._validation_metrics()
        claim_run_dir(self.run_dir, self.plugin, self.config, self.preset, self.options, self.world)
        self._start_session()
        self._open_tensorboard()
        torch.manual_seed(self.config.seed)
        model = self._build_model()
        saved = initial_weights(model, self.run_dir, self.plugin.name, self.options) or {}
        completed: list[str] = list(saved.get("completed", []))  # each finished stage moves to its end
        for index, stage in enumerate(self.stages):
            if self.options.stage is not None and stage.name != self.options.stage:
                continue
            if self.options.stage is None and stage.name in completed:
                continue
            missing = [s for s in names[:index] if s not in completed]
            if missing and self.world.is_main:
                self.reporter.message(f"note: stage {stage.name} starts without trained {', '.join(missing)} weights")
            resume = saved if self.options.resume and saved.get("stage") == stage.name else None
            model = self._run_stage(model, stage, index, completed, resume)
            saved = {}
        shutdown()
        if self.world.is_main:
            self.reporter.done(str(self.run_dir), ckpt.stage_summaries(self.run_dir))
        return model

    def _build_model(self) -> nn.Module:
        """The plugin's model on the device, with the config's per-block levers applied."""
        model = self.plugin.build(self.config).to(self.device)
        scale = self.config.scale
        if not (scale.activation_checkpointing or scale.compile):
            return model
        blocks = self.plugin.blocks(model)
        if not blocks:
            self._note(
                f"note: {self.plugin.name} names no blocks (ModelPlugin.blocks): "
                "scale.activation_checkpointing and scale.compile have nothing to act on"
            )
        if scale.activation_checkpointing:
            checkpoint_activations(blocks)
        if scale.compile:
            compile_blocks(blocks, self._note)
        return model

    def _note(self, text: str) -> None:
        """A line for the user, from rank 0 only (every process meets the same conditions)."""
        if self.world.is_main:
            self.reporter.message(text)

    def _validation_metrics(self) -> ValidationMetrics | None:
        """The config's validation metrics, checked now (torch-fidelity, the weights file, the
        stages that measure them), not at the first validation hours later."""
        if not self.config.validation.metrics:
            return None
        from zoo.metrics.validation import ValidationMetrics

        cache = self.run_dir / "cache" / "metrics"
        return ValidationMetrics(
            self.plugin, self.config, self.stages, self.device, self.options.inception_weights, cache
        )

    def _open_tensorboard(self) -> None:
        if self.options.tensorboard is None or not self.world.is_main:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError("tensorboard logging needs the tensorboard package: pip install tensorboard") from None
        self.tensorboard = SummaryWriter(log_dir=str(self.options.tensorboard))

    # one stage: prepare, restore, the step loop, finish ------------------------------------

    def _run_stage(
        self, model: nn.Module, stage: Stage, index: int, completed: list[str], resume: dict[str, Any] | None
    ) -> nn.Module:
        """Train one stage; returns the plain model with its weights (rebuilt when sharded)."""
        state = self._prepare_stage(model, stage, index, completed, resume)
        if resume is not None:
            restore(state, resume, self.engine)
        if self.world.is_main and (self.options.resume or self.options.stage):  # what a fresh run logs is new
            ckpt.drop_metrics_after(self.run_dir, stage.name, state.start)
        loader = self._loader(state)
        self.reporter.start(stage.name, stage.steps, state.start)
        state.window.reset()
        state.started = time.perf_counter()
        try:
            self._train_steps(state, loader)
        finally:
            self.reporter.finish()
        self._report_skipped(state)
        self._finish_stage(state)
        return state.model

    def _prepare_stage(
        self, model: nn.Module, stage: Stage, index: int, completed: list[str], resume: dict[str, Any] | None
    ) -> StageState:
        """Seed, freeze, build the data, run `on_start` (not on resume), wrap the model in the
        engine, build the optimizers."""
        context = StageContext(model, self.config, self.run_dir / "cache", self.device)
        torch.manual_seed(self.config.seed + 1000 * (index + 1))
        freeze_all_but(model, stage)
        dataset = self._stage_dataset(stage, context)
        if stage.on_start is not None and resume is None:
            stage.on_start(model, context)
            freeze_all_but(model, stage)
        step_module = self.engine.wrap(model, self.plugin.blocks(model), stage.name)
        param_lists = [trained_parameters(model, spec) for spec in stage.optimizers]
        kernel = adamw_kernel(self.config.scale.adamw, self.device, self.engine.shard)
        optimizers = [build_optimizer(spec, model, kernel) for spec in stage.optimizers]
        ema = (
            {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad} if stage.ema_decay else None
        )
        return StageState(model, step_module, stage, index, context, dataset, completed, param_lists, optimizers, ema)

    def _stage_dataset(self, stage: Stage, context: StageContext) -> Dataset:
        dataset = stage.dataset(context)
        if dataset_length(dataset) == 0:
            raise DataError(f"stage {stage.name} has no training data; check the data settings of the config")
        return dataset

    def _report_skipped(self, state: StageState) -> None:
        """What the stage's files skipped, over all ranks and workers, each file once, in one
        line per source (every process takes part: the ranks' tables are merged)."""
        for line in skipped_reports(state.dataset, self.world):
            if self.world.is_main:
                self.reporter.message(f"{state.stage.name}: {line}")

    def _loader(self, state: StageState) -> DataLoader:
        return stage_loader(state.dataset, state.stage, state.index, self.config, state.start, self.world, self.device)

    def _train_steps(self, state: StageState, loader: DataLoader) -> None:
        # the loader may hold more batches than the steps left: stop at the shorter on purpose
        for step, batch in zip(range(state.start, state.stage.steps), loader, strict=False):
            self._train_step(state, step, to_device(batch, self.device))
            done = step + 1
            self._log_window(state, done)
            if self._maybe_validate(state, done):
                break
            self._maybe_checkpoint(state, done)
            every = self.config.sample_every
            if every and done % every == 0 and done < state.stage.steps:
                model = self.engine.plain_model_on_main(state.step_module)  # every process: gathering is collective
                if model is not None:
                    self._write_grid(
                        state, model, self.run_dir / "samples" / state.stage.name / f"step_{done}.png", done
                    )

    def _train_step(self, state: StageState, step: int, batch: Any) -> None:
        """Each optimizer due at `step` takes its step, then the EMA. The batch is cut into
        `scale.accumulate` micro-batches; the optimizers share one StepContext per micro-batch."""
        stage, state.step = state.stage, step
        micro_batches = split_batch(batch, self.config.scale.accumulate)
        contexts = [StepContext(step, stage.steps, self.device) for _ in micro_batches]
        prefix = len(state.optimizers) > 1
        for spec, optimizer, params in zip(stage.optimizers, state.optimizers, state.param_lists, strict=True):
            if step < spec.start_step or (step - spec.start_step) % spec.every:
                continue
            values = self._optimizer_step(state, spec, optimizer, params, micro_batches, contexts)
            state.window.add(values, spec.name if prefix else None)
        self._update_ema(state)
        state.window.images += stage.batch_size

    @torch.no_grad()
    def _update_ema(self, state: StageState) -> None:
        decay = state.stage.ema_decay
        if state.ema is None or decay is None:
            return
        for name, param in state.model.named_parameters():
            if name in state.ema:
                state.ema[name].lerp_(param.detach(), 1 - decay)

    def _log_window(self, state: StageState, done: int) -> None:
        """Every `log_every` steps and at the last: the window's mean values, lr and speed."""
        if done % self.options.log_every and done != state.stage.steps:
            return
        images_per_s = state.window.images_per_second()
        means = state.window.means()
        state.last_metrics.update(means)
        self._log(
            {
                "stage": state.stage.name,
                "step": done,
                **means,
                "lr": state.optimizers[0].param_groups[0]["lr"],
                "images_per_s": images_per_s,
            }
        )
        state.window.reset()

    def _maybe_validate(self, state: StageState, done: int) -> bool:
        """Every `validation.every` steps: log the held-out loss; True to stop the stage early."""
        spec = state.stage.validation
        if not spec or done % spec.every:
            return False
        loss = self._validation_loss(state, spec, done)
        figures = self._validation_figures(state)
        state.last_metrics.update(val_loss=loss, **figures)
        self._log({"stage": state.stage.name, "step": done, "val_loss": loss, **figures})
        if not state.validation.record(loss, state.model, spec.patience):
            return False
        self.reporter.message(
            f"{state.stage.name}: early stop at step {done}: validation loss has not "
            f"improved for {spec.patience} evaluations"
        )
        return True

    @torch.no_grad()
    def _validation_loss(self, state: StageState, spec: Validation, step: int) -> float:
        """The first optimizer's loss over the first `validation.batches` held-out (global)
        batches, taken in micro-batches of the training step's size: a process never holds
        more than one micro-batch's activations. Every process computes them all (the same
        value everywhere; under fully_shard every forward is collective)."""
        stage, model = state.stage, state.model
        model.eval()
        parts = self.world.world_size * self.config.scale.accumulate
        loader = DataLoader(
            spec.dataset(state.context), batch_size=stage.batch_size // parts, shuffle=False, collate_fn=default_collate
        )
        losses = []
        for batch_index, batch in enumerate(loader):
            if batch_index >= spec.batches * parts:  # fetching this batch is kept: it may draw random numbers
                break
            batch = to_device(batch, self.device)
            with autocast(self.device, self.precision):
                outputs = state.step_module(
                    stage.optimizers[0].loss, batch, StepContext(step, stage.steps, self.device)
                )
            losses.append(outputs["loss"].float().item())
        freeze_all_but(model, stage)
        return sum(losses) / max(1, len(losses))

    def _validation_figures(self, state: StageState) -> dict[str, float]:
        """The config's validation metrics of the stage (rank 0 measures; every process takes
        part in gathering sharded weights). Drawn in eval mode with the RNG state put back, as
        the grids are, so measuring does not change what trains."""
        stage = state.stage
        if self.metrics is None or stage.name not in self.metrics.planned:
            return {}
        model = self.engine.plain_model_on_main(state.step_module)
        if model is None:
            return {}
        from zoo.metrics import MEASURED_ON_FILE

        model.eval()
        cuda = list(range(torch.cuda.device_count())) if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda), torch.no_grad():
            figures = self.metrics.measure(model, stage.name)
        freeze_all_but(model, stage)
        path = self.run_dir / MEASURED_ON_FILE
        earlier = json.loads(path.read_text()) if path.is_file() else {}  # other stages', earlier sessions'
        ckpt.atomic_write_json(path, {**earlier, **self.metrics.measured_on})
        return figures

    def _maybe_checkpoint(self, state: StageState, done: int) -> None:
        """Every `checkpoint_every` steps before the last (the stage's end writes its own):
        every process gathers whole tensors (collective when sharded), rank 0 saves."""
        if done % self.options.checkpoint_every or done >= state.stage.steps:
            return
        write_checkpoint(self.run_dir, state, done, self.engine, self.world)

    def _finish_stage(self, state: StageState) -> None:
        """Best (early stopping) or averaged (EMA) weights in; log the end; rank 0 saves the stage."""
        stage, model = state.stage, state.model
        if state.validation.best_weights is not None and stage.validation and stage.validation.patience is not None:
            model.load_state_dict(state.validation.best_weights)
        if state.ema is not None:
            self._copy_ema_in(model, state.ema)
        state.model = self.engine.plain_model(state.step_module)
        seconds = time.perf_counter() - state.started
        self._log({"stage": stage.name, "event": "end", "step": state.step + 1, "seconds": round(seconds, 2)})
        finished = [s for s in state.completed if s != stage.name] + [stage.name]
        if self.world.is_main:
            self._save_finished_stage(state, finished)
            self.reporter.stage_end(stage.name, seconds, dict(state.last_metrics))
        state.completed[:] = finished

    @torch.no_grad()
    def _copy_ema_in(self, model: nn.Module, ema: dict[str, torch.Tensor]) -> None:
        for name, param in model.named_parameters():
            if name in ema:
                param.copy_(ema[name])

    def _save_finished_stage(self, state: StageState, finished: list[str]) -> None:
        save_finished_stage(self.run_dir, state, finished)
        record_completed(self.run_dir, finished)
        self._write_grid(state, state.model, self.run_dir / "samples" / f"{state.stage.name}.png", state.step + 1)

    def _optimizer_step(
        self,
        state: StageState,
        spec: Optimizer,
        optimizer: torch.optim.Optimizer,
        params: list[nn.Parameter],
        micro_batches: list[Any],
        contexts: list[StepContext],
    ) -> dict[str, float]:
        """One update from the gradients of every micro-batch; each one's loss is divided by
        their number, so the sum is the whole batch's mean. Only the last backward pass
        reduces gradients across processes. Returns the micro-batches' mean values."""
        context = contexts[0]
        for group in optimizer.param_groups:
            group["lr"] = spec.lr * lr_factor(spec, context.step, context.total_steps)
        optimizer.zero_grad(set_to_none=True)
        totals: dict[str, float] = defaultdict(float)
        count = len(micro_batches)
        for index, (batch, micro_context) in enumerate(zip(micro_batches, contexts, strict=True)):
            with self.engine.gradient_sync(state.step_module, enabled=index == count - 1):
                with autocast(self.device, self.precision):
                    outputs = state.step_module(spec.loss, batch, micro_context)
                loss = outputs["loss"]
                self._check_finite(loss, spec, state.stage, context.step)
                (loss / count if count > 1 else loss).backward()
            for key, value in outputs.items():
                totals[key] += value.detach().float().item() / count
        values = dict(totals)
        if spec.clip_grad_norm is not None:
            values["grad_norm"] = torch.nn.utils.clip_grad_norm_(params, spec.clip_grad_norm).item()
        optimizer.step()
        return values

    def _check_finite(self, loss: torch.Tensor, spec: Optimizer, stage: Stage, step: int) -> None:
        if torch.isfinite(loss):
            return
        what = f"stage {stage.name}, step {step}: {spec.name} loss is {loss.item()}; stopped. The last good "
        raise TrainingError(
            f"{what}checkpoint is kept in {self.run_dir} (resume it: resume=True); "
            f"try a lower learning rate or precision='fp32'",
            cli=f"{what}checkpoint is kept in {self.run_dir} (resume it: `zoo train --resume --out {self.run_dir}`); "
            f"try a lower learning rate or --precision fp32",
        )

    def _log(self, metrics: dict[str, Any]) -> None:
        if not self.world.is_main:
            return
        ckpt.append_metrics(self.run_dir, metrics)
        if "event" in metrics:
            return
        self.reporter.update(metrics["step"], metrics)
        if self.tensorboard is not None:
            for key, value in metrics.items():
                if key not in ("stage", "step") and isinstance(value, (int, float)):
                    self.tensorboard.add_scalar(f"{metrics['stage']}/{key}", value, metrics["step"])

    def _write_grid(self, state: StageState, model: nn.Module, path: Path, step: int) -> None:
        """The plugin's picture of the stage (`ModelPlugin.stage_grid`) drawn by the plain
        `model` (the stage's, or its gathered copy when sharded) to `path` and TensorBoard.

        In eval mode, under no_grad, and with the RNG state put back afterwards, so a run
        that draws grids trains the same weights as one that does not."""
        stage = state.stage
        model.eval()
        cuda = list(range(torch.cuda.device_count())) if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda), torch.no_grad():
            output = self.plugin.stage_grid(model, self.config, stage, self.device)
        freeze_all_but(model, stage)
        if output is None:
            return
        output.save(path)
        self._grid_to_tensorboard(stage.name, output, step)
        if path.parent.name == "samples":  # the stage's end; the in-training grids are not announced
            self.reporter.message(f"{stage.name}: grid written to {path}")

    def _grid_to_tensorboard(self, stage: str, output: SampleOutput, step: int) -> None:
        if self.tensorboard is None:
            return
        if output.images is not None and len(output.images):
            import numpy as np

            self.tensorboard.add_image(f"{stage}/grid", np.asarray(output.grid()), step, dataformats="HWC")
        if output.texts:
            self.tensorboard.add_text(f"{stage}/texts", "\n\n".join(output.texts), step)
        self.tensorboard.flush()


def train(
    plugin: ModelPlugin,
    config: ZooConfig,
    run_dir: Path,
    preset: str | None = None,
    options: TrainOptions | None = None,
) -> nn.Module:
    return Trainer(plugin, config, run_dir, preset, options or TrainOptions()).run()
