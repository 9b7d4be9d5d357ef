"""Each sampling loop's cost estimate against the peak it really reaches: the rise of resident
memory while one request samples, measured in a fresh process (tests/serve/peak_memory.py)
after a tiny warm-up request. Every model, at sizes where the request dominates (tens to
hundreds of MB), with and without image inputs: the estimate must be within 2x."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.serve.conftest import serve_env, shared_export
from zoo.runtime.images import data_uri

MEASURE = Path(__file__).with_name("peak_memory.py")


def flat_png(width: int, height: int) -> str:
    """A small file that decodes to width x height pixels: what decoding costs is the pixels."""
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (40, 90, 160)).save(buffer, "PNG")
    return data_uri(buffer.getvalue(), "image/png")


# model -> (warm-up options, [request options]); image inputs are given as sizes, made below
CASES: dict[str, tuple[dict, list[dict]]] = {
    "var": (
        {"n": 1, "classes": [0]},
        [{"n": 25}, {"n": 25, "kv_cache": False}, {"n": 1, "classes": [0], "edit": (3000, 3000)}],
    ),
    "vqvae2_pixelcnn": ({"n": 1}, [{"n": 256}, {"n": 256, "naive": True}]),
    "quantart": ({"size": 16}, [{"size": 96}, {"size": 48, "sweep": True}, {"size": 32, "content": (2500, 2000)}]),
    "quantart_deep": ({"size": 16}, [{"size": 256}, {"size": 128, "sweep": True}]),
    "multimodal_caption": (
        {"n": 1},
        [{"n": 200, "decoding": "beam", "beam_width": 4}, {"n": 256}, {"image": [(1800, 1800)] * 2}],
    ),
}


def with_images(options: dict) -> dict:
    def made(value):
        if isinstance(value, tuple):
            return flat_png(*value)
        if isinstance(value, list) and value and isinstance(value[0], tuple):
            return [flat_png(*size) for size in value]
        return value

    return {name: made(value) for name, value in options.items()}


def measure(export_dir: Path, options: dict, warm_up: dict, cwd: Path) -> dict:
    result = subprocess.run(
        [sys.executable, str(MEASURE), str(export_dir), json.dumps(warm_up)],
        input=json.dumps(with_images(options)),
        capture_output=True,
        text=True,
        env=serve_env(),
        cwd=cwd,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.splitlines()[-1])


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="measures with Linux's /proc/self/clear_refs")
@pytest.mark.parametrize("model", CASES)
def test_the_cost_estimate_is_within_2x_of_the_measured_peak(model, tmp_path_factory, tmp_path):
    export_dir = shared_export(tmp_path_factory, model)
    warm_up, requests = CASES[model]
    for options in requests:
        found = measure(export_dir, options, warm_up, tmp_path)
        ratio = found["estimate"] / found["measured"]
        shown = {name: value for name, value in options.items()}
        assert 0.5 <= ratio <= 2.0, (
            f"{model} {shown}: estimate {found['estimate']:,} B, measured {found['measured']:,} B"
        )
