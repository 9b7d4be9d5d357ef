"""The one trainer: runs any plugin's stages, with checkpoints, resume, data parallelism
(zoo.distributed), the levers of zoo.scale, and progress.

Determinism: the seed fixes initialisation, the data order (a per-epoch permutation
derived from the seed, addressed by step, so a resumed run sees the same batches) and
every random draw inside the loss functions (the torch RNG state is checkpointed).
"""

from __future__ import annotations

import math
import platform
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from zoo import checkpoint as ckpt
from zoo.config import ZooConfig, config_differences
from zoo.data.base import dataset_length
from zoo.device import Precision, autocast, choose_device
from zoo.distributed import Engine, StageStep, WorldInfo, barrier, init_from_env, shutdown
from zoo.errors import ConfigError, DataError, RunError, TrainingError, UnknownNameError
from zoo.outputs import SampleOutput
from zoo.plugin import ModelPlugin, Optimizer, Stage, StageContext, StepContext, Validation
from zoo.progress import Mode, Reporter, make_reporter
from zoo.scale import adamw_kernel, checkpoint_activations, compile_blocks


@dataclass
class TrainOptions:
    device: str = "auto"
    precision: Precision | None = None  # None: the config's scale.precision
    progress: Mode = "bar"
    stage: str | None = None  # run only this stage
    resume: bool = False
    from_run: Path | None = None  # take earlier stages' weights from this run
    checkpoint_every: int = 200
    log_every: int = 10
    log_every_seconds: float = 30.0  # plain progress lines (output not a terminal): one per this many seconds
    tensorboard: Path | None = None  # write TensorBoard scalars and grids to this directory
    command: list[str] | None = None  # the command line recorded in the run (default: sys.argv)

    def __post_init__(self) -> None:
        # The one check for the API and the CLI: each audience reads its own spelling.
        for name in ("checkpoint_every", "log_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                message = "must be a whole number of steps, at least 1; got"
                raise ConfigError(f"{name} {message} {value!r}", cli=f"--{name.replace('_', '-')} {message} {value!r}")
        seconds = self.log_every_seconds
        if not isinstance(seconds, (int, float)) or not seconds > 0:
            message = f"must be a positive number of seconds; got {seconds!r}"
            raise ConfigError(f"log_every_seconds {message}", cli=f"--log-every-seconds {message}")


class GlobalBatchSampler(Sampler[list[int]]):
    """Batches of one rank, from step `start` on, of a seeded stream of permutations.

    Step s covers positions [s*B, (s+1)*B) of the concatenated per-epoch permutations;
    rank r of W takes the r-th contiguous slice of each global batch.
    """

    def __init__(self, size: int, batch_size: int, steps: int, seed: int, start: int, world: WorldInfo) -> None:
        if batch_size % world.world_size:
            raise TrainingError(
                f"batch size {batch_size} does not split over {world.world_size} processes; "
                f"use a multiple of {world.world_size}"
            )
        self.size, self.batch_size, self.steps, self.seed, self.start, self.world = (
            size,
            batch_size,
            steps,
            seed,
            start,
            world,
        )
        self._epoch = -1  # the permutation is drawn on first use: no epoch is -1
        self._permutation: list[int] = []

    def _index(self, position: int) -> int:
        epoch, offset = divmod(position, self.size)
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch, self._permutation = epoch, torch.randperm(self.size, generator=generator).tolist()
        return self._permutation[offset]

    def __iter__(self) -> Iterator[list[int]]:
        per_rank = self.batch_size // self.world.world_size
        for step in range(self.start, self.steps):
            first = step * self.batch_size + self.world.rank * per_rank
            yield [self._index(first + i) for i in range(per_rank)]

    def __len__(self) -> int:
        return self.steps - self.start


def lr_factor(spec: Optimizer, step: int, total: int) -> float:
    """Linear warm-up, then cosine decay to `min_lr_ratio` (or constant)."""
    local = step - spec.start_step
    if spec.warmup_steps and local < spec.warmup_steps:
        return (local + 1) / spec.warmup_steps
    if spec.schedule == "constant":
        return 1.0
    span = max(1, total - spec.start_step - spec.warmup_steps)
    progress = min(1.0, (local - spec.warmup_steps) / span)
    return spec.min_lr_ratio + (1 - spec.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def trained_parameters(model: nn.Module, spec: Optimizer) -> list[nn.Parameter]:
    return [param for _, param in named_trained_parameters(model, spec)]


def named_trained_parameters(model: nn.Module, spec: Optimizer) -> list[tuple[str, nn.Parameter]]:
    """The parameters of the optimizer's modules, once each, with their names in the model."""
    names = {id(param): name for name, param in model.named_parameters()}
    seen: set[int] = set()
    named = []
    for module in spec.modules(model):
        for param in module.parameters():
            if id(param) not in seen:
                seen.add(id(param))
                named.append((names.get(id(param), ""), param))
    return named


def build_optimizer(spec: Optimizer, model: nn.Module, kernel: dict[str, bool] | None = None) -> torch.optim.Optimizer:
    """`kernel`: the implementation keyword of zoo.scale.adamw_kernel (torch's default without)."""
    # Weight decay on matrices and kernels only, never on biases, norms and gains, nor on
    # the parameters the plugin names in `no_weight_decay` (e.g. position embeddings).
    decayed: list[nn.Parameter] = []
    exempt: list[nn.Parameter] = []
    for name, param in named_trained_parameters(model, spec):
        skip = param.ndim < 2 or any(part in name for part in spec.no_weight_decay)
        (exempt if skip else decayed).append(param)
    groups = [{"params": decayed, "weight_decay": spec.weight_decay}, {"params": exempt, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    algorithm = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam}[spec.algorithm]
    return algorithm(groups, lr=spec.lr, betas=spec.betas, **(kernel or {}))


def freeze_all_but(model: nn.Module, stage: Stage) -> None:
    """Train mode and gradients for the stage's modules; eval mode and frozen for the rest."""
    model.eval()
    model.requires_grad_(False)
    for spec in stage.optimizers:
        for module in spec.modules(model):
            module.train()
            module.requires_grad_(True)


def split_batch(batch: Any, parts: int) -> list[Any]:
    """A collated batch cut into `parts` equal micro-batches along its first dimension."""
    if parts == 1:
        return [batch]
    if isinstance(batch, torch.Tensor):
        return list(batch.chunk(parts))
    if isinstance(batch, dict):
        pieces = {key: split_batch(value, parts) for key, value in batch.items()}
        return [{key: pieces[key][i] for key in batch} for i in range(parts)]
    if isinstance(batch, list):
        size = len(batch) // parts
        return [batch[i * size : (i + 1) * size] for i in range(parts)]
    return [batch] * parts


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, list):
        return [_to_device(v, device) for v in batch]
    return batch


@dataclass
class ValidationState:
    """Early stopping's memory: the best held-out loss, evaluations since, the best weights.

    Checkpoints store it as the dict {"best", "bad", "best_weights"} (`as_dict`/`from_dict`),
    the format runs written before this class existed still have."""

    best: float = math.inf
    bad: int = 0  # evaluations since the best one
    best_weights: dict[str, torch.Tensor] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"best": self.best, "bad": self.bad, "best_weights": self.best_weights}

    @classmethod
    def from_dict(cls, saved: dict[str, Any]) -> ValidationState:
        return cls(best=saved["best"], bad=saved["bad"], best_weights=saved["best_weights"])

    def record(self, loss: float, model: nn.Module, patience: int | None) -> bool:
        """Remember `loss` (and the weights when it is the best); True when patience is exhausted."""
        if loss < self.best:
            self.best, self.bad = loss, 0
            self.best_weights = {k: v.clone() for k, v in model.state_dict().items()}
            return False
        self.bad += 1
        return patience is not None and self.bad >= patience


@dataclass
class MetricsWindow:
    """The loss values and image count since the last metrics record."""

    values: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    images: int = 0
    started: float = field(default_factory=time.perf_counter)

    def add(self, values: dict[str, float], prefix: str | None) -> None:
        for key, value in values.items():
            self.values[key if prefix is None else f"{prefix}/{key}"].append(value)

    def means(self) -> dict[str, float]:
        return {k: sum(v) / len(v) for k, v in self.values.items()}

    def images_per_second(self) -> float:
        return self.images / max(time.perf_counter() - self.started, 1e-9)

    def reset(self) -> None:
        self.values.clear()
        self.images, self.started = 0, time.perf_counter()


@dataclass
class StageState:
    """Everything one stage's loop reads and changes; what a checkpoint saves of a stage."""

    model: nn.Module
    step_module: StageStep  # the root the engine wraps; every loss runs through it
    stage: Stage
    index: int  # position of the stage in the plugin's list
    context: StageContext
    dataset: Dataset
    completed: list[str]  # the run's finished stages (shared with `Trainer._run_stages`)
    param_lists: list[list[nn.Parameter]]  # one per optimizer
    optimizers: list[torch.optim.Optimizer]
    ema: dict[str, torch.Tensor] | None  # averaged trained weights, by parameter name
    validation: ValidationState = field(default_factory=ValidationState)
    start: int = 0  # first step to run (a resumed stage starts past 0)
    step: int = 0  # the last step run
    window: MetricsWindow = field(default_factory=MetricsWindow)
    started: float = field(default_factory=time.perf_counter)
    last_metrics: dict[str, float] = field(default_factory=dict)  # the latest logged values, for the summary


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

    def _check_run_dir(self) -> None:
        """Refuse to mix runs, then record this run's config.

        A directory whose earlier attempt failed before finishing a stage or writing a
        checkpoint holds nothing trained: the corrected command replaces it, no --resume."""
        record = ckpt.run_record(
            self.plugin.name, self.plugin.version, self.preset, self.config.model_dump(mode="json")
        )
        config_path = self.run_dir / ckpt.CONFIG_FILE
        exists = config_path.exists()
        existing = ckpt.read_run_record(self.run_dir) if exists else {}
        untrained = exists and not existing.get("completed") and ckpt.latest_checkpoint(self.run_dir) is None
        if exists and not untrained:
            self._check_same_run(existing, record)
        barrier(self.world)  # every process checks before rank 0 writes
        if self.world.is_main and untrained:
            ckpt.discard_untrained(self.run_dir)
        if self.world.is_main and (untrained or not exists):
            ckpt.atomic_write_json(config_path, record)

    def _check_same_run(self, existing: dict[str, Any], record: dict[str, Any]) -> None:
        run = self.run_dir
        if existing["model"] != self.plugin.name:
            what = f"{run} holds a {existing['model']!r} run, not {self.plugin.name!r}"
            raise RunError(f"{what}; pick another run_dir", cli=f"{what}; pick another --out")
        if not (self.options.resume or self.options.stage):
            raise RunError(
                f"{run} already holds a run; continue it (resume=True), run one stage (stage=NAME), "
                f"or pick another run_dir",
                cli=f"{run} already holds a run; continue it (`zoo train --resume --out {run}`), "
                f"run one stage (--stage NAME), or pick another --out",
            )
        # The levers say how a step is computed, not what: a run resumes with other ones.
        differences = [
            difference
            for difference in config_differences(self._stored_config(existing["config"]), record["config"])
            if not difference[0].startswith("scale.")
        ]
        if differences:
            shown = "; ".join(f"{key}: the run has {old}, this call gives {new}" for key, old, new in differences[:3])
            raise RunError(
                f"{run} was trained with another config ({shown}); resume it without changing these "
                f"(leave them out of overrides/preset/config_file: the run's config is used) or pick another run_dir",
                cli=f"{run} was trained with another config ({shown.replace('this call', 'this command')}); "
                f"resume it without changing these (flags left out take the run's values) or pick another --out",
            )

    def _stored_config(self, stored: dict[str, Any]) -> dict[str, Any]:
        """A run's config as this code reads it (fields added since take their defaults)."""
        try:
            return self.plugin.Config.model_validate(stored).model_dump(mode="json")
        except ValueError:
            return stored

    def _initial_weights(self, model: nn.Module) -> dict[str, Any] | None:
        found = ckpt.read_trainer_checkpoint(self.run_dir)
        if found is not None and (self.options.resume or self.options.stage):
            weights, state = found
            ckpt.load_weights(model, weights)
            return state
        if self.options.from_run is not None:
            source = Path(self.options.from_run)
            record = ckpt.read_run_record(source)
            if record["model"] != self.plugin.name:
                what = f"{source} holds a {record['model']!r} run, not {self.plugin.name!r}"
                raise RunError(f"from_run {what}", cli=f"--from {what}")
            ckpt.load_weights(model, source / ckpt.WEIGHTS_FILE)
            return {"completed": list(record.get("completed", []))}
        return None

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
        record = ckpt.read_run_record(self.run_dir)
        session = {
            "started": _now(),
            "ended": None,
            "status": "running",
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
        record["sessions"] = [*record.get("sessions", []), session]
        ckpt.atomic_write_json(self.run_dir / ckpt.CONFIG_FILE, record)
        self._session = len(record["sessions"]) - 1

    def _end_session(self, status: str) -> None:
        index = getattr(self, "_session", None)
        if index is None or not self.world.is_main:
            return
        try:
            record = ckpt.read_run_record(self.run_dir)
            record["sessions"][index].update(ended=_now(), status=status)
            ckpt.atomic_write_json(self.run_dir / ckpt.CONFIG_FILE, record)
        except (RunError, OSError, IndexError, KeyError):
            pass  # the record of a failing disk: the error being raised is the one to show

    def _run_stages(self, names: list[str]) -> nn.Module:
        self.plugin.check_data(self.config)  # every stage's data, before anything trains or is written
        self._check_run_dir()
        self._start_session()
        self._open_tensorboard()
        torch.manual_seed(self.config.seed)
        model = self._build_model()
        saved = self._initial_weights(model) or {}
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
            self._restore(state, resume)
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
        summary = getattr(dataset, "summary", None)  # image folders and caption sets: what they skipped
        if getattr(dataset, "skipped", 0) and callable(summary) and self.world.is_main:
            self.reporter.message(f"{stage.name}: {summary()}")
        return dataset

    def _restore(self, state: StageState, resume: dict[str, Any]) -> None:
        """Continue from a mid-stage checkpoint: step, optimizers, RNG, EMA, validation."""
        state.start = state.step = resume["step"]
        if len(resume["optimizers"]) != len(state.optimizers):
            raise TrainingError(
                f"the checkpoint of stage {state.stage.name!r} holds {len(resume['optimizers'])} optimizer states but the "
                f"stage has {len(state.optimizers)} optimizers; resume with the code that wrote it, or start the stage anew"
            )
        for optimizer, saved in zip(state.optimizers, resume["optimizers"], strict=True):
            self.engine.load_optimizer_state(optimizer, saved)
        torch.set_rng_state(resume["rng"]["cpu"])
        if torch.cuda.is_available() and resume["rng"].get("cuda"):
            torch.cuda.set_rng_state_all(resume["rng"]["cuda"])
        state.ema = self.engine.like_parameters(resume.get("ema"), state.model) or state.ema
        if resume.get("validation"):
            state.validation = ValidationState.from_dict(resume["validation"])
            state.validation.best_weights = self.engine.like_parameters(state.validation.best_weights, state.model)

    def _loader(self, state: StageState) -> DataLoader:
        stage = state.stage
        sampler = GlobalBatchSampler(
            dataset_length(state.dataset),
            stage.batch_size,
            stage.steps,
            self.config.seed + state.index,
            state.start,
            self.world,
        )
        # Its own generator: drawing a worker seed from the global RNG would shift a resumed run.
        return DataLoader(
            state.dataset,
            batch_sampler=sampler,
            collate_fn=default_collate,
            generator=torch.Generator().manual_seed(self.config.seed),
        )

    def _train_steps(self, state: StageState, loader: DataLoader) -> None:
        # the loader may hold more batches than the steps left: stop at the shorter on purpose
        for step, batch in zip(range(state.start, state.stage.steps), loader, strict=False):
            self._train_step(state, step, _to_device(batch, self.device))
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
        state.last_metrics["val_loss"] = loss
        self._log({"stage": state.stage.name, "step": done, "val_loss": loss})
        if not state.validation.record(loss, state.model, spec.patience):
            return False
        self.reporter.message(
            f"{state.stage.name}: early stop at step {done}: validation loss has not "
            f"improved for {spec.patience} evaluations"
        )
        return True

    @torch.no_grad()
    def _validation_loss(self, state: StageState, spec: Validation, step: int) -> float:
        """The first optimizer's loss over the first `validation.batches` held-out batches."""
        stage, model = state.stage, state.model
        model.eval()
        loader = DataLoader(
            spec.dataset(state.context), batch_size=stage.batch_size, shuffle=False, collate_fn=default_collate
        )
        losses = []
        for batch_index, batch in enumerate(loader):
            if batch_index >= spec.batches:  # fetching this batch is kept: it may draw random numbers
                break
            batch = _to_device(batch, self.device)
            with autocast(self.device, self.precision):
                outputs = state.step_module(
                    stage.optimizers[0].loss, batch, StepContext(step, stage.steps, self.device)
                )
            losses.append(outputs["loss"].float().item())
        freeze_all_but(model, stage)
        return sum(losses) / max(1, len(losses))

    def _maybe_checkpoint(self, state: StageState, done: int) -> None:
        """Every `checkpoint_every` steps before the last (the stage's end writes its own):
        every process gathers whole tensors (collective when sharded), rank 0 saves."""
        if done % self.options.checkpoint_every or done >= state.stage.steps:
            return
        engine, model = self.engine, state.model
        weights = engine.model_state(model)
        optimizers = [engine.optimizer_state(o) for o in state.optimizers]
        validation = {**state.validation.as_dict(), "best_weights": engine.full(state.validation.best_weights)}
        ema = engine.full(state.ema)
        if not self.world.is_main:
            return
        rng: dict[str, Any] = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        saved = {
            "completed": state.completed,
            "stage": state.stage.name,
            "step": done,
            "rng": rng,
            "optimizers": optimizers,
            "ema": ema,
            "validation": validation,
        }
        ckpt.write_trainer_checkpoint(self.run_dir, f"{state.stage.name}-{done}", weights, saved)

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
        ckpt.save_weights(state.model, self.run_dir / ckpt.WEIGHTS_FILE)
        weights = state.model.state_dict()
        ckpt.write_trainer_checkpoint(self.run_dir, f"{state.stage.name}-done", weights, {"completed": finished})
        self._record_completed(finished)
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

    def _record_completed(self, completed: list[str]) -> None:
        record = ckpt.read_run_record(self.run_dir)
        record["completed"] = completed
        ckpt.atomic_write_json(self.run_dir / ckpt.CONFIG_FILE, record)

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


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def train(
    plugin: ModelPlugin,
    config: ZooConfig,
    run_dir: Path,
    preset: str | None = None,
    options: TrainOptions | None = None,
) -> nn.Module:
    return Trainer(plugin, config, run_dir, preset, options or TrainOptions()).run()
