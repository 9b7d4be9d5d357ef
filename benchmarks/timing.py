"""Timing shared by the benchmark scripts (they run as `python benchmarks/X.py`, so this
folder is on the import path)."""

from __future__ import annotations

import signal
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager


def median_seconds(run: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall-clock seconds of `repeats` calls, after `warmup` calls that are not timed."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


class OverTime(BaseException):
    """A call ran past its `time_cap`. A BaseException, so an `except Exception` inside the
    interrupted code (zoo.scale's eager fallback around a compiled block) lets it through."""


@contextmanager
def time_cap(seconds: float) -> Iterator[None]:
    """Raise OverTime inside the block once `seconds` have passed (SIGALRM; main thread only).
    Python sees the signal between two bytecodes, so a torch module stops at its next op; a
    single long C call (one onnxruntime `run`) ends first."""

    def interrupt(signum: int, frame: object) -> None:
        raise OverTime(f"over {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
