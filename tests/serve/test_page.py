"""The web page in a real headless Chromium (Debian's `chromium`, driven by Playwright; no
browser is downloaded): pick the VAR model, pick a digit, sample, read the image back."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import zoo.runtime
from tests.conftest import ROOT

CHROMIUM = Path("/usr/bin/chromium")
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
SCREENSHOT = ROOT / "benchmarks" / "results" / "serve_page.png"


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the test extra has it)")
    if not CHROMIUM.is_file():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def test_the_page_samples_the_digit_picked(server, var_export, browser):
    page = browser.new_page(viewport={"width": 900, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(server)
    page.wait_for_selector("body[data-state=ready]")
    page.select_option("#model", "var")
    page.click("button[data-pick='3']")  # the class picker
    assert page.input_value("#option-classes") == "3"
    page.fill("#option-n", "2")
    page.click("#sample")
    page.wait_for_selector("body[data-state=done]", timeout=60_000)
    assert page.inner_text("#status").startswith("done:")

    sources = page.eval_on_selector_all(".result-image", "images => images.map(image => image.src)")
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
    assert not errors

    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)
    page.close()
