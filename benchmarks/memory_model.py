r"""Memory model of VAR's transformer stage at paper scale (256 px, 680 tokens per image):
which per-GPU batch fits an 80 GB GPU for var d16/d20/d24/d30, on 1, 8 and 64 GPUs, with
replicate (DDP) or fully_shard (FSDP2), with and without activation checkpointing.

Nothing is guessed that can be measured without a GPU:

- parameters: a meta build of each preset (`plugin.build`), counted per part (the trained
  transformer, the frozen tokenizer, the largest block, what stays outside the blocks);
- activations: one training step (the stage's loss forward, backward) of the full preset on
  *fake* CPU tensors (torch's FakeTensorMode: shapes, dtypes and storages, no data, no memory),
  under bf16 autocast or fp32, at batch 1, 2, 32 and 64, with and without
  `zoo.scale.checkpoint_activations(plugin.blocks(model))`. A TorchDispatchMode follows every
  storage an operator creates until it is freed (a weakref finaliser on the storage), so the
  live bytes at the end of the forward pass and their peak in forward and backward are counted,
  not estimated; `torch.autograd.graph.saved_tensors_hooks` lists what autograd saves. Each
  pair of batches gives a line, bytes = fixed + per image x batch; what does not grow with the
  batch (the bf16 copies of the weights autocast saves, masks) is the fixed part. The held-out
  loss (eval, no_grad) is measured the same way.

Checks: real CPU steps at 2 blocks of d16 against the tracker (peak RSS, /proc/self/clear_refs),
2-process replicate/fully_shard probes of bench_data_parallel.py's model under torchrun.

Fake CPU tensors dispatch like real CPU ones (autocast included); attention runs torch's fused
CPU kernel, which saves what CUDA's memory-efficient kernel saves (q, k, v, output and a
per-row log-sum-exp, no T x T matrix). The meta device was the first choice, but autocast has no
meta device type and SDPA takes its math path there (a T x T matrix per head).

    PYTHONPATH=.:plugins:exporters python benchmarks/memory_model.py   # measure (~30 CPU min), report
    PYTHONPATH=.:plugins:exporters python benchmarks/memory_model.py --report-only --measured \
        TRAIN_STEP.jsonl --measured-dp DATA_PARALLEL.md   # rewrite the report from memory_model.json
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import weakref
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from bench_data_parallel import CONFIG as BENCH_DP_OVERRIDES
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from zoo.scale import checkpoint_activations
from zoo_var.config import PRESETS, VARConfig
from zoo_var.losses import TransformerLoss
from zoo_var.plugin import VARPlugin

RESULTS = Path(__file__).parent / "results"
GIB = 2**30
GPU_BYTES = 80 * GIB  # an "80 GB" A100/H100 holds 80 GiB (A100: 81920 MiB; H100 SXM: 81559 MiB)
HEADROOM = 0.10  # CUDA context (~0.5-1 GiB), the caching allocator's fragmentation, NCCL buffers
USABLE = GPU_BYTES * (1 - HEADROOM)
GPU_COUNTS = (1, 8, 64)
DEPTHS = ("d16", "d20", "d24", "d30")
# the global batch of the official training commands (FoundationVision/VAR README: --bs)
PAPER_BATCH = {"d16": 768, "d20": 768, "d24": 768, "d30": 1024}
TOKENS = 680  # 1 + 4 + 9 + ... + 256 tokens of the ten 256 px scales


# -- parameters -------------------------------------------------------------------------


@dataclass
class Parameters:
    transformer: int  # trained
    tokenizer: int  # frozen, resident
    largest_block: int  # the largest transformer block: the fully_shard unit gathered at a time
    root: int  # parameters outside plugin.blocks(): the root unit, gathered for the whole step
    root_trained: int  # of `root`, the transformer's (embeddings, head): their gradients stay whole
    blocks: int
    width: int
    heads: int
    depth: int


# benchmarks/bench_data_parallel.py's model (its CONFIG): d16 with a depth-12, width-512
# transformer on a slim 128 px tokenizer (155 tokens), 2 processes of batch 1
BENCH_DP = "bench-dp"


def make_config(preset: str, depth: int | None = None) -> VARConfig:
    """The preset, or the preset's width and heads with fewer blocks (`depth`)."""
    if preset == BENCH_DP:
        merged = {**PRESETS["d16"]}
        for section, values in BENCH_DP_OVERRIDES.items():
            merged[section] = {**merged.get(section, {}), **values}
        return VARConfig.model_validate(merged)
    config = VARConfig.model_validate(PRESETS[preset])
    if depth is not None:
        width, heads = config.transformer.resolved_width, config.transformer.resolved_heads
        config.transformer = config.transformer.model_copy(update={"depth": depth, "width": width, "heads": heads})
    return config


def tokens_of(config: VARConfig) -> int:
    return sum(side * side for side in config.tokenizer.patch_nums)


def count_parameters(preset: str, depth: int | None = None) -> Parameters:
    plugin = VARPlugin()
    config = make_config(preset, depth)
    with torch.device("meta"):
        model = plugin.build(config)
    blocks = plugin.blocks(model)
    in_blocks = {id(p) for block in blocks for p in block.parameters()}
    return Parameters(
        transformer=sum(p.numel() for p in model.transformer.parameters()),
        tokenizer=sum(p.numel() for p in model.tokenizer.parameters()),
        # the tokenizer's levels are units too, but the transformer stage never gathers them
        largest_block=max(sum(p.numel() for p in block.parameters()) for block in model.transformer.blocks),
        root=sum(p.numel() for p in model.parameters() if id(p) not in in_blocks),
        root_trained=sum(p.numel() for p in model.transformer.parameters() if id(p) not in in_blocks),
        blocks=len(blocks),
        width=config.transformer.resolved_width,
        heads=config.transformer.resolved_heads,
        depth=config.transformer.depth,
    )


# -- activations: live storages of one step on fake tensors ------------------------------


class LiveBytes(TorchDispatchMode):
    """Bytes of the storages operators create, from creation until freed; the weights and
    inputs made before it are left out (`exclude`). `grads` counts storages that became a
    `.grad`, so the peak without gradients is known too (they are sharded under FSDP2)."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: dict[int, int] = {}
        self.excluded: set[int] = set()
        self.grad_keys: set[int] = set()
        self.current = self.grad_bytes = 0
        self.peak = self.peak_without_grads = 0

    def exclude(self, tensor: torch.Tensor) -> None:
        self.excluded.add(tensor.untyped_storage()._cdata)

    def reset_peaks(self) -> None:
        self.peak, self.peak_without_grads = self.current, self.current - self.grad_bytes

    def mark_grad(self, tensor: torch.Tensor) -> None:
        key = tensor.untyped_storage()._cdata
        if key in self.sizes and key not in self.grad_keys:
            self.grad_keys.add(key)
            self.grad_bytes += self.sizes[key]

    def _free(self, key: int) -> None:
        size = self.sizes.pop(key)
        self.current -= size
        if key in self.grad_keys:
            self.grad_keys.discard(key)
            self.grad_bytes -= size

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        out = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor):
                storage = tensor.untyped_storage()
                key = storage._cdata
                if key in self.sizes or key in self.excluded:
                    continue
                self.sizes[key] = storage.nbytes()
                self.current += self.sizes[key]
                weakref.finalize(storage, self._free, key)
        self.peak = max(self.peak, self.current)
        self.peak_without_grads = max(self.peak_without_grads, self.current - self.grad_bytes)
        return out


@dataclass
class StepMemory:
    """Bytes of one training step beyond the weights (and the optimizer state)."""

    preset: str
    batch: int
    precision: str
    checkpointing: bool
    saved: int  # what saved_tensors_hooks saw (inside checkpointed blocks: nothing), dedup by storage
    saved_bf16: int
    saved_weight_casts: int  # of `saved`: bf16 copies of weights (autocast)
    after_forward: int  # live at the end of the forward pass: everything backward will use
    forward_peak: int
    backward_peak: int  # gradients included
    backward_peak_without_grads: int
    grads: int
    seconds: float


def measure_step(preset: str, batch: int, precision: str, checkpointing: bool, depth: int | None = None) -> StepMemory:
    started = time.perf_counter()
    plugin = VARPlugin()
    config = make_config(preset, depth)
    with torch.device("meta"):
        model = plugin.build(config)
    fake = FakeTensorMode(allow_non_fake_inputs=True)
    with fake:
        model.to_empty(device="cpu")  # fake CPU tensors: CPU dispatch and autocast, no memory
        # as the trainer's freeze_all_but for the transformer stage
        model.eval()
        model.requires_grad_(False)
        model.transformer.train()
        model.transformer.requires_grad_(True)
        if checkpointing:
            checkpoint_activations(plugin.blocks(model))
        tokens = torch.zeros(batch, tokens_of(config), dtype=torch.long)
        labels = torch.zeros(batch, dtype=torch.long)
    weights = {p.untyped_storage()._cdata for p in model.parameters()}
    tracker = LiveBytes()
    for tensor in [*model.parameters(), *model.buffers(), tokens, labels]:
        tracker.exclude(tensor)
    for param in model.transformer.parameters():
        param.register_post_accumulate_grad_hook(lambda p: tracker.mark_grad(p.grad))

    saved: dict[int, tuple[int, torch.dtype, bool]] = {}
    casts: set[int] = set()  # storages of weights cast by autocast

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        key = tensor.untyped_storage()._cdata
        if key not in weights:
            saved[key] = (tensor.untyped_storage().nbytes(), tensor.dtype, key in casts)
        return tensor

    class WeightCasts(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
            out = func(*args, **(kwargs or {}))
            if func is torch.ops.aten._to_copy.default and isinstance(args[0], torch.nn.Parameter):
                casts.add(out.untyped_storage()._cdata)
            return out

    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
    loss_fn = TransformerLoss(config.transformer_training.label_smoothing)
    with fake, tracker:
        with WeightCasts(), autocast, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            outputs = loss_fn(model, {"tokens": tokens, "label": labels}, None)
        gc.collect()
        after_forward, forward_peak = tracker.current, tracker.peak
        tracker.reset_peaks()
        outputs["loss"].backward()
        grads = tracker.grad_bytes
        backward_peak, without_grads = tracker.peak, tracker.peak_without_grads
    return StepMemory(
        preset,
        batch,
        precision,
        checkpointing,
        saved=sum(size for size, _, _ in saved.values()),
        saved_bf16=sum(size for size, dtype, _ in saved.values() if dtype == torch.bfloat16),
        saved_weight_casts=sum(size for size, _, cast in saved.values() if cast),
        after_forward=after_forward,
        forward_peak=forward_peak,
        backward_peak=backward_peak,
        backward_peak_without_grads=without_grads,
        grads=grads,
        seconds=round(time.perf_counter() - started, 1),
    )


def measure_validation(preset: str, batch: int, precision: str) -> dict:
    """Peak live bytes of the trainer's held-out loss (`Trainer._validation_loss`: eval mode,
    no_grad, the stage's loss on one batch), beyond the weights."""
    plugin = VARPlugin()
    config = make_config(preset)
    with torch.device("meta"):
        model = plugin.build(config)
    fake = FakeTensorMode(allow_non_fake_inputs=True)
    with fake:
        model.to_empty(device="cpu")
        model.eval()
        tokens = torch.zeros(batch, tokens_of(config), dtype=torch.long)
        labels = torch.zeros(batch, dtype=torch.long)
    tracker = LiveBytes()
    for tensor in [*model.parameters(), *model.buffers(), tokens, labels]:
        tracker.exclude(tensor)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
    with fake, tracker, torch.no_grad(), autocast:
        TransformerLoss(0.0)(model, {"tokens": tokens, "label": labels}, None)
    return {"preset": preset, "batch": batch, "precision": precision, "peak": tracker.peak}


# -- check: the real peak RSS of one CPU step against the tracker ------------------------


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def cpu_step_rss(preset: str, depth: int, batch: int, checkpointing: bool) -> dict[str, float]:
    """One real fp32 training step on this CPU (after a warm-up step, so AdamW's moments
    exist, as in every step but the first), trainer-like: fused AdamW, clip_grad_norm_.
    Returns the peak RSS above the RSS before the step (/proc/self/clear_refs resets the
    high-water mark). Run with MALLOC_MMAP_THRESHOLD_=65536 so freed tensors leave the RSS."""
    torch.manual_seed(0)
    plugin = VARPlugin()
    config = make_config(preset, depth)
    model = plugin.build(config)
    model.eval()
    model.requires_grad_(False)
    model.transformer.train()
    model.transformer.requires_grad_(True)
    if checkpointing:
        checkpoint_activations(plugin.blocks(model))
    params = list(model.transformer.parameters())
    optimizer = torch.optim.AdamW(params, fused=True)
    loss_fn = TransformerLoss(0.0)
    batch_data = {
        "tokens": torch.randint(0, 4096, (batch, tokens_of(config))),
        "label": torch.randint(0, 1000, (batch,)),
    }

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model, batch_data, None)["loss"].backward()
        torch.nn.utils.clip_grad_norm_(params, 2.0)
        optimizer.step()

    step()
    optimizer.zero_grad(set_to_none=True)  # the step's own first line: gradients are not held between steps
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    before = _rss_kib("VmRSS")
    step()
    peak = _rss_kib("VmHWM")
    return {"rss_before": before * 1024, "peak_above_before": (peak - before) * 1024}


CHECK_DEPTH = 2  # blocks of d16 (width 1024) in the real CPU check: ~0.5 GiB of transformer state


def check_cpu() -> list[dict]:
    """Real fp32 CPU steps (each in a fresh process) against the tracker's prediction for the
    same model: the peak above the RSS between steps = max(forward peak, backward peak). With
    glibc's default allocator too: freed tensors below its (growing) mmap threshold stay in the RSS."""
    rows = []
    for allocator, batches in (("mmap threshold 64 KiB", (1, 2)), ("glibc default", (1,))):
        for checkpointing, batch in [(c, b) for c in (False, True) for b in batches]:
            env = (
                {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
                if allocator != "glibc default"
                else {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}
            )
            command = [
                sys.executable,
                __file__,
                "--cpu-step",
                "d16",
                str(CHECK_DEPTH),
                str(batch),
                str(int(checkpointing)),
            ]
            real = json.loads(subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout)
            step = measure_step("d16", batch, "fp32", checkpointing, depth=CHECK_DEPTH)
            row = {
                "allocator": allocator,
                "batch": batch,
                "checkpointing": checkpointing,
                **real,
                "predicted_peak_above_before": max(step.forward_peak, step.backward_peak),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def dp_probe(method: str) -> None:
    """Under torchrun, 2 processes: the bench-dp model (fp32, checkpointing on, batch 1 per
    process) wrapped by zoo's Engine (`replicate` or `fully_shard`), the process's RSS at each
    phase of the set-up, then two steps (the high-water mark reset after the first), written as
    JSON to $MEMORY_PROBE_DIR/METHOD-RANK.json. Run with MALLOC_MMAP_THRESHOLD_=65536 for RSS to follow live bytes."""
    from zoo.distributed import Engine, init_from_env, shutdown
    from zoo.plugin import StepContext
    from zoo.scale import adamw_kernel
    from zoo.trainer import build_optimizer, freeze_all_but, trained_parameters

    torch.set_num_threads(1)
    device = torch.device("cpu")
    world = init_from_env("cpu")
    plugin = VARPlugin()
    config = make_config(BENCH_DP)
    stage = plugin.stages(config)[1]
    spec = stage.optimizers[0]
    phase: dict[str, float] = {"imported": _rss_kib("VmRSS") * 1024}

    def build() -> torch.nn.Module:
        model = plugin.build(config).to(device)
        checkpoint_activations(plugin.blocks(model))
        return model

    torch.manual_seed(0)
    model = build()
    phase["built"] = _rss_kib("VmRSS") * 1024
    freeze_all_but(model, stage)
    engine = Engine(world, method == "fully_shard", device, build, print)
    step_module = engine.wrap(model, plugin.blocks(model), stage.name)
    gc.collect()
    phase["wrapped"] = _rss_kib("VmRSS") * 1024
    params = trained_parameters(model, spec)
    optimizer = build_optimizer(spec, model, adamw_kernel("auto", device, engine.shard))
    tokens = tokens_of(config)
    batch = {"tokens": torch.randint(0, 4096, (1, tokens)), "label": torch.randint(0, 1000, (1,))}

    def step(number: int) -> None:
        optimizer.zero_grad(set_to_none=True)
        outputs = step_module(spec.loss, batch, StepContext(number, 10, device))
        outputs["loss"].backward()
        torch.nn.utils.clip_grad_norm_(params, spec.clip_grad_norm)
        optimizer.step()

    step(0)
    optimizer.zero_grad(set_to_none=True)
    gc.collect()
    phase["after step 1 (moments in, gradients freed)"] = _rss_kib("VmRSS") * 1024
    phase["peak until then"] = _rss_kib("VmHWM") * 1024
    Path("/proc/self/clear_refs").write_text("5")
    step(1)
    phase["peak of step 2"] = _rss_kib("VmHWM") * 1024
    record = {"method": method, "rank": world.rank, **{k: round(v / GIB, 3) for k, v in phase.items()}}
    Path(os.environ["MEMORY_PROBE_DIR"], f"{method}-{world.rank}.json").write_text(json.dumps(record))
    shutdown()


def run_dp_probes() -> list[dict]:
    """dp_probe for both engines, each under `torchrun --standalone --nproc-per-node 2`."""
    rows = []
    for allocator in ("mmap threshold 64 KiB", "glibc default"):
        with tempfile.TemporaryDirectory() as folder:
            env = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}
            env["MEMORY_PROBE_DIR"] = folder
            if allocator != "glibc default":
                env["MALLOC_MMAP_THRESHOLD_"] = "65536"
            for method in ("replicate", "fully_shard"):
                command = [
                    sys.executable,
                    "-m",
                    "torch.distributed.run",
                    "--standalone",
                    "--nproc-per-node",
                    "2",
                    __file__,
                    "--dp-probe",
                    method,
                ]
                subprocess.run(command, env=env, capture_output=True, text=True, check=True)
                for rank in (0, 1):
                    rows.append(
                        {"allocator": allocator, **json.loads(Path(folder, f"{method}-{rank}.json").read_text())}
                    )
    return rows


# -- the model: bytes per GPU ------------------------------------------------------------


@dataclass
class Line:
    """Bytes per GPU = fixed + per_image * batch."""

    fixed: float
    per_image: float

    def at(self, batch: int) -> float:
        return self.fixed + self.per_image * batch


def line_of(one: float, two: float) -> Line:
    """The line through the values at batch 1 and 2."""
    return Line(2 * one - two, two - one)


def largest_batch(phases: list[Line], capacity: float = USABLE) -> int:
    """The largest per-GPU batch whose every phase fits `capacity` (0: not even batch 1)."""
    best = 10**6
    for phase in phases:
        if phase.per_image <= 0:
            if phase.fixed > capacity:
                return 0
            continue
        best = min(best, math.floor((capacity - phase.fixed) / phase.per_image))
    return max(0, best)


def static_bytes(params: Parameters, shard: bool, gpus: int) -> dict[str, float]:
    """Weights, gradients and AdamW moments (fp32) resident on one GPU.

    One process: everything, the gradients from the backward pass to the optimizer step (the
    trainer sets them to None before each step). replicate (DDP), N > 1: everything on every
    GPU; the gradients are views of DDP's buckets (zoo sets gradient_as_bucket_view), which are
    allocated for the whole run, forward pass included. fully_shard (FSDP2), N > 1: every
    parameter, the frozen tokenizer's too, split N ways; the root unit (the parameters outside
    plugin.blocks()) is gathered for the whole step, two block units at a time (the one
    computing and the one prefetched), and in backward their unsharded gradients until
    reduce-scatter; foreach AdamW (zoo's kernel for sharded weights) makes one temporary of the
    shard's size."""
    trained, frozen = params.transformer, params.tokenizer
    if not shard or gpus == 1:
        return {
            "weights": 4 * (trained + frozen),
            "grads": 4 * trained,
            "grads_always": gpus > 1,  # DDP's buckets
            "adamw": 8 * trained,
            "gathered": 0,
            "gathered_grads": 0,
            "step_temporary": 0,
        }
    return {
        "weights": 4 * (trained + frozen) / gpus,
        "grads": 4 * trained / gpus,
        "grads_always": False,
        "adamw": 8 * trained / gpus,
        "gathered": 4 * params.root + 2 * 4 * params.largest_block,
        "gathered_grads": 4 * params.root_trained + 2 * 4 * params.largest_block,
        "step_temporary": 4 * trained / gpus,
    }


BATCH_PAIRS = ((1, 2), (32, 64))  # measured batches: the lines through each pair


def phases(params: Parameters, measured: dict[int, StepMemory], shard: bool, gpus: int) -> dict[str, Line]:
    """Peak bytes per GPU in the step's phases, as lines in the per-GPU batch: one line per
    pair of measured batches (BATCH_PAIRS), as a phase's peak is the largest of several
    moments (the backward pass: its start, activations whole, or its end, gradients whole),
    each linear in the batch; the largest of the lines is that peak.

    forward: no gradients (the trainer zeroes them to None before the step); backward: the
    measured peak, its gradients (measured, whole) replaced by the engine's when sharded;
    optimizer step: gradients and moments, the activations freed."""
    s = static_bytes(params, shard, gpus)
    held = s["weights"] + s["adamw"] + s["gathered"] + (s["grads"] if s["grads_always"] else 0)
    # the measured backward peak holds gradients as they are made: one process; otherwise
    # they are already counted (DDP's buckets) or sharded (FSDP2) and the peak without them is taken
    own_grads = not s["grads_always"] and not (shard and gpus > 1)
    step_held = held + (0 if s["grads_always"] else s["grads"])
    lines: dict[str, Line] = {"step": Line(step_held + s["step_temporary"], 0.0)}
    for small, large in BATCH_PAIRS:
        if small not in measured or large not in measured:
            continue
        one, two = measured[small], measured[large]

        def through(value_one: float, value_two: float, small: int = small, large: int = large) -> Line:
            slope = (value_two - value_one) / (large - small)
            return Line(value_one - slope * small, slope)

        forward = through(one.forward_peak, two.forward_peak)
        if own_grads:
            backward = through(one.backward_peak, two.backward_peak)
            backward_held = held
        else:
            backward = through(one.backward_peak_without_grads, two.backward_peak_without_grads)
            backward_held = held + (0 if s["grads_always"] else s["grads"] + s["gathered_grads"])
        lines[f"forward {small}-{large}"] = Line(held + forward.fixed, forward.per_image)
        lines[f"backward {small}-{large}"] = Line(backward_held + backward.fixed, backward.per_image)
    return lines


# -- report ------------------------------------------------------------------------------


def gib(value: float) -> str:
    return f"{value / GIB:.2f}"


def mib(value: float) -> str:
    return f"{value / 2**20:.0f}"


def saved_kinds(preset: str, precision: str) -> list[dict]:
    """What autograd saves at batch 1 without checkpointing, by shape and dtype (dedup by storage)."""
    plugin = VARPlugin()
    config = make_config(preset)
    with torch.device("meta"):
        model = plugin.build(config)
    with FakeTensorMode(allow_non_fake_inputs=True):
        model.to_empty(device="cpu")
        model.eval()
        model.requires_grad_(False)
        model.transformer.train()
        model.transformer.requires_grad_(True)
        tokens, labels = torch.zeros(1, TOKENS, dtype=torch.long), torch.zeros(1, dtype=torch.long)
        weights = {p.untyped_storage()._cdata for p in model.parameters()}
        seen: dict[int, tuple[str, str, int]] = {}

        def pack(tensor: torch.Tensor) -> torch.Tensor:
            key = tensor.untyped_storage()._cdata
            if key not in weights:
                seen[key] = (
                    str(tuple(tensor.shape)),
                    str(tensor.dtype).replace("torch.", ""),
                    tensor.untyped_storage().nbytes(),
                )
            return tensor

        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
        with autocast, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            TransformerLoss(0.0)(model, {"tokens": tokens, "label": labels}, None)
    kinds: dict[tuple[str, str], list[int]] = {}
    for shape, dtype, size in seen.values():
        entry = kinds.setdefault((shape, dtype), [0, 0])
        entry[0] += 1
        entry[1] += size
    rows = [{"shape": k[0], "dtype": k[1], "count": v[0], "bytes": v[1]} for k, v in kinds.items()]
    return sorted(rows, key=lambda row: -row["bytes"])


ENGINES = (("DDP", False), ("FSDP2", True))


def large_slopes(steps: dict[tuple, StepMemory], preset: str, precision: str, checkpointing: bool) -> list[str]:
    a, b = steps.get((preset, 32, precision, checkpointing)), steps.get((preset, 64, precision, checkpointing))
    if a is None or b is None:
        return ["-", "-"]
    return [gib((b.forward_peak - a.forward_peak) / 32), gib((b.backward_peak - a.backward_peak) / 32)]


def measured_batches(
    steps: dict[tuple, StepMemory], preset: str, precision: str, checkpointing: bool
) -> dict[int, StepMemory]:
    return {key[1]: step for key, step in steps.items() if key[0] == preset and key[2:] == (precision, checkpointing)}


FINDINGS = (
    "**The held-out loss does not fit at the presets' batch** (section 3, last table): `Trainer._validation_loss` "
    "runs `stage.batch_size` (768) images on every rank under no_grad; at 768 only d16 in bf16 fits 80 GB (and d20 "
    "bf16 with FSDP2 on 64 GPUs). Validating with the per-process micro-batch (batch_size / (processes x "
    "accumulate)) would make it cost less than a training step. Workaround: "
    "`--set transformer_training.validate_every=N`, N above `steps`.",
    "**`run_blocks` keeps every block's stacked keys/values** (`presents`) until the forward pass ends, in training "
    "and validation too: 2 x 680 x width values per block and image (d16 fp32: 85 MiB per image; more than the "
    "checkpointed block inputs, 43 MiB). They are only needed by `step` (sampling); with checkpointing they are most "
    "of the forward peak's per-image bytes (section 2: 0.15 vs 0.06 GiB after forward, d16 fp32).",
    "**bf16 autocast holds a bf16 copy of every trained weight** (2 B per parameter: 0.58 GiB d16, 3.74 GiB d30) "
    "from the forward pass to the backward pass without checkpointing, and until the forward pass ends with it "
    "(autocast's cast cache). Under FSDP2 they are casts of the gathered weights, so (by construction; no "
    "GPU run here) they are not divided by N. "
    "Not tried here: fully_shard's MixedPrecisionPolicy(param_dtype=torch.bfloat16), which zoo does not set.",
    "**The d30 preset's batch is 768**; the official d30 command used `--bs=1024` (d16-d24: 768). "
    "`--set transformer_training.batch_size=1024` gives the paper's.",
    "Activations per image measured at fixed width are 0.58 GiB (bf16) / 0.98 GiB (fp32) for d16 without "
    "checkpointing and 0.06 GiB with it (10-16x less); 69-70% of the bytes saved under bf16 autocast are bf16 "
    "(matmul inputs, attention q/k/v/output, FFN hidden), the rest fp32 (the residual stream and its LayerNorm "
    "inputs and statistics, the log-softmax output of the loss).",
)


def fit_cell(batch: int, gpus: int, paper: int) -> str:
    if batch == 0:
        return "does not fit"
    global_batch = batch * gpus
    for accumulate in range(1, paper + 1):
        micro = paper / (gpus * accumulate)
        if micro <= batch and micro == int(micro):
            break
    else:
        accumulate = 0
    paper_part = "paper batch: no accumulation" if accumulate == 1 else f"paper batch: --accumulate {accumulate}"
    if not accumulate:
        paper_part = f"paper batch {paper} does not split over {gpus}"
    return f"**{batch}** ({global_batch}; {paper_part})"


def fits_table(params: dict[str, Parameters], steps: dict[tuple, StepMemory], precision: str) -> list[str]:
    lines = [
        "| model | engine | checkpointing | 1 GPU | 8 GPUs | 64 GPUs |",
        "|---|---|---|---|---|---|",
    ]
    for preset in DEPTHS:
        for engine, shard in ENGINES:
            for checkpointing in (False, True):
                measured = measured_batches(steps, preset, precision, checkpointing)
                cells = []
                for gpus in GPU_COUNTS:
                    if shard and gpus == 1:
                        cells.append("as DDP (one process)")
                        continue
                    batch = largest_batch(list(phases(params[preset], measured, shard, gpus).values()))
                    cells.append(fit_cell(batch, gpus, PAPER_BATCH[preset]))
                on = "on" if checkpointing else "off"
                lines.append(f"| var {preset} | {engine} | {on} | " + " | ".join(cells) + " |")
    return lines


def compact_table(params: dict[str, Parameters], steps: dict[tuple, StepMemory], precision: str) -> list[str]:
    """Largest per-GPU batch only, one row per model and engine: checkpointing off / on."""
    lines = [
        "| model (paper batch) | engine | 1 GPU | 8 GPUs | 64 GPUs |",
        "|---|---|---|---|---|",
    ]
    for preset in DEPTHS:
        for engine, shard in ENGINES:
            cells = []
            for gpus in GPU_COUNTS:
                if shard and gpus == 1:
                    cells.append("= DDP")
                    continue
                pair = []
                for checkpointing in (False, True):
                    measured = measured_batches(steps, preset, precision, checkpointing)
                    batch = largest_batch(list(phases(params[preset], measured, shard, gpus).values()))
                    pair.append(str(batch) if batch else "-")
                cells.append(" / ".join(pair))
            lines.append(f"| var {preset} ({PAPER_BATCH[preset]}) | {engine} | " + " | ".join(cells) + " |")
    return lines


def cpu_prediction_rows(
    params: Parameters, steps: dict[tuple, StepMemory], runtime: float, measured: dict[tuple, dict]
) -> list[str]:
    """`runtime`: the process's bytes beyond weights, gradients, moments and activations."""
    lines = [
        "| batch | precision | checkpointing | predicted RSS after step 1 | predicted peak RSS | "
        "measured after step 1 | measured peak | peak difference |",
        "|---|---|---|---|---|---|---|---|",
    ]
    s = static_bytes(params, False, 1)
    held = runtime + s["weights"] + s["adamw"]
    for precision in ("fp32", "bf16"):
        for checkpointing in (False, True):
            for batch in (1, 2):
                step = steps[("d16", batch, precision, checkpointing)]
                after_first = held + s["grads"]
                peak = held + max(step.forward_peak, step.backward_peak)
                row = measured.get((batch, precision, checkpointing))
                if row and "peak_gib" in row and not row.get("error"):
                    real_after, real_peak = row.get("after_first_gib"), row["peak_gib"]
                    diff = f"{real_peak - peak / GIB:+.2f} GiB ({(real_peak * GIB / peak - 1) * 100:+.0f}%)"
                    shown = f"{real_after:.2f}" if real_after == real_after else "-", f"{real_peak:.2f}", diff
                elif row and row.get("error"):
                    shown = (f"not measured: {row['error']}", "-", "-")
                else:
                    shown = ("pending", "pending", "-")
                lines.append(
                    f"| {batch} | {precision} | {'on' if checkpointing else 'off'} | {gib(after_first)} | "
                    f"{gib(peak)} | " + " | ".join(shown) + " |"
                )
    return lines


def step_residue(data: dict) -> float:
    """What a process holds after its first step beyond runtime + weights + AdamW moments (the
    2-block CPU check, freed tensors leaving the RSS): allocator and library state, ~0.1 GiB."""
    params = count_parameters("d16", depth=CHECK_DEPTH)
    static = 4 * (params.transformer + params.tokenizer) + 8 * params.transformer
    rows = [row for row in data.get("cpu_check", []) if row.get("allocator", "").startswith("mmap")]
    if not rows:
        return 0.0
    return sum(row["rss_before"] - data["runtime"] - static for row in rows) / len(rows)


def load_measured(path: Path | None) -> dict[tuple, dict]:
    """bench_train_step.py's rows (train_step.jsonl) of var d16's transformer stage."""
    if path is None or not path.exists():
        return {}
    found = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        spec = row.get("spec", {})
        if (spec.get("model"), spec.get("preset"), spec.get("stage")) == ("var", "d16", "transformer") and not spec.get(
            "no_optimizer"
        ):
            if "batch" in spec and "precision" in spec:
                found[(spec["batch"], spec["precision"], bool(spec["checkpointing"]))] = row.get("result", {})
    return found


def runtime_bytes() -> float:
    """RSS of a fresh Python with torch and zoo's trainer and VAR plugin imported (no model)."""
    code = (
        "import torch; torch.set_num_threads(2)\n"
        "import zoo.trainer, zoo_var.plugin\n"
        "x = torch.randn(256, 256, requires_grad=True); (x @ x).sum().backward()\n"
        "from pathlib import Path\n"
        "print([l for l in Path('/proc/self/status').read_text().splitlines() if l.startswith('VmHWM:')][0].split()[1])"
    )
    return int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout) * 1024


def load_measured_dp(path: Path | None) -> dict[str, str]:
    """The per-process peak RSS column of bench_data_parallel.py's table, by method."""
    if path is None or not path.exists():
        return {}
    found = {}
    for line in path.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) >= 8 and cells[0].startswith(("(b)", "(c)", "one process")):
            key = "replicate" if cells[0].startswith("(b)") else "fully_shard" if cells[0].startswith("(c)") else "one"
            found[key] = f"{cells[5]}; freed memory returned: {cells[7]}"
    return found


def bench_dp_rows(dp_steps: dict[int, StepMemory], runtime: float, measured: dict[str, str]) -> list[str]:
    """`runtime`: the process's bytes beyond the model's (Python, torch, a step's residue)."""
    """Per-process bytes the model predicts for bench_data_parallel.py's run (fp32, checkpointing
    on): one process at batch 2, and 2 processes at batch 1 each."""
    params = count_parameters(BENCH_DP)
    lines = [
        "| engine | per-GPU batch | weights | gradients | AdamW (+ foreach temporary) | gathered (weights + grads) | "
        "activations peak | predicted peak RSS (+ runtime) | data_parallel.md: peak RSS per process |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, shard, gpus, batch in (
        ("one process", False, 1, 2),
        ("replicate", False, 2, 1),
        ("fully_shard", True, 2, 1),
    ):
        s = static_bytes(params, shard, gpus)
        step = dp_steps[batch]
        activations = max(
            step.forward_peak, step.backward_peak_without_grads if shard else step.backward_peak - step.grads
        )
        phase = phases(params, dp_steps, shard, gpus)
        peak = max(line.at(batch) for line in phase.values())
        if shard:  # the model is built whole before fully_shard splits it
            peak = max(peak, 4 * (params.transformer + params.tokenizer))
        key = {"one process": "one", "replicate": "replicate", "fully_shard": "fully_shard"}[name]
        lines.append(
            f"| {name} | {batch} | {gib(s['weights'])} | {gib(s['grads'])}{' (buckets)' if s['grads_always'] else ''} | "
            f"{gib(s['adamw'])} (+{gib(s['step_temporary'])}) | {gib(s['gathered'])} + {gib(s['gathered_grads'])} | "
            f"{gib(activations)} | {gib(peak + runtime)} | {measured.get(key, 'pending')} |"
        )
    return lines


def write_report(data: dict, measured_path: Path | None, out: Path, measured_dp: Path | None = None) -> None:
    steps = {
        (row["preset"], row["batch"], row["precision"], row["checkpointing"]): StepMemory(**row)
        for row in data["steps"]
    }
    params = {preset: count_parameters(preset) for preset in DEPTHS}
    cpu_check = data.get("cpu_check", [])
    kinds = data.get("saved_kinds", {})
    runtime = data["runtime"]
    residue = step_residue(data)
    measured = load_measured(measured_path)
    md: list[str] = []
    add = md.append
    add("# Memory of VAR's transformer stage at paper scale: what fits an 80 GB GPU")
    add("")
    add(
        f"`benchmarks/memory_model.py` (torch {torch.__version__}). 256 px, {TOKENS} tokens per image, AdamW, fp32 "
        f"weights. Capacity per GPU: 80 GiB less {HEADROOM:.0%} headroom (CUDA context ~0.5-1 GiB, caching-allocator "
        f"fragmentation, NCCL buffers) = **{USABLE / GIB:.0f} GiB**. No GPU was used: parameters come from meta builds, "
        "activations from one training step (loss forward + backward) of each full preset on fake CPU tensors, "
        "their storages followed from creation to release (module docstring)."
    )
    add("")
    add("## Findings")
    add("")
    for finding in FINDINGS:
        add(f"- {finding}")
    add("")
    add("## 1. Parameters and static memory")
    add("")
    add(
        "The transformer stage trains the transformer (AdamW); the tokenizer is frozen but resident (its quantiser "
        "makes the teacher-forcing input). Per parameter: fp32 weight 4 B, gradient 4 B, AdamW moments 8 B; "
        "under DDP (`replicate`) the gradients are views of its buckets (zoo sets `gradient_as_bucket_view`), "
        "allocated for the whole run. FSDP2 divides all of it by N, plus what is gathered: the root unit (everything "
        "outside `plugin.blocks()`: embeddings, head, quantiser, tokenizer convs outside its levels) for the whole "
        "step, and two transformer blocks at a time (computing + prefetched), with their unsharded gradients in "
        "backward."
    )
    add("")
    add(
        "| model | depth / width / heads | transformer (trained) | tokenizer (frozen) | one block | root unit | "
        "static, 1 GPU | DDP, per GPU | FSDP2, 8 GPUs | FSDP2, 64 GPUs |"
    )
    add("|---|---|---|---|---|---|---|---|---|---|")
    for preset in DEPTHS:
        p = params[preset]

        def total(shard: bool, gpus: int) -> float:
            s = static_bytes(p, shard, gpus)
            return s["weights"] + s["grads"] + s["adamw"] + s["gathered"] + s["gathered_grads"]

        add(
            f"| var {preset} | {p.depth} / {p.width} / {p.heads} | {p.transformer / 1e6:.1f} M | "
            f"{p.tokenizer / 1e6:.1f} M | {p.largest_block / 1e6:.1f} M | {p.root / 1e6:.1f} M | "
            f"{gib(total(False, 1))} GiB | {gib(total(False, 8))} GiB | {gib(total(True, 8))} GiB | "
            f"{gib(total(True, 64))} GiB |"
        )
    add("")
    add(
        "Width = 64 x depth and heads = depth (`TransformerConfig.resolved_width`/`resolved_heads`). FSDP2 columns "
        "count the gathered units at their largest (backward: root + 2 blocks of weights and of gradients)."
    )
    add("")
    add("## 2. Activations, measured")
    add("")
    add(
        "Per image = (batch 2) - (batch 1); fixed = what does not grow with the batch. *saved* is what "
        "`saved_tensors_hooks` sees (deduplicated by storage, weights excluded; inside checkpointed blocks the "
        "hooks of torch.utils.checkpoint take over, so with checkpointing it is what is saved outside the blocks). "
        "*after forward* is every byte still live when the loss is computed (what backward will use; with "
        "checkpointing: each block's inputs held by the checkpoint). *forward peak* adds the transients "
        "(logits and cross-entropy, and each block's stacked keys/values, which `run_blocks` keeps in `presents` "
        "until the forward ends). *backward peak* is without gradients (counted in section 1): the saved "
        "activations, the logits' gradients and, with checkpointing, one recomputed block. The last two columns "
        "are slopes between batch 32 and 64, the gradients included in the backward peak: at large batches the "
        "backward peak is at the start of backward (activations whole), at batch 1-2 at its end (gradients whole); "
        "section 3 takes, for each phase, the larger of the two lines. GiB."
    )
    add("")
    add(
        "| model | precision | checkpointing | saved / image | of it bf16 | after forward / image | "
        "forward peak / image | backward peak / image | fixed: after forward | fixed: forward peak | "
        "fixed: backward peak | of the fixed, bf16 weight copies | 32 -> 64: forward peak / image | "
        "32 -> 64: backward peak with gradients / image |"
    )
    add("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for preset in DEPTHS:
        for precision in ("bf16", "fp32"):
            for checkpointing in (False, True):
                one, two = (steps[(preset, b, precision, checkpointing)] for b in (1, 2))
                saved = line_of(one.saved, two.saved)
                bf16 = line_of(one.saved_bf16, two.saved_bf16)
                after = line_of(one.after_forward, two.after_forward)
                forward = line_of(one.forward_peak, two.forward_peak)
                backward = line_of(one.backward_peak_without_grads, two.backward_peak_without_grads)
                share = f"{bf16.per_image / saved.per_image:.0%}" if saved.per_image else "-"
                add(
                    f"| var {preset} | {precision} | {'on' if checkpointing else 'off'} | {gib(saved.per_image)} | "
                    f"{share} | {gib(after.per_image)} | {gib(forward.per_image)} | {gib(backward.per_image)} | "
                    f"{gib(after.fixed)} | {gib(forward.fixed)} | {gib(backward.fixed)} | {gib(one.saved_weight_casts)} | "
                    + " | ".join(large_slopes(steps, preset, precision, checkpointing))
                    + " |"
                )
    add("")
    if kinds:
        add("What is saved, var d16, batch 1, no checkpointing (all 16 blocks and the head; MiB):")
        add("")
        add("| shape | fp32 run: dtype, count, MiB | bf16 run: dtype, count, MiB |")
        add("|---|---|---|")
        by_shape: dict[str, dict[str, list[str]]] = {}
        for precision in ("fp32", "bf16"):
            for row in kinds.get(precision, []):
                by_shape.setdefault(row["shape"], {}).setdefault(precision, []).append(
                    f"{row['dtype']} x{row['count']} {mib(row['bytes'])}"
                )
        order = sorted(
            by_shape, key=lambda shape: -sum(r["bytes"] for pr in kinds.values() for r in pr if r["shape"] == shape)
        )
        for shape in order[:18]:
            cells = by_shape[shape]
            add(f"| {shape} | {'; '.join(cells.get('fp32', ['-']))} | {'; '.join(cells.get('bf16', ['-']))} |")
        add("")
    add("## 3. The largest per-GPU batch that fits")
    add("")
    add(
        f"Peak per GPU = max(forward, backward, optimizer step) with section 1's static bytes and section 2's "
        f"measured lines; capacity {USABLE / GIB:.0f} GiB. Cell: **largest per-GPU batch** (the global batch it "
        "gives; the `--accumulate` that reaches the paper's batch, the official `--bs`: 768 for d16-d24, 1024 "
        "for d30, with a per-GPU micro-batch that fits: `batch_size` must split into GPUs x accumulate)."
    )
    add("")
    add("### bf16 autocast (`--precision bf16`), fp32 weights")
    add("")
    md.extend(fits_table(params, steps, "bf16"))
    add("")
    add("### fp32 (`--precision fp32`, the default)")
    add("")
    md.extend(fits_table(params, steps, "fp32"))
    add("")
    add("Compact (largest per-GPU batch, checkpointing off / on; `-`: does not fit), bf16:")
    add("")
    md.extend(compact_table(params, steps, "bf16"))
    add("")
    if data.get("validation"):
        add("### The held-out loss: a limit the table above does not show")
        add("")
        add(
            "`Trainer._validation_loss` (every `transformer_training.validate_every` steps, 500 in the presets, and at "
            "the last step when it divides `steps`) runs the stage's loss in eval mode under no_grad on batches of "
            "`stage.batch_size`, the *global* batch, on every rank: neither the processes nor `--accumulate` split it. "
            "Measured like section 2 (peak live bytes beyond the weights, eval mode, no_grad); the peak per GPU at the "
            "global batch, with the static bytes of DDP on 8 GPUs and of FSDP2 on 64 (the forward's gathered units):"
        )
        add("")
        add(
            "| model | precision | per image | fixed | peak at 768 per GPU, DDP 8 GPUs | peak at 768 per GPU, FSDP2 64 GPUs | "
            "at the paper's batch (FSDP2 64 GPUs) |"
        )
        add("|---|---|---|---|---|---|---|")
        validation = {(row["preset"], row["batch"], row["precision"]): row["peak"] for row in data["validation"]}
        for preset in DEPTHS:
            p = params[preset]
            for precision in ("bf16", "fp32"):
                line = line_of(validation[(preset, 1, precision)], validation[(preset, 2, precision)])
                ddp = static_bytes(p, False, 8)
                fsdp = static_bytes(p, True, 64)
                ddp_held = ddp["weights"] + ddp["adamw"] + ddp["grads"]  # gradients: DDP's buckets
                fsdp_held = fsdp["weights"] + fsdp["adamw"] + fsdp["gathered"]

                def verdict(total: float) -> str:
                    return f"{gib(total)} GiB ({'fits' if total <= USABLE else 'does not fit'})"

                add(
                    f"| var {preset} | {precision} | {gib(line.per_image)} | {gib(line.fixed)} | "
                    f"{verdict(ddp_held + line.at(768))} | {verdict(fsdp_held + line.at(768))} | "
                    f"{PAPER_BATCH[preset]}: {verdict(fsdp_held + line.at(PAPER_BATCH[preset]))} |"
                )
        add("")
        add(
            "Until validation takes the per-process micro-batch, a paper-scale run that would not fit it sets "
            "`--set transformer_training.validate_every=N` with N above `steps` (no held-out loss during training)."
        )
        add("")
    add("### Not in the model")
    add("")
    add(
        "- CUDA kernels: attention is measured with torch's fused CPU kernel, which saves what CUDA's memory-efficient "
        "kernel saves (q, k, v, output, log-sum-exp; CUDA pads the latter to 32 rows and a float mask to a multiple "
        "of 16 columns: under 2 MiB per block); cuBLAS workspaces, NCCL buffers and the CUDA context are in the headroom."
    )
    add("- CUDA's autocast op lists, not CPU's: the same ops are lowered to bf16 here (linear, matmul, SDPA).")
    add("- `--compile`: not measured.")
    add(
        "- The first step: AdamW allocates its moments at its first `step()`, when the gradients are held, which is "
        "the *optimizer step* phase above; later steps add the moments to the forward and backward peaks, which the "
        "table does."
    )
    add("")
    add("## 4. Check against this CPU: var d16, one process")
    add("")
    add(
        "Predicted peak RSS of a steady training step (AdamW moments already allocated: every step but the first) = "
        f"runtime ({gib(runtime)} GiB: a fresh Python with torch, zoo's trainer and the VAR plugin, measured) + "
        f"what a process holds once it has run a step ({gib(residue)} GiB: measured by the 2-block check below, "
        "and the same in both 2-process probes of section 5) + fp32 weights of transformer and tokenizer + AdamW "
        "moments + max(forward peak, backward peak with gradients). After step 1: the same with the gradients "
        "instead of the step's peak. Not counted: the data (the token cache of the few images encoded: kilobytes) "
        "and whatever the process did before the steps (building and initialising the model, encoding the images "
        "through the tokenizer at 256 px); a process-wide peak (ru_maxrss) includes them if they were larger. "
        "Measured: `benchmarks/results/train_step.md` (branch `bench-step`)."
    )
    add("")
    md.extend(cpu_prediction_rows(params["d16"], steps, runtime + residue, measured))
    add("")
    if measured:
        stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(measured_path.stat().st_mtime))
        add(
            f"Measured rows are read from bench_train_step.py's `train_step.jsonl` (`--measured`, as of {stamp}; "
            "`pending`: not measured by then). Its children run "
            "with glibc's default allocator, so their RSS keeps part of the memory a step frees (the check below "
            "shows it at 2 blocks); expect the measured RSS after step 1 and the peak to exceed the prediction by "
            "up to the step's activation peak (section 2: ~1.1 GiB per image at fp32 without checkpointing, ~0.15 "
            "with), and the RSS after building by what building and encoding left behind."
        )
        add("")
    if cpu_check:
        add(
            f"The tracker against real RSS: {CHECK_DEPTH} blocks of d16 (width 1024), fp32, a real CPU step after a "
            "warm-up step (fused AdamW, clip_grad_norm_), each in a fresh process with MALLOC_MMAP_THRESHOLD_=65536 "
            "(freed tensors leave the RSS); peak RSS above the RSS before the step (VmHWM reset through "
            "/proc/self/clear_refs) against the tracker's max(forward peak, backward peak) for the same model:"
        )
        add("")
        add(
            "| allocator | batch | checkpointing | RSS before the step | real peak above it (GiB) | tracker (GiB) | difference |"
        )
        add("|---|---|---|---|---|---|---|")
        for row in cpu_check:
            real, predicted = row["peak_above_before"], row["predicted_peak_above_before"]
            add(
                f"| {row.get('allocator', 'mmap threshold 64 KiB')} | {row['batch']} | "
                f"{'on' if row['checkpointing'] else 'off'} | {gib(row['rss_before'])} | {gib(real)} | {gib(predicted)} | "
                f"{(real / predicted - 1) * 100:+.1f}% |"
            )
        add("")
        add(
            "With the default allocator the RSS between steps already holds freed memory of the step before "
            "(compare *RSS before the step*), and the peak is higher too: a process's peak RSS exceeds the live "
            "bytes by a part of the step's transient memory."
        )
        add("")
    if data.get("bench_dp"):
        dp_steps = {row["batch"]: StepMemory(**row) for row in data["bench_dp"]}
        add("## 5. Check against 2 CPU processes: bench_data_parallel.py (`data_parallel.md`)")
        add("")
        add(
            "Its model: d16 with a depth-12, width-512 transformer (60 M trained) on a slim 128 px tokenizer (155 tokens), "
            "fp32, checkpointing on; one process at batch 2, or 2 processes at batch 1. Per process, GiB, from the same "
            "model (the tracker measured this config: fake CPU tensors); predicted peak = the largest phase + "
            f"runtime and a step's residue ({gib(runtime + residue)} GiB, section 4); for fully_shard at least the "
            "whole model, built before it is split."
        )
        add("")
        md.extend(bench_dp_rows(dp_steps, runtime + residue, load_measured_dp(measured_dp)))
        add("")
    if data.get("dp_probe"):
        add(
            "The same model and engines probed here (`--dp-probe`: zoo's Engine under `torchrun --standalone "
            "--nproc-per-node 2`, gloo, one thread per process, batch 1 per process, two steps), with "
            "MALLOC_MMAP_THRESHOLD_=65536 (freed tensors leave the RSS) and with glibc's default allocator: RSS per "
            "process after each phase, GiB (rank 0; rank 1 within 0.01):"
        )
        add("")
        probes = [row for row in data["dp_probe"] if row["rank"] == 0]
        keys = [key for key in probes[0] if key not in ("method", "rank", "allocator")]
        add("| engine | allocator | " + " | ".join(keys) + " |")
        add("|---|---|" + "---|" * len(keys))
        for row in probes:
            add(
                f"| {row['method']} | {row.get('allocator', 'mmap threshold 64 KiB')} | "
                + " | ".join(f"{row[key]:.2f}" for key in keys)
                + " |"
            )
        add("")
        probe = {row["method"]: row for row in probes if row.get("allocator", "").startswith("mmap")}
        dp_params = count_parameters(BENCH_DP)
        dp_steps = {row["batch"]: StepMemory(**row) for row in data.get("bench_dp", [])}
        if probe and dp_steps:
            checks = []
            for method, shard in (("replicate", False), ("fully_shard", True)):
                model_peak = max(line.at(1) for line in phases(dp_params, dp_steps, shard, 2).values())
                real = (probe[method]["peak of step 2"] - probe[method]["imported"]) * GIB
                checks.append(f"{method} {gib(model_peak)} predicted, {gib(real)} probed")
            add(
                "Peak of step 2 above the RSS after imports (process group included), against the model's peak "
                f"(weights, moments, gradients, activations): {'; '.join(checks)}. The rest is what a process holds "
                f"once it has run a step ({gib(residue)} GiB in one process, section 4). Before zoo's replicate "
                "took `gradient_as_bucket_view` (commit af81baf) the same probe gave replicate 1.46 GiB (a second "
                "copy of the gradients), the value `data_parallel.md` shows with freed memory returned. With glibc's "
                "default allocator fully_shard's RSS keeps ~0.5 GiB of freed memory, which is why a process-wide "
                "peak RSS shows fully_shard no lower than replicate at this size; GPU memory follows torch's caching "
                "allocator, not glibc, so the GPU table counts live bytes."
            )
        add("")
    out.write_text("\n".join(md) + "\n")
    print(f"wrote {out}")


def extras() -> dict:
    return {
        "saved_kinds": {precision: saved_kinds("d16", precision) for precision in ("fp32", "bf16")},
        "runtime": runtime_bytes(),
        "bench_dp": [asdict(measure_step(BENCH_DP, batch, "fp32", True)) for batch in (1, 2)],
        "validation": [
            measure_validation(preset, batch, precision)
            for preset in DEPTHS
            for precision in ("bf16", "fp32")
            for batch in (1, 2)
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=RESULTS / "memory_model.json", help="measurements (JSON)")
    parser.add_argument("--report-only", action="store_true", help="rewrite the report from --out's measurements")
    parser.add_argument("--check-cpu", action="store_true", help="only the real-CPU check of the tracker (into --out)")
    parser.add_argument("--dp-probe", choices=["replicate", "fully_shard"], help=argparse.SUPPRESS)
    parser.add_argument("--extras", action="store_true", help="only the saved-tensor kinds, runtime, bench-dp model")
    parser.add_argument("--measured-dp", type=Path, help="bench_data_parallel.py's data_parallel.md, for section 5")
    parser.add_argument("--measured", type=Path, help="bench_train_step.py's train_step.jsonl, for section 4")
    parser.add_argument(
        "--cpu-step", nargs=4, metavar=("PRESET", "DEPTH", "BATCH", "CHECKPOINTING"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.dp_probe:
        dp_probe(args.dp_probe)
        return
    if args.cpu_step:
        preset, depth, batch, checkpointing = args.cpu_step
        print(json.dumps(cpu_step_rss(preset, int(depth), int(batch), checkpointing == "1")))
        return
    report = args.out.with_suffix(".md")
    if args.check_cpu or args.extras:  # one part of the measurements, merged into --out
        data = json.loads(args.out.read_text()) if args.out.exists() else {}
        data.update(extras() if args.extras else {"cpu_check": check_cpu(), "dp_probe": run_dp_probes()})
        args.out.write_text(json.dumps(data, indent=1))
        return
    if args.report_only:
        write_report(json.loads(args.out.read_text()), args.measured, report, args.measured_dp)
        return
    steps = []
    for preset in DEPTHS:
        for precision in ("bf16", "fp32"):
            for checkpointing in (False, True):
                for batch in (1, 2, 32, 64):
                    step = measure_step(preset, batch, precision, checkpointing)
                    steps.append(asdict(step))
                    shown = {k: gib(v) if type(v) is int and k != "batch" else v for k, v in asdict(step).items()}
                    print(json.dumps(shown), flush=True)
    data = {"steps": steps, **extras(), "cpu_check": check_cpu(), "dp_probe": run_dp_probes()}
    args.out.write_text(json.dumps(data, indent=1))
    write_report(data, args.measured, report, args.measured_dp)


if __name__ == "__main__":
    main()
