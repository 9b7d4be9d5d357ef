"""VAR benchmark: train the default preset, evaluate it, time sampling with and without the
KV cache (digits preset and a d12-sized model), and compare torch, onnxruntime and int8.

    python benchmarks/bench_var.py                    # train `digits` from scratch (one thread)
    python benchmarks/bench_var.py --run runs/var     # reuse a trained run: skip training

Component and loop timings are medians of --repeats runs after a warm-up; sampling
latencies are means of --repeats calls (2 at d12) after a warm-up. torch and onnxruntime
run on one thread, CPU provider. Prints markdown tables and writes them to benchmarks/results/var.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "plugins"), str(ROOT / "exporters")]

import numpy as np  # noqa: E402
import torch  # noqa: E402
from report import Report, table, validation_errors
from timing import median_seconds

import zoo.api  # noqa: E402
import zoo.runtime  # noqa: E402
from zoo.config import resolve  # noqa: E402
from zoo.data import DigitsClassifier  # noqa: E402
from zoo.torch_components import TorchComponents  # noqa: E402
from zoo_onnx import export_model  # noqa: E402
from zoo_var.config import PRESETS, SampleOptions, VARConfig  # noqa: E402
from zoo_var.plugin import VARPlugin  # noqa: E402
from zoo_var.scales import scale_starts  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "var.md"

# A d12-sized transformer (width 768, 12 heads) on the paper's 256px token pyramid
# (patch_nums 1..16, 4096 codes, code_dim 32). Random weights: only latency is measured, and
# a slim tokenizer keeps the 256px decoder from hiding the transformer's share.
D12 = {
    "transformer": {"depth": 12},
    "tokenizer": {"channels": 16, "res_blocks": 1, "attention_resolutions": [], "mid_attention": False},
}


class TimedComponents:
    """Components that add up the seconds spent in each graph."""

    def __init__(self, inner) -> None:
        self.inner, self.seconds = inner, defaultdict(float)

    def __contains__(self, name: str) -> bool:
        return name in self.inner

    def __call__(self, name: str, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        start = time.perf_counter()
        out = self.inner(name, **inputs)
        self.seconds[name.split("_")[0] if name.startswith("embed_") else name] += time.perf_counter() - start
        return out


def train_digits(run_dir: Path) -> tuple[zoo.api.Run, str]:
    start = time.perf_counter()
    run = zoo.api.train("var", run_dir=run_dir, device="cpu", log_every=50)
    total = time.perf_counter() - start
    return run, training_table(
        run
    ) + f"\n\nBoth stages, wall clock (incl. data encoding, validation, sample grid): {total:.0f} s."


def training_table(run: zoo.api.Run) -> str:
    """Per stage: steps, seconds, images/s and the logged loss, from the run's metrics.jsonl."""
    rows = [json.loads(line) for line in (run.run_dir / "metrics.jsonl").read_text().splitlines()]
    config = run.config
    batches = {"tokenizer": config.tokenizer_training.batch_size, "transformer": config.transformer_training.batch_size}
    out = []
    for end in (r for r in rows if r.get("event") == "end"):
        stage = end["stage"]
        losses = [r for r in rows if r.get("stage") == stage and "loss" in r]
        out.append(
            [
                stage,
                end["step"],
                batches[stage],
                f"{end['seconds']:.0f}",
                f"{end['step'] * batches[stage] / end['seconds']:.0f}",
                f"{losses[0]['loss']:.3f} -> {losses[-1]['loss']:.3f}",
            ]
        )
    return table(["stage", "steps", "batch", "seconds", "images/s", "loss first -> last log"], out)


def evaluate(run: zoo.api.Run) -> tuple[dict[str, float], str]:
    start = time.perf_counter()
    metrics = run.plugin.evaluate(run.model, run.config, torch.device("cpu"))
    seconds = time.perf_counter() - start
    keys = ["tokenizer_psnr", "codebook_usage", "token_accuracy", "token_nll", "sample_accuracy"]
    rows = [[key, f"{metrics[key]:.4f}"] for key in keys]
    per_class = ", ".join(
        f"{d}: {metrics[f'sample_accuracy_{d}']:.2f}" for d in range(10) if f"sample_accuracy_{d}" in metrics
    )
    return metrics, table(
        ["metric (held-out digits)", "value"], rows
    ) + f"\n\nPer class: {per_class}. ({seconds:.0f} s)"


def sampling_latency(
    plugin: VARPlugin, model, config: VARConfig, options: dict, repeats: int
) -> dict[str, dict[str, float]]:
    """Mean seconds of one `sample` call (after a warm-up call), with and without the KV
    cache, and the part of it spent in each graph."""
    components = TorchComponents(plugin.export_components(model, config), torch.device("cpu"))
    assets = plugin.export_assets(model, config)
    results = {}
    for kv_cache in (True, False):
        timed = TimedComponents(components)
        runtime = plugin.runtime_class()(timed, config.model_dump(mode="json"), assets.arrays, assets.files)
        sample_options = SampleOptions(**options, kv_cache=kv_cache)
        runtime.sample(sample_options)  # warm-up
        timed.seconds.clear()
        start = time.perf_counter()
        for _ in range(repeats):
            runtime.sample(sample_options)
        results["cached" if kv_cache else "full"] = {
            "total": (time.perf_counter() - start) / repeats,
            **{name: seconds / repeats for name, seconds in timed.seconds.items()},
        }
    return results


def token_ratio(config: VARConfig) -> float:
    """Token positions the full recompute runs through the transformer over those the cache
    runs: sum over scales of the prefix length, over L. Linear layers dominate the cost,
    so this bounds the KV cache's speed-up (plus a little from attention's quadratic term)."""
    ends = scale_starts(config.tokenizer.patch_nums)[1:]
    return sum(ends) / ends[-1]


def latency_rows(name: str, results: dict[str, dict[str, float]], config: VARConfig) -> list[list[object]]:
    cached, full = results["cached"], results["full"]
    bound = f"{token_ratio(config):.2f}x"
    return [
        [
            name,
            "whole sample",
            f"{cached['total'] * 1e3:.0f}",
            f"{full['total'] * 1e3:.0f}",
            f"{full['total'] / cached['total']:.2f}x",
            bound,
        ],
        [
            name,
            "transformer steps",
            f"{cached['transformer_step'] * 1e3:.0f}",
            f"{full['transformer_step'] * 1e3:.0f}",
            f"{full['transformer_step'] / cached['transformer_step']:.2f}x",
            bound,
        ],
    ]


def engines(run: zoo.api.Run, workdir: Path, repeats: int) -> str:
    """Per component: torch eager vs onnxruntime fp32 vs int8 (ms at validation size 1),
    export errors, and the whole greedy sample loop on each engine."""
    plugin, model, config = run.plugin, run.model, run.config
    exports, manifests = {}, {}
    for precision in ("fp32", "int8"):
        start = time.perf_counter()
        manifests[precision] = export_model(plugin, model, config, workdir / precision, precision=precision)
        exports[precision] = (
            zoo.runtime.load(workdir / precision, provider="cpu", intra_op_threads=1),
            time.perf_counter() - start,
        )
    rows = []
    for component in plugin.export_components(model, config):
        inputs = component.make_inputs(1)
        args = [inputs[name] for name in component.input_names]
        numpy_inputs = {name: value.numpy() for name, value in inputs.items()}
        module = component.module.eval()
        with torch.inference_mode():
            torch_ms = median_seconds(lambda: module(*args), repeats) * 1e3
        cells = [component.name, f"{torch_ms:.2f}"]
        for precision in ("fp32", "int8"):
            loaded = exports[precision][0]
            seconds = median_seconds(lambda: loaded.components(component.name, **numpy_inputs), repeats)
            cells += [f"{seconds * 1e3:.2f}", worst_error(manifests[precision], component.name)]
        rows.append(cells)
    text = table(["component", "torch ms", "ort fp32 ms", "fp32 error", "ort int8 ms", "int8 error"], rows)

    options = SampleOptions(top_k=1)
    reference = plugin.sample(model, config, options, torch.device("cpu"))
    classifier = DigitsClassifier()
    sample_rows = [
        [
            "torch",
            f"{median_seconds(lambda: plugin.sample(model, config, options, torch.device('cpu')), repeats) * 1e3:.0f}",
            "1.000",
            f"{_accuracy(classifier, reference):.3f}",
            "-",
        ]
    ]
    for precision in ("fp32", "int8"):
        loaded, export_seconds = exports[precision]
        output = loaded.sample(options)
        agreement = (output.extras["tokens"] == reference.extras["tokens"]).mean()
        sample_rows.append(
            [
                f"onnxruntime {precision}",
                f"{median_seconds(lambda: loaded.sample(options), repeats) * 1e3:.0f}",
                f"{agreement:.3f}",
                f"{_accuracy(classifier, output):.3f}",
                f"{export_seconds:.0f}",
            ]
        )
    text += "\n\nGreedy sampling (top_k 1, 10 classes x 8 images), whole loop:\n\n" + table(
        ["engine", "ms", "tokens equal to torch", "sample accuracy", "export + validation s"], sample_rows
    )
    return text


def worst_error(manifest: dict, component: str) -> str:
    """Max abs error of float outputs, share of differing integer outputs (token indices)."""
    floats, integers = validation_errors(manifest, component)
    return ", ".join(
        [
            *([f"{floats:.1e}"] if floats is not None else []),
            *([f"{integers:.1%} differ"] if integers is not None else []),
        ]
    )


def _accuracy(classifier: DigitsClassifier, output) -> float:
    images = output.images.transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1.0
    return float((classifier.predict(images) == output.extras["labels"]).mean())


def non_dividing_export(workdir: Path) -> str:
    """The paper's pyramid needs area downsampling 16 -> 13, 10, 6, 5, 3: export the
    encoder and the embed graphs of a d12-sized config and report their errors."""
    plugin = VARPlugin()
    config = resolve(VARConfig, PRESETS["d16"], overrides=D12)
    torch.manual_seed(0)
    model = plugin.build(config).eval()
    names = ["encoder", *(f"embed_{k}" for k in range(len(config.tokenizer.patch_nums)))]
    start = time.perf_counter()
    manifest = export_model(plugin, model, config, workdir / "pyramid", components=names)
    rows = []
    for name in names:
        rows.append([name, worst_error(manifest, name)])
    return f"Exported in {time.perf_counter() - start:.0f} s (dynamo exporter, explicit pooling matrices):\n\n" + table(
        ["component (patch_nums 1..16)", "max error vs torch"], rows
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="a trained var run directory to reuse (skips training)")
    parser.add_argument("--train-dir", type=Path, help="where to train (default: a temporary directory)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-d12", action="store_true", help="skip the d12-sized latency rows")
    args = parser.parse_args()
    torch.set_num_threads(1)
    report = Report(
        RESULTS,
        f"# VAR benchmark\n\nMachine: {platform.machine()} {platform.processor()}, "
        f"torch {torch.__version__}, 1 thread for torch and onnxruntime (CPU provider); the machine was "
        "shared with other jobs, so wall-clock figures are upper bounds.",
    )

    with tempfile.TemporaryDirectory(prefix="bench-var-") as scratch:
        workdir = Path(scratch)
        if args.run is None:
            run, text = train_digits(args.train_dir or workdir / "run")
            report.add("## Training the `digits` preset\n\n" + text)
        else:
            run = zoo.api.load_run(args.run, device="cpu")
            report.add(f"## Training the `digits` preset (run {args.run})\n\n" + training_table(run))

        _, text = evaluate(run)
        report.add("## Evaluation (`evaluate`, default sample options: cfg 4, top-k 900, top-p 0.96)\n\n" + text)

        plugin = VARPlugin()
        rows = latency_rows(
            "digits (10 classes x 8)", sampling_latency(plugin, run.model, run.config, {}, args.repeats), run.config
        )
        if not args.skip_d12:
            config = resolve(VARConfig, PRESETS["d16"], overrides=D12)
            torch.manual_seed(0)
            model = plugin.build(config).eval()
            size = model.transformer_parameter_count() / 1e6
            # At batch 1 the small scales are matrix-vector products bound by streaming the
            # weights; batch 8 shows whether more rows per step change the ratio.
            for batch in (1, 8):
                results = sampling_latency(plugin, model, config, {"classes": list(range(batch)), "n": 1}, 2)
                rows += latency_rows(f"d12 ({size:.0f}M, 680 tokens, batch {batch})", results, config)
        report.add(
            "## Sampling latency, KV cache vs full recompute (torch, ms)\n\n"
            + table(["model", "part", "cached", "full recompute", "speed-up", "token ratio"], rows)
            + "\n\n`token ratio`: positions the full recompute runs (the sum of every step's prefix) "
            "over the L the cache runs, the speed-up's bound when linear layers dominate."
        )

        report.add(
            "## torch vs onnxruntime vs int8 (digits, per call at validation size 1)\n\n"
            + engines(run, workdir / "exports", args.repeats)
        )
        report.add("## Area downsampling to non-dividing sizes exports\n\n" + non_dividing_export(workdir))

    report.write()


if __name__ == "__main__":
    main()
