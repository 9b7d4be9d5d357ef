"""Data-parallel training under torchrun, on torch's own engines.

Each stage's losses run as the forward of one root module (`StageStep`), so torch's
composable engines, which hook the modules they are applied to, see every sub-module a
loss calls, a GAN's discriminator included:

- `replicate` (DDP): each process holds the whole model; gradients are all-reduced in
  buckets while the backward pass is still running. The default.
- `fully_shard` (FSDP2, `scale.shard`): each of the plugin's blocks, then the root, is
  sharded: weights, gradients and optimizer state are split over the processes; a block's
  weights are gathered just before its forward and backward and freed after.

Sharding lasts one stage: at its end the weights are gathered and the plain model is
rebuilt, so the next stage can freeze other parts and its data builder can read the
model. Checkpoints hold full tensors whichever engine wrote them, so a run may resume
with the other engine or another number of processes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class WorldInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_from_env(device_type: str) -> WorldInfo:
    """Join the process group torchrun describes in the environment; one process otherwise."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return WorldInfo()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return WorldInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def barrier(world: WorldInfo) -> None:
    if world.world_size > 1:
        dist.barrier()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class StageStep(nn.Module):
    """The root the engines wrap: its forward is one loss function on the model."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, loss: Callable[..., Any], batch: Any, context: Any) -> Any:
        return loss(self.model, batch, context)


class Engine:
    """How one run's stages train on `world`: plain (one process), replicated or sharded.

    `build` makes a fresh plain model with the run's levers applied; the sharded engine
    uses it to rebuild the model at a stage's end. `note` tells the user of a stage that
    cannot be sharded."""

    def __init__(
        self,
        world: WorldInfo,
        shard: bool,
        device: torch.device,
        build: Callable[[], nn.Module],
        note: Callable[[str], None],
    ) -> None:
        self.world, self.device, self.build, self.note = world, device, build, note
        self.parallel = world.world_size > 1
        self.shard_asked = shard and self.parallel
        self.shard = False  # whether the current stage is sharded

    @property
    def name(self) -> str:
        if not self.parallel:
            return "one process"
        engine = "fully_shard (FSDP2)" if self.shard_asked else "replicate (DDP)"
        return f"{engine} on {self.world.world_size} processes"

    def wrap(self, model: nn.Module, blocks: list[nn.Module], stage: str) -> StageStep:
        """The stage's root over `model`, its trained parameters set (requires_grad) already."""
        step = StageStep(model)
        self.shard = self.shard_asked and not self._rewrites_parameters(model, stage)
        if self.shard:
            from torch.distributed.fsdp import fully_shard

            for block in blocks:
                fully_shard(block)
            fully_shard(step)
        elif self.parallel:
            from torch.distributed._composable import replicate

            # A stage's optimizers train different parts (a discriminator's step leaves the
            # generator without gradients): DDP must look for parameters a loss did not use.
            # Gradients live in DDP's buckets: no second copy of them (4 bytes a parameter).
            replicate(step, device_id=self.device, find_unused_parameters=True, gradient_as_bucket_view=True)
        return step

    def plain_model(self, step: StageStep) -> nn.Module:
        """The model as a plain module with the stage's current weights: the model itself,
        or when sharded a copy rebuilt from the gathered weights (every process calls it)."""
        if not self.shard:
            return step.model
        return self._rebuilt(self.model_state(step.model))

    def plain_model_on_main(self, step: StageStep) -> nn.Module | None:
        """`plain_model` for rank 0 alone (a grid): None elsewhere, which builds no copy."""
        if not self.shard:
            return step.model if self.world.is_main else None
        weights = self.model_state(step.model)  # collective: every process takes part
        return self._rebuilt(weights) if self.world.is_main else None

    def _rebuilt(self, weights: Mapping[str, torch.Tensor]) -> nn.Module:
        cuda = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):  # building draws an initialisation: training must not see it
            model = self.build()
        model.load_state_dict(weights)
        return model

    def _rewrites_parameters(self, model: nn.Module, stage: str) -> bool:
        """A module whose training forward writes its own parameters in place (a codebook's
        dead-code restarts) says so with `rewrites_parameters = True`: under fully_shard those
        writes would land in the gathered copy and be lost, so its stage is replicated."""
        for name, module in model.named_modules():
            if getattr(module, "rewrites_parameters", False) and any(p.requires_grad for p in module.parameters()):
                self.note(
                    f"stage {stage}: {name} writes its parameters in the forward pass (dead-code restarts), "
                    "which sharding would lose; this stage is replicated (DDP) instead"
                )
                return True
        return False

    @contextmanager
    def gradient_sync(self, step: StageStep, enabled: bool) -> Iterator[None]:
        """Backward passes inside reduce gradients across processes only when `enabled`:
        accumulation's early micro-batches keep theirs local."""
        if self.parallel and not enabled:
            # set_requires_gradient_sync is added by fully_shard/replicate at run time, which
            # nn.Module's typed __getattr__ takes for a Tensor attribute.
            step.set_requires_gradient_sync(False)  # type: ignore[operator]
            try:
                yield
            finally:
                step.set_requires_gradient_sync(True)  # type: ignore[operator]  # as above
        else:
            yield

    # full tensors for checkpoints, grids and the next stage (collective when sharded) -----

    def model_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        if not self.shard:
            return model.state_dict()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        # full_state_dict=True gathers plain tensors; torch types the values as any state value.
        return dict(get_model_state_dict(model, options=StateDictOptions(full_state_dict=True)))  # type: ignore[arg-type]

    def full(self, tensors: Mapping[str, Any] | None) -> dict[str, Any] | None:
        """Whole tensors of sharded ones (an EMA, the best weights, optimizer moments);
        every process calls it."""
        if tensors is None:
            return None
        from torch.distributed.tensor import DTensor

        return {k: v.full_tensor() if isinstance(v, DTensor) else v for k, v in tensors.items()}

    def like_parameters(self, tensors: Mapping[str, torch.Tensor] | None, model: nn.Module) -> Any:
        """Whole tensors keyed by parameter name (read from a checkpoint: an EMA, the best
        weights) split like the model's parameters."""
        if tensors is None or not self.shard:
            return tensors
        current = dict(model.state_dict())
        return {key: self._like(value, current[key]) if key in current else value for key, value in tensors.items()}

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """`optimizer.state_dict()` with whole tensors.

        Not torch.distributed.checkpoint's get_optimizer_state_dict: it takes a step with zero
        gradients to create the state of parameters not yet updated (a discriminator before
        its start), which changes the training."""
        saved = optimizer.state_dict()
        if not self.shard:
            return saved
        state = {index: self.full(values) for index, values in saved["state"].items()}
        return {"state": state, "param_groups": saved["param_groups"]}

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> None:
        if self.shard:
            parameters = [p for group in optimizer.param_groups for p in group["params"]]
            state = {
                index: {key: self._like(value, parameters[index]) for key, value in values.items()}
                for index, values in saved["state"].items()
            }
            saved = {"state": state, "param_groups": saved["param_groups"]}
        optimizer.load_state_dict(saved)

    def _like(self, value: Any, parameter: torch.Tensor) -> Any:
        """A whole tensor of a sharded parameter's shape (the parameter in a checkpoint, one of
        its moments) split like the parameter; anything else (a step count) as it is."""
        from torch.distributed.tensor import DTensor, distribute_tensor

        if not (isinstance(parameter, DTensor) and isinstance(value, torch.Tensor) and value.shape == parameter.shape):
            return value
        return distribute_tensor(value.to(self.device), parameter.device_mesh, parameter.placements)
