"""VAR batch-1 latency against the official code (issue 26, item 8): d16, one 256 px image,
class 207, cfg 1.5, no top-k / top-p, random weights in the official layout.

    python benchmarks/bench_var_latency.py --official /work/official-var            # everything
    python benchmarks/bench_var_latency.py --official DIR --threads 2 --repeats 5
    python benchmarks/bench_var_latency.py --official DIR --profile                  # + where time goes
    python benchmarks/bench_var_latency.py                                 # zoo's engines only, printed

The random official files are those of bench_var_deploy.py (same key lists, same seeds); they,
the `zoo import` run directory and the fp32 export (about 6 min and 13 GB of memory, once) are
kept in --cache, outside the repository, and reused. The official code (a checkout of
FoundationVision/VAR, never part of this repository) runs in a child process with its checkout
on sys.path, built by its `build_vae_var` with the files loaded: `autoregressive_infer_cfg` is
timed there. In this process: zoo's torch path (`zoo.api.Run.sample`) and zoo's onnxruntime fp32
path (`zoo.runtime.load(...).sample`). The three engines are timed interleaved (official, torch,
onnxruntime, then again), after one warm-up call each, and the table shows their medians and
the ratios official / engine (above 1: faster than the official code). Every engine uses
--threads threads (torch intra-op threads; onnxruntime intra-op threads). Without --official
only zoo's two engines are timed (interleaved) and printed; the results file, which holds the
official rows, is left as it is.

--profile adds the breakdown: zoo torch per op (torch.profiler, one call), per graph call,
and the time spent between graph calls (the loop's numpy, copies); the same for onnxruntime.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "plugins"), str(ROOT / "exporters")]

import numpy as np  # noqa: E402
import onnxruntime  # noqa: E402
import torch  # noqa: E402
from bench_var_deploy import KEYS, make_official_file  # noqa: E402
from deploy import cpu_name, run_child  # noqa: E402
from report import Report, table  # noqa: E402

import zoo.api  # noqa: E402
import zoo.runtime  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "var_latency.md"
CLASS = 207
CFG = 1.5
SEED = 0
ZOO_OPTIONS = {"classes": [CLASS], "n": 1, "cfg": CFG, "top_k": 0, "top_p": 1.0, "seed": SEED}


# -- the cached files ------------------------------------------------------------------------------


def prepare(cache: Path) -> tuple[Path, Path, Path, Path]:
    """The random official files, their zoo run directory and its fp32 export, made once."""
    cache.mkdir(parents=True, exist_ok=True)
    vae, prior, run_dir, export_dir = (
        cache / "vae_ch160v4096z32.pth",
        cache / "var_d16.pth",
        cache / "run",
        cache / "export_fp32",
    )
    if not (vae.exists() and prior.exists()):
        print("making the random official files", flush=True)
        make_official_file(KEYS / "keys_vae.txt", vae, seed=0)
        make_official_file(KEYS / "keys_var_d16.txt", prior, seed=1)
    if not (run_dir / "config.json").exists():
        print("zoo import", flush=True)
        seconds, _, error = run_child(["import", "var", str(vae), str(prior), "--out", str(run_dir)])
        if error is not None:
            raise SystemExit(f"zoo import failed: {error}")
    if not (export_dir / "manifest.json").exists():
        print("zoo export fp32 (about 6 minutes)", flush=True)
        seconds, peak, error = run_child(
            ["export", "var", "--run", str(run_dir), "--out", str(export_dir), "--precision", "fp32"]
        )
        if error is not None:
            raise SystemExit(f"zoo export failed: {error}")
        print(f"exported in {seconds:.0f} s, peak {peak:.1f} GiB", flush=True)
    return vae, prior, run_dir, export_dir


# -- the official code, in a child process -------------------------------------------------------


def official_child(checkout: Path, vae: Path, prior: Path, threads: int) -> None:
    """Child process: build the official models with `build_vae_var`, load the files, then
    answer one JSON line per request read from stdin ("sample" or "profile")."""
    sys.path.insert(0, str(checkout))
    torch.set_num_threads(threads)
    from models import build_vae_var  # the official checkout's package

    vae_model, var_model = build_vae_var(
        device="cpu",
        patch_nums=(1, 2, 3, 4, 5, 6, 8, 10, 13, 16),
        V=4096,
        Cvae=32,
        ch=160,
        share_quant_resi=4,
        num_classes=1000,
        depth=16,
        shared_aln=False,
    )
    vae_model.load_state_dict(torch.load(vae, map_location="cpu", weights_only=True), strict=True)
    var_model.load_state_dict(torch.load(prior, map_location="cpu", weights_only=True), strict=True)
    for model in (vae_model, var_model):  # as the official demo: eval mode, no gradients
        model.eval()
        model.requires_grad_(False)

    def sample() -> torch.Tensor:
        with torch.inference_mode():
            return var_model.autoregressive_infer_cfg(B=1, label_B=CLASS, g_seed=SEED, cfg=CFG, top_k=0, top_p=0.0)

    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = line.strip()
        if request == "sample":
            print(json.dumps({"seconds": timed(sample)}), flush=True)
        elif request == "profile":
            print(json.dumps({"ops": profile_ops(sample)}), flush=True)


class OfficialEngine:
    """The official code behind a pipe: one child process, kept for the whole run."""

    def __init__(self, checkout: Path, vae: Path, prior: Path, threads: int) -> None:
        command = [sys.executable, __file__, "--child", str(checkout), str(vae), str(prior), "--threads", str(threads)]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self._answer()  # ready

    def _answer(self) -> dict:
        assert self.process.stdout is not None
        for line in self.process.stdout:  # the official constructor prints its own lines first
            if line.startswith("{"):
                return json.loads(line)
        raise SystemExit(f"the official child process ended (exit code {self.process.wait()})")

    def _ask(self, request: str) -> dict:
        assert self.process.stdin is not None
        self.process.stdin.write(request + "\n")
        self.process.stdin.flush()
        return self._answer()

    def sample(self) -> tuple[float, float]:
        wall, cpu = self._ask("sample")["seconds"]
        return wall, cpu

    def profile(self) -> list[list[str]]:
        return self._ask("profile")["ops"]

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait()


def timed(run) -> tuple[float, float]:
    """(wall-clock seconds, CPU seconds of this process) of one call. With one thread per
    engine, the CPU seconds are the engine's own work, much less disturbed than the wall
    clock by other processes on a shared machine."""
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    return time.perf_counter() - wall, time.process_time() - cpu


# -- profiles --------------------------------------------------------------------------------------

PROFILE_ROWS = 12


def profile_ops(run) -> list[list[str]]:
    """torch.profiler over one call: the ops taking most self CPU time, as table rows."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        run()
    events = sorted(profiler.key_averages(), key=lambda event: event.self_cpu_time_total, reverse=True)
    total = sum(event.self_cpu_time_total for event in events) / 1e6
    rows = [[event.key, str(event.count), f"{event.self_cpu_time_total / 1e6:.3f}"] for event in events[:PROFILE_ROWS]]
    return [*rows, ["(all ops)", "-", f"{total:.3f}"]]


class TimedComponents:
    """Wraps a Components (torch or onnxruntime): CPU seconds per graph, and the calls."""

    def __init__(self, inner) -> None:
        self.inner, self.seconds, self.calls = inner, {}, {}

    def __contains__(self, name: str) -> bool:
        return name in self.inner

    def __call__(self, name: str, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        start = time.process_time()
        out = self.inner(name, **inputs)
        group = "embed_k" if name.startswith("embed_") else name
        self.seconds[group] = self.seconds.get(group, 0.0) + time.process_time() - start
        self.calls[group] = self.calls.get(group, 0) + 1
        return out


def graph_breakdown(runtime, sample) -> list[list[str]]:
    """One call with the loop's components timed: seconds per graph, and the rest (the loop's
    numpy between graph calls, making the loop)."""
    timed = TimedComponents(runtime.components.inner)
    runtime.components.inner = timed
    try:
        start = time.process_time()
        sample()
        total = time.process_time() - start
    finally:
        runtime.components.inner = timed.inner
    rows = [[name, str(timed.calls[name]), f"{seconds:.3f}"] for name, seconds in timed.seconds.items()]
    rows.append(["between graphs (loop numpy, sampling, copies)", "-", f"{total - sum(timed.seconds.values()):.3f}"])
    return [*rows, ["total", "-", f"{total:.3f}"]]


# -- the run ---------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/var_latency"), help="files kept between runs (GiB)")
    parser.add_argument("--prepare-only", action="store_true", help="make the files and the export, time nothing")
    parser.add_argument("--official", type=Path, help="a checkout of FoundationVision/VAR (outside this repository)")
    parser.add_argument("--threads", type=int, default=1, help="threads of every engine")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per engine (interleaved)")
    parser.add_argument("--profile", action="store_true", help="add where the time goes (one call each)")
    parser.add_argument("--child", nargs=3, type=Path, help=argparse.SUPPRESS)  # CHECKOUT VAE PRIOR
    args = parser.parse_args()
    if args.child is not None:
        official_child(*args.child, threads=args.threads)
        return
    vae, prior, run_dir, export_dir = prepare(args.cache)
    if args.prepare_only:
        return
    if args.official is not None and not (args.official / "models" / "var.py").exists():
        raise SystemExit("--official must name a checkout of FoundationVision/VAR (with models/var.py)")
    bench(args, vae, prior, run_dir, export_dir)


def bench(args: argparse.Namespace, vae: Path, prior: Path, run_dir: Path, export_dir: Path) -> None:
    torch.set_num_threads(args.threads)
    official = OfficialEngine(args.official, vae, prior, args.threads) if args.official is not None else None
    run = zoo.api.load_run(run_dir, device="cpu")
    loaded = zoo.runtime.load(export_dir, provider="cpu", intra_op_threads=args.threads, inter_op_threads=1)

    def zoo_torch() -> tuple[float, float]:
        return timed(lambda: run.sample(**ZOO_OPTIONS))

    def zoo_onnxruntime() -> tuple[float, float]:
        return timed(lambda: loaded.sample(ZOO_OPTIONS))

    engines = {"zoo torch": zoo_torch, "zoo onnxruntime fp32": zoo_onnxruntime}
    if official is not None:
        engines = {"official torch": official.sample, **engines}
    warmup = {name: engine() for name, engine in engines.items()}
    print("warm-up (wall, CPU s):", {name: f"{w:.2f}, {c:.2f}" for name, (w, c) in warmup.items()}, flush=True)
    walls: dict[str, list[float]] = {name: [] for name in engines}
    cpus: dict[str, list[float]] = {name: [] for name in engines}
    loads = [os.getloadavg()[0]]
    for repeat in range(args.repeats):
        for name, engine in engines.items():
            wall, cpu = engine()
            walls[name].append(wall)
            cpus[name].append(cpu)
        loads.append(os.getloadavg()[0])
        print(
            f"repeat {repeat + 1} (wall, CPU s):",
            {n: f"{walls[n][-1]:.2f}, {cpus[n][-1]:.2f}" for n in engines},
            flush=True,
        )
    wall_median = {name: statistics.median(t) for name, t in walls.items()}
    cpu_median = {name: statistics.median(t) for name, t in cpus.items()}

    def against_official(medians: dict[str, float], name: str) -> list[str]:
        return [f"{medians['official torch'] / medians[name]:.2f}x"] if official is not None else []

    rows = [
        [
            name,
            f"{wall_median[name]:.2f}",
            " / ".join(f"{t:.2f}" for t in walls[name]),
            *against_official(wall_median, name),
            f"{cpu_median[name]:.2f}",
            *against_official(cpu_median, name),
        ]
        for name in engines
    ]
    ratio = ["official / engine"] if official is not None else []
    ratio_cpu = ["official / engine (CPU)"] if official is not None else []
    report = Report(
        RESULTS,
        ("# VAR batch-1 latency against the official code" if official is not None else "# VAR batch-1 latency")
        + "\n\n"
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; CPU: {cpu_name()}, {os.cpu_count()} cores, "
        f"{args.threads} thread(s) per engine; torch {torch.__version__}, onnxruntime {onnxruntime.__version__}; "
        f"load average (1 min) during the timed calls {min(loads):.2f} .. {max(loads):.2f}.\n\n"
        f"Run: `python benchmarks/bench_var_latency.py {' '.join(sys.argv[1:])}`: d16 (random weights, official "
        f"layout), batch 1, 256 px, class {CLASS}, cfg {CFG}, no top-k / top-p, seed {SEED}.",
    )
    report.add(
        "## Seconds per image\n\n"
        + table(
            ["engine", "wall s (median)", "wall s per call", *ratio, "CPU s (median)", *ratio_cpu],
            rows,
        )
        + f"\n\nMedians of {args.repeats} calls per engine, the engines interleaved, after one warm-up call each. "
        "CPU s: the process's CPU time during the call (with one thread, the engine's own work)."
    )
    if args.profile:
        header = ["op", "calls", "self CPU s"]
        if official is not None:
            report.add("## Official torch: ops by self CPU time (one call)\n\n" + table(header, official.profile()))
        runtime = run.plugin.runtime_for(run.model, run.config, run.device)
        options = run.plugin.SampleOptions(**ZOO_OPTIONS)
        with torch.no_grad():
            report.add(
                "## zoo torch: ops by self CPU time (one call)\n\n"
                + table(header, profile_ops(lambda: runtime.sample(options)))
            )
            report.add(
                "## zoo torch: seconds per graph (one call)\n\n"
                + table(["graph", "calls", "CPU s"], graph_breakdown(runtime, lambda: runtime.sample(options)))
            )
        report.add(
            "## zoo onnxruntime fp32: seconds per graph (one call)\n\n"
            + table(
                ["graph", "calls", "CPU s"],
                graph_breakdown(loaded.runtime, lambda: loaded.sample(ZOO_OPTIONS)),
            )
        )
    if official is None:
        print(f"\nnot written to {RESULTS}: it holds the official rows (run with --official to measure them again)")
        return
    official.close()
    report.write()


if __name__ == "__main__":
    main()
