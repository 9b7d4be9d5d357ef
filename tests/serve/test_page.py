"""The web page in a real headless Chromium (Debian's `chromium`, driven by Playwright; no
browser is downloaded): pick the VAR model, pick a digit, sample, read the image back.
(`benchmarks/bench_serve.py --screenshot` saves a picture of the same page.)"""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

import zoo.runtime
from tests.serve.conftest import CHROMIUM, CHROMIUM_ARGS, sample_digit_on_page


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the test extra has it)")
    if not CHROMIUM.is_file():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def test_the_page_samples_the_digit_picked(server, var_export, browser, tmp_path):
    page = browser.new_page(viewport={"width": 900, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    sources = sample_digit_on_page(page, server, digit=3, n=2)
    assert page.inner_text("#status").startswith("done:")
    assert len(sources) == 2
    prefix = "data:image/png;base64,"
    assert sources[0].startswith(prefix)
    with Image.open(io.BytesIO(base64.b64decode(sources[0][len(prefix) :]))) as image:
        shown = np.asarray(image.convert("RGB"))
    assert shown.shape == (16, 16, 3)
    assert shown.std() > 5  # not blank
    # the page sent its defaults with class 3 and n 2: the image a direct call gives
    expected = zoo.runtime.load(var_export).sample({"classes": [3], "n": 2}).images[0]
    np.testing.assert_array_equal(shown, expected)
    assert not errors, errors

    screenshot = tmp_path / "serve_page.png"  # what the benchmark's --screenshot saves
    page.screenshot(path=str(screenshot), full_page=True)
    with Image.open(screenshot) as picture:
        assert picture.format == "PNG"
        assert picture.width == 900, picture.size
    page.close()
