"""What a model plugin hands an exporter: its graphs (`Component`) and the small things the
runtime loop needs besides them (`ExportAssets`).

A leaf module: it imports nothing of zoo and no torch at run time, so the plugin interface
(zoo.plugin), the torch engine (zoo.torch_components) and every exporter can import it
without importing each other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn


@dataclass
class Component:
    """One graph an exporter writes (ONNX: one `.onnx` file), and that `sample` runs through torch.

    `make_inputs(size)` returns fresh random inputs keyed by input name; sizes 0, 1, 2
    must differ in at least one dynamic axis. Size 0 is traced, the others validate.
    """

    name: str
    module: nn.Module
    make_inputs: Callable[[int], dict[str, torch.Tensor]]
    input_names: list[str]
    output_names: list[str]
    dynamic_axes: dict[str, dict[int, str]]
    exporter: Literal["dynamo", "torchscript"] = "dynamo"  # which torch.onnx exporter traces it
    tolerance: float = 1e-4  # max abs error allowed at fp32 (relative to max(1, |torch output|))
    # True: the graph stays float32 whatever precision the export asks for. For encoders to
    # codes: a nearest-code search flips a code wherever two distances are closer than the
    # rounding (VAR d16 at fp16: 1.3% of its codes), and the codes are what the rest consumes.
    keep_fp32: bool = False


@dataclass
class ExportAssets:
    """Small things the runtime loop needs besides the graphs."""

    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)  # e.g. a tokenizer.json
