"""onnxruntime sessions behind the `Components` interface, and the choice of provider
(torch-free).

Provider choice: with no request, CUDA is used when onnxruntime lists
`CUDAExecutionProvider` AND a session really starts on it (the CUDA libraries load);
otherwise CPU, silently. A requested provider (`cpu`, `cuda`, `tensorrt`) that cannot
start is an error. TensorRT is never picked on its own: it builds an engine per graph
on first use, which takes minutes.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from zoo.errors import ConfigError, ExportError, UnknownNameError, first_line
from zoo.runtime.resident import Resident

EXECUTION_PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}
OPTIMIZATION_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
# onnxruntime's severities: 0 verbose, 1 info, 2 warning (its default), 3 error, 4 fatal.
QUIET_SEVERITY = 3
PROBE_SEVERITY = 4  # a missing CUDA library is logged as an error; probing must not print it
DEFAULT_SEVERITY = 2


@dataclass
class ProviderReport:
    requested: str | None
    tried: list[str] = field(default_factory=list)
    used: str = ""
    failures: dict[str, str] = field(default_factory=dict)  # provider -> why it was not used

    def as_dict(self) -> dict[str, Any]:
        return {"requested": self.requested, "tried": self.tried, "used": self.used, "failures": self.failures}


TELEMETRY_VARIABLE = "ORT_DISABLE_TELEMETRY"  # read by onnxruntime's POSIX telemetry (1.29+ official builds)


def session_options(
    graph_optimization_level: str = "all",
    intra_op_threads: int | None = None,
    inter_op_threads: int | None = None,
) -> ort.SessionOptions:
    if graph_optimization_level not in OPTIMIZATION_LEVELS:
        raise ConfigError(
            f"graph_optimization_level must be one of {', '.join(OPTIMIZATION_LEVELS)}, got {graph_optimization_level!r}"
        )
    # A deployment should not report its models to a third party unasked: off unless the
    # environment says otherwise, set before the first session reads it.
    os.environ.setdefault(TELEMETRY_VARIABLE, "1")
    options = ort.SessionOptions()
    options.graph_optimization_level = OPTIMIZATION_LEVELS[graph_optimization_level]
    options.log_severity_level = QUIET_SEVERITY
    if intra_op_threads is not None:
        options.intra_op_num_threads = intra_op_threads
    if inter_op_threads is not None:
        options.inter_op_num_threads = inter_op_threads
        options.execution_mode = ort.ExecutionMode.ORT_PARALLEL
    return options


def open_sessions(
    graphs: dict[str, Path], provider: str | None, options: ort.SessionOptions
) -> tuple[dict[str, ort.InferenceSession], ProviderReport]:
    """One session per graph, all on the same provider (see the module docstring)."""
    if provider is not None and provider not in EXECUTION_PROVIDERS:
        raise UnknownNameError("provider", provider, EXECUTION_PROVIDERS)
    available = ort.get_available_providers()
    if provider is None:
        candidates = ["cuda", "cpu"] if "CUDAExecutionProvider" in available else ["cpu"]
    else:
        candidates = [provider]
    report = ProviderReport(requested=provider)
    for candidate in candidates:
        wanted = EXECUTION_PROVIDERS[candidate][0]
        report.tried.append(wanted)
        try:
            sessions = _sessions_on(graphs, candidate, options, available)
        except _ProviderUnusable as reason:
            report.failures[wanted] = str(reason)
            if provider is not None:
                raise ExportError(
                    f"--provider {provider}: {wanted} cannot run here ({reason}); use --provider cpu, or install "
                    "onnxruntime-gpu with the CUDA and cuDNN versions it requires"
                ) from None
            continue
        report.used = wanted
        return sessions, report
    raise AssertionError("the CPU provider is always a candidate")


class _ProviderUnusable(Exception):
    pass


def _sessions_on(
    graphs: dict[str, Path], candidate: str, options: ort.SessionOptions, available: list[str]
) -> dict[str, ort.InferenceSession]:
    providers = EXECUTION_PROVIDERS[candidate]
    wanted = providers[0]
    if wanted not in available:
        raise _ProviderUnusable(f"this onnxruntime build offers only {', '.join(available)}")
    probing = candidate != "cpu"
    if probing:
        ort.set_default_logger_severity(PROBE_SEVERITY)
    sessions = {}
    try:
        for name, path in graphs.items():
            try:
                # onnxruntime prints (not logs) its retry when TensorRT fails to start.
                with contextlib.redirect_stdout(io.StringIO()) if probing else contextlib.nullcontext():
                    session = ort.InferenceSession(str(path), options, providers=providers)
            except Exception as error:  # onnxruntime raises its own Fail/InvalidGraph/... types
                if probing:
                    raise _ProviderUnusable(first_line(error, 300)) from None
                raise ExportError(
                    f"onnxruntime cannot load {path.name}: {first_line(error, 300)}; export again"
                ) from None
            # onnxruntime falls back to CPU by itself when a provider's libraries do not load.
            if session.get_providers()[0] != wanted:
                raise _ProviderUnusable(f"{wanted} did not start (its libraries or the device are missing)")
            sessions[name] = session
    finally:
        if probing:
            ort.set_default_logger_severity(DEFAULT_SEVERITY)
    return sessions


class OnnxComponents:
    """Runs an export's graphs by component name (the `Components` protocol of
    zoo.runtime.loop). Inputs are checked against the manifest first, so a wrong shape gives
    one line instead of onnxruntime's page-long error.

    Every call runs through IO binding, on the CPU as on CUDA, so the CPU tests exercise the
    path a GPU takes: numpy inputs are bound from host memory (copied to a GPU), `Resident`
    inputs as the OrtValues they are; outputs named in `resident` are allocated on the
    session's device and returned as `Resident` (zoo.runtime.resident), the others are written
    to host memory and returned as numpy. `host_transfers` counts the host side of each
    (component, input or output name); with several threads sampling at once a count may miss
    an increment (it is a diagnostic, not a lock)."""

    def __init__(
        self,
        sessions: dict[str, ort.InferenceSession],
        specs: dict[str, dict[str, Any]],
        binding_device: str = "cpu",
    ) -> None:
        self.sessions = sessions
        self.specs = specs
        self.binding_device = binding_device  # where resident outputs live: "cpu" or "cuda" (binding_device())
        self.host_transfers: Counter[tuple[str, str]] = Counter()

    def __contains__(self, name: str) -> bool:
        return name in self.sessions

    def __iter__(self):
        return iter(self.sessions)

    def __call__(self, name: str, *, resident: Sequence[str] = (), **inputs: np.ndarray | Resident) -> dict[str, Any]:
        if name not in self.sessions:
            raise UnknownNameError("component", name, self.sessions)
        spec = self.specs[name]
        feeds = check_inputs(name, spec["inputs"], inputs)
        output_names = [output["name"] for output in spec["outputs"]]
        for key in resident:
            if key not in output_names:
                raise UnknownNameError(f"output of component {name!r}", key, output_names)
        session = self.sessions[name]
        binding = session.io_binding()
        for key, value in feeds.items():
            if isinstance(value, Resident):
                binding.bind_ortvalue_input(key, value.value_for(ort.OrtValue, f"input {key!r} of component {name!r}"))
            else:
                binding.bind_cpu_input(key, value)  # on CUDA: copied to the device by onnxruntime
                self.host_transfers[(name, key)] += 1
        for key in output_names:
            binding.bind_output(key, self.binding_device if key in resident else "cpu")
        try:
            session.run_with_iobinding(binding)
        except Exception as error:  # onnxruntime's own exception types
            shapes = {key: value.shape for key, value in feeds.items()}
            raise ExportError(
                f"component {name!r} failed in onnxruntime on inputs {shapes}: {first_line(error, 300)}"
            ) from None
        outputs: dict[str, Any] = {}
        for output, value in zip(spec["outputs"], binding.get_outputs(), strict=True):
            key = output["name"]
            if key in resident:
                dtype = np.dtype(output["dtype"])
                outputs[key] = Resident(value, tuple(value.shape()), dtype, self.binding_device, (name, key))
            else:
                outputs[key] = value.numpy()
                self.host_transfers[(name, key)] += 1
        return outputs

    def to_host(self, value: np.ndarray | Resident) -> np.ndarray:
        if not isinstance(value, Resident):
            return value
        array = value.value_for(ort.OrtValue, "the value to fetch").numpy()
        self.host_transfers[value.source] += 1
        return array


def binding_device(provider: str) -> str:
    """Where IO binding keeps the resident outputs of a provider's sessions."""
    return "cuda" if provider in ("CUDAExecutionProvider", "TensorrtExecutionProvider") else "cpu"


class _shape_text:
    """A shape rendered for an error message only when one is raised (this runs per step)."""

    def __init__(self, shape: list[Any]) -> None:
        self.shape = shape

    def __str__(self) -> str:
        return "(" + ", ".join(str(dim) for dim in self.shape) + ")"


def check_inputs(
    component: str, specs: list[dict[str, Any]], inputs: dict[str, Any]
) -> dict[str, np.ndarray | Resident]:
    """The graph's inputs by name as contiguous arrays (`Resident` handles as they are), after
    checking dtypes, ranks, fixed sizes, and that axes sharing a name (e.g. `batch`) agree.
    Inputs the graph does not take are ignored, as the torch engine (zoo.torch_components)
    ignores them, so one loop can pass e.g. `labels` to a prior whether or not its config is
    conditional."""
    expected = [spec["name"] for spec in specs]
    missing = [name for name in expected if name not in inputs]
    if missing:
        raise ExportError(f"component {component!r} needs input {missing[0]!r}; its inputs are {', '.join(expected)}")
    feeds: dict[str, np.ndarray | Resident] = {}
    named_sizes: dict[str, tuple[str, int]] = {}  # axis name -> (input that set it, size)
    for spec in specs:
        name, shape = spec["name"], spec["shape"]
        value = inputs[name]
        array = value if isinstance(value, Resident) else np.ascontiguousarray(value)
        wanted_shape = _shape_text(shape)
        if array.dtype != np.dtype(spec["dtype"]):
            raise ExportError(
                f"input {name!r} of component {component!r} must be {spec['dtype']}, got {array.dtype}; convert it with .astype"
            )
        if len(array.shape) != len(shape):
            raise ExportError(
                f"input {name!r} of component {component!r} must have {len(shape)} dimensions {wanted_shape}, got shape {array.shape}"
            )
        for axis, (dim, size) in enumerate(zip(shape, array.shape, strict=True)):
            if isinstance(dim, int) and dim != size:
                raise ExportError(
                    f"input {name!r} of component {component!r} must have shape {wanted_shape}, got {array.shape}: axis {axis} "
                    f"is fixed at {dim} in the exported graph (export with that axis dynamic to change it)"
                )
            if isinstance(dim, str):
                first = named_sizes.setdefault(dim, (name, size))
                if first[1] != size:
                    raise ExportError(
                        f"inputs of component {component!r} disagree on axis {dim!r}: {first[0]!r} has {first[1]}, "
                        f"{name!r} has {size}"
                    )
        feeds[name] = array
    return feeds
