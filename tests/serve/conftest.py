"""A tiny VAR export, made once per test run, and live `zoo serve` processes on it.

Exporting takes most of a minute on two cores, so the export is shared by the pytest-xdist
workers: the first to take the lock makes it, the others wait and reuse it. Servers are
real `zoo serve` subprocesses on a free port of 127.0.0.1, polled until /healthz answers.
"""

from __future__ import annotations

import fcntl
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, TINY_VAR


def make_var_export(out_dir: Path) -> None:
    import torch

    from zoo.config import resolve
    from zoo.registry import get_registry
    from zoo_onnx import export_model
    from zoo_var.config import PRESETS

    plugin = get_registry().get("var")
    config = resolve(plugin.Config, PRESETS["digits"], overrides=TINY_VAR)
    torch.manual_seed(0)
    model = plugin.build(config).eval()
    with torch.no_grad():  # away from the near-identity init, so that samples differ by class and seed
        for parameter in model.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    export_model(plugin, model, config, out_dir)  # every graph: the encoder for edits too


# QuantArt with five levels and attention only at the deepest: feature maps, not attention,
# dominate its memory (the tiny one's attention at 16 px dominates). Untrained, its `stylize`
# graph does not match torch within tolerance (code ties), so only the loop's graphs are exported.
DEEP_QUANTART = {"vqgan": {"ch": 16, "ch_mult": [1, 1, 2, 2, 4], "attn_resolutions": [4]}, "image_size": 64}
QUANTART_LOOP_GRAPHS = ["photo_encoder", "art_encoder", "transfer", "art_decoder"]


def make_tiny_export(name: str, out_dir: Path) -> None:
    """One of the other models, at the tiny config tests/plugins/test_blocks.py trains."""
    import torch

    from tests.plugins.test_blocks import TINY
    from zoo.config import deep_merge, resolve
    from zoo_onnx import export_model

    plugin, overrides = TINY[name.removesuffix("_deep")]
    if name == "quantart_deep":
        overrides = deep_merge(overrides, DEEP_QUANTART)
    config = resolve(plugin.Config, overrides)
    torch.manual_seed(0)
    components = QUANTART_LOOP_GRAPHS if name == "quantart_deep" else None
    export_model(plugin, plugin.build(config).eval(), config, out_dir, components=components)


def shared_export(tmp_path_factory, name: str) -> Path:
    """The export `name`, made by the first xdist worker that asks and reused by the others."""
    # Under xdist each worker's base temp is a child of the run's: the parent is shared.
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent
    out_dir = shared / "serve_exports" / name
    out_dir.parent.mkdir(exist_ok=True)
    with open(shared / "serve_exports.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not (out_dir / "manifest.json").is_file():
            make_var_export(out_dir) if name == "var" else make_tiny_export(name, out_dir)
    return out_dir


@pytest.fixture(scope="session")
def var_export(tmp_path_factory) -> Path:
    return shared_export(tmp_path_factory, "var")


CHROMIUM = Path("/usr/bin/chromium")  # Debian's; Playwright downloads no browser
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def sample_digit_on_page(page, url: str, digit: int, n: int) -> list[str]:
    """Use the web page at `url` as a person would (a Playwright page): pick the VAR model,
    pick `digit`, ask for `n` images, sample, wait; the images' sources (data URLs).
    Shared with `benchmarks/bench_serve.py --screenshot`."""
    page.goto(url)
    page.wait_for_selector("body[data-state=ready]")
    page.select_option("#model", "var")
    page.click(f"button[data-pick='{digit}']")  # the class picker
    assert page.input_value("#option-classes") == str(digit)
    page.fill("#option-n", str(n))
    page.click("#sample")
    page.wait_for_selector("body[data-state=done]", timeout=60_000)
    return page.eval_on_selector_all(".result-image", "images => images.map(image => image.src)")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def running_server(command: list[str], log: Path, env: dict[str, str] | None = None) -> Iterator[str]:
    """Start `command` (a `zoo serve` with --port), yield its base URL once /healthz answers."""
    with running_process(command, log, env) as (url, _):
        yield url


@contextmanager
def running_process(
    command: list[str], log: Path, env: dict[str, str] | None = None
) -> Iterator[tuple[str, subprocess.Popen]]:
    """As running_server, yielding the process too."""
    port = int(command[command.index("--port") + 1])
    url = f"http://127.0.0.1:{port}"
    with open(log, "w") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env, cwd=log.parent)
    try:
        deadline = time.monotonic() + 90
        while True:
            if process.poll() is not None:
                raise AssertionError(f"zoo serve exited with {process.returncode}: {log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"zoo serve did not answer in 90 s: {log.read_text()[-2000:]}")
            time.sleep(0.2)
        yield url, process
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def serve_command(*export_dirs: Path, port: int, extra: tuple[str, ...] = ()) -> list[str]:
    return [sys.executable, "-m", "zoo", "serve", *map(str, export_dirs), "--port", str(port), *extra]


def serve_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


@pytest.fixture(scope="module")
def server(var_export, tmp_path_factory) -> Iterator[str]:
    """A live server of the tiny VAR export (as `var`), uploads limited to 64 kB."""
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    command = serve_command(var_export, port=free_port(), extra=("--max-upload-mb", "0.0625", "--workers", "2"))
    with running_server(command, log, env) as url:
        yield url
