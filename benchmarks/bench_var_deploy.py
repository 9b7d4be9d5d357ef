"""VAR "deploy at paper size" benchmark (issue 12, item 5): official-layout random-weight
checkpoints -> `zoo import` -> `zoo export` (fp32, fp16, int8) -> greedy tokens and sampling
time on torch and onnxruntime, CPU, one thread.

    python benchmarks/bench_var_deploy.py                         # d16, everything
    python benchmarks/bench_var_deploy.py --sizes d20 --precisions fp32 --skip-sampling --append

Per size: the random files are made from the committed key lists (tests/fixtures/var/keys/,
`key<TAB>shape<TAB>dtype`): weights N(0, 0.02), biases and `zero_k_bias` zero, norm gains one,
`scale_mul_1H11` log(4) (the official init), the codebook N(0, 0.2) so that codes differ,
`lvl_1L` the level of every position and `attn_bias_for_masking` the block-causal mask (both
dropped by the importer). `zoo import` and each `zoo export` run as child processes with
OMP_NUM_THREADS=1; their time is wall clock and their memory the child's peak RSS (wait4).

Greedy tokens: class 207, cfg 1.5, top-k 1, one image, seed 0, on every engine, against torch
fp32. Sampling time: class 207, cfg 4, top-k 900, top-p 0.96; the greedy call is the warm-up,
then the median of --repeats calls for 1 image and of --repeats-8 calls for 8 images. Writes
benchmarks/results/var_deploy.md.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "plugins"), str(ROOT / "exporters")]

import numpy as np  # noqa: E402
import onnxruntime  # noqa: E402
import torch  # noqa: E402
from deploy import GiB, cpu_name, directory_gib, image_errors, random_state_dict, run_child  # noqa: E402
from report import Report, table  # noqa: E402
from timing import median_seconds  # noqa: E402

import zoo.api  # noqa: E402
import zoo.runtime  # noqa: E402
from zoo.errors import first_line  # noqa: E402
from zoo_var.config import PAPER_PATCH_NUMS  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "var_deploy.md"
KEYS = ROOT / "tests" / "fixtures" / "var" / "keys"
PRECISIONS = ("fp32", "fp16", "int8")
GREEDY = {"classes": [207], "n": 1, "cfg": 1.5, "top_k": 1, "seed": 0}
SAMPLING = {"classes": [207], "cfg": 4.0, "top_k": 900, "top_p": 0.96, "seed": 0}


# -- random official-layout files ------------------------------------------------------------------


def official_levels(patch_nums: list[int]) -> torch.Tensor:
    """(1, L) int64: the scale of every token position, as the official `lvl_1L`."""
    return torch.cat([torch.full((side * side,), k) for k, side in enumerate(patch_nums)]).view(1, -1)


def random_tensor(key: str, shape: list[int], dtype: torch.dtype, generator: torch.Generator) -> torch.Tensor:
    patch_nums = PAPER_PATCH_NUMS[256]
    if key == "lvl_1L":
        return official_levels(patch_nums)
    if key == "attn_bias_for_masking":  # (1, 1, L, L): 0 where a position may attend, -inf elsewhere
        levels = official_levels(patch_nums)[0]
        allowed = levels[:, None] >= levels[None, :]
        return torch.where(allowed, 0.0, -math.inf).view(shape)
    if key.endswith("scale_mul_1H11"):
        return torch.full(shape, math.log(4.0))
    if key == "quantize.embedding.weight":
        return torch.randn(shape, generator=generator) * 0.2
    if key.endswith(("bias", "ema_vocab_hit_SV")):
        return torch.zeros(shape, dtype=dtype)
    if "norm" in key and len(shape) == 1:
        return torch.ones(shape, dtype=dtype)
    return torch.randn(shape, generator=generator) * 0.02


def make_official_file(key_list: Path, out: Path, seed: int) -> int:
    """Write a random state dict with the keys, shapes and dtypes of `key_list`; returns its
    parameter count."""
    tensors = random_state_dict(key_list, random_tensor, seed)
    torch.save(tensors, out)
    return sum(t.numel() for t in tensors.values())


# -- engines ---------------------------------------------------------------------------------------


class Engine:
    """One way to sample: torch (fp32 or under bf16 autocast) or an onnxruntime export."""

    def __init__(self, name: str, sample) -> None:
        self.name, self.sample = name, sample


def torch_engine(run: zoo.api.Run, bf16: bool) -> Engine:
    def sample(options: dict):
        if bf16:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return run.sample(**options)
        return run.sample(**options)

    return Engine("torch bf16 autocast" if bf16 else "torch fp32", sample)


def onnx_engine(export_dir: Path, precision: str) -> Engine:
    loaded = zoo.runtime.load(export_dir, provider="cpu", intra_op_threads=1, inter_op_threads=1)
    return Engine(f"onnxruntime {precision}", loaded.sample)


def agreement(output, reference) -> list[str]:
    """Share of equal tokens, and the image's max / mean absolute error in uint8 levels."""
    tokens = np.concatenate([np.asarray(t).ravel() for t in output.extras["tokens"]])
    expected = np.concatenate([np.asarray(t).ravel() for t in reference.extras["tokens"]])
    equal = float(np.mean(tokens == expected))
    largest, mean = image_errors(output.images, reference.images)
    return ["identical" if equal == 1.0 else f"{equal:.4f}", f"{largest}", f"{mean:.2f}"]


# -- one size --------------------------------------------------------------------------------------


def bench_size(size: str, args: argparse.Namespace, report: Report, deadline: float) -> None:
    work = args.workdir / size
    work.mkdir(parents=True, exist_ok=True)
    vae, prior, run_dir = work / "vae_ch160v4096z32.pth", work / f"var_{size}.pth", work / "run"
    steps = []

    if args.reuse and (run_dir / "config.json").exists():
        exports = {
            p: work / f"export_{p}" for p in args.precisions if (work / f"export_{p}" / "manifest.json").exists()
        }
        report.add(
            f"## {size}: pipeline\n\nReused {run_dir} and the exports {sorted(exports)} of an earlier invocation."
        )
    else:
        start = time.perf_counter()
        params = make_official_file(KEYS / "keys_vae.txt", vae, seed=0)
        params += make_official_file(KEYS / f"keys_var_{size}.txt", prior, seed=1)
        files_gib = (vae.stat().st_size + prior.stat().st_size) / GiB
        steps.append(
            [size, "make random official files", f"{time.perf_counter() - start:.0f}", "-", f"{files_gib:.2f}", "ok"]
        )

        seconds, peak, error = run_child(["import", "var", str(vae), str(prior), "--out", str(run_dir)])
        run_gib = directory_gib(run_dir) if error is None else 0.0
        steps.append([size, "zoo import", f"{seconds:.0f}", f"{peak:.2f}", f"{run_gib:.2f}", error or "ok"])
        if error is not None:
            report.add(f"## {size}: pipeline\n\n" + table(STEP_HEADER, steps))
            return
        vae.unlink(), prior.unlink()  # the run directory holds the weights now

        exports = {}
        for precision in args.precisions:
            if time.perf_counter() > deadline:
                steps.append([size, f"zoo export {precision}", "-", "-", "-", "not run: time budget spent"])
                continue
            out = work / f"export_{precision}"
            seconds, peak, error = run_child(
                ["export", "var", "--run", str(run_dir), "--out", str(out), "--precision", precision]
            )
            size_gib = directory_gib(out) if out.exists() else 0.0
            steps.append(
                [size, f"zoo export {precision}", f"{seconds:.0f}", f"{peak:.2f}", f"{size_gib:.2f}", error or "ok"]
            )
            if error is None:
                exports[precision] = out
        report.add(
            f"## {size}: pipeline ({params / 1e6:.0f} M parameters)\n\n"
            + table(STEP_HEADER, steps)
            + "\n\nseconds: wall clock; peak RSS: the child process (`python -m zoo ...`, one thread); "
            "size: the files written (run directory, export directory)."
        )
    if args.skip_sampling:
        return

    torch.set_num_threads(1)
    run = zoo.api.load_run(run_dir, device="cpu")
    makers = [("torch fp32", lambda: torch_engine(run, bf16=False))]
    makers += [
        (f"onnxruntime {p}", lambda p=p: onnx_engine(exports[p], p)) for p in ("fp32", "int8", "fp16") if p in exports
    ]
    makers += [(f"onnxruntime {p}", None) for p in args.precisions if p not in exports]
    if not args.skip_bf16:
        makers += [("torch bf16 autocast", lambda: torch_engine(run, bf16=True))]  # slowest without bf16 units: last
    greedy_rows, timing_rows, reference = [], [], None
    for name, make in makers:
        if make is None:
            greedy_rows.append([name, "export failed", "-", "-"])
            timing_rows.append([name, "export failed", "-", "-"])
            continue
        if time.perf_counter() > deadline:
            greedy_rows.append([name, "not run: time budget spent", "-", "-"])
            timing_rows.append([name, "not run: time budget spent", "-", "-"])
            continue
        try:
            engine = make()
            start = time.perf_counter()
            output = engine.sample(GREEDY)  # also the warm-up of the timings
            greedy_seconds = time.perf_counter() - start
        except Exception as error:  # noqa: BLE001 - a failing engine is a result, not the end of the run
            message = first_line(error, with_type=True)
            greedy_rows.append([name, message, "-", "-"])
            timing_rows.append([name, message, "-", "-"])
            continue
        if reference is None:
            reference = output
        greedy_rows.append([name, *agreement(output, reference)])
        print(f"{name}: greedy sample {greedy_seconds:.1f} s: {greedy_rows[-1]}", flush=True)
        if args.greedy_only:
            continue
        one = median_seconds(lambda engine=engine: engine.sample({**SAMPLING, "n": 1}), args.repeats, warmup=0)
        cells = [name, f"{one:.1f}"]
        if args.repeats_8 == 0:
            cells += ["not run (--repeats-8 0)", f"{args.repeats} / 0"]
        elif time.perf_counter() + 8 * one * args.repeats_8 > deadline:
            cells += ["not run: time budget", f"{args.repeats} / 0"]
        else:
            eight = median_seconds(lambda engine=engine: engine.sample({**SAMPLING, "n": 8}), args.repeats_8, warmup=0)
            cells += [f"{eight:.1f}", f"{args.repeats} / {args.repeats_8}"]
        timing_rows.append(cells)
        print(f"{name}: {cells}", flush=True)
        del engine
        gc.collect()
    report.add(
        f"## {size}: greedy tokens against torch fp32\n\n"
        + table(["engine", "tokens equal", "image max abs error", "image mean abs error"], greedy_rows)
        + "\n\nClass 207, cfg 1.5, top-k 1, one 256 px image, seed 0; errors in uint8 levels (0..255)."
    )
    report.add(
        f"## {size}: seconds to sample at 256 px (cfg 4, top-k 900, top-p 0.96, one thread)\n\n"
        + table(["engine", "1 image s", "8 images s", "repeats (1 / 8)"], timing_rows)
        + "\n\nMedians; the greedy sample above is the warm-up (1 image); the 8-image calls have no "
        "warm-up of their own."
    )


STEP_HEADER = ["size", "step", "seconds", "peak RSS GiB", "size GiB", "result"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["d16"], choices=["d16", "d20", "d30"])
    parser.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=PRECISIONS)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/var_deploy"), help="scratch files (GiB)")
    parser.add_argument("--repeats", type=int, default=3, help="timed 1-image calls")
    parser.add_argument("--repeats-8", type=int, default=1, help="timed 8-image calls")
    parser.add_argument("--skip-sampling", action="store_true", help="import and export only")
    parser.add_argument("--budget-minutes", type=float, default=40.0, help="skip what would start later")
    parser.add_argument("--reuse", action="store_true", help="sample from the run and exports already in --workdir")
    parser.add_argument("--greedy-only", action="store_true", help="compare greedy tokens, time nothing")
    parser.add_argument(
        "--skip-bf16", action="store_true", help="leave out torch bf16 autocast (slow without bf16 units)"
    )
    parser.add_argument("--append", action="store_true", help="add to the results file instead of replacing it")
    args = parser.parse_args()
    deadline = time.perf_counter() + args.budget_minutes * 60

    report = Report(RESULTS)
    if args.append and RESULTS.exists():
        report.sections.append(RESULTS.read_text().rstrip("\n"))
    else:
        report.add(
            "# VAR deploy at paper size (random weights, official layout)\n\n"
            f"CPU: {cpu_name()}, {os.cpu_count()} cores (one thread used); "
            f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}."
        )
    report.add(
        f"Run: `python benchmarks/bench_var_deploy.py {' '.join(sys.argv[1:])}`: sizes {', '.join(args.sizes)}; "
        f"precisions {', '.join(args.precisions)}; sampling {'not measured' if args.skip_sampling else 'measured'}."
    )
    try:
        for size in args.sizes:
            bench_size(size, args, report, deadline)
    finally:
        report.write()


if __name__ == "__main__":
    main()
