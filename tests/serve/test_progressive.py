"""VAR's scales as they come: the Python API (`on_step`, `sample_progressive`), `zoo run
--progress-dir`, and `POST ...?stream=1` (server-sent events); the last step and the final
images are those of a plain request with the same seed."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys

import httpx
import numpy as np
import pytest
from PIL import Image

import zoo.runtime
from tests.serve.conftest import serve_env, shared_export
from zoo.runtime.loop import NoProgress
from zoo_var.config import TokenizerConfig

OPTIONS = {"classes": [3, 5], "n": 2, "seed": 7}


@pytest.fixture(scope="module")
def direct(var_export) -> zoo.runtime.LoadedExport:
    return zoo.runtime.load(var_export, provider="cpu")


def scales(loaded: zoo.runtime.LoadedExport) -> list[int]:
    return list(TokenizerConfig.model_validate(loaded.config["tokenizer"]).patch_nums)


def test_sample_progressive_yields_each_scale_then_the_plain_output(direct):
    plain = direct.sample(OPTIONS)
    steps = list(direct.sample_progressive(OPTIONS))
    *partial, final = steps
    assert len(partial) == len(scales(direct))
    np.testing.assert_array_equal(final.images, plain.images)
    np.testing.assert_array_equal(final.extras["tokens"], plain.extras["tokens"])
    np.testing.assert_array_equal(partial[-1].images, plain.images)  # the last scale is the output
    assert partial[0].images.shape == plain.images.shape
    assert not np.array_equal(partial[0].images, plain.images)  # the coarse scale is coarse
    seen: list[zoo.outputs.SampleOutput] = []
    again = direct.sample(OPTIONS, on_step=seen.append)
    np.testing.assert_array_equal(again.images, plain.images)
    assert len(seen) == len(partial)


def test_a_loop_without_progress_refuses_a_callback(tmp_path_factory):
    loaded = zoo.runtime.load(shared_export(tmp_path_factory, "vqvae2_pixelcnn"), provider="cpu")
    with pytest.raises(NoProgress, match="does not report progress"):
        loaded.sample({"n": 1}, on_step=lambda step: None)
    with pytest.raises(NoProgress, match="does not report progress"):
        next(loaded.sample_progressive({"n": 1}))


def test_zoo_run_writes_each_scale(var_export, direct, tmp_path):
    out = tmp_path / "final.png"
    command = [sys.executable, "-m", "zoo", "run", str(var_export), "--class", "3", "--class", "5"]
    command += [
        "--n",
        "2",
        "--seed",
        "7",
        "--provider",
        "cpu",
        "--out",
        str(out),
        "--progress-dir",
        str(tmp_path / "s"),
    ]
    subprocess.run(command, check=True, env=serve_env(), cwd=tmp_path, capture_output=True)
    written = sorted(path.name for path in (tmp_path / "s").iterdir())
    assert written == [f"scale-{k:02d}.png" for k in range(1, len(scales(direct)) + 1)]
    with Image.open(out) as final, Image.open(tmp_path / "s" / written[-1]) as last:
        np.testing.assert_array_equal(np.asarray(final), np.asarray(last))


def read_events(text: str) -> list[tuple[str, dict]]:
    events = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((fields["event"], json.loads(fields["data"])))
    return events


def data_uri_image(uri: str) -> np.ndarray:
    prefix = "data:image/png;base64,"
    assert uri.startswith(prefix)
    with Image.open(io.BytesIO(base64.b64decode(uri[len(prefix) :]))) as image:
        return np.asarray(image.convert("RGB"))


def test_stream_sends_one_png_per_scale_then_the_plain_json(server, direct):
    url = f"{server}/v1/models/var/sample"
    plain = httpx.post(url, json=OPTIONS, timeout=60).json()
    response = httpx.post(url, params={"stream": "1"}, json=OPTIONS, timeout=60)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = read_events(response.text)
    kinds = [kind for kind, _ in events]
    assert kinds == ["step"] * len(scales(direct)) + ["result"]
    assert [data["step"] for _, data in events[:-1]] == list(range(1, len(kinds)))
    result = events[-1][1]
    assert result["images"] == plain["images"]
    assert result["extras"] == plain["extras"]
    grid = np.asarray(direct.sample(OPTIONS).grid())
    np.testing.assert_array_equal(data_uri_image(events[-2][1]["image"]), grid)


def test_stream_errors_are_one_line(server):
    url = f"{server}/v1/models/var/sample"
    bad = httpx.post(url, params={"stream": "yes"}, json={}, timeout=30)
    assert bad.status_code == 400 and "stream must be 0 or 1" in bad.json()["error"]
    refused = httpx.post(url, params={"stream": "1"}, json={"classes": [99]}, timeout=30)
    events = read_events(refused.text) if refused.status_code == 200 else []
    assert refused.status_code == 422 or events[-1][0] == "error", refused.text
