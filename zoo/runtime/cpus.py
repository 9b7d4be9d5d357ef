"""The CPUs this process may run on (torch-free): what thread and worker defaults divide."""

from __future__ import annotations

import os


def available_cpus() -> int:
    """The CPUs in this process's affinity mask (a container's or `taskset`'s share), not the
    machine's count that `os.cpu_count()` gives."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1
