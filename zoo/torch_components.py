"""Export components in torch: `method_component` makes one from a method of a model
(no wrapper class per graph), and `TorchComponents` runs them behind the numpy interface
of `zoo.runtime.loop.Components`, so `zoo sample` uses the same loop as `zoo run`; the
outputs a call keeps `resident` stay tensors on the model's device."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from zoo.components import Component
from zoo.errors import UnknownNameError
from zoo.runtime.resident import Resident


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
    """The components' modules on `device`, called with numpy arrays or `Resident` handles of
    torch tensors; `host_transfers` counts as OnnxComponents' does."""

    def __init__(self, components: list[Component], device: torch.device | str) -> None:
        self.by_name = {component.name: component for component in components}
        self.device = torch.device(device)
        self.host_transfers: Counter[tuple[str, str]] = Counter()
        for component in components:
            component.module.to(self.device).eval()

    def __contains__(self, name: str) -> bool:
        return name in self.by_name

    @torch.inference_mode()
    def __call__(self, name: str, *, resident: Sequence[str] = (), **inputs: np.ndarray | Resident) -> dict[str, Any]:
        if name not in self.by_name:
            raise UnknownNameError("component", name, self.by_name)
        component = self.by_name[name]
        for key in resident:
            if key not in component.output_names:
                raise UnknownNameError(f"output of component {name!r}", key, component.output_names)
        args = []
        for key in component.input_names:
            value = inputs[key]
            if isinstance(value, Resident):
                tensor = value.value_for(torch.Tensor, f"input {key!r} of component {name!r}")
                args.append(tensor.to(self.device))  # a no-op on its own device
            else:
                args.append(torch.from_numpy(np.ascontiguousarray(value)).to(self.device))
                self.host_transfers[(name, key)] += 1
        outputs = component.module(*args)
        if isinstance(outputs, torch.Tensor):
            outputs = (outputs,)
        results: dict[str, Any] = {}
        for key, value in zip(component.output_names, outputs, strict=True):
            # fp32 as the numpy outputs are, so a value fed back is the same on either route
            value = value.float() if value.is_floating_point() else value
            if key in resident:
                dtype = np.dtype(str(value.dtype).removeprefix("torch."))
                results[key] = Resident(value, tuple(value.shape), dtype, self.device.type, (name, key))
            else:
                results[key] = value.cpu().numpy()
                self.host_transfers[(name, key)] += 1
        return results

    def to_host(self, value: np.ndarray | Resident) -> np.ndarray:
        if not isinstance(value, Resident):
            return value
        array = value.value_for(torch.Tensor, "the value to fetch").cpu().numpy()
        self.host_transfers[value.source] += 1
        return array
