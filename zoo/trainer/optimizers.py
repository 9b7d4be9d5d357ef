"""What a stage trains and how: its optimizers' parameters (weight decay on matrices only),
the learning-rate schedule, and freezing everything else."""

from __future__ import annotations

import math

import torch
from torch import nn

from zoo.plugin import Optimizer, Stage


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
