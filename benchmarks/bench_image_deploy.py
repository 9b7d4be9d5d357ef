"""QuantArt and VQ-VAE-2 "deploy at paper size" benchmark (issue 12, item 5): official-layout
random-weight checkpoints -> `zoo import` -> `zoo export` (fp32, fp16, int8) -> stylisation
(QuantArt, 256 and 512 px) and reconstruction (VQ-VAE-2, 256 px) on torch and onnxruntime,
CPU, one thread. bench_var_deploy.py is the VAR counterpart.

    python benchmarks/bench_image_deploy.py                                  # both models, everything
    python benchmarks/bench_image_deploy.py --models vqvae2 --precisions fp32 --append

Files, made from the committed key lists (`key<TAB>shape<TAB>dtype`):
    quantart  vqgan_imagenet_f16_1024.ckpt  (tests/fixtures/quantart/keys_vqgan_f16_1024.txt) and
              quantart_landscape2art.ckpt   (keys_quantart_landscape2art.txt), Lightning-style
              {"state_dict": ...}; the QuantArt file's photo encoder, quant_conv and codebook are
              the VQGAN's (QuantArt trains with them frozen); `zoo import quantart --format official`
    vqvae2    vqvae_560.pt (tests/fixtures/vqvae2/keys_vqvae_560.txt), a plain state dict
Weights N(0, 1/fan_in) (variance-preserving: the VQ-VAE has no normalisation layers), biases
zero, norm gains one, BatchNorm statistics (0, 1), codebooks N(0, s^2) with s about the spread of
the encoder features (VQGAN 0.5, VQ-VAE 0.1, so that more than a handful of codes is used),
`cluster_size` one and `embed_avg` = embed * cluster_size. `zoo import` and each `zoo export` run
as child processes with OMP_NUM_THREADS=1: wall clock, and the child's peak RSS (wait4).
Exports hold the components the sampling loop runs: QuantArt photo_encoder, art_encoder, transfer,
art_decoder (not the all-in-one `stylize` graph, which repeats them); VQ-VAE-2 encoder and decoder
(not the priors, which the file does not have).

Engines, in this process on one thread: the plugin's sampling loop (runtime.py) on the torch
modules, as `zoo sample` / `Run.sample` run it (torch fp32, and under bf16 autocast), or on the
onnxruntime sessions of an export (`zoo.runtime.load(..., provider="cpu")`, intra/inter-op threads 1).
QuantArt stylises one synthetic content image with one synthetic style image (`size` option,
balances 1, 1); VQ-VAE-2 reconstructs the content image (`reconstruct`: encoder -> decoder).
Seconds: median of --repeats calls after one warm-up call; a call past --cap-seconds is stopped.
Errors: the uint8 output against torch fp32's; VQ-VAE-2 also compares its codes (`encode`).
Writes benchmarks/results/image_deploy.md.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import resource
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "plugins"), str(ROOT / "exporters")]

import numpy as np  # noqa: E402
import onnxruntime  # noqa: E402
import torch  # noqa: E402
from deploy import GiB, cpu_name, directory_gib, image_errors, random_state_dict, run_child  # noqa: E402
from PIL import Image  # noqa: E402
from report import Report, table, validation_errors  # noqa: E402
from timing import OverTime, median_seconds, time_cap  # noqa: E402

import zoo.api  # noqa: E402
import zoo.runtime  # noqa: E402
from zoo.config import validate  # noqa: E402
from zoo.errors import first_line  # noqa: E402
from zoo.outputs import to_uint8  # noqa: E402
from zoo.runtime.images import to_model_input  # noqa: E402
from zoo.runtime.loop import ModelRuntime  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "image_deploy.md"
FIXTURES = ROOT / "tests" / "fixtures"
PRECISIONS = ("fp32", "fp16", "int8")
STEP_HEADER = ["step", "seconds", "peak RSS GiB", "size GiB", "result"]
REFERENCE = "torch fp32"  # the engine every other is compared with


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    """`table` with `|` inside a cell escaped (error messages quote `max |torch output|`)."""
    return table(header, [[str(cell).replace("|", "\\|") for cell in row] for row in rows])


# -- random official-layout files ------------------------------------------------------------------


def random_tensor(key: str, shape: list[int], dtype: torch.dtype, generator: torch.Generator, code_scale: float):
    if dtype == torch.int64:  # BatchNorm's num_batches_tracked
        return torch.zeros(shape, dtype=dtype)
    if key.endswith(("embedding.weight", "quantize_t.embed", "quantize_b.embed")):  # codebooks
        return torch.randn(shape, generator=generator) * code_scale
    if key.endswith(("cluster_size", "running_var")):
        return torch.ones(shape)
    if key.endswith(("bias", "running_mean", "embed_avg")):  # embed_avg: set from the codebook below
        return torch.zeros(shape)
    if len(shape) == 1:  # GroupNorm / BatchNorm gains
        return torch.ones(shape)
    fan_in = math.prod(shape[1:])
    return torch.randn(shape, generator=generator) / math.sqrt(fan_in)


def filler(code_scale: float):
    return lambda key, shape, dtype, generator: random_tensor(key, shape, dtype, generator, code_scale)


def lightning_file(state_dict: dict[str, torch.Tensor], out: Path) -> None:
    torch.save({"state_dict": state_dict, "epoch": 0, "global_step": 0}, out)


def make_quantart_files(work: Path) -> list[Path]:
    """The QuantArt checkpoint first, then the taming VQGAN it was trained from."""
    keys = FIXTURES / "quantart"
    vqgan = random_state_dict(keys / "keys_vqgan_f16_1024.txt", filler(0.5), seed=0)
    quantart = random_state_dict(keys / "keys_quantart_landscape2art.txt", filler(0.5), seed=1)
    for key, tensor in vqgan.items():  # the frozen photo encoder side is the VQGAN's
        if key.startswith(("encoder.", "quant_conv.")):
            quantart[key] = tensor.clone()
    quantart["quantize_enc.embedding.weight"] = vqgan["quantize.embedding.weight"].clone()
    files = [work / "quantart_landscape2art.ckpt", work / "vqgan_imagenet_f16_1024.ckpt"]
    lightning_file(quantart, files[0])
    lightning_file(vqgan, files[1])
    return files


def make_vqvae2_files(work: Path) -> list[Path]:
    tensors = random_state_dict(FIXTURES / "vqvae2" / "keys_vqvae_560.txt", filler(0.1), seed=2)
    for level in ("t", "b"):
        tensors[f"quantize_{level}.embed_avg"] = (
            tensors[f"quantize_{level}.embed"] * tensors[f"quantize_{level}.cluster_size"]
        )
    path = work / "vqvae_560.pt"
    torch.save(tensors, path)
    return [path]


# -- synthetic images ------------------------------------------------------------------------------


def synthetic_image(size: int, seed: int, max_frequency: float) -> np.ndarray:
    """(size, size, 3) uint8: a colour gradient, six sinusoids up to `max_frequency` cycles per
    side and pixel noise; the same picture at every size (coordinates in [0, 1])."""
    rng = np.random.default_rng(seed)
    y, x = np.meshgrid(np.linspace(0, 1, size), np.linspace(0, 1, size), indexing="ij")
    channels = []
    for _ in range(3):
        value = rng.uniform(-0.4, 0.4) * x + rng.uniform(-0.4, 0.4) * y
        for _ in range(6):
            fx, fy = rng.uniform(-max_frequency, max_frequency, 2)
            value += rng.uniform(0.05, 0.2) * np.sin(2 * np.pi * (fx * x + fy * y) + rng.uniform(0, 2 * np.pi))
        channels.append(value)
    noise = np.random.default_rng(seed + 1000 * size).normal(0, 0.03, (size, size, 3))
    return (np.clip(0.5 + np.stack(channels, axis=-1) + noise, 0, 1) * 255).round().astype(np.uint8)


# -- what each model runs --------------------------------------------------------------------------


@dataclass
class Output:
    images: np.ndarray  # (N, H, W, 3) uint8
    codes: list[np.ndarray] | None = None  # per code level, where the model has discrete codes


@dataclass
class Task:
    """One measured call at one image size: `run(runtime)` is timed, `codes(runtime)` is not."""

    size: int
    run: Callable[[ModelRuntime], np.ndarray]  # -> (N, H, W, 3) uint8
    codes: Callable[[ModelRuntime], list[np.ndarray]] | None = None


def quantart_task(work: Path, size: int) -> Task:
    paths = {}
    for role, seed, frequency in (("content", 0, 4.0), ("style", 1, 16.0)):
        paths[role] = work / f"{role}_{size}.png"
        Image.fromarray(synthetic_image(size, seed, frequency)).save(paths[role])

    def stylise(runtime: ModelRuntime) -> np.ndarray:
        options = validate(
            runtime.options_class, {"content": str(paths["content"]), "style": str(paths["style"]), "size": size}
        )
        return runtime.sample(options).images

    return Task(size, stylise)


def vqvae2_task(work: Path, size: int) -> Task:
    images = to_model_input(synthetic_image(size, 0, 4.0)[None])  # (1, 3, H, W) in [-1, 1]
    return Task(
        size,
        lambda runtime: to_uint8(runtime.reconstruct(images)),
        lambda runtime: list(runtime.encode(images)),
    )


@dataclass
class ModelSpec:
    name: str  # zoo's model name
    title: str
    make_files: Callable[[Path], list[Path]]
    import_options: list[str]
    components: list[str]
    make_task: Callable[[Path, int], Task]
    sizes: list[int] | None  # image sides measured; None: those of --sizes


MODELS = {
    "quantart": ModelSpec(
        "quantart",
        "QuantArt (landscape2art, VQGAN f16 1024 codes)",
        make_quantart_files,
        ["--format", "official"],
        ["photo_encoder", "art_encoder", "transfer", "art_decoder"],
        quantart_task,
        None,
    ),
    "vqvae2": ModelSpec(
        "vqvae2_pixelcnn",
        "VQ-VAE-2 (rosinality vqvae_560.pt, FFHQ 256 px)",
        make_vqvae2_files,
        [],
        ["encoder", "decoder"],
        vqvae2_task,
        [256],
    ),
}


# -- pipeline --------------------------------------------------------------------------------------


def export_result(out: Path, error: str | None) -> str:
    """ok and the largest validation errors the exporter recorded, or its one-line error."""
    if error is not None:
        return error
    manifest = json.loads((out / "manifest.json").read_text())
    floats, integers = [], []
    for component in manifest["components"]:
        largest, mismatch = validation_errors(manifest, component)
        floats += [] if largest is None else [largest]
        integers += [] if mismatch is None else [mismatch]
    parts = [f"max abs error {max(floats):.2g}"] if floats else []
    parts += [f"codes differing {100 * max(integers):.2f}%"] if integers else []
    return "ok" + (f" (validation: {', '.join(parts)})" if parts else "")


def pipeline(spec: ModelSpec, args: argparse.Namespace, report: Report, deadline: float) -> tuple[Path, dict]:
    """Make the files, import, export: the run directory and {precision: export directory}."""
    work = args.workdir / spec.name
    work.mkdir(parents=True, exist_ok=True)
    run_dir = work / "run"
    title = f"## {spec.title}: pipeline"
    record = work / "pipeline.json"  # the table, for a later --reuse
    if args.reuse and (run_dir / "config.json").exists():
        exports = {
            p: work / f"export_{p}" for p in args.precisions if (work / f"export_{p}" / "manifest.json").exists()
        }
        earlier = json.loads(record.read_text()) if record.exists() else None
        measured = f"measured {earlier['measured']}" if earlier else "not recorded"
        report.add(
            f"{title} ({measured})\n\n"
            + (markdown_table(STEP_HEADER, earlier["steps"]) + "\n\n" if earlier else "")
            + f"Reused {run_dir} and the exports {sorted(exports)} of that earlier invocation."
        )
        return run_dir, exports

    steps = []
    start = time.perf_counter()
    files = spec.make_files(work)
    files_gib = sum(path.stat().st_size for path in files) / GiB
    names = " + ".join(path.name for path in files)
    steps.append(
        [f"make random official files ({names})", f"{time.perf_counter() - start:.0f}", "-", f"{files_gib:.3f}", "ok"]
    )

    seconds, peak, error = run_child(
        ["import", spec.name, *map(str, files), *spec.import_options, "--out", str(run_dir)]
    )
    run_gib = directory_gib(run_dir) if error is None else 0.0
    steps.append(["zoo import", f"{seconds:.0f}", f"{peak:.2f}", f"{run_gib:.3f}", error or "ok"])
    exports = {}
    if error is None:
        for path in files:  # the run directory holds the weights now
            path.unlink()
        for precision in args.precisions:
            step = f"zoo export {precision}"
            if time.perf_counter() > deadline:
                steps.append([step, "-", "-", "-", "not run: time budget spent"])
                continue
            out = work / f"export_{precision}"
            command = ["export", spec.name, "--run", str(run_dir), "--out", str(out), "--precision", precision]
            seconds, peak, error = run_child([*command, "--components", *spec.components])
            size = directory_gib(out) if error is None else 0.0
            steps.append([step, f"{seconds:.0f}", f"{peak:.2f}", f"{size:.3f}", export_result(out, error)])
            if error is None:
                exports[precision] = out
    when = f"{time.strftime('%Y-%m-%d %H:%M')} by `python benchmarks/bench_image_deploy.py {' '.join(sys.argv[1:])}`"
    record.write_text(json.dumps({"measured": when, "steps": steps}, indent=1))
    report.add(
        f"{title}\n\n"
        + markdown_table(STEP_HEADER, steps)
        + "\n\nseconds: wall clock; peak RSS: the child process (`python -m zoo ...`, one thread); size: the "
        f"files written (checkpoints, run directory, export directory). Exported components: {', '.join(spec.components)}."
    )
    return run_dir, exports


# -- engines ---------------------------------------------------------------------------------------


@dataclass
class Engine:
    """The plugin's sampling loop on one engine; `bf16` runs it under torch's bf16 autocast."""

    name: str
    make: Callable[[], ModelRuntime] | None  # None: its export failed
    bf16: bool = False
    over_cap: int | None = None  # the size at which one call ran past the cap

    def context(self):
        return torch.autocast("cpu", dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()


def engines(run: zoo.api.Run, exports: dict[str, Path], precisions: list[str]) -> list[Engine]:
    def torch_runtime():
        return run.plugin.runtime_for(run.model, run.config, run.device)

    def onnx_runtime(precision: str):
        loaded = zoo.runtime.load(exports[precision], provider="cpu", intra_op_threads=1, inter_op_threads=1)
        return loaded.runtime

    found = [Engine(REFERENCE, torch_runtime)]
    for precision in ("fp32", "int8", "fp16"):
        if precision in precisions:
            make = (lambda p=precision: onnx_runtime(p)) if precision in exports else None
            found.append(Engine(f"onnxruntime {precision}", make))
    found.append(Engine("torch bf16 autocast", torch_runtime, bf16=True))  # slowest without bf16 units: last
    return found


def codes_equal(codes: list[np.ndarray], reference: list[np.ndarray]) -> str:
    shares = [float(np.mean(mine == theirs)) for mine, theirs in zip(codes, reference, strict=True)]
    return "identical" if all(share == 1.0 for share in shares) else " / ".join(f"{share:.4f}" for share in shares)


def measure(
    engine: Engine, task: Task, reference: Output | None, args: argparse.Namespace, deadline: float
) -> tuple[list[str], Output | None]:
    """One row of the engine table, and the engine's output (None if it failed)."""
    dash = ["-", "-"] + (["-"] if task.codes else [])
    if engine.make is None:
        return ["export failed", "-", *dash], None
    if engine.over_cap is not None:
        return [f"not measured: one call over {args.cap_seconds:g} s at {engine.over_cap} px", "-", *dash], None
    if time.perf_counter() > deadline:
        return ["not run: time budget spent", "-", *dash], None

    runtime = None  # loaded for this size only: one engine's sessions in memory at a time

    def call():
        with time_cap(args.cap_seconds), engine.context():
            return task.run(runtime)

    try:
        runtime = engine.make()
        start = time.perf_counter()
        output = Output(call())  # the warm-up
        warmup = time.perf_counter() - start
        if task.codes is not None:
            with engine.context():
                output.codes = task.codes(runtime)
        repeats = min(args.repeats, int((deadline - time.perf_counter()) // warmup))
        seconds = median_seconds(call, repeats, warmup=0) if repeats > 0 else None
    except OverTime:
        engine.over_cap = task.size
        return [f"not measured: one call over {args.cap_seconds:g} s", "-", *dash], None
    except Exception as error:  # noqa: BLE001 - a failing engine is a result, not the end of the run
        return [first_line(error, with_type=True), "-", *dash], None
    finally:
        runtime = None  # the closure `call` held the sessions until here
        gc.collect()
    timing = [f"{seconds:.2f}", f"{repeats}"] if seconds is not None else [f"{warmup:.2f} (warm-up only)", "0"]
    if engine.name == REFERENCE:
        return [*timing, *["reference"] * len(dash)], output
    if reference is None:
        return [*timing, *dash], output
    largest, mean = image_errors(output.images, reference.images)
    cells = [*timing, f"{largest}", f"{mean:.2f}"]
    if task.codes is not None:
        cells.append(codes_equal(output.codes, reference.codes))
    return cells, output


def bench_model(spec: ModelSpec, args: argparse.Namespace, report: Report, deadline: float) -> None:
    run_dir, exports = pipeline(spec, args, report, deadline)
    if args.skip_engines or not (run_dir / "config.json").exists():
        return
    torch.set_num_threads(1)
    run = zoo.api.load_run(run_dir, device="cpu")
    found = engines(run, exports, args.precisions)
    for size in spec.sizes or args.sizes:
        task = spec.make_task(args.workdir / spec.name, size)
        rows, reference = [], None
        for engine in found:
            cells, output = measure(engine, task, reference, args, deadline)
            if engine.name == REFERENCE:
                reference = output
            rows.append([engine.name, *cells])
            print(rows[-1], flush=True)
        header = ["engine", "seconds per call", "timed calls", "max abs error", "mean abs error"]
        header += ["codes equal (top / bottom)"] if task.codes else []
        caption = CAPTIONS[spec.name]
        if reference is not None and reference.codes is not None:
            used = " / ".join(str(np.unique(level).size) for level in reference.codes)
            caption += f" torch fp32 uses {used} distinct codes (top / bottom) on this image."
        report.add(f"## {spec.title}: {size} px\n\n" + markdown_table(header, rows) + "\n\n" + caption)
    del run
    gc.collect()


CAPTIONS = {
    "quantart": "One content and one style image, content-style and fidelity balances 1; seconds: median of "
    "the timed calls after one warm-up; errors: the stylised uint8 image against torch fp32's, in levels (0..255).",
    "vqvae2_pixelcnn": "Reconstruction (`reconstruct`: encoder, then decoder) of one image; seconds: median of the "
    "timed calls after one warm-up; errors: the uint8 reconstruction against torch fp32's, in levels (0..255); "
    "codes: the share of top and bottom codes (`encode`) equal to torch fp32's.",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["vqvae2", "quantart"], choices=sorted(MODELS))
    parser.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=PRECISIONS)
    parser.add_argument("--sizes", nargs="+", type=int, default=[256, 512], choices=[256, 512], help="QuantArt sides")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/image_deploy"), help="scratch files (GiB)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per engine and size")
    parser.add_argument("--cap-seconds", type=float, default=120.0, help="stop a call that takes longer")
    parser.add_argument("--budget-minutes", type=float, default=60.0, help="skip what would start later")
    parser.add_argument("--skip-engines", action="store_true", help="import and export only")
    parser.add_argument("--reuse", action="store_true", help="measure the runs and exports already in --workdir")
    parser.add_argument("--append", action="store_true", help="add to the results file instead of replacing it")
    args = parser.parse_args()
    deadline = time.perf_counter() + args.budget_minutes * 60
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))  # still write what was measured

    report = Report(RESULTS)
    if args.append and RESULTS.exists():
        report.sections.append(RESULTS.read_text().rstrip("\n"))
    else:
        report.add(
            "# QuantArt and VQ-VAE-2 deploy at paper size (random weights, official layout)\n\n"
            f"CPU: {cpu_name()}, {os.cpu_count()} cores (one thread used); "
            f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}."
        )
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    report.add(
        f"Run: `python benchmarks/bench_image_deploy.py {' '.join(sys.argv[1:])}`: models {', '.join(args.models)}; "
        f"precisions {', '.join(args.precisions)}. Load average at the start {load} (1, 5, 15 min) on "
        f"{os.cpu_count()} cores shared with other jobs: every time is an upper bound."
    )
    try:
        for name in args.models:
            bench_model(MODELS[name], args, report, deadline)
    finally:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GiB
        load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
        report.add(f"Peak RSS of the benchmark process (the engines): {peak:.2f} GiB. Load average at the end: {load}.")
        report.write()


if __name__ == "__main__":
    main()
