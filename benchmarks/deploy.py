"""Helpers shared by the deploy benchmarks (bench_var_deploy.py, bench_image_deploy.py; they run
as `python benchmarks/X.py`, so this folder is on the import path): random state dicts in a
published layout made from a committed key list, `python -m zoo` child processes measured for
wall clock and peak memory, the CPU's name, image errors in uint8 levels."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

GiB = 2**30

# (key, shape, dtype, generator) -> the tensor to store under `key`
Fill = Callable[[str, list[int], torch.dtype, torch.Generator], torch.Tensor]


def read_key_list(path: Path) -> list[tuple[str, list[int], torch.dtype]]:
    """A committed key list, `key<TAB>shape<TAB>dtype` per line (shape `a,b,c`, empty for a
    scalar) -> (key, dims, dtype) in the file's order."""
    entries = []
    for line in path.read_text().splitlines():
        key, shape, dtype = line.split("\t")
        entries.append((key, [int(n) for n in shape.split(",") if n], getattr(torch, dtype)))
    return entries


def random_state_dict(key_list: Path, fill: Fill, seed: int) -> dict[str, torch.Tensor]:
    """The keys, shapes and dtypes of `key_list`, each filled by `fill` from one generator
    seeded with `seed` (the same file every time)."""
    generator = torch.Generator().manual_seed(seed)
    return {key: fill(key, dims, dtype, generator).to(dtype) for key, dims, dtype in read_key_list(key_list)}


def run_child(args: list[str]) -> tuple[float, float, str | None]:
    """Run `python -m zoo ARGS` on one thread: (seconds, peak RSS GiB, last error line or None)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    start = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "zoo", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - start
    peak = usage.ru_maxrss * 1024 / GiB  # Linux reports KiB
    lines = [line for line in output.splitlines() if line.strip()]
    error = None if process.returncode == 0 else (lines[-1] if lines else f"exit code {process.returncode}")
    return seconds, peak, error


def directory_gib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / GiB


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def image_errors(images: np.ndarray, reference: np.ndarray) -> tuple[int, float]:
    """Max and mean absolute difference of two uint8 image arrays, in uint8 levels (0..255)."""
    error = np.abs(images.astype(np.int16) - reference.astype(np.int16))
    return int(error.max()), float(error.mean())
