"""quantart: training speed per stage, evaluate() of the trained tiny preset, and
stylisation latency per image at 64 and 256 px, torch eager vs onnxruntime.

    python benchmarks/bench_quantart.py                          # train tiny, then everything
    python benchmarks/bench_quantart.py --run runs/quantart       # reuse a trained run
    python benchmarks/bench_quantart.py --set training.transfer.steps=200   # shorter training

Latency is the `stylize` graph (content + style image -> stylised image, batch 1) of the
trained tiny model, fed held-out photos/textures resized to each side (the model is fully
convolutional); median of --repeats runs after two warm-ups, torch and onnxruntime both
limited to --threads threads. Prints markdown and writes benchmarks/results/quantart.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "plugins"), str(ROOT / "exporters")]

import numpy as np  # noqa: E402
import torch  # noqa: E402
from report import Report, validation_errors  # noqa: E402
from timing import median_seconds  # noqa: E402

import zoo.api  # noqa: E402
import zoo.runtime  # noqa: E402
from zoo.runtime.images import square_resize  # noqa: E402
from zoo_onnx import export_model  # noqa: E402
from zoo_quantart.data import content_images, stack_images, style_images  # noqa: E402
from zoo_quantart.evaluation import evaluate_pairs  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "quantart.md"
SIDES = (64, 256)
BALANCES = [(c, f) for c in (0.0, 0.5, 0.75, 1.0) for f in (0.0, 1.0)]  # (content-style, fidelity)
STYLE_RATIO_TARGET, SSIM_TARGET = 0.5, 0.4  # the bar for the trained tiny preset


def training_speed(run_dir: Path) -> list[dict]:
    """Per stage: mean images/s over the logged windows and wall seconds, from metrics.jsonl."""
    rates, seconds = defaultdict(list), {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row.get("event") == "end":
            seconds[row["stage"]] = row["seconds"]
        elif "images_per_s" in row:
            rates[row["stage"]].append(row["images_per_s"])
    return [
        {"stage": stage, "images_per_s": statistics.mean(values), "seconds": seconds.get(stage)}
        for stage, values in rates.items()
    ]


def held_out_pair(config, side: int) -> dict[str, np.ndarray]:
    """One held-out content photo and style texture at `side` px, as the stylize graph's inputs."""
    from PIL import Image

    def resized(dataset) -> np.ndarray:
        image = stack_images(dataset, 1)[0].permute(1, 2, 0).numpy()
        uint8 = ((image + 1) * 127.5).clip(0, 255).astype(np.uint8)
        return (square_resize(Image.fromarray(uint8), side).astype(np.float32) / 127.5 - 1).transpose(2, 0, 1)[None]

    return {
        "content": resized(content_images(config, "test", 1)),
        "style": resized(style_images(config, "test", 1)),
        "content_style_balance": np.ones(1, np.float32),
        "fidelity_balance": np.ones(1, np.float32),
    }


def latency(run, loaded, side: int, repeats: int) -> dict:
    inputs = held_out_pair(run.config, side)
    tensors = [torch.from_numpy(value) for value in inputs.values()]
    with torch.inference_mode():
        torch_ms = median_seconds(lambda: run.model.stylize(*tensors), repeats, warmup=2) * 1e3
        expected = run.model.stylize(*tensors).numpy()
    onnx_ms = median_seconds(lambda: loaded.components("stylize", **inputs), repeats, warmup=2) * 1e3
    actual = loaded.components("stylize", **inputs)["images"]
    error = np.abs(actual - expected)
    return {
        "side": side,
        "torch_ms": torch_ms,
        "onnx_ms": onnx_ms,
        "max_abs_error": float(error.max()),
        "mean_abs_error": float(error.mean()),
    }


def balance_sweep(run) -> list[dict]:
    """Style distance ratio and content SSIM over the two inference knobs."""
    rows = []
    for content_style, fidelity in BALANCES:
        scores = evaluate_pairs(run.model, run.config, torch.device("cpu"), content_style, fidelity)
        rows.append({"content_style": content_style, "fidelity": fidelity, **scores})
    return rows


def markdown(
    speed, metrics, sweep, latencies, manifest, export_seconds, train_seconds, train_threads, precision, threads
) -> str:
    lines = [
        "# quantart benchmark",
        "",
        f"Machine: {platform.machine()}, torch {torch.__version__}, {threads} thread(s) for torch and onnxruntime "
        "(CPU provider); the machine may have been shared with other jobs, so absolute times are upper bounds.",
        "",
        "## Training (tiny preset)",
        "",
        "| stage | images/s | seconds |",
        "| --- | ---: | ---: |",
        *[f"| {row['stage']} | {row['images_per_s']:.1f} | {row['seconds']} |" for row in speed],
    ]
    if train_seconds is not None:
        lines += ["", f"All stages: {train_seconds / 60:.1f} min wall, {train_threads} torch thread(s), {precision}."]
    passed = metrics["style_distance_ratio"] <= STYLE_RATIO_TARGET and metrics["content_ssim"] >= SSIM_TARGET
    lines += [
        "",
        "## evaluate() of the trained model",
        "",
        "Held-out (content photo, style texture) pairs at balances (1, 1). Style distances use a fixed random-init "
        "3-layer conv net (zoo_quantart/evaluation.py), not a pretrained one.",
        "",
        "| metric | value |",
        "| --- | ---: |",
        *[f"| {key} | {value:.4g} |" for key, value in metrics.items()],
        "",
        f"Target: style distance ratio (output / unstyled content, mean/std) <= {STYLE_RATIO_TARGET} and content SSIM (luma) >= "
        f"{SSIM_TARGET}: **{'met' if passed else 'NOT met'}** "
        f"(ratio {metrics['style_distance_ratio']:.3f}, SSIM {metrics['content_ssim']:.3f}).",
        "",
        "### The two inference knobs",
        "",
        "Content-style balance 0 decodes the content codes with the art decoder, without the transfer module.",
        "",
        "| content-style balance | fidelity balance | style distance ratio | Gram ratio | content SSIM (luma) | SSIM (RGB) | content feature distance |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        *[
            f"| {row['content_style']} | {row['fidelity']} | {row['style_distance_ratio']:.3f} | {row['gram_distance_ratio']:.3f} "
            f"| {row['content_ssim']:.3f} | {row['content_ssim_rgb']:.3f} | {row['content_feature_distance']:.3f} |"
            for row in sweep
        ],
        "",
        "## Stylisation latency per image (stylize graph, batch 1)",
        "",
        "Errors between the two: a code whose two nearest codebook vectors nearly tie can be picked differently by the "
        "two runtimes' float rounding, which changes that code's patch; more codes (256 px) make such a tie likelier.",
        "",
        "| side | torch eager ms | onnxruntime ms | speed-up | max abs error | mean abs error |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
        *[
            f"| {row['side']} | {row['torch_ms']:.1f} | {row['onnx_ms']:.1f} | {row['torch_ms'] / row['onnx_ms']:.2f}x "
            f"| {row['max_abs_error']:.1e} | {row['mean_abs_error']:.1e} |"
            for row in latencies
        ],
        "",
        f"ONNX export of all five components: {export_seconds:.0f} s; validation max abs error per component:",
        "",
        "| component | max abs error |",
        "| --- | ---: |",
    ]
    lines += [f"| {name} | {validation_errors(manifest, name)[0]:.1e} |" for name in manifest["components"]]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, help="a trained quantart run directory to reuse")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "runs" / "bench_quantart", help="run directory to train into"
    )
    parser.add_argument("--set", dest="assignments", action="append", default=[], help="config override key=value")
    parser.add_argument("--threads", type=int, default=1, help="torch and onnxruntime threads for the latency rows")
    parser.add_argument(
        "--train-threads", type=int, help="torch threads while training (default: torch's, one per core)"
    )
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="training precision")
    args = parser.parse_args()
    train_seconds = train_threads = None
    if args.run is None:
        if args.train_threads:
            torch.set_num_threads(args.train_threads)
        train_threads = torch.get_num_threads()
        start = time.perf_counter()
        zoo.api.train(
            "quantart",
            run_dir=args.out,
            assignments=args.assignments,
            device="cpu",
            precision=args.precision,
            progress="quiet",
        )
        train_seconds = time.perf_counter() - start
    torch.set_num_threads(args.threads)
    run_dir = args.run or args.out
    run = zoo.api.load_run(run_dir, device="cpu")
    metrics = run.evaluate()
    print(json.dumps(metrics, indent=1), flush=True)
    sweep = balance_sweep(run)

    export_dir = run_dir / "export"
    start = time.perf_counter()
    manifest = export_model(run.plugin, run.model, run.config, export_dir)
    export_seconds = time.perf_counter() - start
    loaded = zoo.runtime.load(export_dir, provider="cpu", intra_op_threads=args.threads, inter_op_threads=1)
    latencies = [
        latency(run, loaded, side, args.repeats if side <= 64 else max(3, args.repeats // 2)) for side in SIDES
    ]

    report = markdown(
        training_speed(run_dir),
        metrics,
        sweep,
        latencies,
        manifest,
        export_seconds,
        train_seconds,
        train_threads,
        args.precision,
        args.threads,
    )
    Report(RESULTS, report).write()


if __name__ == "__main__":
    main()
