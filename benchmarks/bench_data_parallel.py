"""Data-parallel training step on 2 CPU processes (gloo): the removed flat all-reduce against
zoo's Engine with replicate (DDP) and fully_shard (FSDP2), and one process alone for context.

    python benchmarks/bench_data_parallel.py               # launches the runs, writes results/data_parallel.md
    python benchmarks/bench_data_parallel.py --steps 5 --warmup 2

One VAR transformer stage (its real loss and AdamW with clipping) on fixed token batches.
Each engine runs in its own `torchrun --standalone --nproc-per-node 2` (1 thread per process),
so each process's peak RSS is that engine's alone; one more process runs the same global batch
alone. Per engine: median seconds per step (the slower rank's, after a barrier), the bytes
each process hands to collectives per step, the peak RSS per process, and the weights after
the steps (written by rank 0, compared at the end).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "plugins"), str(ROOT / "exporters")]

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from deploy import cpu_name  # noqa: E402
from report import Report, table  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from torch import nn  # noqa: E402

from zoo.config import resolve  # noqa: E402
from zoo.distributed import Engine, init_from_env, shutdown  # noqa: E402
from zoo.plugin import StepContext  # noqa: E402
from zoo.scale import adamw_kernel, checkpoint_activations  # noqa: E402
from zoo.trainer import build_optimizer, freeze_all_but, trained_parameters  # noqa: E402
from zoo_var.config import PRESETS, VARConfig  # noqa: E402
from zoo_var.data import image_dataset, labels_of  # noqa: E402
from zoo_var.plugin import VARPlugin  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "data_parallel.md"
GiB, MB = 2**30, 1e6
PROCESSES = 2
PER_PROCESS_BATCH = 1
SEED = 0

# The d16 preset (activation checkpointing on, as the paper sizes are) with a depth-12
# transformer. Two changes keep two processes inside this machine's memory budget and a step
# within seconds: width 512 (8 heads of 64) instead of the width rule's 64 * 12 = 768 (a
# replica would be ~3 GiB per process), and a 128 px token pyramid (7 scales, 155 tokens, the
# 256 px one has 680). The tokenizer is slim: it is frozen in this stage and the loss only
# reads its quantiser (codebook and phi convolutions).
CONFIG = {
    "transformer": {"depth": 12, "width": 512, "heads": 8},
    "tokenizer": {
        "resolution": 128,
        "patch_nums": [1, 2, 3, 4, 5, 6, 8],
        "channels": 16,
        "res_blocks": 1,
        "attention_resolutions": [],
        "mid_attention": False,
    },
}

METHODS = {
    "flat": "(a) flat all-reduce after backward (removed code, reproduced here)",
    "replicate": "(b) Engine: replicate (DDP)",
    "fully_shard": "(c) Engine: fully_shard (FSDP2, plugin blocks)",
}


def var_config() -> VARConfig:
    return resolve(VARConfig, PRESETS["d16"], overrides=CONFIG)  # type: ignore[return-value]


# --- the removed code ------------------------------------------------------------------------


def flat_all_reduce(parameters: list[nn.Parameter], world_size: int) -> None:
    """zoo.distributed.average_gradients before it was replaced (git show 2acf5cb:zoo/distributed.py):
    one flat all-reduce of every gradient after the backward pass."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world_size
    offset = 0
    for grad in grads:
        grad.copy_(flat[offset : offset + grad.numel()].view_as(grad))
        offset += grad.numel()


# --- counting collective bytes -----------------------------------------------------------------


class Counter:
    """Bytes handed to collectives, by kind. `payload`: the whole tensor reduced or gathered
    (all-reduce buffer, all-gather output, reduce-scatter input); `sent`: what one process
    sends of it in a ring, 2(N-1)/N of an all-reduce and (N-1)/N of the others."""

    def __init__(self, world_size: int) -> None:
        self.world_size = world_size
        self.payload: dict[str, int] = defaultdict(int)
        self.calls: dict[str, int] = defaultdict(int)
        self.seen_by_functions = 0  # what the wrapped torch.distributed functions saw (a cross-check)
        self.hooked = False  # DDP: count in the comm hook only (torch's hook calls dist.all_reduce)

    def add(self, kind: str, nbytes: int) -> None:
        self.payload[kind] += nbytes
        self.calls[kind] += 1

    def sent(self) -> float:
        share = (self.world_size - 1) / self.world_size
        return sum(
            nbytes * (2 * share if kind.endswith("all_reduce") else share) for kind, nbytes in self.payload.items()
        )

    def reset(self) -> None:
        self.payload.clear()
        self.calls.clear()
        self.seen_by_functions = 0

    def patch_functions(self) -> None:
        """Wrap torch.distributed's collectives; FSDP2 in torch 2.13 calls all_gather_single and
        reduce_scatter_single (fsdp/_fully_shard/_fsdp_collectives.py), the old code all_reduce."""

        def counted(name: str, original: Callable[..., Any], which: Callable[..., torch.Tensor]) -> Callable[..., Any]:
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                tensor = which(*args, **kwargs)
                nbytes = tensor.numel() * tensor.element_size()
                self.seen_by_functions += nbytes
                if not self.hooked:
                    self.add(name, nbytes)
                return original(*args, **kwargs)

            return wrapper

        def first(*args: Any, **kwargs: Any) -> torch.Tensor:
            return args[0] if args else kwargs.get("tensor", kwargs.get("output_tensor", kwargs.get("output")))

        def second(*args: Any, **kwargs: Any) -> torch.Tensor:
            return args[1] if len(args) > 1 else kwargs.get("input_tensor", kwargs.get("input"))

        table_ = {
            "all_reduce": first,
            "broadcast": first,
            "all_gather_single": first,  # output
            "all_gather_into_tensor": first,  # output
            "reduce_scatter_single": second,  # input
            "reduce_scatter_tensor": second,  # input
        }
        for name, which in table_.items():
            setattr(dist, name, counted(name, getattr(dist, name), which))

    def ddp_hook(self) -> Callable[..., Any]:
        """A DDP comm hook that counts each bucket, then runs torch's own allreduce hook."""
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

        # no annotations: DDP checks them against dist.GradBucket, and this module's are strings
        def hook(state, bucket):  # type: ignore[no-untyped-def]
            buffer = bucket.buffer()
            self.add("ddp_bucket_all_reduce", buffer.numel() * buffer.element_size())
            return allreduce_hook(state, bucket)

        self.hooked = True
        return hook


# --- one process of one method -------------------------------------------------------------------


def token_batches(model: nn.Module, config: VARConfig, count: int) -> list[dict[str, torch.Tensor]]:
    """`count` global batches of the stage's data: the first images of its image set encoded by
    the model's (frozen) tokenizer, as the stage does batch by batch (codes.mode on_the_fly) or for the whole set (disk)."""
    size = PROCESSES * PER_PROCESS_BATCH
    images = image_dataset(config, "train")
    items = [images[i] for i in range(count * size)]
    batch = {"image": torch.stack([item["image"] for item in items])}
    if "label" in items[0]:
        batch["label"] = torch.tensor([item["label"] for item in items])
    with torch.no_grad():
        model.tokenizer.eval()
        tokens = model.tokenizer.encode_indices(batch["image"])
    labels = labels_of(batch)
    return [
        {"tokens": tokens[i * size : (i + 1) * size], "label": labels[i * size : (i + 1) * size]} for i in range(count)
    ]


def current_rss_gib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024 / GiB
    return float("nan")


def run_worker(method: str, out: Path, steps: int, warmup: int) -> None:
    torch.set_num_threads(1)
    device = torch.device("cpu")
    world = init_from_env(device.type)
    config = var_config()
    plugin = VARPlugin()
    stage = plugin.stages(config)[1]  # transformer
    spec = stage.optimizers[0]

    def build() -> nn.Module:  # Trainer._build_model with this config's lever
        model = plugin.build(config).to(device)
        if config.scale.activation_checkpointing:
            checkpoint_activations(plugin.blocks(model))
        return model

    torch.manual_seed(config.seed)
    model = build()
    batches = token_batches(model, config, warmup + steps)
    if world.world_size > 1:  # each process its part of the global batch, as GlobalBatchSampler
        part = slice(world.rank * PER_PROCESS_BATCH, (world.rank + 1) * PER_PROCESS_BATCH)
        batches = [{key: value[part] for key, value in batch.items()} for batch in batches]
    torch.manual_seed(config.seed + 1000 * 2)  # as Trainer._prepare_stage for the second stage
    freeze_all_but(model, stage)
    transformer_keys = [k for k in model.state_dict() if k.startswith("transformer.")]
    if method == "flat" and world.is_main:
        save_file(
            {k: model.state_dict()[k].clone().contiguous() for k in transformer_keys}, out / "initial.safetensors"
        )

    counter = Counter(world.world_size)
    engine = Engine(world, method == "fully_shard", device, build, print)
    if method == "fully_shard":
        block_ids = {id(p) for block in plugin.blocks(model) for p in block.parameters()}
        root_bytes = sum(p.numel() * p.element_size() for p in model.parameters() if id(p) not in block_ids)
    else:
        root_bytes = 0
    if world.world_size > 1:
        counter.patch_functions()
    if method in ("replicate", "fully_shard"):
        step_module = engine.wrap(model, plugin.blocks(model), stage.name)
        if method == "replicate":
            step_module.register_comm_hook(None, counter.ddp_hook())  # registered at DDP's lazy init
    params = trained_parameters(model, spec)
    optimizer = build_optimizer(spec, model, adamw_kernel(config.scale.adamw, device, engine.shard))
    for group in optimizer.param_groups:
        group["lr"] = spec.lr  # the peak lr: the preset's warm-up would make the steps ~1/4000 of it

    def train_step(step: int, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        context = StepContext(step, stage.steps, device)
        optimizer.zero_grad(set_to_none=True)
        if method == "flat" or not engine.parallel:
            outputs = spec.loss(model, batch, context)
            outputs["loss"].backward()
            if engine.parallel:
                flat_all_reduce(params, world.world_size)
        else:
            outputs = step_module(spec.loss, batch, context)
            outputs["loss"].backward()
        torch.nn.utils.clip_grad_norm_(params, spec.clip_grad_norm)
        optimizer.step()
        return {key: value.item() for key, value in outputs.items()}

    times, payloads, sent, losses, cross_check = [], [], [], [], []
    for step, batch in enumerate(batches):
        if world.world_size > 1:
            dist.barrier()
        counter.reset()
        start = time.perf_counter()
        values = train_step(step, batch)
        seconds = time.perf_counter() - start
        if step >= warmup:
            times.append(seconds)
            payloads.append(dict(counter.payload))
            sent.append(counter.sent())
            cross_check.append(counter.seen_by_functions)
            losses.append(values["loss"])
    calls = dict(counter.calls)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GiB  # Linux: KiB
    resident = current_rss_gib()

    weights = engine.model_state(model) if engine.shard else model.state_dict()  # collective when sharded
    if world.is_main:
        save_file(
            {k: weights[k].detach().clone().contiguous() for k in transformer_keys}, out / f"{method}.safetensors"
        )
    record = {
        "method": method,
        "rank": world.rank,
        "world_size": world.world_size,
        "engine": engine.name,
        "seconds": times,
        "payload": payloads,
        "sent": sent,
        "calls_last_step": calls,
        "losses": losses,
        "peak_rss_gib": peak,
        "rss_after_steps_gib": resident,
        "seen_by_functions": cross_check,
        "root_group_bytes": root_bytes,
        "parameters": sum(p.numel() for p in model.parameters()) if not engine.shard else None,
        "trained_parameters": sum(p.numel() for p in params) if not engine.shard else None,
    }
    (out / f"{method}-rank{world.rank}.json").write_text(json.dumps(record))
    shutdown()


# --- the launcher ---------------------------------------------------------------------------------


def launch(
    method: str, out: Path, steps: int, warmup: int, processes: int, env_extra: dict[str, str] | None = None
) -> tuple[float, list[str]]:
    """Run one method's worker(s); returns wall seconds and the warning lines they printed."""
    env = {
        **os.environ,
        **(env_extra or {}),
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "plugins"), str(ROOT / "exporters")]),
    }
    worker = [str(Path(__file__).resolve()), "--worker", method, "--out", str(out)]
    worker += ["--steps", str(steps), "--warmup", str(warmup)]
    if processes > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
    else:
        command = [sys.executable]
    start = time.perf_counter()
    result = subprocess.run([*command, *worker], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    output = result.stdout + result.stderr
    if result.returncode:
        print(output[-4000:])
        raise SystemExit(f"{method}: exit code {result.returncode}")
    # one line per warning: without the "[rank0]:[W1202 01:49:33.78 reducer.cpp:1529]" prefix
    warnings = sorted(
        {
            re.sub(r"^(\[rank\d+\]:)?\[W\S+ [\d:.]+ ", "[", line.strip())[:300]
            for line in output.splitlines()
            if "warn" in line.lower()
        }
    )
    return seconds, warnings


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--rounds", type=int, default=2, help="runs of every method, in turn (the machine is shared)")
    parser.add_argument("--worker", choices=[*METHODS, "single"], help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        run_worker(args.worker, args.out, args.steps, args.warmup)
        return

    methods = [*METHODS, "single"]
    labels = {**METHODS, "single": "one process, the global batch alone"}
    records: dict[str, list[list[dict[str, Any]]]] = defaultdict(list)  # method -> rounds -> ranks
    warnings: dict[str, set[str]] = defaultdict(set)
    started = datetime.datetime.now(datetime.UTC)
    with tempfile.TemporaryDirectory(prefix="bench-dp-") as tmp:
        for round_ in range(args.rounds):
            out = Path(tmp) / f"round{round_}"
            out.mkdir()
            for method in methods:
                processes = 1 if method == "single" else PROCESSES
                seconds, printed = launch(method, out, args.steps, args.warmup, processes)
                warnings[method].update(printed)
                ranks = [json.loads((out / f"{method}-rank{r}.json").read_text()) for r in range(processes)]
                records[method].append(ranks)
                print(
                    f"round {round_} {method}: {seconds:.0f} s wall, median step {step_seconds([ranks]):.2f} s",
                    flush=True,
                )
        # glibc keeps freed blocks below its (growing) mmap threshold: a fixed low one returns
        # them, so the peak RSS shows what is live. One short run per method (not timed).
        low = Path(tmp) / "returned"
        low.mkdir()
        for method in methods:
            launch(method, low, 1, 1, 1 if method == "single" else PROCESSES, {"MALLOC_MMAP_THRESHOLD_": "131072"})
            returned = [
                json.loads((low / f"{method}-rank{r}.json").read_text()) for r in range(len(records[method][0]))
            ]
            records[f"{method}-returned"].append(returned)
        weights = {method: load_file(out / f"{method}.safetensors") for method in methods}
        initial = load_file(out / "initial.safetensors")
        repeatable = all(
            max_difference(load_file(Path(tmp) / f"round{r}" / f"{m}.safetensors"), weights[m]) == 0
            for r in range(args.rounds - 1)
            for m in methods
        )

    config = var_config()
    flat = records["flat"][0][0]
    header = [
        "# Data-parallel training step: the removed flat all-reduce, replicate (DDP), fully_shard (FSDP2)",
        f"CPU: {cpu_name()}, {os.cpu_count()} cores, shared with other benchmark jobs while this ran (load average "
        f"{os.getloadavg()[0]:.1f} at the end); torch {torch.__version__}, gloo; {started:%Y-%m-%d %H:%M} UTC.",
        f"Run: `python benchmarks/bench_data_parallel.py --steps {args.steps} --warmup {args.warmup} --rounds {args.rounds}`: "
        f"each method in its own `torchrun --standalone --nproc-per-node {PROCESSES}` (so each peak RSS is that method's), "
        f"1 thread per process, per-process batch {PER_PROCESS_BATCH} (global {PROCESSES * PER_PROCESS_BATCH}), the "
        f"methods in turn, {args.rounds} rounds, each round ending with one process alone on the same global batch.",
        f"Model: VAR `--preset d16` with `{json.dumps(CONFIG)}` (activation checkpointing on, from the preset): "
        f"{flat['parameters'] / 1e6:.1f} M parameters, {flat['trained_parameters'] / 1e6:.1f} M trained (the transformer), "
        f"{sum(n * n for n in config.tokenizer.patch_nums)} tokens per image. Width 512 (8 heads) instead of the width rule's "
        "768: a replica of the 133 M-parameter d12 would need ~3 GiB per process, over this machine's budget for two; "
        "128 px tokens keep a step within seconds.",
        "Step: the transformer stage's real loss (TransformerLoss, condition dropout and drop path on), backward, "
        "gradient sync, clip to norm 2, AdamW (zoo's kernel choice: fused unsharded, foreach sharded) at the stage's "
        "peak lr; fixed token batches (the stage's first photos through the frozen tokenizer), a different one per step. "
        "(b) and (c) are zoo's own Engine.wrap over StageStep, called as the trainer does.",
    ]
    reference = weights["flat"]
    rows = []
    for method in methods:
        runs = records[method]
        first = runs[0][0]
        payload = first["payload"][-1]
        kinds = ", ".join(
            f"{kind} {nbytes / MB:.1f} ({first['calls_last_step'][kind]}x)" for kind, nbytes in sorted(payload.items())
        )
        rows.append(
            [
                labels[method],
                f"{step_seconds(runs):.2f}",
                f"{sum(payload.values()) / MB:.1f}" if payload else "0",
                f"{first['sent'][-1] / MB:.1f}",
                kinds or "-",
                " / ".join(f"{max(run[r]['peak_rss_gib'] for run in runs):.2f}" for r in range(len(runs[0]))),
                " / ".join(f"{runs[-1][r]['rss_after_steps_gib']:.2f}" for r in range(len(runs[0]))),
                " / ".join(f"{r['peak_rss_gib']:.2f}" for r in records[f"{method}-returned"][0]),
                "reference" if method == "flat" else f"{max_difference(weights[method], reference):.1e}",
            ]
        )
    columns = [
        "method",
        "median s/step",
        "collective payload MB/step",
        "≈ MB sent per process/step (ring)",
        "payload by collective, MB (calls)",
        "peak RSS GiB (rank 0 / 1)",
        "RSS after the steps GiB",
        "peak RSS GiB, freed memory returned",
        "max abs weight diff vs (a)",
    ]
    all_steps = {
        m: [max(v) for run in records[m] for v in zip(*(r["seconds"] for r in run), strict=True)] for m in methods
    }
    replicate = records["replicate"][0][0]
    notes = [
        f"Median over {args.rounds} x {args.steps} steps (each run after {args.warmup} warm-up steps); a step's time is "
        "the slower rank's, from a barrier to the end of the optimizer step. All step times, s: "
        + "; ".join(f"{m} {' '.join(f'{t:.1f}' for t in all_steps[m])}" for m in methods)
        + ".",
        "Bytes: MB = 10^6, per step and process, rank 0's (rank 1's are the same): (a) the flat tensor given to "
        "dist.all_reduce; (b) DDP's gradient buckets, counted by a comm hook that then calls torch's allreduce_hook "
        f"(the dist.all_reduce it calls saw {replicate['seen_by_functions'][-1] / MB:.1f} MB, the same); (c) FSDP2's "
        "dist.all_gather_single (output size) and dist.reduce_scatter_single (input size), the functions "
        "torch 2.13's _fsdp_collectives.py calls, wrapped. 'Sent' is the ring estimate: 2(N-1)/N of an all-reduce, "
        "(N-1)/N of an all-gather or reduce-scatter. Not counted: DDP's all-reduce of its used-parameter bitmap "
        "(find_unused_parameters; C++, a few hundred bytes) and the clip's norm reduction under FSDP2 (one scalar).",
        f"fully_shard's root group (every parameter outside the plugin's blocks: embeddings, head, the frozen "
        f"tokenizer) is {records['fully_shard'][0][0]['root_group_bytes'] / MB:.1f} MB and is gathered once per step; "
        "the blocks are gathered twice (forward, then again for the backward).",
        f"Weights: the transformer's after all {args.warmup + args.steps} steps, which moved them by up to "
        f"{max_difference(reference, initial):.1e} from their initialisation; "
        + ("every round gave bit-identical weights per method. " if repeatable else "rounds differed. ")
        + f"One process alone: {max_difference(weights['single'], reference):.1e}, a different result by design, as "
        "it draws the dropout (condition dropout, drop path) of both samples from one generator where the two "
        "processes draw theirs from the same seed; it is there for time and memory.",
        "Memory: ru_maxrss of each process (the model is built whole on every process, then wrapped), and VmRSS "
        "after the last step. glibc keeps freed blocks below its mmap threshold, which grows as large blocks are "
        "freed, so RSS also holds memory torch has released; the column 'freed memory returned' is one more "
        "short run (1 warm-up, 1 step) per method with MALLOC_MMAP_THRESHOLD_=131072, where freed large blocks go "
        "back to the system, closer to what is live.",
        "Last-step loss (rank 0): " + ", ".join(f"{m} {records[m][-1][0]['losses'][-1]:.5f}" for m in methods) + ".",
    ]
    for method in methods:
        for line in sorted(warnings[method]):
            notes.append(f"Printed by {method}: `{line}`")
    report = Report(RESULTS, "\n".join(header), table(columns, rows), "\n\n".join(notes))
    report.write()


def step_seconds(runs: list[list[dict[str, Any]]]) -> float:
    """Median over every run's steps of the slower rank's seconds."""
    return statistics.median(
        max(values) for ranks in runs for values in zip(*(r["seconds"] for r in ranks), strict=True)
    )


if __name__ == "__main__":
    main()
