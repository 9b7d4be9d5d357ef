"""Runs a plugin's export components in torch behind the numpy interface of
`zoo.runtime.loop.Components`, so `zoo sample` uses the same loop as `zoo run`."""

from __future__ import annotations

import numpy as np
import torch

from zoo.errors import UnknownNameError
from zoo.plugin import Component


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
        return {key: value.float().cpu().numpy() if value.is_floating_point() else value.cpu().numpy()
                for key, value in zip(component.output_names, outputs, strict=True)}
