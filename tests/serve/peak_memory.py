"""Run as a script: `python peak_memory.py EXPORT_DIR WARM_UP_JSON < OPTIONS_JSON` loads the
export, samples once with the warm-up options (so that onnxruntime's lazy set-up is not
counted), then samples with the options read from stdin and prints JSON: the loop's estimate and the measured rise of resident memory
(Linux's VmHWM, reset through /proc/self/clear_refs just before the request)."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def resident(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def main() -> None:
    import zoo.runtime

    export_dir, warm_up = sys.argv[1], json.loads(sys.argv[2])
    loaded = zoo.runtime.load(export_dir, provider="cpu", intra_op_threads=1)
    options = loaded.options_class.model_validate(json.load(sys.stdin))
    loaded.sample(loaded.options_class.model_validate(warm_up))
    cost = loaded.runtime.cost(options)
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    before = resident("VmRSS")
    loaded.sample(options)
    peak = resident("VmHWM")
    print(json.dumps({"estimate": cost.peak_bytes if cost else None, "measured": peak - before}))


if __name__ == "__main__":
    main()
