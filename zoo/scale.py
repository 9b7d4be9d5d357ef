"""The single-process levers of training at size: activation checkpointing and
torch.compile per block (`ModelPlugin.blocks`), and the AdamW kernel. Set in the
config's `scale` section (`zoo.config.ScaleConfig`); the trainer applies them once
to the model it builds."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from zoo.errors import first_line


def checkpoint_activations(blocks: list[nn.Module]) -> None:
    """Each block keeps only its inputs for the backward pass and recomputes the rest there.

    torch.utils.checkpoint (non-reentrant) around the block's forward: the RNG is restored
    for the recomputation (dropout draws the same mask), a graph may be differentiated
    more than once (a GAN's adaptive weight takes the gradient at a block before the
    backward pass), and the hooks of fully_shard stay outside it, so a sharded block's
    weights are gathered before it recomputes. (torch's composable `checkpoint` recomputes
    a block once only.)"""
    for block in blocks:
        block.forward = functools.partial(_checkpointed, block.forward)


def _checkpointed(forward: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return checkpoint(forward, *args, use_reentrant=False, **kwargs)


def compile_blocks(blocks: list[nn.Module], warn: Callable[[str], None]) -> None:
    """torch.compile each block's forward (the hooks of sharding and checkpointing stay
    outside the compiled code). A block whose compilation fails runs eagerly from then on;
    the first failure is reported in one line through `warn`."""
    failed: list[str] = []

    def report(error: Exception) -> None:
        if not failed:
            warn(f"--compile: torch.compile failed ({first_line(error, with_type=True)}); training eagerly")
        failed.append(type(error).__name__)

    for block in blocks:
        block.forward = _with_eager_fallback(block.forward, torch.compile(block.forward), report)


def _with_eager_fallback(
    eager: Callable[..., Any], compiled: Callable[..., Any], report: Callable[[Exception], None]
) -> Callable[..., Any]:
    state = {"compiled": True}

    @functools.wraps(eager)
    def forward(*args: Any, **kwargs: Any) -> Any:
        if state["compiled"]:
            try:
                return compiled(*args, **kwargs)
            except Exception as error:  # noqa: BLE001 - any failure: the eager call below shows a real bug again
                state["compiled"] = False
                report(error)
        return eager(*args, **kwargs)

    return forward


def adamw_kernel(choice: str, device: torch.device, sharded: bool) -> dict[str, bool]:
    """The keyword that picks torch.optim.AdamW's implementation.

    `auto`: the fused kernel (one pass over each tensor; 3-4x the for-loop on this project's
    CPU, see benchmarks/results/train_step.md) for plain tensors on CPU and CUDA; foreach
    for sharded weights (DTensors)."""
    if choice == "auto":
        choice = "foreach" if sharded or device.type not in ("cpu", "cuda") else "fused"
    return {"fused": {"fused": True}, "foreach": {"foreach": True}, "for-loop": {"foreach": False}}[choice]
