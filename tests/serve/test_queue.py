"""The wait queue of `zoo serve`: requests beyond the workers and the queue get 503 at once,
and a slot frees when its request ends (in process: a stub model that blocks until told)."""

from __future__ import annotations

import threading

from starlette.testclient import TestClient

from zoo.config import SampleOptionsBase
from zoo.outputs import SampleOutput
from zoo.runtime.serve.app import create_app
from zoo.runtime.serve.models import ServedModel
from zoo.runtime.serve.settings import ServeSettings


class BlockingLoaded:
    """What the app uses of a LoadedExport; `sample` waits until `release` is set."""

    model = "stub"
    manifest = {"components": {}}
    providers = {"used": "CPUExecutionProvider"}
    options_class = SampleOptionsBase
    reports_progress = False

    def __init__(self) -> None:
        self.started = threading.Semaphore(0)
        self.release = threading.Event()
        self.runtime = self  # the loop: states no cost

    def cost(self, options: SampleOptionsBase) -> None:
        return None

    def sample(self, options: SampleOptionsBase) -> SampleOutput:
        self.started.release()
        self.release.wait(timeout=30)
        return SampleOutput(texts=["done"])


def test_requests_past_workers_and_queue_get_503_and_slots_free_when_requests_end(tmp_path):
    loaded = BlockingLoaded()
    settings = ServeSettings([tmp_path], workers=1, max_queue=1, allowed_hosts=("testserver",))
    app = create_app({"stub": ServedModel("stub", loaded)}, settings)
    results: list[int] = []
    with TestClient(app) as client:

        def post() -> None:
            results.append(client.post("/v1/models/stub/sample", json={}).status_code)

        first = threading.Thread(target=post)
        first.start()
        assert loaded.started.acquire(timeout=30)  # the worker is busy
        second = threading.Thread(target=post)  # waits in the queue
        second.start()
        for _ in range(100):  # until the app has admitted it
            if getattr(client.app.state, "admitted", 0) == 2:
                break
            threading.Event().wait(0.05)
        refused = client.post("/v1/models/stub/sample", json={})
        assert refused.status_code == 503, refused.text
        assert "server busy" in refused.json()["error"]
        loaded.release.set()
        first.join(30), second.join(30)
        assert results == [200, 200]
        assert client.post("/v1/models/stub/sample", json={}).status_code == 200  # slots freed
