"""VQ-VAE-2 + PixelCNN benchmark: train the default preset (digits32) through the trainer,
evaluate it, and time sampling naive vs fast at batch 1 and 64 on torch and onnxruntime.

    python benchmarks/bench_vqvae2_pixelcnn.py                        # train from scratch (one thread)
    python benchmarks/bench_vqvae2_pixelcnn.py --run /tmp/vqvae2_run  # reuse a trained run

"naive" recomputes the whole code map for every position; "fast" computes each row's
vertical part once and each position's horizontal part once (PixelCNNPrior.row/.step).
The same timings are taken at the cifar32 preset's sizes with random weights. Timings are
medians of --repeats runs after one warm-up (one run at batch 64 naive), torch and
onnxruntime on one thread, CPU provider. Prints markdown tables and writes them to
benchmarks/results/vqvae2_pixelcnn.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "plugins"), str(ROOT / "exporters")]

import numpy as np  # noqa: E402
import onnxruntime  # noqa: E402
import torch  # noqa: E402
from report import Report, table, validation_errors
from timing import median_seconds

import zoo.api  # noqa: E402
import zoo.runtime  # noqa: E402
from zoo.config import resolve  # noqa: E402
from zoo_onnx import export_model  # noqa: E402
from zoo_vqvae2_pixelcnn.config import PRESETS, VQVAE2Config, VQVAE2SampleOptions  # noqa: E402
from zoo_vqvae2_pixelcnn.plugin import VQVAE2PixelCNNPlugin  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "vqvae2_pixelcnn.md"
CPU = torch.device("cpu")


def once(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def train(run_dir: Path, assignments: list[str]) -> tuple[zoo.api.Run, str]:
    start = time.perf_counter()
    run = zoo.api.train("vqvae2_pixelcnn", run_dir=run_dir, assignments=assignments, device="cpu", log_every=50)
    total = time.perf_counter() - start
    return run, training_table(
        run
    ) + f"\n\nAll three stages, wall clock (incl. code extraction, validation, sample grid): {total:.0f} s."


def training_table(run: zoo.api.Run) -> str:
    rows = [json.loads(line) for line in (run.run_dir / "metrics.jsonl").read_text().splitlines()]
    out = []
    for end in (r for r in rows if r.get("event") == "end"):
        stage = end["stage"]
        spec = getattr(run.config.training, stage)
        logged = [r for r in rows if r.get("stage") == stage and "loss" in r]
        validation = [r["val_loss"] for r in rows if r.get("stage") == stage and "val_loss" in r]
        out.append(
            [
                stage,
                end["step"],
                spec.batch_size,
                f"{end['seconds']:.0f}",
                f"{statistics.mean(r['images_per_s'] for r in logged):.0f}",
                f"{logged[0]['loss']:.4f} -> {logged[-1]['loss']:.4f}",
                f"{min(validation):.4f}" if validation else "-",
            ]
        )
    return table(
        ["stage", "steps", "batch", "seconds", "images/s", "loss first -> last log", "best held-out loss"], out
    )


def evaluate(run: zoo.api.Run) -> tuple[dict[str, float], str]:
    start = time.perf_counter()
    metrics = run.evaluate()
    seconds = time.perf_counter() - start
    rows = [[key, f"{value:.4f}"] for key, value in metrics.items()]
    return metrics, table(
        ["metric (held-out digits; samples: 100, fast path, seed 0)", "value"], rows
    ) + f"\n\n({seconds:.0f} s)"


def sampling(
    plugin: VQVAE2PixelCNNPlugin, model: torch.nn.Module, config: VQVAE2Config, export_dir: Path, repeats: int
) -> str:
    """Seconds per image, naive vs fast, batch 1 and 64, torch and onnxruntime."""
    loaded = zoo.runtime.load(export_dir, provider="cpu", intra_op_threads=1, inter_op_threads=1)
    engines = {
        "torch": lambda options: plugin.sample(model, config, options, CPU),
        "onnxruntime": loaded.sample,
    }
    rows = []
    for engine, sample in engines.items():
        for batch in (1, 64):
            seconds = {}
            for naive in (True, False):
                options = VQVAE2SampleOptions(n=batch, seed=0, naive=naive)
                if naive and batch > 1:
                    seconds[naive] = once(lambda: sample(options))
                else:
                    seconds[naive] = median_seconds(lambda: sample(options), repeats)
            rows.append(
                [
                    engine,
                    batch,
                    f"{seconds[True] / batch * 1e3:.1f}",
                    f"{seconds[False] / batch * 1e3:.2f}",
                    f"{seconds[True] / seconds[False]:.1f}x",
                ]
            )
    return table(["engine", "batch", "naive ms/image", "fast ms/image", "speed-up"], rows)


def reference_sizes(workdir: Path, repeats: int) -> str:
    """The same timings for the cifar32 preset's sizes (random weights: only latency counts)."""
    plugin = VQVAE2PixelCNNPlugin()
    config = resolve(VQVAE2Config, PRESETS["cifar32"])
    torch.manual_seed(0)
    model = plugin.build(config).eval()
    export_dir = workdir / "cifar32"
    sampled = [name for name in plugin.component_names(config) if name != "encoder"]
    export_model(plugin, model, config, export_dir, components=sampled)
    parameters = sum(p.numel() for p in model.prior_bottom.parameters()) / 1e6
    return (
        f"cifar32 sizes (channel 128, codebooks of 512 codes of dim 64, 15 gated blocks per prior: {parameters:.1f} M "
        "parameters in the bottom prior), random weights:\n\n" + sampling(plugin, model, config, export_dir, repeats)
    )


def parity(run: zoo.api.Run, export_dir: Path, manifest: dict) -> str:
    loaded = zoo.runtime.load(export_dir, provider="cpu", intra_op_threads=1)
    options = VQVAE2SampleOptions(n=20, seed=0, top_k=1)
    reference = run.plugin.sample(run.model, run.config, options, CPU)
    output = loaded.sample(options)
    sampled = VQVAE2SampleOptions(n=20, seed=1)
    sampled_equal = all(
        (loaded.sample(sampled).extras[k] == run.plugin.sample(run.model, run.config, sampled, CPU).extras[k]).all()
        for k in ("top_codes", "bottom_codes")
    )
    rows = [
        [
            f"{(output.extras['top_codes'] == reference.extras['top_codes']).mean():.3f}",
            f"{(output.extras['bottom_codes'] == reference.extras['bottom_codes']).mean():.3f}",
            np.abs(output.images.astype(int) - reference.images.astype(int)).max(),
            "yes" if sampled_equal else "no",
        ]
    ]
    text = table(
        [
            "greedy top codes equal",
            "greedy bottom codes equal",
            "max image difference (0-255)",
            "seeded (temperature 1) codes equal",
        ],
        rows,
    )
    errors = []
    for name in manifest["components"]:
        floats, integers = validation_errors(manifest, name)
        errors.append(
            [name, "-" if floats is None else f"{floats:.1e}", "-" if integers is None else f"{integers:.1%}"]
        )
    return (
        text
        + "\n\nExport validation (onnxruntime vs torch, batch 3 and 4):\n\n"
        + table(["component", "max abs error (float outputs)", "differing codes (integer outputs)"], errors)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="a trained run directory to reuse (skips training)")
    parser.add_argument(
        "--out", type=Path, default=Path(tempfile.gettempdir()) / "zoo_bench_vqvae2", help="run directory for training"
    )
    parser.add_argument("--set", dest="assignments", action="append", default=[], help="config override key=value")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)

    report = Report(
        RESULTS,
        f"# VQ-VAE-2 + PixelCNN benchmark (digits32)\n\nMachine: {platform.machine()}, "
        f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, CPU provider, 1 thread for torch "
        "and onnxruntime; the machine's 2 cores were shared with other jobs, so timings are noisy.",
    )
    if args.run:
        run = zoo.api.load_run(args.run, device="cpu")
        report.add("## Training\n\n" + training_table(run) + f"\n\n(reused run {args.run})")
    else:
        if args.out.exists():
            raise SystemExit(f"{args.out} exists; pass --run {args.out} to reuse it or another --out")
        run, text = train(args.out, args.assignments)
        report.add("## Training (`zoo train vqvae2_pixelcnn`, one thread)\n\n" + text)

    metrics, text = evaluate(run)
    report.add("## Evaluation\n\n" + text)

    with tempfile.TemporaryDirectory() as workdir:
        export_dir = Path(workdir) / "export"
        start = time.perf_counter()
        manifest = export_model(run.plugin, run.model, run.config, export_dir)
        export_seconds = time.perf_counter() - start
        report.add(
            "## Sampling time per image\n\ndigits32, the trained run:\n\n"
            + sampling(run.plugin, run.model, run.config, export_dir, args.repeats)
        )
        report.add(reference_sizes(Path(workdir), args.repeats))
        report.add(
            f"## torch vs onnxruntime\n\nExport of {len(manifest['components'])} components with validation: "
            f"{export_seconds:.0f} s.\n\n" + parity(run, export_dir, manifest)
        )

    report.write()


if __name__ == "__main__":
    main()
