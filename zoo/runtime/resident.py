"""A graph output kept where the engine runs (torch-free).

A loop that feeds a value back into a later graph call (VAR's key/value cache and f_hat,
PixelCNN caches) names it in the call: `components(name, resident=("new_cache",), **inputs)`.
That output comes back as a `Resident`, not as numpy: an onnxruntime `OrtValue` (CPU or
CUDA memory) or a torch tensor on the model's device. A loop may pass it back as an input of
the same engine, read its `shape` and `dtype` (no copy), or fetch it with
`components.to_host(value)` (one counted copy). Any session of onnxruntime takes any
OrtValue (it copies one from another device itself), so exports' components may be mixed;
the two engines' values do not mix. Everything else, tokens, logits, images,
comes back as numpy as before, so only what the loop reads leaves the device.

Engines count what crosses between host and device per (component, input or output name)
in `host_transfers`, a `collections.Counter`: inputs given as numpy, outputs returned as
numpy, explicit fetches (counted under the component and output that made the value).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from zoo.errors import ZooError


class ForeignResident(ZooError):
    """A resident value of one engine (torch, onnxruntime) passed to the other."""


@dataclass(frozen=True, eq=False)
class Resident:
    """An engine's value in its own memory. `value` is the engine's object (an `OrtValue`, a
    `torch.Tensor`); only that engine reads it. `source` is the (component, output) that made it."""

    value: Any
    shape: tuple[int, ...]
    dtype: np.dtype
    device: str  # "cpu", "cuda", ...: where the memory is
    source: tuple[str, str]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    def __repr__(self) -> str:
        return f"Resident({self.source[0]}.{self.source[1]}, shape={self.shape}, dtype={self.dtype}, on {self.device})"

    def value_for(self, kind: type, use: str) -> Any:
        """The engine's object, after checking that it is of the engine's `kind` (`use` names
        the use in the error: "input 'cache' of component 'step'")."""
        if not isinstance(self.value, kind):
            raise ForeignResident(
                f"{use} is {self!r}, made by another engine ({type(self.value).__name__}): fetch it with that "
                "engine's components.to_host(value) and pass the array"
            )
        return self.value
