"""One training step at the paper sizes, and the levers of zoo.scale: peak memory and seconds
per step with and without activation checkpointing, fp32 and bf16 autocast; torch.compile
against eager on each plugin's default preset; the AdamW kernels.

    python benchmarks/bench_train_step.py                 # everything (about 90 CPU minutes)
    python benchmarks/bench_train_step.py --only adamw    # sections: adamw, step, compile, d30

Each configuration runs in its own child process (this file with --child), on 2 threads, so
its peak RSS (wait4's ru_maxrss) is its own. The child drives the real trainer
(zoo.trainer.Trainer): `_build_model` applies the levers, `_prepare_stage` freezes, builds the
stage's data and the optimizers, and `_train_step` runs the stage's loss, backward pass and
optimizer step under the run's autocast -- the trainer's step without its data loader and
logging, on one fixed batch from the stage's data set. A watchdog kills a child whose RSS
passes --max-gib (the machine's memory is shared). Rows are kept in
benchmarks/results/train_step.jsonl (a re-run replaces its own rows) and the tables are
written to benchmarks/results/train_step.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
ROWS_FILE = RESULTS / "train_step.jsonl"
TABLE_FILE = RESULTS / "train_step.md"
GiB = 2**30
THREADS = 2
HARD_DEADLINE: float | None = None  # time.time() past which the watchdog stops any child


# -- the child: one configuration --------------------------------------------------------------


def _status_gib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024 / GiB
    return float("nan")


def _few_images(count: int) -> None:
    """VAR's transformer stage encodes its whole image set through the tokenizer first (512
    photos at 256 px: many CPU minutes); the benchmark encodes only the first `count`."""
    from torch.utils.data import Subset

    import zoo_var.data

    full = zoo_var.data.image_dataset
    zoo_var.data.image_dataset = lambda config, split: Subset(full(config, split), range(count))


def _few_quantart_images(count: int) -> None:
    """QuantArt's transfer stage encodes every content photo and style image through both
    VQGANs first (at 256 px: many CPU minutes); the benchmark encodes only the first `count`."""
    import zoo_quantart.data

    content, style = zoo_quantart.data.content_images, zoo_quantart.data.style_images
    zoo_quantart.data.content_images = lambda config, split="train", *_, **__: content(config, split, count)
    zoo_quantart.data.style_images = lambda config, split="train", *_, **__: style(config, split, count)


def child_step(spec: dict) -> dict:
    import torch
    from timing import OverTime, time_cap

    torch.set_num_threads(THREADS)
    from zoo.api import resolve_config
    from zoo.trainer import Trainer, TrainOptions, to_device

    assignments = [
        f"scale.activation_checkpointing={str(spec['checkpointing']).lower()}",
        f"scale.compile={str(spec.get('compile', False)).lower()}",
    ]
    plugin, preset, config = resolve_config(spec["model"], spec["preset"], assignments=assignments)
    if plugin.name == "var" and spec["stage"] == "transformer" and spec["preset"] != "digits":
        _few_images(max(2, spec.get("batch") or 2))
    if plugin.name == "quantart" and spec["stage"] == "transfer" and spec["preset"] != "tiny":
        _few_quantart_images(max(4, spec.get("batch") or 4))
    messages: list[str] = []
    run_dir = Path(tempfile.mkdtemp(prefix="bench-step-"))
    trainer = Trainer(plugin, config, run_dir, preset, TrainOptions(precision=spec["precision"], progress="quiet"))

    def message(text: str) -> None:
        messages.append(text)
        print(text, file=sys.stderr, flush=True)

    trainer.reporter.message = message  # type: ignore[method-assign]
    names = [stage.name for stage in trainer.stages]
    index = names.index(spec["stage"])
    stage = trainer.stages[index]
    if spec.get("batch"):
        stage = dataclasses.replace(stage, batch_size=spec["batch"])
    torch.manual_seed(config.seed)
    model = trainer._build_model()
    state = trainer._prepare_stage(model, stage, index, [], None)
    built_gib = _status_gib("VmRSS")
    trained = sum(p.numel() for params in state.param_lists for p in params)
    if spec.get("no_optimizer"):
        # forward + backward only: each gradient is freed as soon as it is accumulated, so
        # neither gradients nor optimizer state are ever held (the optimizer finds no grads)
        for params in state.param_lists:
            for param in params:
                param.register_post_accumulate_grad_hook(lambda p: setattr(p, "grad", None))
    batch = to_device(next(iter(trainer._loader(state))), trainer.device)
    times: list[float] = []
    after_first = float("nan")
    over = None
    try:
        with time_cap(spec["cap"]):
            for step in range(spec["steps"]):
                start = time.perf_counter()
                trainer._train_step(state, step, batch)
                times.append(time.perf_counter() - start)
                if step == 0:
                    after_first = _status_gib("VmRSS")
                print(
                    f"  step {step}: {times[-1]:.2f} s, rss {_status_gib('VmRSS'):.2f} GiB", file=sys.stderr, flush=True
                )
    except OverTime:
        over = spec["cap"]
    return {
        "built_gib": built_gib,
        "after_first_gib": after_first,
        "hwm_gib": _status_gib("VmHWM"),
        "times": times,
        "over": over,
        "trained_params": trained,
        "stage_batch": stage.batch_size,
        "messages": messages,
    }


def child_adamw(spec: dict) -> dict:
    import torch

    torch.set_num_threads(THREADS)
    from timing import median_seconds

    from zoo.api import resolve_config
    from zoo.trainer import build_optimizer, trained_parameters

    plugin, _, config = resolve_config(spec["model"], spec["preset"])
    torch.manual_seed(0)
    model = plugin.build(config)
    stage = next(s for s in plugin.stages(config) if s.name == spec["stage"])
    optimizer_spec = stage.optimizers[0]
    params = trained_parameters(model, optimizer_spec)
    for param in params:
        param.grad = torch.randn_like(param) * 1e-3
    rows = {}
    for kernel, keyword in (
        ("fused", {"fused": True}),
        ("foreach", {"foreach": True}),
        ("for-loop", {"foreach": False}),
    ):
        optimizer = build_optimizer(optimizer_spec, model, keyword)
        rows[kernel] = median_seconds(optimizer.step, repeats=spec["repeats"], warmup=1)
        print(f"  {kernel}: {rows[kernel]:.3f} s", file=sys.stderr, flush=True)
        del optimizer
    return {"params": sum(p.numel() for p in params), "tensors": len(params), "seconds": rows}


# -- the parent: children, watchdog, tables ----------------------------------------------------


def run_child(spec: dict, max_gib: float, wall_cap: float) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS), "MKL_NUM_THREADS": str(THREADS)}
    start = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, __file__, "--child", json.dumps(spec)], env=env, stdout=subprocess.PIPE, text=True
    )
    killed: list[str] = []

    def watch() -> None:
        status = Path(f"/proc/{process.pid}/status")
        while process.poll() is None:
            try:
                rss = next(
                    int(line.split()[1]) for line in status.read_text().splitlines() if line.startswith("VmRSS:")
                )
            except (OSError, StopIteration):
                return
            if rss * 1024 / GiB > max_gib:
                killed.append(f"over {max_gib:g} GiB (killed)")
                process.kill()
                return
            if HARD_DEADLINE and time.time() > HARD_DEADLINE:
                killed.append("stopped at the end of the benchmark's time budget")
                process.kill()
                return
            if time.perf_counter() - start > wall_cap:
                killed.append(f"over {wall_cap / 60:.0f} min wall incl. building, warm-up step unfinished (killed)")
                process.kill()
                return
            time.sleep(0.2)

    watchdog = threading.Thread(target=watch, daemon=True)
    watchdog.start()
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    watchdog.join()
    result: dict = {
        "wall_s": time.perf_counter() - start,
        "peak_gib": usage.ru_maxrss * 1024 / GiB,
        "load_average": os.getloadavg()[1],  # other processes on the machine slow every step
    }
    lines = [line for line in output.splitlines() if line.startswith("RESULT ")]
    if killed:
        result["error"] = killed[0]
        if "wall" in killed[0]:
            result["over"] = wall_cap
    elif lines:
        result.update(json.loads(lines[-1][len("RESULT ") :]))
    else:
        result["error"] = f"exit code {os.waitstatus_to_exitcode(status)}: {output.strip().splitlines()[-1:] or ''}"
    return result


def load_rows() -> dict[str, dict]:
    rows: dict[str, dict] = {}
    if ROWS_FILE.exists():
        for line in ROWS_FILE.read_text().splitlines():
            row = json.loads(line)
            rows[row["key"]] = row
    return rows


def save_row(row: dict) -> None:
    rows = load_rows()
    rows[row["key"]] = row
    ROWS_FILE.parent.mkdir(parents=True, exist_ok=True)
    ROWS_FILE.write_text("".join(json.dumps(r) + "\n" for r in rows.values()))


def fmt_gib(value: float | None) -> str:
    return "-" if value is None or value != value else f"{value:.2f}"


def steady(result: dict, skip: int = 1) -> float | None:
    timed = result.get("times", [])[skip:]
    return statistics.median(timed) if timed else None


def step_cell(result: dict) -> str:
    if result.get("error"):
        return result["error"]
    seconds = steady(result)
    if seconds is None:
        first = result.get("times", [])
        done = f"; warm-up step {first[0]:.0f} s" if first else "; warm-up step unfinished"
        return f"over {result['over'] / 60:g} min{done}"
    timed = result["times"][1:]
    each = ", ".join(f"{t:.1f}" for t in timed)
    return f"{seconds:.1f} (median of {each})" if len(timed) > 1 else f"{seconds:.1f} (1 step)"


STEP_HEADER = (
    "| model | preset | stage | batch | precision | checkpointing | measured | s / step | "
    "RSS built (GiB) | RSS after step 1 (GiB) | peak RSS (GiB) |\n|---|---|---|---|---|---|---|---|---|---|---|"
)
COMPILE_HEADER = (
    "| model | preset | stage | batch | eager s / step | compiled s / step | speed-up | first step eager (s) | "
    "first step compiled (s) | one-off compile (s) | note |\n|---|---|---|---|---|---|---|---|---|---|---|"
)


def step_line(row: dict) -> str:
    spec, result = row["spec"], row["result"]
    what = "fwd+bwd, grads freed, no optimizer" if spec.get("no_optimizer") else "full step (optimizer incl.)"
    if row.get("skipped"):
        return (
            f"| {spec['model']} | {spec['preset']} | {spec['stage']} | {spec['batch']} | {spec['precision']} | "
            f"{'yes' if spec['checkpointing'] else 'no'} | {what} | not run: {row['skipped']} | - | - | - |"
        )
    return (
        f"| {spec['model']} | {spec['preset']} | {spec['stage']} | {spec['batch']} | {spec['precision']} | "
        f"{'yes' if spec['checkpointing'] else 'no'} | {what} | {step_cell(result)} | {fmt_gib(result.get('built_gib'))} | "
        f"{fmt_gib(result.get('after_first_gib'))} | {fmt_gib(result.get('peak_gib'))} |"
    )


def compile_line(eager: dict, compiled: dict) -> str:
    spec = eager["spec"]
    e, c = eager["result"], compiled["result"]
    es, cs = steady(e, 2), steady(c, 2)
    if c.get("over") and not c.get("times"):
        c = dict(c, error=f"compiled: over {c['over'] / 60:g} min, first step unfinished")
    ratio = f"{es / cs:.2f}x" if es and cs else "-"
    e1 = e.get("times", [None])[0]
    c1 = c.get("times", [None])[0]
    one_off = f"{c1 - e1:.1f}" if e1 is not None and c1 is not None else "-"
    notes = [m for m in c.get("messages", []) if "compile" in m] + [x for x in (e.get("error"), c.get("error")) if x]
    return (
        f"| {spec['model']} | {spec['preset']} | {spec['stage']} | {e.get('stage_batch', '-')} | "
        f"{f'{es:.3f}' if es else '-'} | {f'{cs:.3f}' if cs else '-'} | {ratio} | "
        f"{f'{e1:.2f}' if e1 is not None else '-'} | {f'{c1:.2f}' if c1 is not None else '-'} | {one_off} | "
        f"{'; '.join(notes)[:300] or 'compiled, no fallback'} |"
    )


def adamw_table(row: dict) -> str:
    result = row["result"]
    if result.get("error"):
        return f"AdamW on {row['spec']['preset']}: {result['error']}"
    seconds = result["seconds"]
    loop = seconds["for-loop"]
    lines = [
        f"AdamW step over the trainable parameters of var `{row['spec']['preset']}` stage `{row['spec']['stage']}` "
        f"({result['params'] / 1e6:.1f} M parameters in {result['tensors']} tensors, random gradients), "
        f"median of {row['spec']['repeats']} steps after 1 warm-up, {THREADS} threads:",
        "",
        "| kernel | s / step | speed vs for-loop |",
        "|---|---|---|",
    ]
    lines += [f"| {k} | {v:.3f} | {loop / v:.2f}x |" for k, v in seconds.items()]
    return "\n".join(lines)


def write_tables(machine: str) -> str:
    rows = load_rows()
    parts = [
        "# One training step: memory, checkpointing, bf16, compile, AdamW kernels",
        "",
        machine,
        "",
        "Method: `python benchmarks/bench_train_step.py` (see its docstring). Each configuration is a child "
        "process on 2 threads driving the real `zoo.trainer.Trainer`: `_build_model` (levers applied), "
        "`_prepare_stage` (freeze, stage data, optimizers), then `_train_step` on one fixed batch of the stage's "
        "data set (loss, backward, grad clipping, optimizer step, under the run's autocast); no data loader "
        "or logging inside the timed step. s / step: median of the steps after the first (warm-up) one. "
        "RSS built: resident memory after model + optimizers are built (AdamW allocates its moments at "
        "its first step, so these are not yet in). RSS after step 1: weights + gradients + optimizer state "
        "resident after the first step. Peak RSS: the child's ru_maxrss (includes ~0.5 GiB of Python/torch). "
        "Peak minus 'after step 1' is roughly the activation memory. VAR's transformer stage (d16, d30): its token "
        "data set is the first 2 photos encoded by the (freshly initialised) tokenizer instead of all 512; "
        "QuantArt's transfer stage (paper): the first 4 content photos and style images encoded by both "
        "VQGANs instead of all (encoding takes many CPU minutes and is not part of a step).",
    ]
    step_rows = [r for r in rows.values() if r["section"] == "step"]
    if step_rows:
        parts += ["", "## Training step", "", STEP_HEADER, *[step_line(r) for r in step_rows]]
    compiles = {r["key"]: r for r in rows.values() if r["section"] == "compile"}
    pairs = [
        (compiles[k], compiles[k.replace(":eager", ":compiled")])
        for k in compiles
        if k.endswith(":eager") and k.replace(":eager", ":compiled") in compiles
    ]
    if pairs:
        parts += [
            "",
            "## torch.compile (scale.compile=true) against eager, default presets",
            "",
            "Each stage at its preset's batch size, fp32, eager and compiled children run back to back. "
            "s / step: median of steps 3-4 (steps 1-2 warm up: compilation, recompilation). One-off compile: "
            "first compiled step minus first eager step.",
            "",
            COMPILE_HEADER,
            *[compile_line(e, c) for e, c in pairs],
        ]
    adamw = [r for r in rows.values() if r["section"] == "adamw"]
    if adamw:
        parts += ["", "## AdamW kernels", "", *[adamw_table(r) for r in adamw]]
    d30 = [
        r["result"]["trained_params"]
        for r in step_rows
        if r["spec"]["preset"] == "d30" and r["result"].get("trained_params")
    ]
    if d30:
        parts += [
            "",
            "## var d30",
            "",
            D30_NOTE.format(params=d30[0] / 1e9, gb=16 * d30[0] / 1e9, gib=16 * d30[0] / GiB, weights=4 * d30[0] / GiB),
        ]
    text = "\n".join(parts) + "\n"
    TABLE_FILE.write_text(text)
    return text


# -- the plan ---------------------------------------------------------------------------------

VARIANTS = [("fp32", False), ("fp32", True), ("bf16", False), ("bf16", True)]


def step_plan(args: argparse.Namespace) -> list[dict]:
    plan = []
    for model, preset, stage, batches in (
        ("var", "d16", "transformer", (1, 2)),
        ("quantart", "paper", "transfer", (1, 2)),
        ("multimodal_caption", "engravings", "joint", (1, 2)),
    ):
        for batch in [b for b in batches if b in args.batches]:
            for precision, checkpointing in VARIANTS:
                plan.append(
                    {
                        "model": model,
                        "preset": preset,
                        "stage": stage,
                        "batch": batch,
                        "precision": precision,
                        "checkpointing": checkpointing,
                        "steps": args.steps,
                        "cap": args.bf16_cap if precision == "bf16" else args.cap,
                    }
                )
    return plan


def d30_plan(args: argparse.Namespace) -> list[dict]:
    plan = []
    for checkpointing in (True, False):
        plan.append(
            {
                "model": "var",
                "preset": "d30",
                "stage": "transformer",
                "batch": 1,
                "precision": "fp32",
                "checkpointing": checkpointing,
                "steps": 2,
                "cap": args.cap,
                "no_optimizer": True,
            }
        )
    return plan


# The main stage of each default preset (compiling all stages takes too long on 2 cores).
COMPILE_STAGES = [
    ("var", "digits", "transformer"),
    ("vqvae2_pixelcnn", "digits32", "prior_bottom"),
    ("quantart", "tiny", "transfer"),
    ("multimodal_caption", "shapes", "joint"),
    ("var", "digits", "tokenizer"),
]


def key_of(spec: dict) -> str:
    parts = [
        spec["model"],
        spec["preset"],
        spec["stage"],
        str(spec.get("batch")),
        spec["precision"],
        f"ck={spec['checkpointing']}",
        "noopt" if spec.get("no_optimizer") else "full",
    ]
    return ":".join(parts)


def skip_reason(spec: dict, done: dict[str, dict], args: argparse.Namespace, deadline: float) -> str | None:
    if time.time() > deadline:
        return "out of the benchmark's time budget"
    if spec["precision"] == "bf16":
        # checkpointing adds a forward pass, and batch 2 doubles the work: when the cheaper
        # bf16 configuration already ran past its cap, these would too
        cheaper = [dict(spec, checkpointing=False), dict(spec, batch=1), dict(spec, batch=1, checkpointing=False)]
        for other in cheaper:
            result = done.get(key_of(other))
            if other != spec and result and result["result"].get("over") and steady(result["result"]) is None:
                return f"the cheaper bf16 configuration ({'batch 1' if other['batch'] == 1 else 'no checkpointing'}) was over {spec['cap'] / 60:g} min"
    if spec["batch"] > 1:
        one = done.get(key_of(dict(spec, batch=1)))
        if one:
            r = one["result"]
            if r.get("error") or (r.get("over") and steady(r) is None):
                return "batch 1 did not finish"
            static = r.get("after_first_gib") or r.get("built_gib") or 0
            guess = static + spec["batch"] * (r["peak_gib"] - static)
            if guess > args.max_gib:
                return f"batch 1 peaked at {r['peak_gib']:.1f} GiB: batch {spec['batch']} would be ~{guess:.0f} GiB"
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--only", nargs="*", choices=["step", "compile", "adamw", "d30"], help="sections to run")
    parser.add_argument("--models", nargs="*", help="only these model:preset pairs (e.g. var:d16)")
    parser.add_argument("--out", type=Path, help="write rows and tables to OUT.jsonl / OUT.md instead of results/")
    parser.add_argument("--steps", type=int, default=3, help="steps per configuration (the first is warm-up)")
    parser.add_argument("--cap", type=float, default=360, help="seconds per fp32 configuration")
    parser.add_argument("--bf16-cap", type=float, default=240, help="seconds per bf16 configuration")
    parser.add_argument("--batches", type=int, nargs="*", default=[1, 2], help="batch sizes of the step section")
    parser.add_argument("--compile-cap", type=float, default=360, help="seconds per compile-section configuration")
    parser.add_argument("--tables", action="store_true", help="only write the tables of the stored rows")
    parser.add_argument("--max-gib", type=float, default=16.0, help="kill a child whose RSS passes this")
    parser.add_argument("--budget-min", type=float, default=80, help="skip what starts after this many minutes")
    args = parser.parse_args()
    if args.out:
        global ROWS_FILE, TABLE_FILE  # noqa: PLW0603
        ROWS_FILE, TABLE_FILE = args.out.with_suffix(".jsonl"), args.out.with_suffix(".md")
    if args.child:
        spec = json.loads(args.child)
        result = child_adamw(spec) if spec.get("adamw") else child_step(spec)
        print("RESULT " + json.dumps(result), flush=True)
        return

    import platform

    import torch
    from deploy import cpu_name

    machine = (
        f"Machine: {cpu_name()}, {os.cpu_count()} cores ({THREADS} threads used), "
        f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / GiB:.0f} GiB RAM (shared); "
        f"torch {torch.__version__}, Python {platform.python_version()}; "
        f"{datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}."
    )
    if args.tables and TABLE_FILE.exists():  # the machine line of the run that measured the rows
        machine = next((line for line in TABLE_FILE.read_text().splitlines() if line.startswith("Machine:")), machine)
    print(machine, flush=True)
    if args.tables:
        print(write_tables(machine), flush=True)
        return
    sections = args.only or ["adamw", "step", "compile", "d30"]
    deadline = time.time() + args.budget_min * 60
    global HARD_DEADLINE
    HARD_DEADLINE = deadline + 300
    done = load_rows()

    def record(section: str, spec: dict, key: str, result: dict | None = None, skipped: str | None = None) -> dict:
        row = {"section": section, "key": key, "spec": spec, "result": result or {}, "skipped": skipped}
        save_row(row)
        done[key] = row
        return row

    def run_adamw() -> None:
        spec = {"adamw": True, "model": "var", "preset": "d16", "stage": "transformer", "repeats": 5}
        row = record("adamw", spec, "adamw:var:d16", run_child(spec, args.max_gib, 900))
        print(adamw_table(row), flush=True)

    def run_steps(plan: list[dict]) -> None:
        print(STEP_HEADER, flush=True)
        for spec in plan:
            if args.models and f"{spec['model']}:{spec['preset']}" not in args.models:
                continue
            key = key_of(spec)
            reason = skip_reason(spec, done, args, deadline)
            if reason:
                row = record("step", spec, key, skipped=reason)
            else:
                # a whole backward pass is one C call that holds off the child's SIGALRM: the
                # watchdog's wall-clock cap (building included) is the one that holds
                row = record("step", spec, key, run_child(spec, args.max_gib, spec["cap"] + 180))
            print(step_line(row), flush=True)

    def run_compile() -> None:
        print(COMPILE_HEADER, flush=True)
        from zoo.api import resolve_config

        for model, preset, stage in COMPILE_STAGES:
            if args.models and f"{model}:{preset}" not in args.models:
                continue
            plugin, _, config = resolve_config(model, preset)
            stages = [s.name for s in plugin.stages(config)]
            for name in [stage] if stage else stages:
                pair = []
                for compiled in (False, True):
                    spec = {
                        "model": model,
                        "preset": preset,
                        "stage": name,
                        "batch": None,
                        "precision": "fp32",
                        "checkpointing": False,
                        "compile": compiled,
                        "steps": 4,
                        "cap": args.compile_cap,
                    }
                    key = f"compile:{model}:{preset}:{name}:{'compiled' if compiled else 'eager'}"
                    if time.time() > deadline:
                        result = {"error": "not run: out of the benchmark's time budget"}
                    else:
                        result = run_child(spec, args.max_gib, args.compile_cap + 180)
                    pair.append(record("compile", spec, key, result))
                print(compile_line(*pair), flush=True)

    run = {
        "adamw": run_adamw,
        "step": lambda: run_steps(step_plan(args)),
        "compile": run_compile,
        "d30": lambda: run_steps(d30_plan(args)),
    }
    for section in sections:  # in the order given
        run[section]()

    print(write_tables(machine), flush=True)


D30_NOTE = (
    "var d30's transformer ({params:.2f} B trained parameters) does not take a full AdamW step on this machine: "
    "fp32 weights + gradients + two Adam moments are 16 bytes a parameter, {gb:.1f} GB ({gib:.1f} GiB) before any "
    "activation or the tokenizer, against 24 GiB shared. Its rows measure forward + backward only, each gradient "
    "freed as soon as it is accumulated (a post-accumulate-grad hook), so the peak is the weights ({weights:.1f} GiB) "
    "+ the frozen tokenizer + activations; no optimizer step, no gradients kept."
)

if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    main()
