"""A live `zoo serve` as a hostile client sees it: slow clients are cut off (headers, body,
idle keep-alive), connections past the cap are closed, a shutdown does not wait for a stuck
client, bad ports are one line, the help's curl example works as printed, and var's edit
without a class regenerates unconditionally from the CLI too."""

from __future__ import annotations

import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.serve.conftest import free_port, running_process, serve_command, serve_env
from zoo.cli.serve import CURL_EXAMPLE

HEADER_TIMEOUT = 1.0
MAX_CONNECTIONS = 16


@pytest.fixture(scope="module")
def guarded(var_export, tmp_path_factory):
    log = tmp_path_factory.mktemp("guarded") / "serve.log"
    extra = (
        *("--header-timeout", str(HEADER_TIMEOUT), "--body-timeout", "1.5", "--keep-alive-timeout", "1"),
        *("--max-connections", str(MAX_CONNECTIONS), "--max-request-mb", "40"),
    )
    with running_process(serve_command(var_export, port=free_port(), extra=extra), log, serve_env()) as running:
        yield running


def connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def closed_by_server(sock: socket.socket, within: float) -> bool:
    """Whether the server closes `sock` within `within` seconds (reading whatever it sends)."""
    sock.settimeout(within)
    try:
        while sock.recv(65536):
            pass
        return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def test_connections_trickling_headers_are_closed_at_the_header_deadline(guarded):
    url, _ = guarded
    slow = [connect(url) for _ in range(MAX_CONNECTIONS - 4)]
    for sock in slow:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: a")
    assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200  # the others are served meanwhile
    time.sleep(HEADER_TIMEOUT / 2)
    for sock in slow:
        sock.sendall(b"b")  # a byte now and then does not extend the deadline
    started = time.monotonic()
    assert all(closed_by_server(sock, within=HEADER_TIMEOUT + 2) for sock in slow)
    assert time.monotonic() - started < HEADER_TIMEOUT + 2


def test_a_trickled_body_is_408_at_the_body_deadline_and_the_connection_closed(guarded):
    url, _ = guarded
    sock = connect(url)
    sock.sendall(
        b"POST /v1/models/var/sample HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"
    )
    started = time.monotonic()
    answer = b""
    sock.settimeout(0.3)
    while time.monotonic() - started < 6:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            sock.sendall(b" ")  # one byte every 0.3 s: never done in time
            continue
        if not chunk:
            break
        answer += chunk
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert b"did not arrive within 1.5 s" in answer
    assert time.monotonic() - started < 4


def test_an_idle_keep_alive_connection_is_closed(guarded):
    url, _ = guarded
    sock = connect(url)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    sock.settimeout(5)
    assert sock.recv(65536).startswith(b"HTTP/1.1 200")
    assert closed_by_server(sock, within=3)


def test_connections_past_the_cap_are_closed_at_once_and_healthz_answers_after(guarded):
    url, _ = guarded
    held = [connect(url) for _ in range(MAX_CONNECTIONS)]
    time.sleep(0.2)
    extra = [connect(url) for _ in range(8)]
    assert all(closed_by_server(sock, within=0.5) for sock in extra)
    assert all(closed_by_server(sock, within=HEADER_TIMEOUT + 2) for sock in held)  # the header deadline
    assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200


def test_shutdown_drops_a_stuck_client_at_its_deadline(var_export, tmp_path):
    extra = ("--shutdown-timeout", "1", "--body-timeout", "600")
    command = serve_command(var_export, port=free_port(), extra=extra)
    with running_process(command, tmp_path / "serve.log", serve_env()) as (url, process):
        sock = connect(url)
        sock.sendall(
            b"POST /v1/models/var/sample HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n{"
        )  # and nothing more
        time.sleep(0.3)
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=15)
        assert time.monotonic() - started < 6  # the deadline (1 s) and the exit; not until the client leaves
        sock.close()


@pytest.mark.parametrize("port", ["99999", "-1", "0", "70000"])
def test_a_bad_port_is_one_line_before_anything_loads(var_export, tmp_path, port):
    result = subprocess.run(
        [sys.executable, "-m", "zoo", "serve", str(var_export), "--port", port],
        capture_output=True,
        text=True,
        env=serve_env(),
        cwd=tmp_path,
        timeout=60,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert f"--port must be 1..65535, got {port}" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_port_in_use_is_one_line_and_no_url_is_printed(var_export, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            serve_command(var_export, port=port),
            capture_output=True,
            text=True,
            env=serve_env(),
            cwd=tmp_path,
            timeout=60,
        )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert f"cannot listen on 127.0.0.1:{port}: the port is in use" in result.stderr
    assert "http://" not in result.stdout


def test_the_help_curl_example_works_as_printed(guarded, tmp_path):
    url, _ = guarded
    help_text = subprocess.run(
        [sys.executable, "-m", "zoo", "serve", "--help"], capture_output=True, text=True, env=serve_env(), check=True
    ).stdout
    assert CURL_EXAMPLE in " ".join(help_text.split())  # argparse may wrap it
    port = url.rsplit(":", 1)[1]
    command = shlex.split(CURL_EXAMPLE.replace("localhost:8000", f"localhost:{port}"))
    subprocess.run(command, cwd=tmp_path, check=True, capture_output=True, timeout=60)
    with Image.open(tmp_path / "grid.png") as grid:
        assert grid.format == "PNG"
        assert np.asarray(grid).std() > 0  # an image, not a JSON error saved as grid.png


def edit_image(folder: Path) -> Path:
    path = folder / "edit.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(path)
    return path


def edited_by_zoo(tmp_path: Path, *args: str) -> None:
    """Runs `zoo ARGS --out edited.png` in tmp_path; it must succeed and write the image."""
    result = subprocess.run(
        [sys.executable, "-m", "zoo", *args, "--out", "edited.png"],
        capture_output=True,
        text=True,
        env=serve_env(),
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "edited.png").is_file()


def test_zoo_run_edit_without_a_class_regenerates_unconditionally(var_export, tmp_path):
    edited_by_zoo(tmp_path, "run", str(var_export), "--edit", str(edit_image(tmp_path)), "--n", "2", "--json")


def test_zoo_sample_edit_without_a_class_regenerates_unconditionally(tmp_path):
    import torch

    from tests.conftest import TINY_VAR
    from zoo.checkpoint import CONFIG_FILE, WEIGHTS_FILE, atomic_write_json, run_record, save_weights
    from zoo.config import resolve
    from zoo.registry import get_registry
    from zoo_var.config import PRESETS

    plugin = get_registry().get("var")
    config = resolve(plugin.Config, PRESETS["digits"], overrides=TINY_VAR)
    torch.manual_seed(0)
    run_dir = tmp_path / "run"
    save_weights(plugin.build(config), run_dir / WEIGHTS_FILE)
    atomic_write_json(run_dir / CONFIG_FILE, run_record("var", plugin.version, None, config.model_dump(mode="json")))
    edited_by_zoo(
        tmp_path,
        "sample",
        "var",
        "--run",
        str(run_dir),
        "--edit",
        str(edit_image(tmp_path)),
        "--n",
        "2",
        "--device",
        "cpu",
    )


def test_a_15_mb_json_body_does_not_stall_healthz(guarded):
    url, _ = guarded
    body = b'{"classes": [' + b"0," * 7_000_000 + b'0], "n": 1}'  # 14 MB of tiny values: refused unparsed
    latencies: list[float] = []
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            started = time.monotonic()
            assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200
            latencies.append(time.monotonic() - started)
            time.sleep(0.05)

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        response = httpx.post(
            f"{url}/v1/models/var/sample", content=body, headers={"content-type": "application/json"}, timeout=60
        )
    finally:
        done.set()
        poller.join()
    assert response.status_code == 413, response.text
    assert "over 65,536 values" in response.json()["error"]
    assert latencies and max(latencies) < 1.0, latencies
