"""The app's guards, in process (Starlette's TestClient on the tiny VAR export): the request
budget, image bombs, hostile JSON, non-finite options, who may call, the sampling deadline,
500s with an error id, and the queued / sampling split of `seconds`. The connection-level
guards (timeouts, the connection cap) are in test_abuse.py against a live server."""

from __future__ import annotations

import base64
import io
import logging

import numpy as np
import pytest
from PIL import Image
from starlette.testclient import TestClient

from tests.serve.bombs import gif_declaring, png_declaring
from zoo.config import SampleOptionsBase
from zoo.outputs import SampleOutput
from zoo.runtime.serve.app import create_app
from zoo.runtime.serve.models import ServedModel, load_models
from zoo.runtime.serve.settings import ServeSettings

SAMPLE = "/v1/models/var/sample"
HOST = "testserver"  # the TestClient's Host header


def client_for(var_export, **settings) -> TestClient:
    settings = {"allowed_hosts": (HOST,), "max_upload_bytes": 2 * 1024**2, **settings}
    served = ServeSettings([var_export], **settings)
    return TestClient(create_app(load_models(served), served), raise_server_exceptions=False)


@pytest.fixture(scope="module")
def client(var_export):
    with client_for(var_export, max_request_bytes=40 * 1024**2, max_image_side=4096) as client:
        yield client


def one_line_error(response, status: int, *fragments: str) -> str:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert "\n" not in error
    for fragment in fragments:
        assert fragment in error, error
    return error


def png(side: int = 16, mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (side, side)).save(buffer, "PNG")
    return buffer.getvalue()


def test_a_request_over_the_budget_is_413_naming_the_limit_and_its_estimate(client):
    # 10 classes x 25 images: about 70 MB at the peak, over this server's 40 MB
    error = one_line_error(client.post(SAMPLE, json={"n": 25}), 413, "over the server's budget of 40 MB")
    assert "MB at its peak" in error and "--max-request-mb" in error
    assert client.post(SAMPLE, json={"n": 2}).status_code == 200  # under it


def test_the_default_budget_is_half_the_memory_over_the_workers(var_export):
    from zoo.runtime.serve.settings import machine_memory_bytes

    assert ServeSettings([var_export], workers=4).request_budget == machine_memory_bytes() // 8
    assert ServeSettings([var_export], max_request_bytes=2**30).request_budget == 2**30


def test_the_workers_share_the_cores_unless_threads_are_given(var_export, monkeypatch):
    monkeypatch.setattr("zoo.runtime.serve.settings.available_cpus", lambda: 8)
    assert ServeSettings([var_export], workers=2).session_threads == 4
    assert ServeSettings([var_export], workers=16).session_threads == 1
    assert ServeSettings([var_export], workers=2, threads=3).session_threads == 3


def test_the_cores_are_those_this_process_may_use(monkeypatch):
    """A container or `taskset` allows fewer CPUs than the machine has: the share counts."""
    from zoo.runtime.cpus import available_cpus

    monkeypatch.setattr("os.cpu_count", lambda: 64)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert available_cpus() == 2


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (png_declaring(30000, 30000), "too many pixels to decode safely"),  # past Pillow's own limit
        (gif_declaring(65535, 65535), "too many pixels to decode safely"),
        (png_declaring(1, 64_000_000), "over the server's limit of 4096 pixels a side"),  # 64 MP, a strip
        (png_declaring(3000, 3000), "9 megapixels, over the server's limit of 4 ($ZOO_MAX_IMAGE_PIXELS)"),
    ],
    ids=["png-30000x30000", "gif-65535x65535", "png-1x64000000", "png-3000x3000"],
)
@pytest.mark.parametrize("form", ["json", "multipart"])
def test_image_bombs_are_413_before_decoding(client, image, message, form, monkeypatch):
    monkeypatch.setenv("ZOO_MAX_IMAGE_PIXELS", "4000000")
    if form == "json":
        response = client.post(SAMPLE, json={"n": 1, "edit": base64.b64encode(image).decode()})
    else:
        response = client.post(SAMPLE, files={"edit": ("bomb.png", image, "image/png")})
    one_line_error(response, 413, "edit: ", message)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"n": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deeply"),
        (b'{"n": [[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]}', "nested too deeply"),
        (b'{"n": 1' + b"0" * 1_000_000 + b"}", "over the limit of 400"),
        (b'{"cfg": 1.' + b"5" * 1_000 + b"}", "over the limit of 400"),
        (b'{"cfg": Infinity}', "Infinity is not a JSON number"),
        (b'{"cfg": NaN}', "NaN is not a JSON number"),
        (b'{"cfg": 1e5', "not valid JSON"),
        (b"\xff\xfe{}", "not valid JSON"),
        (b'{"classes": [' + b"1," * 70_000 + b"1]}", "over 65,536 values"),
    ],
    ids=[
        "deep-100k",
        "deep-18",
        "int-1M-digits",
        "float-1k-digits",
        "Infinity",
        "NaN",
        "truncated",
        "not-utf8",
        "70k-values",
    ],
)
def test_hostile_json_is_400_or_413(client, body, message):
    response = client.post(SAMPLE, content=body, headers={"content-type": "application/json"})
    one_line_error(response, 413 if "values" in message else 400, message)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"cfg": "inf"}, "sample option 'cfg': Input should be a finite number"),
        ({"cfg": "-Infinity"}, "sample option 'cfg'"),
        ({"cfg": 1e308}, "sample option 'cfg': Input should be less than or equal to 100"),
        ({"gumbel": "nan"}, "sample option 'gumbel': Input should be a finite number"),
        ({"top_p": "nan"}, "sample option 'top_p'"),
    ],
)
def test_non_finite_and_huge_options_are_422(client, options, message):
    one_line_error(client.post(SAMPLE, json={"n": 1, **options}), 422, message)


def test_a_1e999_number_is_infinite_and_refused(client):
    response = client.post(SAMPLE, content=b'{"n": 1, "cfg": 1e999}', headers={"content-type": "application/json"})
    one_line_error(response, 422, "sample option 'cfg': Input should be a finite number")


def test_edit_without_a_class_regenerates_unconditionally(client):
    image = base64.b64encode(png(16)).decode()
    body = client.post(SAMPLE, json={"n": 2, "edit": image, "seed": 1}).json()
    assert body["extras"]["labels"] == [10, 10]  # the null class of a 10-class model
    page = client.post(SAMPLE, files=[("options", (None, '{"n": 2, "seed": 1}')), ("edit", ("e.png", png(16)))])
    assert page.status_code == 200, page.text
    assert page.json()["extras"]["tokens"] == body["extras"]["tokens"]


def test_seconds_are_split_into_queued_and_sampling(client):
    body = client.post(SAMPLE, json={"n": 1, "classes": [0]}).json()
    assert body["seconds"] > 0 and body["queued_seconds"] >= 0
    response = client.post(SAMPLE, json={"n": 1, "classes": [0]}, params={"format": "png"})
    assert float(response.headers["x-zoo-queued-seconds"]) >= 0


@pytest.mark.parametrize(
    ("host", "status"),
    [("testserver", 200), ("localhost:8000", 400), ("evil.example", 400), ("testserver.evil.example", 400), ("", 400)],
)
def test_only_allowed_hosts_are_served(client, host, status):
    response = client.get("/v1/models", headers={"host": host})
    assert response.status_code == status, response.text
    if status == 400:
        assert "--allowed-host" in response.json()["error"]


def test_default_hosts_are_the_bind_address_and_localhost(var_export):
    assert ServeSettings([var_export]).host_names == {"127.0.0.1", "localhost", "[::1]"}
    assert ServeSettings([var_export], host="::1").host_names == {"127.0.0.1", "localhost", "[::1]"}
    assert ServeSettings([var_export], host="10.0.0.5").host_names == {"127.0.0.1", "localhost", "[::1]", "10.0.0.5"}
    assert ServeSettings([var_export], host="0.0.0.0").host_names is None  # any: named with --allowed-host
    assert ServeSettings([var_export], host="0.0.0.0", allowed_hosts=("Zoo.Lan:8000",)).host_names == {"zoo.lan"}


@pytest.mark.parametrize(
    ("origin", "status"),
    [
        (None, 200),  # not a browser, or a same-origin GET
        ("http://testserver", 200),  # the server's own page
        ("https://app.example", 200),  # --allowed-origin
        ("http://evil.example", 403),
        ("http://testserver.evil.example", 403),
        ("null", 403),  # a sandboxed frame or a file:// page
    ],
)
def test_browser_origins_other_than_the_page_are_403(var_export, origin, status):
    with client_for(var_export, allowed_origins=("https://app.example",)) as client:
        headers = {} if origin is None else {"origin": origin}
        response = client.post(SAMPLE, json={"n": 1, "classes": [0]}, headers=headers)
        assert response.status_code == status, response.text


def test_a_token_is_needed_everywhere_but_the_page_and_healthz(var_export):
    with client_for(var_export, token="s3cret-token") as client:
        for path in ("/v1/models", "/metrics"):
            response = client.get(path)
            one_line_error(response, 401, "Authorization: Bearer TOKEN")
            assert response.headers["www-authenticate"] == "Bearer"
        one_line_error(client.post(SAMPLE, json={}), 401)
        wrong = client.get("/v1/models", headers={"authorization": "Bearer s3cret-tokex"})
        assert wrong.status_code == 401
        assert client.get("/v1/models", headers={"authorization": "Bearer s3cret-token"}).status_code == 200
        assert client.get("/").status_code == 200 and client.get("/healthz").status_code == 200


def test_a_request_past_its_sampling_deadline_is_504_and_frees_its_worker(var_export):
    with client_for(var_export, request_timeout=1e-6, workers=1, max_queue=0) as client:
        one_line_error(client.post(SAMPLE, json={"n": 2}), 504, "sampling stopped at its deadline")
        assert client.app.state.admitted == 0
        assert client.app.state.limiter.borrowed_tokens == 0


class FailingLoaded:
    """A served export whose loop fails: zoo's fault, not the client's."""

    model = "stub"
    manifest = {"components": {}}
    providers = {"used": "CPUExecutionProvider"}
    options_class = SampleOptionsBase
    reports_progress = False

    def __init__(self) -> None:
        self.runtime = self

    def cost(self, options: SampleOptionsBase) -> None:
        return None

    def sample(self, options: SampleOptionsBase) -> SampleOutput:
        raise RuntimeError("a bug\nwith a second line")


def test_a_fault_of_zoo_is_500_with_an_error_id_that_the_log_has(tmp_path, caplog):
    settings = ServeSettings([tmp_path], allowed_hosts=(HOST,))
    app = create_app({"stub": ServedModel("stub", FailingLoaded())}, settings)  # type: ignore[arg-type]
    with caplog.at_level(logging.ERROR, logger="zoo.serve"), TestClient(app, raise_server_exceptions=False) as client:
        response = client.post("/v1/models/stub/sample", json={})
    error = one_line_error(response, 500, "internal error: RuntimeError: a bug")
    error_id = response.json()["error_id"]
    assert error_id in error
    assert any(error_id in record.getMessage() and record.exc_info for record in caplog.records)


def test_the_budget_check_comes_before_any_graph_runs(var_export):
    served = ServeSettings([var_export], allowed_hosts=(HOST,), max_request_bytes=2**20)
    models = load_models(served)
    calls: list[str] = []
    inner = models["var"].loaded.runtime.components
    models["var"].loaded.runtime.components = lambda name, **inputs: calls.append(name) or inner(name, **inputs)
    with TestClient(create_app(models, served)) as client:
        assert client.post(SAMPLE, json={"n": 8}).status_code == 413
    assert calls == []
    assert np.isfinite(models["var"].loaded.runtime.cost(models["var"].loaded.options_class(n=8)).peak_bytes)


class UnexportedLoaded:
    """A served QuantArt without graphs: its real loop and cost model over a config (the tiny
    preset's), components that record calls. What the app reaches before sampling."""

    model = "quantart"
    manifest = {"components": {}}
    providers = {"used": "CPUExecutionProvider"}

    def __init__(self) -> None:
        from zoo.config import resolve
        from zoo.registry import get_registry
        from zoo_quantart.config import PRESETS
        from zoo_quantart.runtime import QuantArtRuntime

        plugin = get_registry().get("quantart")
        config = resolve(plugin.Config, PRESETS["tiny"]).model_dump(mode="json")
        shipped = np.zeros((4, config["image_size"], config["image_size"], 3), np.uint8)
        self.calls: list[str] = []
        self.runtime = QuantArtRuntime(
            lambda name, **inputs: self.calls.append(name) or {},
            config,
            {"content_images": shipped, "style_images": shipped},
            {},
        )
        self.options_class = self.runtime.options_class

    def sample(self, options: SampleOptionsBase) -> SampleOutput:
        return self.runtime.sample(options)


@pytest.mark.parametrize(
    ("options", "status", "message"),
    [
        ({"size": 2048}, 413, "over the server's budget"),  # onnxruntime asked for 256 GiB here
        ({"size": 512}, 413, "over the server's budget"),  # 9 GB and a minute
        ({"content": base64.b64encode(png_declaring(1, 64_000_000)).decode()}, 413, "pixels a side"),
    ],
)
def test_quantart_requests_that_would_exhaust_memory_are_refused_before_any_graph(tmp_path, options, status, message):
    loaded = UnexportedLoaded()
    settings = ServeSettings([tmp_path], allowed_hosts=(HOST,), max_request_bytes=4 * 1024**3)
    app = create_app({"quantart": ServedModel("quantart", loaded)}, settings)  # type: ignore[arg-type]
    with TestClient(app) as client:
        one_line_error(client.post("/v1/models/quantart/sample", json=options), status, message)
    assert loaded.calls == []
    assert loaded.runtime.cost(loaded.options_class(size=2048)).peak_bytes > 2**40  # a terabyte and more


def test_sampling_stops_at_the_next_graph_call_past_its_deadline_or_at_shutdown():
    import threading

    from zoo.runtime.loop import DeadlineComponents, SamplingTimeout, sampling_deadline

    calls: list[str] = []
    components = DeadlineComponents(lambda name, **inputs: calls.append(name) or {})
    stop = threading.Event()
    with sampling_deadline(None, stop):
        components("first")
        stop.set()  # the server shuts down
        with pytest.raises(SamplingTimeout, match="before graph 'second': the server is shutting down"):
            components("second")
    with sampling_deadline(0.0):
        with pytest.raises(SamplingTimeout, match="at its deadline, before graph 'third'"):
            components("third")
    components("outside")  # no deadline outside the block
    assert calls == ["first", "outside"]
