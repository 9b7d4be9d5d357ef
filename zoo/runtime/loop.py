"""The base of every plugin's sampling loop (torch-free).

A loop calls graphs by component name with numpy inputs and gets numpy outputs back.
`zoo sample` hands it the torch modules (zoo.torch_components), `zoo run` the
onnxruntime sessions (zoo.runtime.sessions): one algorithm, two engines. State the loop
only feeds back into later calls (a key/value cache) stays on the engine's device: the
call names those outputs (`resident=(...)`) and gets them as `Resident` handles
(zoo.runtime.resident), which later calls take as inputs.

Before it runs, a loop states what a request will cost (`cost`: peak memory and graph
calls, zoo.runtime.cost), so that `zoo serve` can refuse one over its budget. While it runs,
every graph call first checks the sampling deadline of the calling thread
(`sampling_deadline`): a request past it, or whose stop event is set (a server shutting
down), stops at its next graph call with SamplingTimeout.

A loop whose intermediate states are images (VAR's scales) sets `reports_progress` and,
when the calling thread has a progress callback (`sampling_progress`), hands it each one;
without a callback it decodes nothing extra.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, ClassVar, Generic, Protocol

import numpy as np

from zoo.config import SampleOptionsT
from zoo.errors import ZooError
from zoo.outputs import SampleOutput
from zoo.runtime.cost import Cost
from zoo.runtime.resident import Resident

_deadline: ContextVar[tuple[float | None, threading.Event | None]] = ContextVar(
    "zoo_sampling_deadline", default=(None, None)
)

ProgressCallback = Callable[[SampleOutput], None]  # the images after one step of the loop
_progress: ContextVar[ProgressCallback | None] = ContextVar("zoo_sampling_progress", default=None)


class SamplingTimeout(ZooError):
    """A request that sampled past its deadline (`zoo serve --request-timeout`)."""


@contextmanager
def sampling_deadline(seconds: float | None, stop: threading.Event | None = None) -> Iterator[None]:
    """Within the block, graph calls of this thread (or task) stop once `seconds` have passed
    or `stop` is set."""
    token = _deadline.set((None if seconds is None else time.monotonic() + seconds, stop))
    try:
        yield
    finally:
        _deadline.reset(token)


class NoProgress(ZooError):
    """A progress callback for a loop that does not report progress."""


@contextmanager
def sampling_progress(callback: ProgressCallback) -> Iterator[None]:
    """Within the block, a loop that reports progress hands `callback` its images after each step."""
    token = _progress.set(callback)
    try:
        yield
    finally:
        _progress.reset(token)


def progress_callback() -> ProgressCallback | None:
    """The calling thread's progress callback, if any (loops call it after each step)."""
    return _progress.get()


# A graph call's outputs by name: numpy arrays, and `Resident` handles for the names the call
# asked to keep (typed Any so a loop's numpy arithmetic on the arrays type-checks).
Outputs = dict[str, Any]


class Components(Protocol):
    def __call__(self, name: str, *, resident: Sequence[str] = (), **inputs: np.ndarray | Resident) -> Outputs:
        """Run component `name`; outputs keyed by the component's output names, as numpy
        except those named in `resident`, which stay on the engine's device (`Resident`).
        Inputs are numpy arrays or this engine's `Resident` handles."""
        ...

    def to_host(self, value: np.ndarray | Resident) -> np.ndarray:
        """A `Resident`'s value copied to numpy (an array is returned as it is)."""
        ...

    def __contains__(self, name: str) -> bool: ...


class DeadlineComponents:
    """Components that check the sampling deadline before each graph call."""

    def __init__(self, components: Components) -> None:
        self.inner = components

    def __call__(self, name: str, *, resident: Sequence[str] = (), **inputs: Any) -> Outputs:
        deadline, stop = _deadline.get()
        if deadline is not None and time.monotonic() > deadline:
            raise SamplingTimeout(f"sampling stopped at its deadline, before graph {name!r}: ask for less work")
        if stop is not None and stop.is_set():
            raise SamplingTimeout(f"sampling stopped before graph {name!r}: the server is shutting down")
        if not resident:  # engines written before `resident` existed take no such keyword
            return self.inner(name, **inputs)
        return self.inner(name, resident=resident, **inputs)

    def to_host(self, value: np.ndarray | Resident) -> np.ndarray:
        return self.inner.to_host(value)

    def __contains__(self, name: str) -> bool:
        return name in self.inner


class ModelRuntime(Generic[SampleOptionsT]):
    """Subclass per plugin (in its torch-free `runtime.py`) as `ModelRuntime[ItsSampleOptions]`,
    set `options_class` to that class and implement `sample` (and `cost`)."""

    options_class: type[SampleOptionsT]
    reports_progress: ClassVar[bool] = False  # True: `sample` calls `progress_callback()`'s callback
    # True: every row draws from its own stream of (seed, row) (zoo.runtime.sampling.row_generators),
    # so a request's rows are the same batched with other requests; zoo serve may merge only such loops.
    per_row_seeds: ClassVar[bool] = False

    def __init__(
        self,
        components: Components,
        config: dict[str, Any],
        arrays: dict[str, np.ndarray],
        files: dict[str, bytes],
    ) -> None:
        self.components: Components = DeadlineComponents(components)
        self.config = config
        self.arrays = arrays
        self.files = files

    def sample(self, options: SampleOptionsT) -> SampleOutput:
        raise NotImplementedError

    def batch_key(self, options: SampleOptionsT) -> str | None:
        """Requests whose keys are equal (not None) may run as one `sample_batch` call: every
        option but the seed, the count and per-request inputs agree. None: run it alone."""
        return None

    def batch_rows(self, options: SampleOptionsT) -> int:
        """The rows this request adds to a merged call (zoo serve --max-batch counts these)."""
        return 1

    def sample_batch(self, requests: Sequence[SampleOptionsT]) -> list[SampleOutput]:
        """Requests of one `batch_key` as one loop call, split back per request; each answer
        equals `sample` of that request alone (loops that merge declare `per_row_seeds`)."""
        return [self.sample(options) for options in requests]

    def cost(self, options: SampleOptionsT) -> Cost | None:
        """The request's peak memory and graph calls, from its options and the sizes of its
        inputs, computed without running a graph or decoding an image. None: this loop does
        not say (zoo serve then admits the request unmeasured)."""
        return None
