"""The one trainer: runs any plugin's stages, with checkpoints, resume, DDP and progress.

Determinism: the seed fixes initialisation, the data order (a per-epoch permutation
derived from the seed, addressed by step, so a resumed run sees the same batches) and
every random draw inside the loss functions (the torch RNG state is checkpointed).
"""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler, default_collate

from zoo import checkpoint as ckpt
from zoo.config import ZooConfig
from zoo.device import Precision, autocast, choose_device
from zoo.distributed import WorldInfo, average_gradients, barrier, init_from_env, shutdown
from zoo.errors import DataError, RunError, TrainingError, UnknownNameError
from zoo.plugin import ModelPlugin, Optimizer, Stage, StageContext, StepContext
from zoo.progress import Mode, Reporter, make_reporter


@dataclass
class TrainOptions:
    device: str = "auto"
    precision: Precision = "fp32"
    progress: Mode = "bar"
    stage: str | None = None  # run only this stage
    resume: bool = False
    from_run: Path | None = None  # take earlier stages' weights from this run
    checkpoint_every: int = 200
    log_every: int = 10


class GlobalBatchSampler(Sampler[list[int]]):
    """Batches of one rank, from step `start` on, of a seeded stream of permutations.

    Step s covers positions [s*B, (s+1)*B) of the concatenated per-epoch permutations;
    rank r of W takes the r-th contiguous slice of each global batch.
    """

    def __init__(self, size: int, batch_size: int, steps: int, seed: int, start: int, world: WorldInfo) -> None:
        if batch_size % world.world_size:
            raise TrainingError(f"batch size {batch_size} does not split over {world.world_size} processes; "
                                f"use a multiple of {world.world_size}")
        self.size, self.batch_size, self.steps, self.seed, self.start, self.world = size, batch_size, steps, seed, start, world
        self._epoch, self._permutation = -1, None

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


def build_optimizer(spec: Optimizer, model: nn.Module) -> torch.optim.Optimizer:
    # Weight decay on matrices and kernels only, never on biases, norms and gains, nor on
    # the parameters the plugin names in `no_weight_decay` (e.g. position embeddings).
    decayed, exempt = [], []
    for name, param in named_trained_parameters(model, spec):
        skip = param.ndim < 2 or any(part in name for part in spec.no_weight_decay)
        (exempt if skip else decayed).append(param)
    groups = [{"params": decayed, "weight_decay": spec.weight_decay}, {"params": exempt, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    algorithm = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam}[spec.algorithm]
    return algorithm(groups, lr=spec.lr, betas=spec.betas)


def freeze_all_but(model: nn.Module, stage: Stage) -> None:
    """Train mode and gradients for the stage's modules; eval mode and frozen for the rest."""
    model.eval()
    model.requires_grad_(False)
    for spec in stage.optimizers:
        for module in spec.modules(model):
            module.train()
            module.requires_grad_(True)


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, list):
        return [_to_device(v, device) for v in batch]
    return batch


class Trainer:
    def __init__(self, plugin: ModelPlugin, config: ZooConfig, run_dir: Path, preset: str | None,
                 options: TrainOptions) -> None:
        self.plugin, self.config, self.run_dir, self.preset, self.options = plugin, config, Path(run_dir), preset, options
        self.device = choose_device(options.device)
        self.world = init_from_env(self.device.type)
        if self.world.world_size > 1 and self.device.type == "cuda":
            self.device = torch.device("cuda", self.world.local_rank)
            torch.cuda.set_device(self.device)
        self.reporter: Reporter = make_reporter(options.progress if self.world.is_main else "quiet")
        self.stages = plugin.stages(config)

    # set-up ------------------------------------------------------------------------------

    def _check_run_dir(self) -> None:
        """Refuse to mix runs, then record this run's config."""
        record = ckpt.run_record(self.plugin.name, self.plugin.version, self.preset, self.config.model_dump(mode="json"))
        config_path = self.run_dir / ckpt.CONFIG_FILE
        if config_path.exists():
            existing = ckpt.read_run_record(self.run_dir)
            if existing["model"] != self.plugin.name:
                raise RunError(f"{self.run_dir} holds a {existing['model']!r} run, not {self.plugin.name!r}; pick another --out")
            if not (self.options.resume or self.options.stage):
                raise RunError(f"{self.run_dir} already holds a run; continue it with --resume, "
                               f"run one stage with --stage, or pick another --out")
            if existing["config"] != record["config"]:
                raise RunError(f"{self.run_dir} was trained with another config; resume it without "
                               f"--set/--preset changes or pick another --out")
        barrier(self.world)  # every process checks before rank 0 writes
        if self.world.is_main and not config_path.exists():
            ckpt.atomic_write_json(config_path, record)

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
                raise RunError(f"--from {source} holds a {record['model']!r} run, not {self.plugin.name!r}")
            ckpt.load_weights(model, source / ckpt.WEIGHTS_FILE)
            return {"completed": list(record.get("completed", []))}
        return None

    # the run -----------------------------------------------------------------------------

    def run(self) -> nn.Module:
        names = [stage.name for stage in self.stages]
        if self.options.stage is not None and self.options.stage not in names:
            raise UnknownNameError(f"stage of {self.plugin.name}", self.options.stage, names)
        self._check_run_dir()
        torch.manual_seed(self.config.seed)
        model = self.plugin.build(self.config).to(self.device)
        state = self._initial_weights(model) or {}
        completed: list[str] = list(state.get("completed", []))
        for index, stage in enumerate(self.stages):
            if self.options.stage is not None and stage.name != self.options.stage:
                continue
            if self.options.stage is None and stage.name in completed:
                continue
            missing = [s for s in names[:index] if s not in completed]
            if missing and self.world.is_main:
                self.reporter.message(f"note: stage {stage.name} starts without trained {', '.join(missing)} weights")
            resume_state = state if self.options.resume and state.get("stage") == stage.name else None
            self._run_stage(model, stage, index, completed, resume_state)
            completed = [s for s in completed if s != stage.name] + [stage.name]
            state = {}
        shutdown()
        return model

    def _run_stage(self, model: nn.Module, stage: Stage, index: int, completed: list[str],
                   resume: dict[str, Any] | None) -> None:
        options, device = self.options, self.device
        context = StageContext(model, self.config, self.run_dir / "cache", device)
        torch.manual_seed(self.config.seed + 1000 * (index + 1))
        freeze_all_but(model, stage)
        dataset = stage.dataset(context)
        if len(dataset) == 0:
            raise DataError(f"stage {stage.name} has no training data; check the data settings of the config")
        if stage.on_start is not None and resume is None:
            stage.on_start(model, context)
            freeze_all_but(model, stage)
        param_lists = [trained_parameters(model, spec) for spec in stage.optimizers]
        optimizers = [build_optimizer(spec, model) for spec in stage.optimizers]
        ema = ({n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
               if stage.ema_decay else None)
        validation = {"best": math.inf, "bad": 0, "best_weights": None}
        start = 0
        if resume is not None:
            start = resume["step"]
            for optimizer, saved in zip(optimizers, resume["optimizers"]):
                optimizer.load_state_dict(saved)
            torch.set_rng_state(resume["rng"]["cpu"])
            if torch.cuda.is_available() and resume["rng"].get("cuda"):
                torch.cuda.set_rng_state_all(resume["rng"]["cuda"])
            ema = resume.get("ema") or ema
            validation = resume.get("validation") or validation

        sampler = GlobalBatchSampler(len(dataset), stage.batch_size, stage.steps, self.config.seed + index, start, self.world)
        # Its own generator: drawing a worker seed from the global RNG would shift a resumed run.
        loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=default_collate,
                            generator=torch.Generator().manual_seed(self.config.seed))
        self.reporter.start(stage.name, stage.steps, start)
        window: dict[str, list[float]] = defaultdict(list)
        window_start, stage_start = time.perf_counter(), time.perf_counter()
        window_images = 0
        step = start
        try:
            for step, batch in zip(range(start, stage.steps), loader):
                batch = _to_device(batch, device)
                step_context = StepContext(step, stage.steps, device)
                for spec, optimizer, params in zip(stage.optimizers, optimizers, param_lists):
                    if step < spec.start_step or (step - spec.start_step) % spec.every:
                        continue
                    values = self._optimizer_step(model, spec, optimizer, params, batch, step_context, stage)
                    for key, value in values.items():
                        window[key if len(optimizers) == 1 else f"{spec.name}/{key}"].append(value)
                if ema is not None:
                    with torch.no_grad():
                        for name, param in model.named_parameters():
                            if name in ema:
                                ema[name].lerp_(param.detach(), 1 - stage.ema_decay)
                window_images += stage.batch_size
                done = step + 1
                if done % options.log_every == 0 or done == stage.steps:
                    elapsed = time.perf_counter() - window_start
                    metrics = {"stage": stage.name, "step": done,
                               **{k: sum(v) / len(v) for k, v in window.items()},
                               "lr": optimizers[0].param_groups[0]["lr"],
                               "images_per_s": window_images / max(elapsed, 1e-9)}
                    self._log(metrics)
                    window.clear()
                    window_start, window_images = time.perf_counter(), 0
                if stage.validation and done % stage.validation.every == 0:
                    if self._validate(model, stage, context, done, validation):
                        self.reporter.message(f"{stage.name}: early stop at step {done}: validation loss has not "
                                              f"improved for {stage.validation.patience} evaluations")
                        break
                if done % options.checkpoint_every == 0 and done < stage.steps:
                    self._checkpoint(model, stage, done, completed, optimizers, ema, validation)
        finally:
            self.reporter.finish()

        if validation["best_weights"] is not None and stage.validation and stage.validation.patience is not None:
            model.load_state_dict(validation["best_weights"])
        if ema is not None:
            with torch.no_grad():
                for name, param in model.named_parameters():
                    if name in ema:
                        param.copy_(ema[name])
        seconds = time.perf_counter() - stage_start
        self._log({"stage": stage.name, "event": "end", "step": step + 1, "seconds": round(seconds, 2)})
        if self.world.is_main:
            ckpt.save_weights(model, self.run_dir / ckpt.WEIGHTS_FILE)
            finished = [s for s in completed if s != stage.name] + [stage.name]
            ckpt.write_trainer_checkpoint(self.run_dir, f"{stage.name}-done", model, {"completed": finished})
            self._record_completed(finished)
            if stage.sample_options is not None:
                self._write_sample_grid(model, stage)
        completed[:] = [s for s in completed if s != stage.name] + [stage.name]

    def _optimizer_step(self, model: nn.Module, spec: Optimizer, optimizer: torch.optim.Optimizer,
                        params: list[nn.Parameter], batch: Any, context: StepContext, stage: Stage) -> dict[str, float]:
        for group in optimizer.param_groups:
            group["lr"] = spec.lr * lr_factor(spec, context.step, context.total_steps)
        optimizer.zero_grad(set_to_none=True)
        with autocast(self.device, self.options.precision):
            outputs = spec.loss(model, batch, context)
        loss = outputs["loss"]
        if not torch.isfinite(loss):
            raise TrainingError(
                f"stage {stage.name}, step {context.step}: {spec.name} loss is {loss.item()}; stopped. The last good "
                f"checkpoint is kept in {self.run_dir} (resume with --resume); try a lower learning rate or --precision fp32"
            )
        loss.backward()
        average_gradients(params, self.world)
        values = {k: v.detach().float().item() for k, v in outputs.items()}
        if spec.clip_grad_norm is not None:
            values["grad_norm"] = torch.nn.utils.clip_grad_norm_(params, spec.clip_grad_norm).item()
        optimizer.step()
        return values

    @torch.no_grad()
    def _validate(self, model: nn.Module, stage: Stage, context: StageContext, step: int,
                  validation: dict[str, Any]) -> bool:
        """Log the held-out loss; True when patience is exhausted."""
        spec = stage.validation
        model.eval()
        dataset = spec.dataset(context)
        loader = DataLoader(dataset, batch_size=stage.batch_size, shuffle=False, collate_fn=default_collate)
        losses = []
        for batch_index, batch in enumerate(loader):
            if batch_index >= spec.batches:
                break
            batch = _to_device(batch, self.device)
            with autocast(self.device, self.options.precision):
                outputs = stage.optimizers[0].loss(model, batch, StepContext(step, stage.steps, self.device))
            losses.append(outputs["loss"].float().item())
        freeze_all_but(model, stage)
        value = sum(losses) / max(1, len(losses))
        self._log({"stage": stage.name, "step": step, "val_loss": value})
        if value < validation["best"]:
            validation.update(best=value, bad=0, best_weights={k: v.clone() for k, v in model.state_dict().items()})
            return False
        validation["bad"] += 1
        return spec.patience is not None and validation["bad"] >= spec.patience

    def _checkpoint(self, model: nn.Module, stage: Stage, step: int, completed: list[str],
                    optimizers: list[torch.optim.Optimizer], ema: dict[str, torch.Tensor] | None,
                    validation: dict[str, Any]) -> None:
        if not self.world.is_main:
            return
        rng = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        state = {"completed": completed, "stage": stage.name, "step": step, "rng": rng,
                 "optimizers": [o.state_dict() for o in optimizers], "ema": ema, "validation": validation}
        ckpt.write_trainer_checkpoint(self.run_dir, f"{stage.name}-{step}", model, state)

    def _record_completed(self, completed: list[str]) -> None:
        record = ckpt.read_run_record(self.run_dir)
        record["completed"] = completed
        ckpt.atomic_write_json(self.run_dir / ckpt.CONFIG_FILE, record)

    def _log(self, metrics: dict[str, Any]) -> None:
        if not self.world.is_main:
            return
        with open(self.run_dir / ckpt.METRICS_FILE, "a") as file:
            file.write(json.dumps(metrics) + "\n")
        if "event" not in metrics:
            self.reporter.update(metrics["step"], metrics)

    def _write_sample_grid(self, model: nn.Module, stage: Stage) -> None:
        options = self.plugin.SampleOptions(**stage.sample_options)
        output = self.plugin.sample(model, self.config, options, self.device)
        path = self.run_dir / "samples" / f"{stage.name}.png"
        output.save(path)
        self.reporter.message(f"{stage.name}: sample grid written to {path}")


def train(plugin: ModelPlugin, config: ZooConfig, run_dir: Path, preset: str | None = None,
          options: TrainOptions | None = None) -> nn.Module:
    return Trainer(plugin, config, run_dir, preset, options or TrainOptions()).run()
