"""The one-command GPU check (issue 26, item 6): does zoo really run on this machine's CUDA?

    python benchmarks/gpu_check.py            # the checks, then the d16 timing table (about 10 min)
    python benchmarks/gpu_check.py --quick    # the checks only (a tiny VAR, a few minutes)

One line per check, `PASS`, `FAIL` or `SKIP`, then what was measured; exit 1 when a check
fails. On a machine without CUDA it prints one `no CUDA` line with what torch and
onnxruntime report, and exits 0 (CI runs that path: tests/test_gpu_check.py).

The checks run on a tiny VAR of the `digits` preset with random weights, exported fp32 into a
temporary directory with zoo's exporter:

- providers: sessions opened by zoo.runtime.sessions on CUDA and TensorRT report that provider
  first (`get_providers()`), and onnxruntime's profile of a greedy sample shows its kernels on
  it (no compute kernel on the CPU, memcpy kernels counted);
- device-resident loop: every value a loop feeds back into a later graph call (VAR's KV cache
  and f_hat, kept `resident` by the loop) is counted by where it lived in between; a numpy
  array is a round trip through host memory (two copies). Measured on zoo's onnxruntime loop
  and its torch loop;
- greedy tokens (top-k 1) on CUDA equal to the CPU's, for onnxruntime and torch;
- training (`zoo train` child processes, the trainer's own levers): a bf16 autocast step with a
  finite loss, `--compile` without falling back to eager, and `--nproc-per-node 2` (replicate)
  where two GPUs exist; what ran is read back from the run's config.json.

Without --quick, a table: seconds per sample of VAR d16 (random weights in the official layout,
imported with `zoo import`, as benchmarks/bench_var_deploy.py) on torch eager, onnxruntime CUDA
and TensorRT at batch 1, 8 and 32; cells past the time budget say so.

torch is imported first: its CUDA wheels bring the CUDA and cuDNN libraries that
onnxruntime-gpu loads, so the README's install is enough.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "plugins"), str(ROOT / "exporters")]

import torch  # noqa: I001 - before onnxruntime, see the docstring
import numpy as np
import onnxruntime as ort

from zoo.errors import ZooError, first_line
from zoo.runtime.resident import Resident

TINY_VAR = {
    "tokenizer": {
        "resolution": 16,
        "channels": 8,
        "channel_multipliers": [1, 2, 2],
        "res_blocks": 1,
        "attention_resolutions": [],
        "code_dim": 8,
        "codebook_size": 32,
        "patch_nums": [1, 2, 3, 4],
    },
    "transformer": {"depth": 2, "width": 32, "heads": 2, "num_classes": 10},
}
TINY_TRAINING = {
    "tokenizer_training": {"steps": 2, "batch_size": 8, "warmup_steps": 0},
    "transformer_training": {"steps": 2, "batch_size": 8, "warmup_steps": 0},
}
GREEDY = {"classes": [1, 7], "n": 2, "cfg": 1.5, "top_k": 1, "seed": 0}
SAMPLING = {"classes": [207], "cfg": 4.0, "top_k": 900, "top_p": 0.96, "seed": 0}
SHORT = {"CUDAExecutionProvider": "CUDA", "TensorrtExecutionProvider": "TensorRT", "CPUExecutionProvider": "CPU"}
# Kernels that hold a model's arithmetic: on the CPU they mean a silent fallback. (onnxruntime's
# CUDA provider keeps shape arithmetic on the CPU on purpose; those are only listed.)
COMPUTE_OPS = {"MatMul", "Gemm", "Conv", "ConvTranspose", "Softmax", "LayerNormalization", "FusedMatMul", "Einsum"}
NAME_WIDTH = 30


@dataclass
class Check:
    name: str
    status: str  # PASS, FAIL or SKIP
    detail: str

    def line(self) -> str:
        return f"{self.status:<4}  {self.name:<{NAME_WIDTH}}  {self.detail}"


# -- is there CUDA? ----------------------------------------------------------------------------


@dataclass
class CudaFound:
    torch_devices: list[str]
    ort_providers: list[str]
    ort_cuda_failure: str | None  # None: a session started on CUDAExecutionProvider

    @property
    def ort_cuda(self) -> bool:
        return self.ort_cuda_failure is None

    @property
    def any(self) -> bool:
        return bool(self.torch_devices) or self.ort_cuda


def probe_graph(path: Path) -> Path:
    """A one-node ONNX graph (Identity) to try a provider on."""
    import onnx
    from onnx import TensorProto, helper

    value = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    output = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe", [value], [output])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    return path


def find_cuda(work: Path) -> CudaFound:
    """What torch sees, and whether zoo's provider choice really starts a session on CUDA."""
    from zoo.runtime.sessions import open_sessions, session_options

    devices = (
        [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    )
    _, report = open_sessions({"probe": probe_graph(work / "probe.onnx")}, None, session_options())
    failure = None
    if report.used != "CUDAExecutionProvider":
        failure = report.failures.get("CUDAExecutionProvider", "not offered by this onnxruntime build")
    return CudaFound(devices, ort.get_available_providers(), failure)


def no_cuda_line(found: CudaFound) -> str:
    built = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "built without CUDA"
    return (
        f"no CUDA: torch {torch.__version__} ({built}) reports torch.cuda.is_available() "
        f"{torch.cuda.is_available()}, {torch.cuda.device_count()} devices; onnxruntime {ort.__version__} offers "
        f"{', '.join(found.ort_providers)} and CUDAExecutionProvider did not start ({found.ort_cuda_failure}). "
        "Nothing to check here; run this on a machine with an NVIDIA GPU."
    )


# -- where kernels ran (onnxruntime profiles) ----------------------------------------------------


def kernel_placement(profile_files: list[Path]) -> Counter[tuple[str, str]]:
    """(provider, op) -> kernels run, from onnxruntime profile files."""
    counts: Counter[tuple[str, str]] = Counter()
    for path in profile_files:
        for event in json.loads(Path(path).read_text()):
            if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
                counts[(event["args"].get("provider", "?"), event["args"].get("op_name", "?"))] += 1
    return counts


def placement_check(name: str, wanted: str, started: list[str], kernels: Counter[tuple[str, str]]) -> Check:
    """PASS when every session started on `wanted` (first of get_providers()), some kernels ran
    on it and no compute kernel ran on the CPU instead."""
    total = sum(kernels.values())
    on_wanted = sum(n for (provider, _), n in kernels.items() if provider == wanted)
    cpu_ops = Counter({op: n for (provider, op), n in kernels.items() if provider == "CPUExecutionProvider"})
    memcpy = sum(n for (_, op), n in kernels.items() if op.startswith("Memcpy"))
    fallback = sorted(op for op in cpu_ops if op in COMPUTE_OPS)
    others = sorted(set(started) - {wanted})
    ok = not others and on_wanted > 0 and (wanted == "CPUExecutionProvider" or not fallback)
    cpu_text = ", ".join(f"{op} {n}" for op, n in cpu_ops.most_common(4)) or "none"
    detail = f"{on_wanted}/{total} kernels on {SHORT.get(wanted, wanted)}; on CPU: {cpu_text}; memcpy kernels {memcpy}"
    if others:
        detail = f"sessions started on {', '.join(others)}, not {wanted}; " + detail
    if fallback and wanted != "CPUExecutionProvider":
        detail += f"; compute fell back to CPU: {', '.join(fallback)}"
    return Check(name, "PASS" if ok else "FAIL", detail)


# -- values a loop feeds back, by where they lived -------------------------------------------------


def location(value: Any) -> str:
    """'cpu' for numpy arrays; a Resident's device; an OrtValue's or a torch tensor's device type."""
    if isinstance(value, np.ndarray):
        return "cpu"
    if isinstance(value, Resident):
        return value.device
    device_name = getattr(value, "device_name", None)  # onnxruntime OrtValue
    if callable(device_name):
        return str(device_name()).lower()
    return str(getattr(getattr(value, "device", None), "type", "cpu"))  # torch.Tensor


class FeedbackCounter:
    """Components (zoo.runtime.loop's protocol) that count the values a loop feeds back, an
    output of one call passed as an input of a later one, by where each lived in between.
    Keeps the last outputs of each component alive, so an object's id stays its own."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.last_outputs: dict[str, dict[str, Any]] = {}
        self.fed_back: Counter[tuple[str, str]] = Counter()  # (input name, location) -> times
        self.host_bytes = 0

    def __contains__(self, name: str) -> bool:
        return name in self.inner

    def __call__(self, name: str, *, resident: tuple[str, ...] = (), **inputs: Any) -> dict[str, Any]:
        produced = {id(value) for outputs in self.last_outputs.values() for value in outputs.values()}
        for key, value in inputs.items():
            if id(value) in produced:
                where = location(value)
                self.fed_back[(key, where)] += 1
                if where == "cpu":
                    self.host_bytes += 2 * int(getattr(value, "nbytes", 0))  # out to the host and back in
        outputs = self.inner(name, resident=resident, **inputs)
        self.last_outputs[name] = dict(outputs)
        return outputs

    def to_host(self, value: Any) -> np.ndarray:
        return self.inner.to_host(value)

    def summary(self) -> tuple[int, int, str]:
        """(values fed back, of them through host memory, a line naming them)."""
        total = sum(self.fed_back.values())
        host = sum(n for (_, where), n in self.fed_back.items() if where == "cpu")
        parts = [f"{key} {n}x on {where}" for (key, where), n in sorted(self.fed_back.items())]
        return total, host, ", ".join(parts) or "nothing fed back"


def residency_check(name: str, counter: FeedbackCounter) -> Check:
    total, host, text = counter.summary()
    if total == 0:
        return Check(name, "FAIL", "the loop fed nothing back: nothing was measured")
    detail = (
        f"{host}/{total} fed-back values went through host memory ({text}; {counter.host_bytes / 1e6:.2f} MB copied)"
    )
    return Check(name, "PASS" if host == 0 else "FAIL", detail)


# -- greedy tokens ---------------------------------------------------------------------------------


def tokens_check(name: str, tokens: np.ndarray, reference: np.ndarray, patch_nums: list[int]) -> Check:
    equal = tokens == reference
    if equal.all():
        return Check(name, "PASS", f"{equal.size}/{equal.size} tokens equal")
    starts = np.cumsum([0] + [side * side for side in patch_nums])
    first = int(np.argwhere(~equal)[:, 1].min())
    scale = int(np.searchsorted(starts, first, side="right") - 1)
    return Check(
        name,
        "FAIL",
        f"{int(equal.sum())}/{equal.size} tokens equal; the first difference is at scale {scale} of "
        f"{len(patch_nums)} (random weights have near-ties: TF32 arithmetic can flip one)",
    )


# -- training (zoo train child processes) ----------------------------------------------------------


def train_check(name: str, work: Path, flags: list[str], expect: dict[str, Any]) -> Check:
    """`zoo train var` on the tiny config with `flags`; PASS when it finishes, every stage's
    loss is finite, no lever fell back (a `torch.compile failed` note) and the run's recorded
    session has the `expect`ed fields."""
    config, out = work / f"{name.replace(' ', '_')}.json", work / f"run_{name.replace(' ', '_')}"
    config.write_text(json.dumps({**TINY_VAR, **TINY_TRAINING}))
    command = [sys.executable, "-m", "zoo", "train", "var", "--preset", "digits", "--config", str(config)]
    command += ["--out", str(out), "--json", *flags]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=work)
    seconds = time.perf_counter() - start
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0:
        lines = [line for line in (done.stderr + done.stdout).splitlines() if line.strip()]
        return Check(name, "FAIL", f"exit {done.returncode}: {lines[-1] if lines else 'no output'}")
    return training_result(name, events, json.loads((out / "config.json").read_text())["sessions"][-1], expect, seconds)


def training_result(
    name: str, events: list[dict[str, Any]], session: dict[str, Any], expect: dict[str, Any], seconds: float
) -> Check:
    losses = {e["stage"]: e["metrics"].get("loss") for e in events if e.get("event") == "stage_end"}
    notes = [e["text"] for e in events if e.get("event") == "message" and "failed" in e["text"]]
    wrong = {key: session.get(key) for key, value in expect.items() if session.get(key) != value}
    finite = bool(losses) and all(isinstance(v, float) and np.isfinite(v) for v in losses.values())
    loss_text = ", ".join(f"{stage} loss {value:.4g}" for stage, value in losses.items())
    detail = f"{loss_text or 'no stage finished'}; {session.get('engine')}, {session.get('device')}, {seconds:.0f} s"
    if notes:
        detail += f"; {notes[0]}"
    if wrong:
        detail += f"; recorded {wrong}, expected {expect}"
    return Check(name, "PASS" if finite and not notes and not wrong else "FAIL", detail)


# -- the checks on the tiny VAR --------------------------------------------------------------------


def tiny_export(work: Path) -> tuple[Any, Path]:
    import zoo.api

    plugin, config, model = zoo.api.create_model("var", preset="digits", **TINY_VAR)
    run = zoo.api.Run(plugin, config, model.eval(), work / "tiny_run", torch.device("cpu"))
    names = [c.name for c in plugin.export_components(model, config) if c.name != "encoder"]
    out = work / "tiny_export"
    run.export(out, precision="fp32", components=names)
    return run, out


def profiled_runtime(export_dir: Path, provider: str, profile_prefix: Path) -> tuple[Any, dict[str, Any]]:
    """zoo's sessions (open_sessions, OnnxComponents) with onnxruntime's profiling on, under the
    plugin's loop: zoo.runtime.load's pieces, since `load` takes no session options."""
    from zoo.runtime.discovery import runtime_class
    from zoo.runtime.manifest import load_assets, read_manifest
    from zoo.runtime.sessions import OnnxComponents, binding_device, open_sessions, session_options

    manifest = read_manifest(export_dir, None)
    options = session_options()
    options.enable_profiling = True
    options.profile_file_prefix = str(profile_prefix)
    graphs = {name: export_dir / spec["file"] for name, spec in manifest["components"].items()}
    sessions, report = open_sessions(graphs, provider, options)
    components = OnnxComponents(sessions, manifest["components"], binding_device(report.used))
    arrays, files = load_assets(export_dir, manifest)
    runtime = runtime_class(manifest["model"], export_dir)(components, manifest["config"], arrays, files)
    return runtime, sessions


def onnx_checks(found: CudaFound, run: Any, export_dir: Path, work: Path) -> list[Check]:
    from zoo_var.config import VARSampleOptions

    if not found.ort_cuda:
        return [Check("onnxruntime CUDA", "FAIL", f"CUDAExecutionProvider did not start: {found.ort_cuda_failure}")]
    patch_nums = run.config.tokenizer.patch_nums
    options = VARSampleOptions(**GREEDY)
    cpu_runtime, _ = profiled_runtime(export_dir, "cpu", work / "profile_cpu")
    reference = cpu_runtime.sample(options).extras["tokens"]
    checks = []
    for provider, wanted in (("cuda", "CUDAExecutionProvider"), ("tensorrt", "TensorrtExecutionProvider")):
        label = SHORT[wanted]
        try:
            runtime, sessions = profiled_runtime(export_dir, provider, work / f"profile_{provider}")
        except ZooError as error:
            status = "FAIL" if provider == "cuda" else "SKIP"
            checks.append(Check(f"onnxruntime {label} provider", status, first_line(error, 300)))
            continue
        counter = FeedbackCounter(runtime.components)
        runtime.components = counter
        tokens = runtime.sample(options).extras["tokens"]
        started = [session.get_providers()[0] for session in sessions.values()]
        profiles = [Path(session.end_profiling()) for session in sessions.values()]
        checks.append(placement_check(f"onnxruntime {label} provider", wanted, started, kernel_placement(profiles)))
        checks.append(residency_check(f"onnxruntime {label} cache on device", counter))
        checks.append(tokens_check(f"onnxruntime {label} greedy = CPU", tokens, reference, patch_nums))
    return checks


def torch_checks(found: CudaFound, run: Any) -> list[Check]:
    from zoo_var.config import VARSampleOptions

    if not found.torch_devices:
        return [Check("torch CUDA", "SKIP", f"torch {torch.__version__} sees no CUDA device")]
    options = VARSampleOptions(**GREEDY)
    reference = run.plugin.runtime_for(run.model, run.config, torch.device("cpu")).sample(options).extras["tokens"]
    runtime = run.plugin.runtime_for(run.model, run.config, torch.device("cuda"))
    counter = FeedbackCounter(runtime.components)
    runtime.components = counter
    tokens = runtime.sample(options).extras["tokens"]
    run.model.to("cpu")
    return [
        residency_check("torch CUDA cache on device", counter),
        tokens_check("torch CUDA greedy = CPU", tokens, reference, run.config.tokenizer.patch_nums),
    ]


def training_checks(found: CudaFound, work: Path) -> list[Check]:
    if not found.torch_devices:
        return [Check("training on CUDA", "SKIP", f"torch {torch.__version__} sees no CUDA device")]
    checks = [
        train_check(
            "bf16 autocast train step", work, ["--device", "cuda", "--precision", "bf16"], {"precision": "bf16"}
        ),
        train_check("torch.compile train step", work, ["--device", "cuda", "--compile"], {}),
    ]
    if len(found.torch_devices) < 2:
        checks.append(Check("2-GPU replicate step", "SKIP", f"{len(found.torch_devices)} GPU here, 2 needed"))
    else:
        flags = ["--device", "cuda", "--nproc-per-node", "2"]
        checks.append(train_check("2-GPU replicate step", work, flags, {"world_size": 2}))
    return checks


# -- the d16 timing table --------------------------------------------------------------------------


def timing_table(work: Path, deadline: float, repeats: int) -> str:
    from bench_var_deploy import KEYS, make_official_file
    from report import table

    import zoo.api
    import zoo.runtime

    d16 = work / "d16"
    d16.mkdir(parents=True, exist_ok=True)
    run_dir, export_dir = d16 / "run", d16 / "export_fp32"
    if not (run_dir / "config.json").exists():
        vae, prior = d16 / "vae_ch160v4096z32.pth", d16 / "var_d16.pth"
        make_official_file(KEYS / "keys_vae.txt", vae, seed=0)
        make_official_file(KEYS / "keys_var_d16.txt", prior, seed=1)
        zoo.api.import_checkpoint("var", [vae, prior], run_dir)
        vae.unlink(), prior.unlink()
    run = zoo.api.load_run(run_dir, device="cuda")
    if not (export_dir / "manifest.json").exists():
        names = [c.name for c in run.plugin.export_components(run.model, run.config) if c.name != "encoder"]
        run.export(export_dir, precision="fp32", device="cuda", components=names)
    engines: list[tuple[str, Callable[[], Callable[[dict[str, Any]], Any]]]] = [
        ("torch eager (CUDA)", lambda: lambda options: run.sample(**options)),
        ("onnxruntime CUDA", lambda: zoo.runtime.load(export_dir, provider="cuda").sample),
        ("onnxruntime TensorRT", lambda: zoo.runtime.load(export_dir, provider="tensorrt").sample),
    ]
    rows = []
    for name, make in engines:
        row: list[object] = [name]
        try:
            sample = make()
        except ZooError as error:
            rows.append([name, *[first_line(error, 80)] * 3])
            continue
        for batch in (1, 8, 32):
            row.append(timed(sample, {**SAMPLING, "n": batch}, repeats, deadline))
        rows.append(row)
    return (
        "VAR d16 (random weights, official layout), 256 px, cfg 4, top-k 900, top-p 0.96: seconds per sample call, "
        f"median of {repeats} after one warm-up\n" + table(["engine", "batch 1", "batch 8", "batch 32"], rows)
    )


def timed(sample: Callable[[dict[str, Any]], Any], options: dict[str, Any], repeats: int, deadline: float) -> str:
    from zoo.runtime.loop import sampling_deadline

    times = []
    try:
        for _ in range(repeats + 1):
            left = deadline - time.perf_counter()
            if left <= 0:
                break
            with sampling_deadline(left):
                start = time.perf_counter()
                sample(options)
                times.append(time.perf_counter() - start)
    except Exception as error:  # noqa: BLE001 - an engine that fails is a cell of the table
        return first_line(error, 80, with_type=True)
    if len(times) < 2:
        return "not run: time budget spent"
    return f"{float(np.median(times[1:])):.2f}"


# -- main ------------------------------------------------------------------------------------------


def guarded(name: str, run: Callable[[], list[Check]], deadline: float) -> list[Check]:
    """A check that raises is a FAIL with its one line; past the budget, a SKIP."""
    if time.perf_counter() > deadline:
        return [Check(name, "SKIP", "not run: time budget spent")]
    try:
        return run()
    except Exception as error:  # noqa: BLE001 - a crash is a failed check, the others still run
        return [Check(name, "FAIL", first_line(error, 300, with_type=True))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="skip the d16 timing table")
    parser.add_argument("--budget-minutes", type=float, default=10.0, help="skip what would start later")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per table cell")
    parser.add_argument("--workdir", type=Path, help="keep (and reuse) the d16 files here instead of a temp dir")
    args = parser.parse_args(argv)
    deadline = time.perf_counter() + args.budget_minutes * 60
    work = Path(tempfile.mkdtemp(prefix="zoo_gpu_check_"))
    try:
        found = find_cuda(work)
        if not found.any:
            print(no_cuda_line(found), flush=True)
            return 0
        print(
            f"GPUs: {', '.join(found.torch_devices) or 'none in torch'}; torch {torch.__version__}, onnxruntime {ort.__version__}"
        )
        run, export_dir = tiny_export(work)
        checks: list[Check] = []
        for name, part in (
            ("onnxruntime", lambda: onnx_checks(found, run, export_dir, work)),
            ("torch", lambda: torch_checks(found, run)),
            ("training", lambda: training_checks(found, work)),
        ):
            for check in guarded(name, part, deadline):
                print(check.line(), flush=True)
                checks.append(check)
        if not args.quick and found.torch_devices:
            table_dir = args.workdir or work
            os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
            try:
                print(timing_table(table_dir, deadline, args.repeats), flush=True)
            except Exception as error:  # noqa: BLE001 - the checks above stand without the table
                print(f"timing table not made: {first_line(error, 300, with_type=True)}", flush=True)
        return 1 if any(check.status == "FAIL" for check in checks) else 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
