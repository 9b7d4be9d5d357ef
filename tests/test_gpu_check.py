"""benchmarks/gpu_check.py: its CPU-only path (the `no CUDA` line, exit 0) and the parts of its
checks that run on a CPU, with CPUExecutionProvider standing in for a GPU provider."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_check  # noqa: E402

from zoo.runtime.resident import Resident  # noqa: E402


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the script runs its real checks")
def test_without_cuda_the_script_says_so_and_exits_0():
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("no CUDA: torch ")
    assert "torch.cuda.is_available() False" in lines[0] and ort.__version__ in lines[0]


def test_placement_of_a_real_profile(tmp_path):
    options = ort.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = str(tmp_path / "profile")
    session = ort.InferenceSession(
        str(gpu_check.probe_graph(tmp_path / "probe.onnx")), options, providers=["CPUExecutionProvider"]
    )
    session.run(None, {"x": np.ones(1, np.float32)})
    kernels = gpu_check.kernel_placement([Path(session.end_profiling())])
    assert kernels == Counter({("CPUExecutionProvider", "Identity"): 1})
    started = [session.get_providers()[0]]
    assert gpu_check.placement_check("cpu", "CPUExecutionProvider", started, kernels).status == "PASS"
    # the same session judged as if CUDA had been asked for: it started on the CPU
    check = gpu_check.placement_check("cuda", "CUDAExecutionProvider", started, kernels)
    assert check.status == "FAIL" and "not CUDAExecutionProvider" in check.detail


def test_placement_fails_on_compute_kernels_left_on_the_cpu():
    kernels = Counter({("CUDAExecutionProvider", "Add"): 3, ("CPUExecutionProvider", "MatMul"): 1})
    check = gpu_check.placement_check("cuda", "CUDAExecutionProvider", ["CUDAExecutionProvider"], kernels)
    assert check.status == "FAIL" and "MatMul" in check.detail and "3/4 kernels on CUDA" in check.detail
    shapes = Counter({("CUDAExecutionProvider", "MatMul"): 3, ("CPUExecutionProvider", "Shape"): 2})
    assert (
        gpu_check.placement_check("cuda", "CUDAExecutionProvider", ["CUDAExecutionProvider"], shapes).status == "PASS"
    )


class _Loop:
    """A graph whose output `state` is fed back, as VAR's cache; `keep` decides where it lives."""

    def __init__(self, keep):
        self.keep = keep

    def __contains__(self, name):
        return True

    def __call__(self, name, *, resident=(), **inputs):
        state = inputs["state"].value if isinstance(inputs["state"], Resident) else inputs["state"]
        return {"state": self.keep(state + 1), "logits": np.zeros(2)}


def _run(counter, steps=3):
    state = np.zeros(4, np.float32)
    for _ in range(steps):
        state = counter("step", state=state)["state"]


def test_feedback_counter_counts_host_round_trips():
    counter = gpu_check.FeedbackCounter(_Loop(lambda value: value))
    _run(counter)
    assert counter.summary()[:2] == (2, 2)  # the first input was the caller's, not fed back
    assert counter.host_bytes == 2 * 2 * 16
    assert gpu_check.residency_check("x", counter).status == "FAIL"


def test_feedback_counter_passes_values_that_stay_on_the_device():
    class OnDevice:  # an OrtValue's device_name(), without a GPU
        def __init__(self, value):
            self.value = value

        def __add__(self, other):
            return self.value + other

        def device_name(self):
            return "Cuda"

    counter = gpu_check.FeedbackCounter(_Loop(OnDevice))
    _run(counter)
    assert counter.summary()[:2] == (2, 0)
    assert gpu_check.residency_check("x", counter).status == "PASS"
    assert gpu_check.location(torch.zeros(1)) == "cpu"


def test_feedback_counter_passes_resident_values_on_the_device():
    def on_cuda(value):  # what OnnxComponents and TorchComponents return for a kept output on CUDA
        return Resident(value, value.shape, value.dtype, "cuda", ("step", "state"))

    counter = gpu_check.FeedbackCounter(_Loop(on_cuda))
    _run(counter)
    assert counter.summary() == (2, 0, "state 2x on cuda")
    assert gpu_check.residency_check("x", counter).status == "PASS"


def test_tokens_check_names_the_first_differing_scale():
    reference = np.arange(30).reshape(1, 30)
    assert gpu_check.tokens_check("t", reference.copy(), reference, [1, 2, 3, 4]).status == "PASS"
    tokens = reference.copy()
    tokens[0, 7] = -1  # position 7: scale 2 (starts 0, 1, 5, 14)
    check = gpu_check.tokens_check("t", tokens, reference, [1, 2, 3, 4])
    assert check.status == "FAIL" and "29/30" in check.detail and "scale 2 of 4" in check.detail


def test_training_result_reads_losses_notes_and_the_record():
    events = [
        {"event": "stage_end", "stage": "tokenizer", "metrics": {"loss": 0.5}},
        {"event": "stage_end", "stage": "transformer", "metrics": {"loss": 3.4}},
    ]
    session = {"precision": "bf16", "engine": "one process", "device": "cuda"}
    assert gpu_check.training_result("t", events, session, {"precision": "bf16"}, 1.0).status == "PASS"
    assert gpu_check.training_result("t", events, session, {"precision": "fp32"}, 1.0).status == "FAIL"
    nan = [{"event": "stage_end", "stage": "tokenizer", "metrics": {"loss": float("nan")}}]
    assert gpu_check.training_result("t", nan, session, {}, 1.0).status == "FAIL"
    fallback = [*events, {"event": "message", "text": "--compile: torch.compile failed (X); training eagerly"}]
    check = gpu_check.training_result("t", fallback, session, {}, 1.0)
    assert check.status == "FAIL" and "training eagerly" in check.detail


def test_check_lines_line_up():
    lines = [gpu_check.Check(name, status, "d").line() for name, status in (("a", "PASS"), ("longer name", "SKIP"))]
    assert [line.index("d", 6 + gpu_check.NAME_WIDTH) for line in lines] == [6 + gpu_check.NAME_WIDTH + 2] * 2
