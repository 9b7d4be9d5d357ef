"""Data at paper scale: a generated folder of JPEGs and the same packed into shards, read by
zoo's training loader and by torchvision's ImageFolder + DataLoader; start-up of a training
run on 5k vs all images; packing.

    /work/venv-tv/bin/python benchmarks/bench_data.py                  # 50,000 images, all sections
    /work/venv-tv/bin/python benchmarks/bench_data.py --images 2000    # a quick check
    python benchmarks/bench_data.py --sections pack train              # without torchvision

Run it with a Python whose torch has a matching torchvision (the loader section compares
against torchvision in the same process, so both use the same torch and Pillow); without
torchvision the torchvision rows say so. PYTHONPATH must put this checkout first.

Sections (--sections):
- generate: `--images` JPEGs of 256 x 256 px in `--classes` class folders under --work
  (default: a temporary directory, removed at the end unless --keep). Each image is a smooth
  random field (three octaves of Gaussian noise upscaled bicubic), 3-8 filled shapes, a
  Gaussian blur and a little grain, saved at JPEG quality 90: photo-like file sizes and decode
  cost, not white noise. A 5,000-image folder of hard links to the first 1/10 of each class
  is made next to it for the start-up comparison. Reused when --work already holds them.
- pack: `zoo data pack` of both folders (wall time of the command, images/s), shard-set size
  against the folder's (file bytes and disk usage).
- loader: images/s after decode + augmentation + collate, batch --batch: the VAR paper recipe
  (shorter side x1.125 Lanczos, random 256 crop, no flip) into [-1, 1] tensors, zoo's
  `training_loader` over the folder and the shards and torchvision's ImageFolder + DataLoader
  (Resize(288, LANCZOS), RandomCrop(256), ToTensor, Normalize(0.5, 0.5)) over the same folder,
  with 0, 1 and 2 workers. Per repeat the three run back to back (interleaved, so a load
  change on the shared machine hits all three); each times --batches batches after the first
  (the first includes worker start-up). Median of --repeats after one warm-up round.
- train: `zoo train var --preset d16` with a tiny tokenizer (the --set overrides in
  TRAIN_SETS; 256 px, the preset's augmentation, 2 workers), one tokenizer step, on the 5k
  and on the full folder and shards: time from the command's start to its first training
  step, peak RSS of the training process and the peak of the summed RSS of it and its workers.
- step: what one var d16 step consumes: seconds of one transformer step (fp32, batch 1, no
  checkpointing, full AdamW step) measured by bench_train_step.py's child on this CPU,
  as images/s.

Results: a markdown table per section, printed and written to benchmarks/results/data.md.
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results" / "data.md"
SIDE = 256
QUALITY = 90
SMALL = 5000  # images of the small folder of the start-up comparison
MB = 1e6
ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join(
        [str(ROOT), str(ROOT / "plugins"), str(ROOT / "exporters"), str(ROOT / "examples" / "tiny_autoencoder")]
        + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    ),
}
sys.path[:0] = [str(ROOT), str(ROOT / "plugins")]


# -- generate ----------------------------------------------------------------------------------


def photo_like(seed: int) -> bytes:
    """One 256 x 256 JPEG: smooth random field + filled shapes + blur + grain (see the docstring)."""
    rng = np.random.default_rng(seed)
    canvas = np.zeros((SIDE, SIDE, 3), np.float32) + rng.integers(0, 256, size=3)
    for cells, amplitude in ((3, 70.0), (12, 35.0), (48, 14.0)):
        low = rng.normal(0, amplitude, size=(cells, cells, 3)).astype(np.float32)
        canvas += np.stack(
            [
                np.asarray(Image.fromarray(low[..., c], mode="F").resize((SIDE, SIDE), Image.Resampling.BICUBIC))
                for c in range(3)
            ],
            axis=-1,
        )
    image = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(3, 9))):
        x, y = (int(v) for v in rng.integers(-40, SIDE, size=2))
        width, height = (int(v) for v in rng.integers(20, 140, size=2))
        color = tuple(int(v) for v in rng.integers(0, 256, size=3))
        kind = int(rng.integers(3))
        if kind == 0:
            draw.ellipse([x, y, x + width, y + height], fill=color)
        elif kind == 1:
            draw.rectangle([x, y, x + width, y + height], fill=color)
        else:
            corners = int(rng.integers(3, 6))
            draw.polygon(
                [tuple(int(v) for v in rng.integers(-20, SIDE + 20, size=2)) for _ in range(corners)], fill=color
            )
    image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.6, 1.6))))
    pixels = np.asarray(image, np.float32) + rng.normal(0, 5, size=(SIDE, SIDE, 3)).astype(np.float32)
    out = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(out, format="JPEG", quality=QUALITY)
    return out.getvalue()


def _write_one(job: tuple[str, int]) -> int:
    path, seed = job
    data = photo_like(seed)
    Path(path).write_bytes(data)
    return len(data)


def generate(work: Path, images: int, classes: int) -> dict[str, Any]:
    folder, small = work / "folder", work / "folder-5k"
    marker = work / "generated.json"
    if marker.is_file():
        facts = json.loads(marker.read_text())
        if facts["images"] == images and facts["classes"] == classes:
            print(f"reusing the {images:,} images in {folder}", flush=True)
            return dict(facts, reused=True)
    shutil.rmtree(folder, ignore_errors=True)
    shutil.rmtree(small, ignore_errors=True)
    jobs = []
    for label in range(classes):
        (folder / f"c{label:03d}").mkdir(parents=True)
        (small / f"c{label:03d}").mkdir(parents=True)
        per_class = images // classes + (label < images % classes)
        for number in range(per_class):
            jobs.append((str(folder / f"c{label:03d}" / f"{number:06d}.jpg"), label * 1_000_000 + number))
    start = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(os.cpu_count() or 1) as pool:
        sizes = pool.map(_write_one, jobs, chunksize=64)
    seconds = time.perf_counter() - start
    small_count = min(SMALL, images)
    for label in range(classes):  # the first 1/10 of each class, as hard links
        members = sorted((folder / f"c{label:03d}").iterdir())
        for path in members[: round(len(members) * small_count / images)]:
            os.link(path, small / f"c{label:03d}" / path.name)
    facts = {
        "images": images,
        "classes": classes,
        "small": sum(1 for _ in small.rglob("*.jpg")),
        "mean_kb": float(np.mean(sizes)) / 1e3,
        "seconds": seconds,
    }
    marker.write_text(json.dumps(facts))
    return dict(facts, reused=False)


# -- helpers -----------------------------------------------------------------------------------


def file_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def disk_bytes(path: Path) -> int:
    """Allocated bytes (st_blocks), what a file system holds for the files."""
    return sum(p.stat().st_blocks * 512 for p in path.rglob("*") if p.is_file())


def zoo_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "zoo", *args]


def machine_line() -> str:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name")), "")
    memory = next(
        int(line.split()[1]) * 1024 for line in Path("/proc/meminfo").read_text().splitlines() if "MemTotal" in line
    )
    import torch

    versions = f"torch {torch.__version__}"
    try:
        import torchvision

        versions += f", torchvision {torchvision.__version__}"
    except ImportError:
        pass
    import PIL

    return (
        f"{model or platform.processor()}, {os.cpu_count()} cores, {memory / 2**30:.0f} GiB RAM; Python "
        f"{platform.python_version()}, {versions}, Pillow {PIL.__version__}"
    )


def others_running() -> str:
    """What else used the CPU: the load average and the busiest processes not of this run."""
    load = os.getloadavg()
    rows = subprocess.run(["ps", "-eo", "pid=,pcpu=,comm=", "--sort=-pcpu"], capture_output=True, text=True).stdout
    others = [row.split() for row in rows.splitlines() if row.split() and int(row.split()[0]) != os.getpid()]
    busy = ", ".join(f"{row[2]} {row[1]}%" for row in others[:4])
    return (
        f"load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1/5/15 min); busiest other processes "
        f"(ps, CPU share over their lifetime): {busy}"
    )


def table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


# -- pack --------------------------------------------------------------------------------------


def pack_section(work: Path, facts: dict[str, Any]) -> tuple[str, list[str]]:
    rows, notes = [], []
    for name, count in (("folder", facts["images"]), ("folder-5k", facts["small"])):
        out = work / f"shards-{name}"
        shutil.rmtree(out, ignore_errors=True)
        start = time.perf_counter()
        result = subprocess.run(
            zoo_command("data", "pack", str(work / name), "--out", str(out), "--json"),
            env=ENV,
            capture_output=True,
            text=True,
        )
        seconds = time.perf_counter() - start
        if result.returncode:
            raise SystemExit(f"zoo data pack failed: {result.stderr.strip()}")
        written = json.loads(result.stdout)
        items = sum(written["items"].values())
        folder_files, folder_disk = file_bytes(work / name), disk_bytes(work / name)
        shard_files = file_bytes(out)
        rows.append(
            [
                f"{count:,} images",
                f"{seconds:.1f}",
                f"{items / seconds:,.0f}",
                written["shards"],
                f"{folder_files / MB:,.1f} / {folder_disk / MB:,.1f}",
                f"{shard_files / MB:,.1f}",
                f"{shard_files / folder_files:.3f} / {shard_files / folder_disk:.3f}",
            ]
        )
        notes.append(f"zoo data pack {name} --out shards-{name} --json")
    header = [
        "folder",
        "pack wall (s)",
        "images/s",
        "shards",
        "folder MB (file bytes / on disk)",
        "shard set MB",
        "shards / folder",
    ]
    return table(header, rows), notes


# -- loader ------------------------------------------------------------------------------------


def var_augment() -> Any:
    from zoo.config import AugmentConfig

    return AugmentConfig(resize_ratio=1.125, filter="lanczos", crop="random", flip=False)


def zoo_loader(data: str, workers: int, batch: int, batches: int, seed: int) -> Any:
    import torch

    from zoo.config import LoaderConfig
    from zoo.data import load_images
    from zoo.data.loader import GlobalBatchSampler, training_loader
    from zoo.distributed import WorldInfo

    dataset = load_images(data, SIDE, split="train", seed=seed, augment=var_augment())
    sampler = GlobalBatchSampler(len(dataset), batch, batches + 1, seed, 0, WorldInfo(0, 1, 0))
    return training_loader(dataset, sampler, LoaderConfig(workers=workers), torch.device("cpu"), seed)


def torchvision_loader(folder: str, workers: int, batch: int, batches: int, seed: int) -> Any:
    import torch
    from torchvision import datasets, transforms

    transform = transforms.Compose(
        [
            transforms.Resize(round(1.125 * SIDE), interpolation=transforms.InterpolationMode.LANCZOS),
            transforms.RandomCrop((SIDE, SIDE)),
            transforms.ToTensor(),
            transforms.Normalize([0.5] * 3, [0.5] * 3),
        ]
    )
    dataset = datasets.ImageFolder(folder, transform=transform)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        prefetch_factor=2 if workers else None,
        generator=torch.Generator().manual_seed(seed),
        drop_last=True,
    )


def images_per_second(loader: Any, batches: int) -> float:
    """Images/s over `batches` batches after the first (which pays for worker start-up)."""
    iterator = iter(loader)
    next(iterator)
    images, start = 0, time.perf_counter()
    for _ in range(batches):
        batch = next(iterator)
        images += len(batch["image"] if isinstance(batch, dict) else batch[0])
    seconds = time.perf_counter() - start
    del iterator
    return images / seconds


def loader_section(work: Path, args: argparse.Namespace) -> tuple[str, dict[str, float]]:
    try:
        import torchvision  # noqa: F401

        have_torchvision = True
    except ImportError:
        have_torchvision = False
    readers = {
        "zoo folder": lambda w, s: zoo_loader(str(work / "folder"), w, args.batch, args.batches, s),
        "zoo shards": lambda w, s: zoo_loader(str(work / "shards-folder"), w, args.batch, args.batches, s),
    }
    if have_torchvision:
        readers["torchvision folder"] = lambda w, s: torchvision_loader(
            str(work / "folder"), w, args.batch, args.batches, s
        )
    import torch

    # One intra-op thread in this process, as torch sets in DataLoader workers: with 0 workers
    # the collate and tensor ops run here, and two spinning OpenMP threads on a loaded 2-core
    # machine made every reader 5x slower.
    torch.set_num_threads(1)
    rows, summary = [], {}
    for workers in args.workers:
        measured: dict[str, list[float]] = {name: [] for name in readers}
        for repeat in range(args.repeats + 1):  # round 0 (2 batches) warms the page cache and the imports
            for name, make in readers.items():
                loader = make(workers, repeat)
                value = images_per_second(loader, args.batches if repeat else 2)
                del loader
                if repeat:
                    measured[name].append(value)
                print(f"  {workers} workers, {name}, round {repeat}: {value:,.0f} images/s", flush=True)
        medians = {name: statistics.median(values) for name, values in measured.items()}
        row: list[object] = [workers]
        for name in ("zoo folder", "zoo shards", "torchvision folder"):
            if name in medians:
                low, high = min(measured[name]), max(measured[name])
                row.append(f"{medians[name]:,.0f} ({low:,.0f}-{high:,.0f})")
            else:
                row.append("not run: no torchvision in this Python")
        for name in ("zoo folder", "zoo shards"):
            if have_torchvision:
                pairs = [a / b for a, b in zip(measured[name], measured["torchvision folder"], strict=True)]
                row.append(f"{statistics.median(pairs):.2f}x ({min(pairs):.2f}-{max(pairs):.2f})")
            else:
                row.append("-")
        rows.append(row)
        summary.update({f"{name}/{workers}": value for name, value in medians.items()})
    header = [
        "workers",
        "zoo folder (images/s)",
        "zoo shards (images/s)",
        "torchvision ImageFolder (images/s)",
        "zoo folder / torchvision",
        "zoo shards / torchvision",
    ]
    return table(header, rows), summary


# -- train -------------------------------------------------------------------------------------

TRAIN_SETS = [
    "tokenizer.channels=8",
    "tokenizer.channel_multipliers=[1,1,1,1,1]",
    "tokenizer.res_blocks=1",
    "tokenizer.attention_resolutions=[]",
    "tokenizer.mid_attention=false",
    "tokenizer.code_dim=4",
    "tokenizer.codebook_size=16",
    "transformer.depth=1",
    "transformer.width=16",
    "transformer.heads=1",
    "tokenizer_training.steps=1",
    "tokenizer_training.batch_size=8",
    "sample_every=0",
    "loader.workers=2",
    "scale.activation_checkpointing=false",
]


def tree_pss(pid: int) -> int:
    """Summed proportional set size (bytes) of a process and its descendants: pages the
    forked DataLoader workers share with the training process are counted once, split."""
    total, pending = 0, [pid]
    while pending:
        current = pending.pop()
        try:
            rollup = Path(f"/proc/{current}/smaps_rollup").read_text()
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        total += next((int(line.split()[1]) * 1024 for line in rollup.splitlines() if line.startswith("Pss:")), 0)
        pending += [int(child) for child in children]
    return total


def first_step(data: Path, run_dir: Path) -> dict[str, float]:
    """Start `zoo train var` on `data`, kill it at its first step: seconds to it, peak memory until then."""
    shutil.rmtree(run_dir, ignore_errors=True)
    command = zoo_command(
        "train", "var", "--preset", "d16", "--stage", "tokenizer", "--device", "cpu", "--json", "--out", str(run_dir)
    )
    command += [part for value in [f"data={data}", *TRAIN_SETS] for part in ("--set", value)]
    start = time.perf_counter()
    process = subprocess.Popen(
        command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True
    )
    assert process.stdout is not None
    os.set_blocking(process.stdout.fileno(), False)
    output, peak_tree, reached = b"", 0, float("nan")
    while True:
        peak_tree = max(peak_tree, tree_pss(process.pid))
        output += process.stdout.read() or b""
        if reached != reached and b'"event": "step"' in output:
            reached = time.perf_counter() - start
            os.killpg(process.pid, signal.SIGKILL)  # its own session: the command and its workers
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        time.sleep(0.05)
    process.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
    if reached != reached:
        raise SystemExit(f"zoo train ended ({process.returncode}) before a step: {output.decode()[-2000:]}")
    return {"first_step": reached, "peak_tree": peak_tree, "peak_largest": usage.ru_maxrss * 1024}


def train_section(work: Path, facts: dict[str, Any], repeats: int) -> tuple[str, list[str]]:
    rows = []
    for kind, prefix in (("folder", ""), ("shards", "shards-")):
        for name, count in (("folder-5k", facts["small"]), ("folder", facts["images"])):
            data = work / f"{prefix}{name}"
            runs = [first_step(data, work / "run") for _ in range(repeats)]
            seconds = statistics.median(run["first_step"] for run in runs)
            tree = statistics.median(run["peak_tree"] for run in runs)
            largest = statistics.median(run["peak_largest"] for run in runs)
            print(f"  {kind} {count:,}: {[round(run['first_step'], 2) for run in runs]} s", flush=True)
            times = ", ".join(f"{run['first_step']:.1f}" for run in runs)
            rows.append([kind, f"{count:,}", f"{seconds:.1f} ({times})", f"{largest / MB:,.0f}", f"{tree / MB:,.0f}"])
    header = [
        "source",
        "images",
        "start to first step (s): median (runs)",
        "peak RSS, largest process (MB)",
        "peak PSS, process + workers (MB)",
    ]
    return table(header, rows), [
        " ".join(["zoo train var --preset d16 --stage tokenizer --device cpu --json --set data=DATA"])
        + " "
        + " ".join(f"--set {value}" for value in TRAIN_SETS)
    ]


# -- step --------------------------------------------------------------------------------------


def step_section(cap: float) -> tuple[str, dict[str, float]]:
    spec = {
        "model": "var",
        "preset": "d16",
        "stage": "transformer",
        "batch": 1,
        "precision": "fp32",
        "checkpointing": False,
        "steps": 2,
        "cap": cap,
    }
    result = subprocess.run(
        [sys.executable, str(HERE / "bench_train_step.py"), "--child", json.dumps(spec)],
        env={**ENV, "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"},
        capture_output=True,
        text=True,
    )
    if result.returncode:
        return f"d16 step: failed ({result.stderr.strip()[-300:]})", {}
    line = next(line for line in result.stdout.splitlines() if line.startswith("RESULT "))
    times = json.loads(line.removeprefix("RESULT "))["times"]
    seconds = times[-1]  # the first step warms up
    row = ["var d16 transformer, fp32, batch 1, full AdamW step", f"{seconds:.1f}", f"{1 / seconds:.3f}"]
    header = ["step (this CPU, 2 threads)", "s / step", "images/s consumed"]
    return table(header, [row]), {"d16_step_seconds": seconds, "step_times": times}


# -- main --------------------------------------------------------------------------------------

SECTIONS = ("generate", "pack", "loader", "train", "step")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=50_000, help="images in the generated folder")
    parser.add_argument("--classes", type=int, default=100, help="class folders")
    parser.add_argument("--work", type=Path, help="where the data is generated (default: a temporary directory)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary --work directory")
    parser.add_argument("--sections", nargs="*", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--batch", type=int, default=64, help="loader batch size")
    parser.add_argument("--batches", type=int, default=40, help="timed batches per loader measurement")
    parser.add_argument("--workers", type=int, nargs="*", default=[0, 1, 2], help="loader worker counts")
    parser.add_argument("--repeats", type=int, default=3, help="measured rounds of the loader and train sections")
    parser.add_argument("--step-cap", type=float, default=400, help="seconds for the d16 step child")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results file")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-data-"))
    work.mkdir(parents=True, exist_ok=True)
    started = datetime.now(timezone.utc)
    sections = [
        "# Data at paper scale: loader throughput, start-up, packing",
        f"Date: {started:%Y-%m-%d %H:%M} UTC. Machine: {machine_line()}.",
        "Command: `" + " ".join(["python", "benchmarks/bench_data.py", *sys.argv[1:]]) + "`",
        f"Running alongside at the start: {others_running()}.",
    ]
    try:
        facts = generate(work, args.images, args.classes)
        sections.append(
            f"Data (generated, not committed): {facts['images']:,} JPEGs, 256 x 256 px, quality {QUALITY}, "
            f"in {facts['classes']} class folders, mean file {facts['mean_kb']:.1f} kB; each a smooth random field "
            "(three octaves of Gaussian noise upscaled bicubic) with 3-8 filled shapes, blurred, with a little "
            f"grain (not white noise); a second folder of {facts['small']:,} hard links (the first tenth of each "
            "class) for the start-up comparison."
            + ("" if facts["reused"] else f" Generated in {facts['seconds']:.0f} s on {os.cpu_count()} processes.")
        )
        if "pack" in args.sections:
            text, notes = pack_section(work, facts)
            sections += ["## Packing (`zoo data pack`)", text, "Commands: " + "; ".join(f"`{n}`" for n in notes)]
            print(text, flush=True)
        if "loader" in args.sections:
            text, _ = loader_section(work, args)
            sections += [
                "## Loader throughput (decode + VAR augmentation + collate)",
                f"Images/s, batch {args.batch}, train split, median of {args.repeats} rounds after a short warm-up round "
                f"(min-max), each timing {args.batches} batches after the first; the three readers run back to back "
                "in each round. Ratio: median of the per-round ratios (min-max). zoo: `zoo.data.loader."
                "training_loader` (the trainer's loader) over `load_images(DATA, 256, augment=resize_ratio 1.125, "
                "lanczos, random crop, no flip)`; torchvision: `ImageFolder` with `Resize(288, LANCZOS), "
                "RandomCrop(256), ToTensor(), Normalize(0.5, 0.5)` and `DataLoader(shuffle=True)`, the official "
                "VAR train transform without flip. Same torch, Pillow and files in one process, with one torch "
                "thread (DataLoader workers have one; two spinning threads on this loaded machine slowed all "
                "readers 5x).",
                text,
            ]
            print(text, flush=True)
        if "train" in args.sections:
            text, notes = train_section(work, facts, args.repeats)
            sections += [
                "## Start-up and memory of a training run: 5k vs all images",
                "Each run: the command below (tokenizer stage, steps of 8 images), killed when it prints its "
                "first step event. Start to first step: wall seconds from launching the command to its first step event "
                "(median of the rounds; it includes Python and torch start-up). Peak RSS, largest process: the "
                "ru_maxrss wait4 reports for the command (the largest of it and its workers). Peak PSS: the "
                "largest sum of the proportional set sizes of the training process and its two DataLoader "
                "workers, sampled every 50 ms (pages the forked workers share are split between them, not "
                "counted three times). Both are medians of the rounds.",
                text,
                "Command: `" + notes[0] + "`",
            ]
            print(text, flush=True)
        if "step" in args.sections:
            text, measured = step_section(args.step_cap)
            sections += ["## What a var d16 step consumes", text]
            print(text, flush=True)
        sections.append(f"Finished {datetime.now(timezone.utc):%H:%M} UTC; at the end: {others_running()}.")
    finally:
        if args.work is None and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n\n".join(sections) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
