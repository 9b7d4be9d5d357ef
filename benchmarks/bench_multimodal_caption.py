"""multimodal_caption: training speed and quality of the `shapes` preset, caption speed
(torch vs onnxruntime, batch 1 and 32, with and without the KV cache) and the peak memory
of one training step of the `engravings` preset (575.8M parameters at 512 px).

    python benchmarks/bench_multimodal_caption.py                       # train shapes, then everything
    python benchmarks/bench_multimodal_caption.py --run runs/caption    # reuse a trained run
    python benchmarks/bench_multimodal_caption.py --skip-engravings     # no 10 GB step

Timings are medians of --repeats runs after one warm-up, with torch and onnxruntime
limited to --threads threads. The engravings step runs in a subprocess so that its peak
resident memory (getrusage ru_maxrss) is its own. Prints markdown and writes it to
benchmarks/results/multimodal_caption.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "plugins"), str(ROOT / "exporters")]

import onnxruntime  # noqa: E402
import torch  # noqa: E402
from report import Report, validation_errors
from timing import median_seconds

import zoo  # noqa: E402
import zoo.runtime  # noqa: E402
from zoo.config import validate  # noqa: E402
from zoo_multimodal_caption.config import PRESETS, CaptionConfig, CaptionSampleOptions, parameter_counts  # noqa: E402
from zoo_multimodal_caption.data import captioned_images  # noqa: E402
from zoo_multimodal_caption.plugin import MultimodalCaptionPlugin  # noqa: E402
from zoo_onnx import export_model  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "multimodal_caption.md"
CAPTION_BATCHES = (1, 32)


def train_shapes(run_dir: Path) -> tuple[zoo.api.Run, list[str]]:
    start = time.perf_counter()
    run = zoo.train(
        "multimodal_caption", preset="shapes", run_dir=run_dir, device="cpu", progress="quiet", log_every=25
    )
    seconds = time.perf_counter() - start
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "images_per_s" in r]
    validations = [r for r in records if "val_loss" in r]
    last = steps[-1]
    lines = [
        "## Training (`shapes` preset)",
        "",
        "| what | value |",
        "|---|---|",
        f"| wall time (incl. data, validation, checkpoints) | {seconds / 60:.1f} min |",
        f"| steps run / configured | {last['step']} / {run.config.training.steps} |",
        f"| training images/s (median of logged windows) | {statistics.median(r['images_per_s'] for r in steps):.1f} |",
        f"| final train loss (recon / caption / contrastive) | {last['loss']:.4f} ({last['reconstruction']:.4f} / "
        f"{last['caption']:.4f} / {last['contrastive']:.4f}) |",
        f"| best validation loss | {min(r['val_loss'] for r in validations):.4f} |",
        "",
    ]
    return run, lines


def evaluate(run: zoo.api.Run) -> list[str]:
    start = time.perf_counter()
    metrics = run.evaluate()
    seconds = time.perf_counter() - start
    lines = [
        f"## Held-out metrics ({run.config.data.eval_count} images, greedy captions; {seconds:.0f} s)",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    lines += [f"| {key} | {value:.4f} |" for key, value in metrics.items()]
    return lines + [""]


def caption_speed(run: zoo.api.Run, export_dir: Path, threads: int, repeats: int) -> list[str]:
    plugin, config, model = run.plugin, run.config, run.model
    torch_runtime = plugin.runtime_for(model, config, torch.device("cpu"))
    onnx_runtime = zoo.runtime.load(export_dir, provider="cpu", intra_op_threads=threads, inter_op_threads=1).runtime
    dataset = captioned_images(config, "test")
    images = torch.stack([dataset[index]["image"] for index in range(max(CAPTION_BATCHES))]).numpy()

    greedy = CaptionSampleOptions()
    same = (torch_runtime.caption(images, greedy)[1] == onnx_runtime.caption(images, greedy)[1]).all()
    lines = [
        "## Caption speed (greedy, held-out shapes)",
        "",
        f"Greedy captions of {len(images)} held-out images identical through torch and onnxruntime: {bool(same)}.",
        "",
        "| engine | KV cache | batch | captions/s | ms per batch |",
        "|---|---|---|---|---|",
    ]
    for engine, runtime in (("torch", torch_runtime), ("onnxruntime", onnx_runtime)):
        for kv_cache in (True, False):
            options = CaptionSampleOptions(kv_cache=kv_cache)
            for batch in CAPTION_BATCHES:
                seconds = median_seconds(lambda: runtime.caption(images[:batch], options), repeats)
                lines.append(
                    f"| {engine} | {'yes' if kv_cache else 'no'} | {batch} | {batch / seconds:.1f} | "
                    f"{seconds * 1e3:.1f} |"
                )
    return lines + [""]


def engravings_step(threads: int) -> None:
    """Child process: build `engravings` for real, run one training step at batch 1 through
    the trainer's own optimizer code, print JSON."""
    from torch.utils.data import default_collate

    from zoo.plugin import StageContext, StepContext
    from zoo.trainer import build_optimizer, trained_parameters

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    plugin = MultimodalCaptionPlugin()
    config = validate(CaptionConfig, {**PRESETS["engravings"], "data": {"train_count": 64, "test_count": 8}})
    start = time.perf_counter()
    model = plugin.build(config)
    build_seconds = time.perf_counter() - start
    after_build = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    stage = plugin.stages(config)[0]
    spec = stage.optimizers[0]
    with tempfile.TemporaryDirectory() as cache:
        dataset = stage.dataset(StageContext(model, config, Path(cache), torch.device("cpu")))
    batch = default_collate([dataset[0]])
    params = trained_parameters(model, spec)
    optimizer = build_optimizer(spec, model)
    start = time.perf_counter()
    losses = spec.loss(model, batch, StepContext(0, 1, torch.device("cpu")))
    losses["loss"].backward()
    torch.nn.utils.clip_grad_norm_(params, spec.clip_grad_norm)
    optimizer.step()
    step_seconds = time.perf_counter() - start
    print(
        json.dumps(
            {
                "parameters": sum(p.numel() for p in model.parameters()),
                "expected_parameters": sum(parameter_counts(config).values()),
                "build_seconds": build_seconds,
                "step_seconds": step_seconds,
                "rss_after_build_gb": after_build / 2**20,  # ru_maxrss is in KiB on Linux
                "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                "loss": {k: round(v.item(), 4) for k, v in losses.items()},
            }
        )
    )


def engravings_memory(threads: int) -> list[str]:
    command = [sys.executable, __file__, "--engravings-step", "--threads", str(threads)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        return ["## `engravings` one training step", "", f"failed: {result.stderr.strip().splitlines()[-1:]}", ""]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    return [
        "## `engravings` preset: one training step at batch 1 (512 px, Adam)",
        "",
        "| what | value |",
        "|---|---|",
        f"| parameters (built / from layer shapes) | {report['parameters']:,} / {report['expected_parameters']:,} |",
        f"| build time | {report['build_seconds']:.1f} s |",
        f"| peak RSS after build | {report['rss_after_build_gb']:.2f} GiB |",
        f"| peak RSS after one step (weights + grads + Adam state) | {report['peak_rss_gb']:.2f} GiB |",
        f"| step time (forward + backward + Adam) | {report['step_seconds']:.1f} s |",
        f"| losses of the step | {report['loss']} |",
        "",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="a trained multimodal_caption run (default: train the shapes preset)")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "runs" / "bench_multimodal_caption", help="run directory to train into"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-engravings", action="store_true")
    parser.add_argument("--engravings-step", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.engravings_step:
        engravings_step(args.threads)
        return
    torch.set_num_threads(args.threads)

    lines = [
        "# Benchmark: multimodal_caption",
        "",
        f"Machine: {platform.machine()}, {args.threads} thread(s) for torch and onnxruntime, torch {torch.__version__}, "
        f"onnxruntime {onnxruntime.__version__} (CPU provider).",
        "",
    ]
    if args.run is None:
        run, training = train_shapes(args.out)
        lines += training
    else:
        run = zoo.load_run(args.run, model="multimodal_caption", device="cpu")
    lines += evaluate(run)
    with tempfile.TemporaryDirectory() as scratch:
        start = time.perf_counter()
        manifest = export_model(run.plugin, run.model, run.config, Path(scratch) / "export")
        worst = max(validation_errors(manifest, name)[0] for name in manifest["components"])
        lines += [f"ONNX export: {time.perf_counter() - start:.0f} s, worst validation max abs error {worst:.2e}.", ""]
        lines += caption_speed(run, Path(scratch) / "export", args.threads, args.repeats)
    if not args.skip_engravings:
        lines += engravings_memory(args.threads)
    Report(RESULTS, "\n".join(lines)).write()


if __name__ == "__main__":
    main()
