"""Property-based fuzzing of a live `zoo serve` (Hypothesis): JSON bodies, multipart bodies and
raw bytes under any content type. For every input the server answers below 500 with a
one-line JSON error (or a sample), `/healthz` answers throughout, and the server's resident
memory after the run is within a small bound of before it."""

from __future__ import annotations

import base64
import io
import json
import threading
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from PIL import Image

from tests.serve.bombs import gif_declaring, png_declaring
from tests.serve.conftest import free_port, running_process, serve_command, serve_env

SAMPLE = "/v1/models/var/sample"
EXAMPLES = 150
MEMORY_BOUND = 32 * 1024**2  # growth allowed over the run (measured: under 10 MB, the arenas warmed up)
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    derandomize=True,  # the same inputs on every run: a failure is reproducible
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)


def png(side: int, mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (side, side), 0).save(buffer, "PNG")
    return buffer.getvalue()


IMAGES = [png(16), png(3, "L"), png(40, "RGBA"), png_declaring(30000, 30000), gif_declaring(65535, 65535)]
OPTION_NAMES = ["classes", "n", "seed", "cfg", "top_k", "top_p", "gumbel", "kv_cache", "edit", "mask"]

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.integers(min_value=-3, max_value=300)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from(
        [base64.b64encode(image).decode() for image in IMAGES] + ["data:image/png;base64,@@", "/etc/passwd"]
    )
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
options = st.dictionaries(st.sampled_from(OPTION_NAMES) | st.text(max_size=8), json_values, max_size=5)
content_types = st.sampled_from(
    ["application/json", "", "text/plain", "application/json; charset=latin-1", "multipart/form-data", "image/png"]
)


def part(name: str, data: bytes, filename: str | None) -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
    return f"Content-Disposition: {disposition}\r\n\r\n".encode() + data


multipart_parts = st.lists(
    st.tuples(
        st.sampled_from(["options", "edit", "mask", "photo", "", 'a"b']),
        st.one_of(
            options.map(lambda value: json.dumps(value).encode()),
            st.sampled_from(IMAGES),
            st.binary(max_size=200),
        ),
        st.sampled_from([None, "x.png", "../../etc/passwd", "é.png"]),
    ),
    max_size=4,
)


class Healthz(threading.Thread):
    """Polls /healthz until stopped; counts the polls that failed or were slow."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.stop, self.failures, self.polls = url, threading.Event(), [], 0

    def run(self) -> None:
        while not self.stop.wait(0.25):
            self.polls += 1
            try:
                if httpx.get(f"{self.url}/healthz", timeout=3).status_code != 200:
                    self.failures.append("status")
            except httpx.TransportError as error:
                self.failures.append(repr(error))


def resident_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def fuzzed(var_export, tmp_path_factory):
    """A live server (budget 48 MB, uploads up to 256 kB), warmed up with a request near its budget."""
    log = tmp_path_factory.mktemp("fuzz") / "serve.log"
    extra = ("--max-request-mb", "48", "--max-upload-mb", "0.25", "--workers", "2")
    with running_process(serve_command(var_export, port=free_port(), extra=extra), log, serve_env()) as running:
        url, process = running
        with httpx.Client(base_url=url, timeout=60) as client:
            assert client.post(SAMPLE, json={"n": 14}).status_code == 200  # about 45 MB: the arenas' size
            health = Healthz(url)
            health.start()
            before = resident_bytes(process.pid)
            yield client
            health.stop.set()
            health.join()
            after = resident_bytes(process.pid)
        assert health.polls > 0 and health.failures == []
        assert after - before < MEMORY_BOUND, f"resident memory grew by {(after - before) / 1024**2:.0f} MB"
        assert "Traceback" not in log.read_text()


def check(response: httpx.Response) -> None:
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        error = response.json()["error"]
        assert isinstance(error, str) and "\n" not in error


@FUZZ
@given(body=options)
def test_fuzzed_json_options_never_get_a_500(fuzzed, body):
    check(fuzzed.post(SAMPLE, content=json.dumps(body).encode(), headers={"content-type": "application/json"}))


@FUZZ
@given(parts=multipart_parts, boundary=st.sampled_from(["zoo-fuzz", "", "a" * 80]))
def test_fuzzed_multipart_bodies_never_get_a_500(fuzzed, parts, boundary):
    body = b"".join(b"--" + boundary.encode() + b"\r\n" + part(*item) + b"\r\n" for item in parts)
    body += b"--" + boundary.encode() + b"--\r\n"
    check(fuzzed.post(SAMPLE, content=body, headers={"content-type": f"multipart/form-data; boundary={boundary}"}))


@FUZZ
@given(body=st.binary(max_size=300), content_type=content_types, accept=st.sampled_from(["", "image/png", "*/*"]))
def test_fuzzed_raw_bodies_never_get_a_500(fuzzed, body, content_type, accept):
    headers = {"content-type": content_type, "accept": accept}
    check(fuzzed.post(SAMPLE, content=body, headers=headers))
