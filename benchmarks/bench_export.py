"""Speed of the exported graphs: torch eager vs onnxruntime fp32 vs int8, per component at
batch 1 and 16, and the whole sampling loop (`plugin.sample` vs `zoo.runtime` `.sample`).

    python benchmarks/bench_export.py                      # every installed model, fresh default weights
    python benchmarks/bench_export.py var --preset digits   # one model
    python benchmarks/bench_export.py --run runs/var        # a trained run
    python benchmarks/bench_export.py --plugin tests.exporter.tiny_export_plugin:TinyPlugin

Each timing is the median of --repeats runs after two warm-up runs, on the CPU provider,
with torch and onnxruntime both limited to --threads threads. Batch-16 inputs are the
component's `make_inputs(0)` repeated along every dynamic axis named `batch`;
components without one are timed at their traced size only.
Prints a markdown table per model and writes it to benchmarks/results/export_<model>.md.
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "plugins"), str(ROOT / "exporters")]

import numpy as np  # noqa: E402
import torch  # noqa: E402
from timing import median_seconds

import zoo  # noqa: E402
import zoo.runtime  # noqa: E402
from zoo.config import validate  # noqa: E402
from zoo.errors import first_line  # noqa: E402
from zoo.plugin import Component, ModelPlugin  # noqa: E402
from zoo.runtime.resident import Resident  # noqa: E402
from zoo_onnx import export_model  # noqa: E402

BATCHES = (1, 16)
RESULTS = ROOT / "benchmarks" / "results"


class MergedComponents:
    """Components taken from several loaded exports (one per component), by name."""

    def __init__(self, exports: dict[str, zoo.runtime.LoadedExport]) -> None:
        self.exports = exports

    def __contains__(self, name: str) -> bool:
        return name in self.exports

    def __call__(self, name: str, **inputs: Any) -> dict[str, Any]:
        return self.exports[name].components(name, **inputs)

    def to_host(self, value: Any) -> np.ndarray:
        if isinstance(value, Resident):  # fetched (and counted) by the export that made it
            return self.exports[value.source[0]].components.to_host(value)
        return value


def batched_inputs(component: Component, batch: int) -> dict[str, torch.Tensor] | None:
    """make_inputs(0) with every axis named `batch` resized to `batch` (rows repeated), or
    None if the component has no batch axis (then only its traced size is timed)."""
    inputs = component.make_inputs(0)
    batch_axes = [
        (name, axis)
        for name in component.input_names
        for axis, axis_name in component.dynamic_axes.get(name, {}).items()
        if axis_name == "batch"
    ]
    if not batch_axes:
        return inputs if batch == 1 else None
    for name, axis in batch_axes:
        rows = torch.arange(batch) % inputs[name].shape[axis]
        inputs[name] = inputs[name].index_select(axis, rows)
    return inputs


def milliseconds(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds * 1e3:.2f}"


def speedup(reference: float | None, other: float | None) -> str:
    return "n/a" if reference is None or other is None else f"{reference / other:.2f}x"


def worst_error(manifest: dict, component: str) -> str:
    worst = 0.0
    for run in manifest["components"][component]["validation"]:
        for errors in run["outputs"].values():
            worst = max(worst, errors.get("max_rel_error") or errors.get("mismatch_fraction") or 0.0)
    return f"{worst:.1e}"


def bench_model(
    label: str, plugin: ModelPlugin, config: zoo.ZooConfig, model: torch.nn.Module, args: argparse.Namespace
) -> str:
    model.eval()
    options = validate(plugin.SampleOptions, json.loads(args.sample_options), what="sample option")
    lines = [f"## {label}", ""]
    with tempfile.TemporaryDirectory() as scratch:
        start = time.perf_counter()
        fp32_manifest = export_model(plugin, model, config, Path(scratch) / "fp32", precision="fp32")
        fp32_seconds = time.perf_counter() - start
        fp32 = zoo.runtime.load(
            Path(scratch) / "fp32", provider="cpu", intra_op_threads=args.threads, inter_op_threads=1
        )
        # int8 one component at a time: a component whose int8 error exceeds the bound is
        # reported (and runs at fp32 in the int8 sampling loop) instead of hiding the rest.
        int8, int8_manifests, int8_failures, int8_seconds = {}, {}, {}, 0.0
        for name in fp32_manifest["components"]:
            start = time.perf_counter()
            try:
                int8_manifests[name] = export_model(
                    plugin, model, config, Path(scratch) / f"int8_{name}", precision="int8", components=[name]
                )
                int8[name] = zoo.runtime.load(
                    Path(scratch) / f"int8_{name}", provider="cpu", intra_op_threads=args.threads, inter_op_threads=1
                )
            except zoo.ZooError as error:
                int8_failures[name] = str(error)
            int8_seconds += time.perf_counter() - start
        lines += [
            f"Export: fp32 {fp32_seconds:.1f} s, int8 {int8_seconds:.1f} s (opset {fp32_manifest['opset']}). "
            f"Times in ms, median of {args.repeats}; max rel error = max |onnx - torch| / max |torch| over the "
            "validation inputs (fraction of differing elements for integer outputs).",
            "",
            "| component | batch | torch eager | ort fp32 | ort int8 | fp32 speed-up | int8 speed-up | fp32 max rel error | int8 max rel error |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for component in plugin.export_components(model, config):
            for batch in BATCHES:
                inputs = batched_inputs(component, batch)
                if inputs is None:
                    continue
                arrays = {name: tensor.numpy() for name, tensor in inputs.items()}
                args_in_order = [inputs[name] for name in component.input_names]

                def eager() -> None:
                    with torch.inference_mode():
                        component.module(*args_in_order)

                timings = {"torch": median_seconds(eager, args.repeats)}
                timings["fp32"] = median_seconds(lambda: fp32.components(component.name, **arrays), args.repeats)
                timings["int8"] = None
                if component.name in int8:
                    components = int8[component.name].components
                    timings["int8"] = median_seconds(lambda: components(component.name, **arrays), args.repeats)
                int8_error = (
                    worst_error(int8_manifests[component.name], component.name)
                    if component.name in int8
                    else "fails the bound"
                )
                lines.append(
                    f"| {component.name} | {batch} | {milliseconds(timings['torch'])} | {milliseconds(timings['fp32'])} | "
                    f"{milliseconds(timings['int8'])} | {speedup(timings['torch'], timings['fp32'])} | "
                    f"{speedup(timings['torch'], timings['int8'])} | {worst_error(fp32_manifest, component.name)} | "
                    f"{int8_error} |"
                )
        merged = MergedComponents({name: int8.get(name, fp32) for name in fp32_manifest["components"]})
        int8_runtime = type(fp32.runtime)(merged, fp32.config, fp32.runtime.arrays, fp32.runtime.files)
        loop_repeats = args.loop_repeats
        torch_loop = median_seconds(lambda: plugin.sample(model, config, options, torch.device("cpu")), loop_repeats, 1)
        fp32_loop = median_seconds(lambda: fp32.sample(options), loop_repeats, 1)
        int8_loop = median_seconds(lambda: int8_runtime.sample(options), loop_repeats, 1)
        mixed = f" ({', '.join(int8_failures)} at fp32)" if int8_failures else ""
        lines += [
            "",
            f"Sampling loop ({options.model_dump()}), median of {loop_repeats}; plugin.sample builds its torch "
            "components on every call, as `zoo sample` does; the loaded exports' sessions are open already:",
            "",
            "| engine | ms | speed-up |",
            "| --- | ---: | ---: |",
            f"| torch eager (plugin.sample) | {milliseconds(torch_loop)} | 1.00x |",
            f"| onnxruntime fp32 (zoo.runtime) | {milliseconds(fp32_loop)} | {speedup(torch_loop, fp32_loop)} |",
            f"| onnxruntime int8{mixed} | {milliseconds(int8_loop)} | {speedup(torch_loop, int8_loop)} |",
        ]
        for name, message in int8_failures.items():
            lines += ["", f"int8 {name}: {message}"]
    return "\n".join(lines) + "\n"


def machine_note(threads: int) -> str:
    import onnxruntime

    return (
        f"Machine: {platform.machine()} {platform.processor() or ''}, torch {torch.__version__}, onnxruntime "
        f"{onnxruntime.__version__}, CPU provider, {threads} thread(s) for torch and onnxruntime.\n"
    )


def load_targets(args: argparse.Namespace) -> list[tuple[str, Callable[[], tuple]]]:
    """(label, builder) pairs; a builder returns (plugin, config, model)."""
    if args.plugin:
        module_name, _, attr = args.plugin.partition(":")

        def build_plugin() -> tuple:
            plugin = getattr(importlib.import_module(module_name), attr)()
            config = plugin.Config()
            return plugin, config, plugin.build(config)

        return [(getattr(importlib.import_module(module_name), attr).name, build_plugin)]
    if args.run:

        def build_run() -> tuple:
            run = zoo.load_run(args.run, device="cpu")
            return run.plugin, run.config, run.model

        return [(f"{Path(args.run).name} (run)", build_run)]
    names = args.models or zoo.list_models()
    return [(name, lambda name=name: zoo.create_model(name, args.preset)) for name in names]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="*", help="model names (default: every installed model)")
    parser.add_argument("--preset", default=None, help="preset for freshly built models")
    parser.add_argument("--run", type=Path, help="a run directory to benchmark instead of fresh weights")
    parser.add_argument("--plugin", help="'module:Class' of a ModelPlugin that is not registered")
    parser.add_argument("--repeats", type=int, default=20, help="timed runs per measurement")
    parser.add_argument("--loop-repeats", type=int, default=5, help="timed runs of the whole sampling loop")
    parser.add_argument("--threads", type=int, default=1, help="threads for torch and onnxruntime")
    parser.add_argument("--sample-options", default="{}", help="JSON of sample options for the loop timing")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    RESULTS.mkdir(parents=True, exist_ok=True)
    for label, build in load_targets(args):
        try:
            plugin, config, model = build()
            table = bench_model(label, plugin, config, model, args)
        except Exception as error:  # one model failing must not hide the others' figures
            traceback.print_exc(limit=3)
            table = f"## {label}\n\nfailed: {first_line(error, with_type=True)}\n"
        text = f"# Export benchmark: {label}\n\n{machine_note(args.threads)}\n{table}"
        print(text)
        (RESULTS / f"export_{label.split()[0]}.md").write_text(text)


if __name__ == "__main__":
    main()
