"""What the papers' metrics cost: seconds per 1,000 samples for each model's default and paper
preset on this CPU (drawing the images, and the Inception features of them), and what 50,000
would take on one GPU, estimated from the measured per-image FLOPs.

    /path/to/venv-with-torch-fidelity/bin/python benchmarks/bench_metrics.py   # writes results/metrics.md
    python benchmarks/bench_metrics.py --images 2 --skip-paper

Models have fresh random weights (the cost does not depend on them); VAR and VQ-VAE-2 draw their
class-balanced metric sample set (`metric_sample_options`), QuantArt stylises held-out pairs
(its `transfer` MetricSet). Each figure is the median of `--repeats` timed calls after one
warm-up call, divided by the images per call. The GPU column is an ESTIMATE, not a measurement:
the FLOPs counted by torch's FlopCounterMode for one image, divided by an assumed sustained
throughput (`--gpu-tflops`, default 60 TFLOP/s: about a fifth of an A100's bf16 peak, which
small-batch autoregressive steps rarely exceed); it ignores launch latency, so step-bound loops
(VAR's 10 scales, PixelCNN's per-position steps) take longer than it says.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "plugins"), str(ROOT / "exporters")]

import torch  # noqa: E402
from deploy import cpu_name  # noqa: E402
from report import Report, table  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

import zoo  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "metrics.md"
CPU = torch.device("cpu")
# model -> (default preset, paper preset)
PRESETS = {"var": ("digits", "d16"), "vqvae2_pixelcnn": ("digits32", "cifar32"), "quantart": ("tiny", "paper")}


def timed(call: Callable[[], object], repeats: int) -> float:
    call()  # warm-up: first-call allocations and lazy initialisation
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def flops_of(call: Callable[[], object]) -> int:
    with FlopCounterMode(display=False) as counter:
        call()
    return counter.get_total_flops()


def drawing(model_name: str, preset: str, images: int) -> tuple[Callable[[], object], int]:
    """A call that makes `images` metric images of the model at `preset`, and how many it makes."""
    torch.manual_seed(0)
    plugin, config, model = zoo.create_model(model_name, preset=preset)
    model.eval()
    options = plugin.metric_sample_options(config, 0, images, 0)
    if options is not None:

        def draw() -> object:
            with torch.no_grad():
                return plugin.sample(model, config, options, CPU)

        return draw, images
    transfer = next(made for made in plugin.metric_sets(model, config, CPU) if made.kind == "transfer")
    first = next(iter(transfer.batches()))
    return (lambda: next(iter(transfer.batches()))), len(first.outputs)


def inception(images: int) -> tuple[Callable[[], object], int]:
    """torch-fidelity's InceptionV3 (random weights: the cost is the same) on 256 px uint8 images."""
    from zoo.metrics.fidelity import import_fidelity

    fidelity = import_fidelity()
    module = fidelity.feature_extractor_inceptionv3
    original, load = module.load_state_dict_from_url, module.FeatureExtractorInceptionV3.load_state_dict
    module.load_state_dict_from_url = lambda *args, **kwargs: None
    module.FeatureExtractorInceptionV3.load_state_dict = lambda self, state: None
    try:
        network = module.FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"])
    finally:
        module.load_state_dict_from_url, module.FeatureExtractorInceptionV3.load_state_dict = original, load
    batch = torch.randint(0, 256, (images, 3, 256, 256), dtype=torch.uint8)

    def extract() -> object:
        with torch.no_grad():
            return network(batch)

    return extract, images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=4, help="images per timed call at the paper presets")
    parser.add_argument("--default-images", type=int, default=50, help="images per timed call at the default presets")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--gpu-tflops", type=float, default=60.0, help="assumed sustained GPU throughput")
    parser.add_argument("--skip-paper", action="store_true", help="default presets only")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    load_before = os.getloadavg()[0]
    rows = []
    cases: list[tuple[str, str, Callable[[], tuple[Callable[[], object], int]]]] = []
    for model_name, (default, paper) in PRESETS.items():
        cases.append((model_name, default, lambda m=model_name, p=default: drawing(m, p, args.default_images)))
        if not args.skip_paper:
            cases.append((model_name, paper, lambda m=model_name, p=paper: drawing(m, p, args.images)))
    cases.append(("Inception features", "256 px, torch-fidelity", lambda: inception(args.default_images)))
    with tempfile.TemporaryDirectory() as work:  # data sets some presets generate stay out of the checkout
        os.chdir(work)
        for model_name, preset, make in cases:
            call, count = make()
            seconds = timed(call, args.repeats) / count
            flops = flops_of(call) / count
            gpu_50k = flops * 50_000 / (args.gpu_tflops * 1e12)
            rows.append(
                [
                    model_name,
                    preset,
                    count,
                    f"{seconds * 1000:.1f}",
                    f"{seconds * 50_000 / 3600:.2f}",
                    f"{flops / 1e9:.2f}",
                    f"{flops / seconds / 1e9:.1f}",
                    f"{gpu_50k:.3g}",
                ]
            )
            print(rows[-1], flush=True)
    header = [
        "model",
        "preset",
        "images per call",
        "CPU s per 1,000",
        "CPU h per 50k",
        "GFLOP per image",
        "CPU GFLOP/s",
        f"GPU s per 50k (ESTIMATE: FLOPs / {args.gpu_tflops:g} TFLOP/s)",
    ]
    report = Report(
        RESULTS,
        "# Cost of the papers' metrics",
        f"CPU: {cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}; 1-minute load "
        f"average {load_before:.1f} at the start and {os.getloadavg()[0]:.1f} at the end (other jobs on the "
        "cores slow every figure). "
        "Random weights; medians of timed calls after a warm-up. The last column is an estimate from "
        "counted FLOPs, not a measurement (see benchmarks/bench_metrics.py).",
        table(header, rows),
    )
    report.write()


if __name__ == "__main__":
    main()
