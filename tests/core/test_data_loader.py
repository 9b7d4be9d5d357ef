"""zoo.data.loader and zoo.data.augment: which item each rank and worker reads, that a seed
fixes the order and the augmentation at any worker count, exact resume, skipped files
counted once over ranks and workers, and memory that does not grow with a lazy folder."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset

from tests.conftest import ROOT
from zoo.config import AugmentConfig, LoaderConfig
from zoo.data import Subset, digits, image_folder, load_images, pack
from zoo.data.augment import fit, held_out, item_generator, reading_epoch
from zoo.data.loader import GlobalBatchSampler, lazy_sources, training_loader, worker_count
from zoo.distributed import WorldInfo
from zoo.runtime.images import square_resize

torch.set_num_threads(1)

VAR_RECIPE = AugmentConfig(resize_ratio=1.125, filter="lanczos", crop="random", flip=True)
CPU = torch.device("cpu")


def noise_image(seed: int, size: tuple[int, int] = (40, 30)) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_one_per_class(root, count: int, bad: tuple[int, ...] = ()) -> None:
    """`count` class folders with one image each (label = class = item id), and a truncated
    image after the good one in the classes of `bad`."""
    for label in range(count):
        (root / f"c{label:03d}").mkdir(parents=True)
        (root / f"c{label:03d}" / "a.png").write_bytes(png_bytes(noise_image(label, (12, 10))))
        if label in bad:
            data = png_bytes(noise_image(1000 + label, (24, 24)))
            (root / f"c{label:03d}" / "z_bad.png").write_bytes(data[: len(data) // 2])


# --- augmentation ------------------------------------------------------------------------------


def test_plain_augment_is_the_centre_square_of_before():
    image = noise_image(0)
    plain = fit(image, 8, AugmentConfig(), item_generator(0, 0, 0))
    assert np.array_equal(plain, square_resize(image, 8))


def test_the_var_recipe_resizes_the_shorter_side_then_crops():
    image = noise_image(1)  # 40 x 30: the shorter side to round(1.125 * 16) = 18, the longer to int(18 * 40 / 30) = 24
    resized = image.resize((24, 18), Image.Resampling.LANCZOS)
    centre = fit(image, 16, held_out(VAR_RECIPE), item_generator(0, 0, 0))
    assert np.array_equal(centre, np.asarray(resized.crop((4, 1, 20, 17))))  # torchvision's CenterCrop rounding
    crops = {fit(image, 16, VAR_RECIPE, item_generator(3, epoch, 5)).tobytes() for epoch in range(12)}
    assert len(crops) > 4  # places and flips drawn anew each epoch
    again = fit(image, 16, VAR_RECIPE, item_generator(3, 7, 5))
    assert np.array_equal(again, fit(image, 16, VAR_RECIPE, item_generator(3, 7, 5)))
    flipped = np.asarray(resized.transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    windows = [np.asarray(resized)[t : t + 16, x : x + 16] for t in range(3) for x in range(9)]
    windows += [flipped[t : t + 16, x : x + 16] for t in range(3) for x in range(9)]
    for epoch in range(12):  # every crop is a window of the resized (or mirrored) image
        crop = fit(image, 16, VAR_RECIPE, item_generator(3, epoch, 5))
        assert any(np.array_equal(crop, window) for window in windows)


def test_held_out_items_are_not_augmented_and_train_items_are_per_epoch(tmp_path):
    for index in range(4):
        noise_image(index).save(tmp_path / f"{index}.png")
    train = image_folder(tmp_path, 16, "train", seed=2, augment=VAR_RECIPE)
    with reading_epoch(0):
        first = train[1]["image"]
    with reading_epoch(1):
        second = train[1]["image"]
    assert not torch.equal(first, second)
    test = image_folder(tmp_path, 16, "test", seed=2, augment=VAR_RECIPE)
    with reading_epoch(0):
        a = test[0]["image"]
    with reading_epoch(5):
        b = test[0]["image"]
    assert torch.equal(a, b)


# --- the loader --------------------------------------------------------------------------------


def test_the_sampler_covers_each_epoch_once_split_over_ranks_and_resumes_exactly():
    size, batch, steps = 10, 4, 10  # 40 positions: four epochs, boundaries inside steps
    ranks = [list(GlobalBatchSampler(size, batch, steps, 7, 0, WorldInfo(r, 2))) for r in range(2)]
    stream = [key for step in range(steps) for rank in range(2) for key in ranks[rank][step]]
    for epoch in range(4):
        keys = stream[epoch * size : (epoch + 1) * size]
        assert {e for e, _ in keys} == {epoch}
        assert sorted(i for _, i in keys) == list(range(size))
    orders = [[i for _, i in stream[e * size : (e + 1) * size]] for e in range(4)]
    assert len({tuple(order) for order in orders}) == 4  # each epoch its own permutation
    assert list(GlobalBatchSampler(size, batch, steps, 7, 6, WorldInfo(1, 2))) == ranks[1][6:]


class Labelled(Dataset):
    """A plugin's data set holding images as an attribute, as the caption model's does."""

    def __init__(self, images: Dataset) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        return {"pixels": self.images[index]["image"]}


def test_auto_workers_read_files_in_workers_and_memory_in_the_step(tmp_path):
    write_one_per_class(tmp_path, 4)
    folder = image_folder(tmp_path, 8)
    auto = LoaderConfig()
    assert worker_count(auto, digits(8)) == 0
    assert lazy_sources(Labelled(Subset(folder, [0, 1]))) == [folder]
    assert 1 <= worker_count(auto, Labelled(folder)) <= 8
    assert worker_count(LoaderConfig(workers=3), digits(8)) == 3


def read_batches(dataset, workers: int, seed: int = 5, steps: int = 6, start: int = 0) -> list:
    sampler = GlobalBatchSampler(len(dataset), 4, steps, seed, start, WorldInfo())
    loader = training_loader(dataset, sampler, LoaderConfig(workers=workers, prefetch=1), CPU, seed)
    return list(loader)


def test_a_seed_fixes_order_and_augmentation_at_any_worker_count(tmp_path):
    write_one_per_class(tmp_path, 9, bad=(2,))  # 10 files: 9 in the train split
    dataset = image_folder(tmp_path, 8, "train", seed=5, augment=VAR_RECIPE)
    in_process, in_workers = read_batches(dataset, 0), read_batches(dataset, 2)
    for one, two in zip(in_process, in_workers, strict=True):
        assert torch.equal(one["image"], two["image"])
        assert torch.equal(one["label"], two["label"])
    assert dataset.skipped == 1  # marked by a worker, seen here
    resumed = read_batches(dataset, 2, start=4)
    assert all(torch.equal(a["image"], b["image"]) for a, b in zip(resumed, in_process[4:], strict=True))


class WorkerSeed(Dataset):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> int:
        return torch.initial_seed()


def test_worker_seeds_follow_the_run_seed():
    def seeds(seed: int) -> list[int]:
        sampler = GlobalBatchSampler(8, 2, 4, seed, 0, WorldInfo())
        loader = training_loader(WorkerSeed(), sampler, LoaderConfig(workers=2, persistent_workers=False), CPU, seed)
        return [int(value) for batch in loader for value in batch]

    first = seeds(1)
    assert first == seeds(1)
    assert first != seeds(2)
    assert len(set(first)) == 2  # one seed per worker


# --- two processes x two workers ------------------------------------------------------------

SCRIPT = textwrap.dedent("""
    import json, sys, torch
    torch.set_num_threads(1)
    sys.path.insert(0, {root!r})
    from zoo.config import LoaderConfig
    from zoo.data import load_images
    from zoo.data.loader import GlobalBatchSampler, skipped_reports, training_loader
    from zoo.distributed import init_from_env, shutdown

    spec, out, seed, start, steps = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    world = init_from_env("cpu")
    dataset = load_images(spec, 8, "all", seed=seed)
    sampler = GlobalBatchSampler(len(dataset), 8, steps, seed, start, world)
    loader = training_loader(dataset, sampler, LoaderConfig(workers=2), torch.device("cpu"), seed)
    keys = GlobalBatchSampler(len(dataset), 8, steps, seed, start, world)
    records = [
        {{"step": step, "keys": batch_keys, "labels": batch["label"].tolist()}}
        for step, batch_keys, batch in zip(range(start, steps), keys, loader)
    ]
    reports = skipped_reports(dataset, world)
    with open(f"{{out}}-{{world.rank}}.json", "w") as stream:
        json.dump({{"records": records, "reports": reports}}, stream)
    shutdown()
""")
ITEMS, BAD, STEPS = 24, (3, 10), 6  # 24 items, global batch 8: three steps an epoch, two epochs


def run_two_processes(tmp_path, spec: str, name: str, start: int = 0) -> list[dict]:
    script = tmp_path / "read.py"
    script.write_text(SCRIPT.format(root=str(ROOT)))
    out = tmp_path / name
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    subprocess.run([*command, str(script), spec, str(out), "11", str(start), str(STEPS)], check=True, timeout=240)
    return [json.loads((tmp_path / f"{name}-{rank}.json").read_text()) for rank in range(2)]


@pytest.mark.slow
@pytest.mark.parametrize("source", ["folder", "shards"])
def test_two_processes_with_two_workers_read_each_item_once_an_epoch_and_resume_exactly(tmp_path, source):
    write_one_per_class(tmp_path / "folder", ITEMS - len(BAD), bad=BAD)  # 22 images, 2 truncated: 24 items
    spec = str(tmp_path / "folder")
    if source == "shards":
        pack(tmp_path / "folder", tmp_path / "shards", shard_size=5)  # truncated images pass the header check
        spec = str(tmp_path / "shards")
    dataset = load_images(spec, 8, "all", seed=11)
    assert len(dataset) == ITEMS
    expected = [dataset[index]["label"] for index in range(ITEMS)]  # an unreadable item is the next readable one

    ranks = run_two_processes(tmp_path, spec, "run")
    for epoch in range(2):
        steps = range(3 * epoch, 3 * epoch + 3)
        keys = [
            tuple(key)
            for rank in ranks
            for record in rank["records"]
            if record["step"] in steps
            for key in record["keys"]
        ]
        assert sorted(index for _, index in keys) == list(range(ITEMS))
        assert {e for e, _ in keys} == {epoch}
    for rank in ranks:
        for record in rank["records"]:
            assert record["labels"] == [expected[index] for _, index in record["keys"]]
    orders = [[k[1] for r in ranks[0]["records"][3 * e : 3 * e + 3] for k in r["keys"]] for e in range(2)]
    assert orders[0] != orders[1]  # a new permutation each epoch
    for rank in ranks:  # the two files found unreadable, counted once over ranks and workers
        assert len(rank["reports"]) == 1
        assert "skipped 2 unreadable images" in rank["reports"][0]

    resumed = run_two_processes(tmp_path, spec, "resumed", start=4)  # mid-epoch 1
    for rank in range(2):
        assert resumed[rank]["records"] == ranks[rank]["records"][4:]


# --- memory of a lazy folder ----------------------------------------------------------------

MEMORY_SCRIPT = textwrap.dedent("""
    import os, sys, torch
    torch.set_num_threads(1)
    sys.path.insert(0, {root!r})
    from zoo.data import image_folder

    def resident() -> int:
        with open("/proc/self/statm") as stream:
            return int(stream.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    image_folder(sys.argv[1] + "/warm", 64, "all")[0]  # imports and first-use allocations
    before = resident()
    dataset = image_folder(sys.argv[1] + "/data", 64, "all")
    for index in range(0, len(dataset), len(dataset) // 10):
        dataset[index]
    print(resident() - before)
""")


def write_many(root, count: int, data: bytes) -> None:
    for label in range(10):
        (root / f"c{label}").mkdir(parents=True)
        for index in range(label, count, 10):
            (root / f"c{label}" / f"{index:06d}.png").write_bytes(data)


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads resident memory from /proc")
def test_memory_of_a_lazy_folder_does_not_grow_with_its_images(tmp_path):
    # At 64 px an eagerly decoded 20k folder holds 20,000 x 12 KB = 245 MB; a listing holds
    # tens of bytes per file.
    tiny = png_bytes(noise_image(0, (4, 4)))
    script = tmp_path / "memory.py"
    script.write_text(MEMORY_SCRIPT.format(root=str(ROOT)))
    grown = {}
    for count in (2_000, 20_000):
        write_many(tmp_path / str(count) / "data", count, tiny)
        write_many(tmp_path / str(count) / "warm", 10, tiny)
        result = subprocess.run(
            [sys.executable, str(script), str(tmp_path / str(count))], check=True, capture_output=True, text=True
        )
        grown[count] = int(result.stdout.split()[-1])
    assert grown[20_000] - grown[2_000] < 16 * 2**20, grown


# --- a training run killed mid-epoch resumes at the same items --------------------------------

READER_SCRIPT = textwrap.dedent("""
    import json, os, sys, time, torch
    from torch import nn
    torch.set_num_threads(1)
    sys.path.insert(0, {root!r})
    import zoo
    from zoo.data import load_images
    from zoo.trainer import TrainOptions, train

    class ReaderConfig(zoo.ZooConfig):
        data: str = ""

    def loss(model, batch, ctx):
        time.sleep(float(os.environ.get("READER_SLEEP", "0")))
        with open(os.environ["READER_LOG"], "a") as log:  # the items each step trains on
            log.write(json.dumps([ctx.step, batch["label"].tolist()]) + "\\n")
        return {{"loss": model(batch["image"].mean(dim=(2, 3))).pow(2).mean()}}

    class Reader(zoo.ModelPlugin):
        name, description, Config, SampleOptions = "reader", "logs its items", ReaderConfig, zoo.SampleOptionsBase

        def build(self, config):
            return nn.Linear(3, 1)

        def stages(self, config):
            images = lambda ctx: load_images(config.data, 8, "train", seed=config.seed, augment=config.augment)
            return [zoo.Stage("read", [zoo.Optimizer("all", lambda m: [m], loss, lr=1e-2)], 15, 4, images)]

    run_dir, data, resume = sys.argv[1], sys.argv[2], sys.argv[3] == "resume"
    config = ReaderConfig(data=data, loader={{"workers": 2}}, augment={{"crop": "random", "resize_ratio": 1.5}})
    train(Reader(), config, run_dir, options=TrainOptions(device="cpu", progress="quiet", resume=resume, checkpoint_every=4))
""")


def logged_steps(path) -> dict[int, list[int]]:
    """Step -> the labels it trained on; a step run twice (before a kill, after the resume) keeps the later."""
    lines = path.read_text().splitlines()
    return {step: labels for step, labels in (json.loads(line) for line in lines if line.endswith("]"))}


@pytest.mark.slow
def test_a_training_run_killed_mid_epoch_resumes_at_the_same_items(tmp_path):
    write_one_per_class(tmp_path / "data", 20, bad=(6,))  # 21 files, 19 in the train split: epochs end mid-step
    script = tmp_path / "reader.py"
    script.write_text(READER_SCRIPT.format(root=str(ROOT)))

    def command(run_dir, mode):
        return [sys.executable, str(script), str(run_dir), str(tmp_path / "data"), mode]

    env = {**os.environ, "READER_LOG": str(tmp_path / "straight.log")}
    subprocess.run(command(tmp_path / "straight", "fresh"), check=True, env=env, timeout=240)
    env = {**os.environ, "READER_LOG": str(tmp_path / "killed.log"), "READER_SLEEP": "0.2"}
    victim = subprocess.Popen(command(tmp_path / "killed", "fresh"), env=env, start_new_session=True)
    latest = tmp_path / "killed" / "state" / "latest.json"
    deadline = time.time() + 120
    log = tmp_path / "killed.log"
    while time.time() < deadline:  # past the checkpoint after 4 steps, mid-way through epoch 1
        if latest.exists() and log.exists() and max(logged_steps(log), default=0) >= 5:
            break
        time.sleep(0.01)
    os.killpg(victim.pid, signal.SIGKILL)  # the trainer and its DataLoader workers
    victim.wait()
    before_kill = logged_steps(log)
    assert 5 <= max(before_kill) < 14, "the kill should land after the first checkpoint, before the end"
    env.pop("READER_SLEEP")
    subprocess.run(command(tmp_path / "killed", "resume"), check=True, env=env, timeout=240)
    straight, resumed = logged_steps(tmp_path / "straight.log"), logged_steps(log)
    assert sorted(straight) == list(range(15))
    assert before_kill == {step: straight[step] for step in before_kill}
    assert resumed == straight  # steps 4 and 5 ran twice, on the same items
