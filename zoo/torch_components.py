"""Export components in torch: `method_component` makes one from a method of a model
(no wrapper class per graph), and `TorchComponents` runs them behind the numpy interface
of `zoo.runtime.loop.Components`, so `zoo sample` uses the same loop as `zoo run`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from zoo.components import Component
from zoo.errors import UnknownNameError


class MethodGraph(nn.Module):
    """`module.method(*bound, *inputs)` as a module an exporter can trace. The model is held
    as a submodule, so the graph's weights are the model's, never copies."""

    def __init__(self, module: nn.Module, method: str, *bound: Any) -> None:
        super().__init__()
        if not callable(getattr(module, method, None)):
            raise TypeError(f"{type(module).__name__} has no method {method!r} to export")
        self.owner, self.method, self.bound = module, method, bound

    def forward(self, *inputs: torch.Tensor) -> Any:
        return getattr(self.owner, self.method)(*self.bound, *inputs)


def method_component(
    name: str,
    module: nn.Module,
    method: str,
    make_inputs: Callable[[int], dict[str, torch.Tensor]],
    output_names: list[str],
    dynamic_axes: dict[str, dict[int, str]],
    *bound: Any,
    **options: Any,
) -> Component:
    """A component that runs `module.method(*bound, **inputs)`; the input names (and their
    order) are the keys of `make_inputs`, options are Component fields (exporter, tolerance)."""
    with torch.random.fork_rng():  # asking for the names must not move the caller's random stream
        input_names = list(make_inputs(0))
    return Component(
        name, MethodGraph(module, method, *bound), make_inputs, input_names, output_names, dynamic_axes, **options
    )


class TorchComponents:
    def __init__(self, components: list[Component], device: torch.device) -> None:
        self.by_name = {component.name: component for component in components}
        self.device = torch.device(device)
        for component in components:
            component.module.to(self.device).eval()

    def __contains__(self, name: str) -> bool:
        return name in self.by_name

    @torch.inference_mode()
    def __call__(self, name: str, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        if name not in self.by_name:
            raise UnknownNameError("component", name, self.by_name)
        component = self.by_name[name]
        args = [torch.from_numpy(np.ascontiguousarray(inputs[key])).to(self.device) for key in component.input_names]
        outputs = component.module(*args)
        if isinstance(outputs, torch.Tensor):
            outputs = (outputs,)
        return {
            key: value.float().cpu().numpy() if value.is_floating_point() else value.cpu().numpy()
            for key, value in zip(component.output_names, outputs, strict=True)
        }
