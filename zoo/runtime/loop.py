"""The base of every plugin's sampling loop (torch-free).

A loop calls graphs by component name with numpy inputs and gets numpy outputs back.
`zoo sample` hands it the torch modules (zoo.torch_components), `zoo run` the
onnxruntime sessions (zoo.runtime.sessions): one algorithm, two engines.
"""

from __future__ import annotations

from typing import Any, Generic, Protocol

import numpy as np

from zoo.config import SampleOptionsT
from zoo.outputs import SampleOutput


class Components(Protocol):
    def __call__(self, name: str, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        """Run component `name`; outputs keyed by the component's output names."""
        ...

    def __contains__(self, name: str) -> bool: ...


class ModelRuntime(Generic[SampleOptionsT]):
    """Subclass per plugin (in its torch-free `runtime.py`) as `ModelRuntime[ItsSampleOptions]`,
    set `options_class` to that class and implement `sample`."""

    options_class: type[SampleOptionsT]

    def __init__(
        self,
        components: Components,
        config: dict[str, Any],
        arrays: dict[str, np.ndarray],
        files: dict[str, bytes],
    ) -> None:
        self.components = components
        self.config = config
        self.arrays = arrays
        self.files = files

    def sample(self, options: SampleOptionsT) -> SampleOutput:
        raise NotImplementedError
