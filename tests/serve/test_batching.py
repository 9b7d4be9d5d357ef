"""zoo serve --max-batch: requests merged into one loop call get the answers each gets alone,
byte for byte (per-row generators: zoo.runtime.sampling.row_generators), for every model; the
batcher runs a lone request at once and fills a group while others are on their way in or
every worker is busy."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import httpx
import numpy as np
import pytest
from PIL import Image

from tests.serve.conftest import free_port, running_server, serve_command, serve_env, shared_export
from zoo.outputs import SampleOutput
from zoo.runtime.images import data_uri
from zoo.runtime.loop import SamplingTimeout
from zoo.runtime.serve.batching import Batcher


def noise_png(seed: int, side: int = 20) -> str:
    """A data URI of a random RGB image (side not the model's: the loop resizes it)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return data_uri(buffer.getvalue(), "image/png")


# model -> requests that share one batch key (seeds, counts, classes, images differ)
MERGEABLE: dict[str, list[dict[str, Any]]] = {
    "var": [
        {"seed": 1, "n": 1, "classes": [3]},
        {"seed": 2, "n": 2, "classes": [1, 5]},
        {"seed": 3, "n": 1, "classes": [0]},
        {"seed": 1, "n": 1, "classes": [7]},
    ],
    "vqvae2_pixelcnn": [{"seed": 1, "n": 1}, {"seed": 2, "n": 3}, {"seed": 1, "n": 2}],
    "quantart": [
        {"content": noise_png(1), "style": noise_png(2), "size": 16},
        {"content": noise_png(3), "style": noise_png(2), "size": 16, "content_style_balance": 0.5},
        {"size": 16, "sweep": True},
        {"size": 16, "fidelity_balance": 0.0},  # the shipped images: every content with every style
    ],
    "multimodal_caption": [
        {"seed": 1, "n": 2, "decoding": "sample", "top_k": 5},
        {"seed": 2, "image": [noise_png(4), noise_png(5)], "decoding": "sample", "top_k": 5},
        {"seed": 3, "n": 3, "decoding": "sample", "top_k": 5},
    ],
}
# model -> requests the loop runs alone (batch_key None)
ALONE: dict[str, list[dict[str, Any]]] = {
    "var": [{"edit": noise_png(6)}],
    "multimodal_caption": [
        {"decoding": "beam"},
        {"caption": ["a red square"]},
        {"image": [noise_png(7)], "caption": ["x"]},
    ],
}


def export_of(name: str, var_export: Path, tmp_path_factory) -> Path:
    return var_export if name == "var" else shared_export(tmp_path_factory, name)


def same_bytes(merged: SampleOutput, alone: SampleOutput) -> list[str]:
    """What differs between two outputs: images, texts, columns, each extra (dtype, shape, bytes)."""
    differences = [] if merged.texts == alone.texts and merged.columns == alone.columns else ["texts or columns"]
    arrays = {"images": (merged.images, alone.images)}
    arrays |= {key: (merged.extras.get(key), alone.extras[key]) for key in alone.extras}
    for key, (a, b) in arrays.items():
        if a is None or b is None:
            differences += [key] if (a is None) != (b is None) else []
        elif a.dtype != b.dtype or a.shape != b.shape or a.tobytes() != b.tobytes():
            differences.append(key)
    return differences


@pytest.mark.parametrize("name", MERGEABLE)
def test_a_merged_call_answers_each_request_what_it_gets_alone(name, var_export, tmp_path_factory):
    import zoo.runtime

    model = zoo.runtime.load(export_of(name, var_export, tmp_path_factory))
    runtime = model.runtime
    requests = [model.options_class(**body) for body in MERGEABLE[name]]
    assert runtime.per_row_seeds
    assert len({runtime.batch_key(options) for options in requests}) == 1
    assert runtime.batch_key(requests[0]) is not None
    for options, merged in zip(requests, runtime.sample_batch(requests), strict=True):
        alone = model.sample(options)
        assert same_bytes(merged, alone) == [], f"{name} {options.seed}: merged differs from alone"
    for body in ALONE.get(name, []):
        assert runtime.batch_key(model.options_class(**body)) is None, body


def test_rows_differ_by_class_not_by_position(var_export):
    import zoo.runtime

    model = zoo.runtime.load(var_export)
    first, *_, last = model.runtime.sample_batch([model.options_class(**body) for body in MERGEABLE["var"]])
    assert not np.array_equal(first.images, last.images)  # seed 1 both, classes 3 and 7


# -- the batcher's policy, on a fake model: when a group runs, and with whom -----------------


def fake_model(key: str | None) -> Any:
    runtime = SimpleNamespace(
        per_row_seeds=True,
        batch_key=lambda options: key,
        batch_rows=lambda options: options.n,
        cost=lambda options: None,
    )
    return SimpleNamespace(name="fake", loaded=SimpleNamespace(runtime=runtime))


SLOW_SEED = 1000  # the fake loop's calls holding it stop at their deadline


def run_batcher(scenario, max_rows: int = 8, max_wait: float = 30.0) -> list[list[int]]:
    """Run `scenario(batcher, worker, sample)` on an event loop with one worker -> the seeds of
    each call, in order. `sample(seed, n, key)` starts a request as a task; the groups wait
    up to 30 s for others, past the 10 s the test allows."""
    calls: list[list[int]] = []

    def run(model, requests) -> list[int]:
        calls.append([options.seed for options in requests])
        if any(options.seed < 0 for options in requests):
            raise ValueError("a negative seed: the input this fake loop refuses")
        if any(options.seed >= SLOW_SEED for options in requests):
            raise SamplingTimeout("sampling stopped at its deadline")
        return [options.seed for options in requests]

    async def main() -> None:
        worker = anyio.CapacityLimiter(1)
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tasks:
                batcher = Batcher(max_rows, max_wait, 2**40, worker, tasks, run)

                def sample(seed: int, n: int = 1, key: str | None = "same") -> None:
                    async def one() -> None:
                        if seed < 0 or seed >= SLOW_SEED:
                            with pytest.raises(ValueError if seed < 0 else SamplingTimeout):
                                await batcher.sample(fake_model(key), SimpleNamespace(seed=seed, n=n))
                            return
                        assert await batcher.sample(fake_model(key), SimpleNamespace(seed=seed, n=n)) == seed

                    tasks.start_soon(one)

                await scenario(batcher, worker, sample)

    anyio.run(main)
    return calls


def test_a_lone_request_does_not_wait_for_others():
    async def scenario(batcher, worker, sample):
        sample(1)
        await anyio.sleep(0.2)
        sample(2)

    assert run_batcher(scenario) == [[1], [2]]  # each ran at once, not after 30 s


def test_while_the_worker_is_busy_requests_fill_groups_by_key_and_size():
    async def scenario(batcher, worker, sample):
        await worker.acquire()  # busy with another call
        for seed, n, key in [(1, 1, "a"), (2, 1, "b"), (3, 2, "a"), (4, 1, None), (5, 5, "a"), (6, 1, "a")]:
            sample(seed, n, key)
        await anyio.sleep(0.2)
        worker.release()

    calls = run_batcher(scenario, max_rows=4)
    # 1 and 3 fill three rows of four; 5 (five rows) closes that group and is one of its own;
    # 6 starts the next group of "a"; None runs alone; every group waited for the worker in order
    assert sorted(calls) == sorted([[1, 3], [2], [4], [5], [6]])
    assert calls.index([1, 3]) < calls.index([6])


def test_a_merged_call_that_fails_runs_again_request_by_request():
    async def scenario(batcher, worker, sample):
        await worker.acquire()
        for seed in (1, -2, 3):
            sample(seed)
        await anyio.sleep(0.2)
        worker.release()

    assert run_batcher(scenario) == [[1, -2, 3], [1], [-2], [3]]  # only -2 fails (checked in `sample`)


def test_a_merged_call_stopped_at_its_deadline_fails_every_request_without_running_again():
    async def scenario(batcher, worker, sample):
        await worker.acquire()
        for seed in (SLOW_SEED, SLOW_SEED + 1, SLOW_SEED + 2):
            sample(seed)
        await anyio.sleep(0.2)
        worker.release()

    # one call, not one more per request; each request's SamplingTimeout is checked in `sample`
    assert run_batcher(scenario) == [[SLOW_SEED, SLOW_SEED + 1, SLOW_SEED + 2]]


def test_a_group_waits_for_a_request_on_its_way_in_but_not_past_max_wait():
    async def scenario(batcher, worker, sample, seed=2, reading=0.2):
        async def arriving() -> None:
            with batcher.arrival():  # reading its body, then parsed
                await anyio.sleep(reading)
            assert await batcher.sample(fake_model("same"), SimpleNamespace(seed=seed, n=1)) == seed

        batcher.tasks.start_soon(arriving)
        await anyio.sleep(0.01)
        sample(1)

    assert run_batcher(scenario) == [[1, 2]]
    assert run_batcher(scenario, max_wait=0.05) == [[1], [2]]


# -- through a live server -------------------------------------------------------------------


@contextmanager
def arriving_slowly(url: str, model: str) -> Iterator[None]:
    """Within the block, a request whose body has not finished arriving: a batched server's
    open groups wait for it (up to --max-wait-ms). Its own answer is not checked."""
    go_on = threading.Event()

    def body() -> Iterator[bytes]:
        yield b'{"seed": 0'
        go_on.wait(30)
        yield b"}"

    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(httpx.post, f"{url}/v1/models/{model}/sample", content=body(), timeout=120)
        time.sleep(0.3)  # its headers are in: the server counts it on its way in
        try:
            yield
        finally:
            go_on.set()
            assert answer.result().status_code == 200


def sample_all(url: str, model: str, bodies: list[dict]) -> list[tuple[bytes, str]]:
    """The PNG answers, sent at once, with their X-Zoo-Seconds (requests of one merged call share theirs)."""

    def one(body: dict) -> tuple[bytes, str]:
        answer = httpx.post(f"{url}/v1/models/{model}/sample?format=png", json=body, timeout=120)
        assert answer.status_code == 200, answer.text
        return answer.content, answer.headers["x-zoo-seconds"]

    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(one, bodies))


def batched_and_alone(
    export_dir: Path, model: str, bodies: list[dict], tmp_path: Path, extra: tuple[str, ...], hold: bool
) -> tuple[list[tuple[bytes, str]], list[bytes]]:
    """The answers of a server started with `extra` to `bodies` sent at once (with `hold`,
    while a request is on its way in), and each body's answer alone from an unbatched server."""
    command = serve_command(export_dir, port=free_port(), extra=extra)
    with running_server(command, tmp_path / "batched.log", serve_env()) as url:
        if hold:
            with arriving_slowly(url, model):
                batched = sample_all(url, model, bodies)
        else:
            batched = sample_all(url, model, bodies)
    with running_server(serve_command(export_dir, port=free_port()), tmp_path / "alone.log", serve_env()) as url:
        alone = [sample_all(url, model, [body])[0][0] for body in bodies]
    return batched, alone


@pytest.mark.parametrize("name", ["var", "quantart"])
def test_requests_merged_by_a_live_server_answer_what_each_gets_alone(name, var_export, tmp_path_factory, tmp_path):
    extra = ("--max-batch", "64", "--max-wait-ms", "1500", "--workers", "1")
    bodies = MERGEABLE[name]
    batched, alone = batched_and_alone(
        export_of(name, var_export, tmp_path_factory), name, bodies, tmp_path, extra, True
    )
    assert [png for png, _ in batched] == alone
    assert len({seconds for _, seconds in batched}) == 1  # they waited for the slow one together: one merged call


def test_requests_that_cannot_merge_still_answer(var_export, tmp_path):
    extra = ("--max-batch", "2", "--max-wait-ms", "50")
    bodies = [{"seed": 5, "n": 1, "classes": [2]}, {"seed": 5, "n": 1, "classes": [2], "cfg": 0.5}, {"seed": 6, "n": 3}]
    batched, alone = batched_and_alone(var_export, "var", bodies, tmp_path, extra, False)
    assert [png for png, _ in batched] == alone
