"""Device and precision choice for training and sampling."""

from __future__ import annotations

import contextlib
from typing import Literal

import torch

from zoo.errors import ZooError

Precision = Literal["fp32", "bf16"]


def choose_device(name: str = "auto") -> torch.device:
    """`auto` takes CUDA when a GPU is really usable, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ZooError(f"--device {name} was asked for but torch sees no usable CUDA GPU; use --device cpu or auto")
    if name != "cpu" and not name.startswith("cuda"):
        raise ZooError(f"unknown device {name!r}; use auto, cpu or cuda[:N]")
    return torch.device(name)


def autocast(device: torch.device, precision: Precision) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA and on CPUs (AMX makes bf16 matmuls several times faster)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    raise ZooError(f"unknown precision {precision!r}; use fp32 or bf16")
