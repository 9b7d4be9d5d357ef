"""zoo serve --max-batch: concurrent requests merged into one loop call get the answers
each gets alone, byte for byte (per-row generators: zoo.runtime.sampling.row_generators)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np

from tests.serve.conftest import free_port, running_server, serve_command, serve_env

REQUESTS = [
    {"seed": 1, "n": 1, "classes": [3]},
    {"seed": 2, "n": 2, "classes": [1, 5]},
    {"seed": 3, "n": 1, "classes": [0]},
    {"seed": 1, "n": 1, "classes": [7]},
]


def sample_all(url: str, bodies: list[dict]) -> list[tuple[bytes, str]]:
    """The PNG answers, with their X-Zoo-Seconds (requests of one merged call share theirs)."""

    def one(body: dict) -> tuple[bytes, str]:
        answer = httpx.post(f"{url}/v1/models/var/sample?format=png", json=body, timeout=120)
        assert answer.status_code == 200, answer.text
        return answer.content, answer.headers["x-zoo-seconds"]

    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(one, bodies))


def test_merged_requests_answer_what_each_gets_alone(var_export, tmp_path):
    import zoo.runtime

    model = zoo.runtime.load(var_export)
    runtime = model.runtime
    requests = [model.options_class(**body) for body in REQUESTS]
    together = runtime.sample_batch(requests)
    for options, merged in zip(requests, together, strict=True):
        alone = model.sample(options)
        assert np.array_equal(alone.images, merged.images)
        assert np.array_equal(alone.extras["tokens"], merged.extras["tokens"])
    assert not np.array_equal(together[0].images, together[3].images)  # rows differ by class, not by position

    extra = ("--max-batch", "8", "--max-wait-ms", "300", "--workers", "1")
    with running_server(
        serve_command(var_export, port=free_port(), extra=extra), tmp_path / "b.log", serve_env()
    ) as url:
        batched = sample_all(url, REQUESTS)
    with running_server(serve_command(var_export, port=free_port()), tmp_path / "a.log", serve_env()) as url:
        alone = [sample_all(url, [body])[0] for body in REQUESTS]
    assert [png for png, _ in batched] == [png for png, _ in alone]
    assert len({seconds for _, seconds in batched}) == 1  # five rows, at most eight: one merged call


def test_requests_that_cannot_merge_still_answer(var_export, tmp_path):
    extra = ("--max-batch", "2", "--max-wait-ms", "50")
    bodies = [{"seed": 5, "n": 1, "classes": [2]}, {"seed": 5, "n": 1, "classes": [2], "cfg": 0.5}, {"seed": 6, "n": 3}]
    with running_server(
        serve_command(var_export, port=free_port(), extra=extra), tmp_path / "b.log", serve_env()
    ) as url:
        batched = sample_all(url, bodies)
    with running_server(serve_command(var_export, port=free_port()), tmp_path / "a.log", serve_env()) as url:
        alone = [sample_all(url, [body])[0] for body in bodies]
    assert [png for png, _ in batched] == [png for png, _ in alone]
