"""The base of every plugin's sampling loop (torch-free).

A loop calls graphs by component name with numpy inputs and gets numpy outputs back.
`zoo sample` hands it the torch modules (zoo.torch_components), `zoo run` the
onnxruntime sessions (zoo.runtime.sessions): one algorithm, two engines.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from zoo.config import SampleOptionsBase
from zoo.outputs import SampleOutput


class Components(Protocol):
    def __call__(self, name: str, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        """Run component `name`; outputs keyed by the component's output names."""
        ...

    def __contains__(self, name: str) -> bool: ...


class ModelRuntime:
    """Subclass per plugin (in its torch-free `runtime.py`); implement `sample`."""

    options_class: type[SampleOptionsBase]

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

    def sample(self, options: SampleOptionsBase) -> SampleOutput:
        raise NotImplementedError
