"""`zoo serve` over real HTTP: a live uvicorn process on the tiny VAR export, httpx as the client."""

from __future__ import annotations

import base64
import io
import json

import httpx
import numpy as np
import pytest
from PIL import Image

import zoo.runtime
from zoo.runtime.images import data_uri

SAMPLE = "/v1/models/var/sample"


def png_array(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


def png_file(side: int = 16) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def direct(var_export) -> zoo.runtime.LoadedExport:
    """The same export, loaded in this process: what a response must equal."""
    return zoo.runtime.load(var_export)


def test_health_and_the_model_listing_with_its_option_schema(server, direct):
    assert httpx.get(f"{server}/healthz").json() == {"status": "ok", "models": ["var"]}
    (model,) = httpx.get(f"{server}/v1/models").json()["models"]
    assert model["name"] == "var"
    assert model["model"] == "var"
    assert model["components"] == sorted(direct.manifest["components"])
    assert model["options"] == direct.options_class.model_json_schema()
    assert model["image_options"] == ["edit", "mask"]
    assert model["options"]["properties"]["edit"]["input"] == "image"


def test_a_seed_gives_the_image_that_the_runtime_gives_directly(server, direct):
    options = {"classes": [3, 7], "n": 2, "seed": 5}
    response = httpx.post(f"{server}{SAMPLE}", json=options, timeout=60)
    assert response.status_code == 200, response.text
    body = response.json()
    expected = direct.sample(options)
    images = np.stack([png_array(base64.b64decode(item)) for item in body["images"]])
    np.testing.assert_array_equal(images, expected.images)
    assert body["extras"]["tokens"] == expected.extras["tokens"].tolist()
    assert body["extras"]["labels"] == [3, 3, 7, 7]
    assert body["seconds"] > 0
    other_seed = httpx.post(f"{server}{SAMPLE}", json={**options, "seed": 6}, timeout=60).json()
    assert other_seed["extras"]["tokens"] != body["extras"]["tokens"]


@pytest.mark.parametrize("ask", [{"params": {"format": "png"}}, {"headers": {"Accept": "image/png"}}])
def test_png_on_request_is_the_grid_zoo_run_saves(server, direct, ask):
    options = {"classes": [1], "n": 3, "seed": 2}
    response = httpx.post(f"{server}{SAMPLE}", json=options, timeout=60, **ask)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    np.testing.assert_array_equal(png_array(response.content), np.asarray(direct.sample(options).grid()))
    assert float(response.headers["x-zoo-seconds"]) > 0


def half_white_png(side: int = 16) -> bytes:
    """A mask: white (regenerate) on the left half, black (keep) on the right."""
    mask = np.zeros((side, side), np.uint8)
    mask[:, : side // 2] = 255
    buffer = io.BytesIO()
    Image.fromarray(mask).save(buffer, "PNG")
    return buffer.getvalue()


def test_multipart_edits_the_uploaded_image_as_the_runtime_does(server, direct):
    options = {"classes": [4], "n": 1, "seed": 3}
    edit, mask = png_file(), half_white_png()
    files = [
        ("options", (None, json.dumps(options))),
        ("edit", ("edit.png", edit, "image/png")),
        ("mask", ("mask.png", mask, "image/png")),
    ]
    response = httpx.post(f"{server}{SAMPLE}", files=files, timeout=60)
    assert response.status_code == 200, response.text
    body = response.json()
    # the same edit with the images given to the runtime directly
    expected = direct.sample({**options, "edit": data_uri(edit, "image/png"), "mask": data_uri(mask, "image/png")})
    images = np.stack([png_array(base64.b64decode(item)) for item in body["images"]])
    np.testing.assert_array_equal(images, expected.images)
    assert body["extras"]["tokens"] == expected.extras["tokens"].tolist()
    # and the uploads mattered: the same seed without them draws other tokens
    unedited = direct.sample(options)
    assert body["extras"]["tokens"] != unedited.extras["tokens"].tolist()


@pytest.mark.parametrize(
    ("request_kwargs", "status", "message"),
    [
        ({"json": {"n": 0}}, 422, "sample option 'n': Input should be greater than or equal to 1"),
        ({"json": {"n": 257}}, 422, "sample option 'n'"),
        ({"json": {"colour": "red"}}, 422, "sample option 'colour': Extra inputs are not permitted"),
        ({"json": [1, 2]}, 400, "must be a JSON object"),
        ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 400, "not valid JSON"),
        ({"json": {"classes": [12]}}, 400, "class 12 is out of range"),
        ({"json": {"edit": "/etc/passwd"}}, 400, "the server reads no paths"),
        ({"json": {"edit": base64.b64encode(b"plain text, no image").decode()}}, 415, "edit: not an image"),
        ({"files": {"edit": ("notes.txt", b"plain text, no image", "image/png")}}, 415, "edit: not an image"),
        ({"files": {"photo": ("a.png", png_file(), "image/png")}}, 400, "unexpected form part 'photo'"),
        ({"content": b"a=1", "headers": {"content-type": "text/plain"}}, 415, "send application/json or multipart"),
        ({"json": {}, "params": {"format": "gif"}}, 400, "format must be png or json"),
    ],
)
def test_bad_requests_are_one_line_json_errors(server, request_kwargs, status, message):
    response = httpx.post(f"{server}{SAMPLE}", timeout=60, **request_kwargs)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert message in error
    assert "\n" not in error
    assert httpx.get(f"{server}/healthz").status_code == 200  # and the server goes on


def test_an_upload_over_the_limit_is_413_before_it_is_read(server):
    big = png_file(side=512)  # ~780 kB of noise, over this server's 64 kB
    response = httpx.post(f"{server}{SAMPLE}", files={"edit": ("big.png", big, "image/png")}, timeout=60)
    assert response.status_code == 413, response.text
    assert "over the limit of 65536" in response.json()["error"]


def test_unknown_model_is_404_with_the_close_names(server):
    response = httpx.post(f"{server}/v1/models/vra/sample", json={})
    assert response.status_code == 404, response.text
    assert response.json() == {"error": "unknown model 'vra'. Did you mean 'var'? Known: var."}
    assert httpx.get(f"{server}/v2/nothing").status_code == 404


def test_metrics_count_requests_by_route_and_status(server):
    def count(status: str) -> float:
        text = httpx.get(f"{server}/metrics").text
        line = f'zoo_http_requests_total{{method="POST",route="/v1/models/{{name}}/sample",status="{status}"}} '
        found = [row for row in text.splitlines() if row.startswith(line)]
        return float(found[0].split()[-1]) if found else 0.0

    before_ok, before_bad = count("200"), count("422")
    httpx.post(f"{server}{SAMPLE}", json={"n": 1, "classes": [0]}, timeout=60)
    httpx.post(f"{server}{SAMPLE}", json={"n": 0})
    assert (count("200"), count("422")) == (before_ok + 1, before_bad + 1)
    text = httpx.get(f"{server}/metrics").text
    assert 'zoo_sample_seconds_count{model="var"}' in text
    assert 'zoo_http_request_seconds_bucket{le="0.5",route="/v1/models/{name}/sample"}' in text
