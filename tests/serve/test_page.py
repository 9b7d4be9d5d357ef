"""The web page in a real headless Chromium (Debian's `chromium`, driven by Playwright; no
browser is downloaded): pick the VAR model, pick a digit, sample, read the image back;
VAR's scales drawn as they come; and the page's layout, labels, downloads, errors, hints and
phone width. (`benchmarks/bench_serve.py --screenshot` saves a picture of the same page.)"""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import pytest
from PIL import Image

import zoo.runtime
from tests.serve.conftest import (
    CHROMIUM,
    CHROMIUM_ARGS,
    free_port,
    running_server,
    sample_digit_on_page,
    serve_command,
    serve_env,
    shared_export,
)
from zoo_var.config import TokenizerConfig


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


def data_image(uri: str) -> np.ndarray:
    prefix = "data:image/png;base64,"
    assert uri.startswith(prefix), uri[:40]
    with Image.open(io.BytesIO(base64.b64decode(uri[len(prefix) :]))) as image:
        return np.asarray(image.convert("RGB"))


@pytest.fixture(scope="module")
def zoo_server(var_export, tmp_path_factory):
    """One server of three models: VAR (classes, progress), quantart (image inputs, the sweep),
    and the VQ-VAE-2 PixelCNN (no progress)."""
    exports = [var_export, *(shared_export(tmp_path_factory, name) for name in ("quantart", "vqvae2_pixelcnn"))]
    log = tmp_path_factory.mktemp("serve_page") / "serve.log"
    with running_server(serve_command(*exports, port=free_port(), extra=("--workers", "2")), log, serve_env()) as url:
        yield url


def opened(browser, url: str, model: str, width: int = 1280, height: int = 800):
    page = browser.new_page(viewport={"width": width, "height": height})
    page.goto(url)
    page.wait_for_selector("body[data-state=ready]")
    page.select_option("#model", model)
    return page


def submit(page) -> None:
    page.click("#sample")
    page.wait_for_selector("body[data-state=done], body[data-state=error]", timeout=60_000)


def test_the_page_draws_each_scale_as_it_comes_and_ends_on_the_plain_images(server, var_export, browser):
    page = opened(browser, server, "var")
    page.evaluate(
        """() => { window.seen = [];  // every src the preview had, with the page's state then
        new MutationObserver((changes) => {
          for (const change of changes) window.seen.push([change.oldValue, $("progress").hidden, document.body.dataset.state]);
          window.seen.push([$("preview").src, $("progress").hidden, document.body.dataset.state]);
        }).observe($("preview"), { attributes: true, attributeFilter: ["src"], attributeOldValue: true }); }"""
    )
    page.click("button[data-pick='4']")
    page.fill("#option-n", "2")
    submit(page)
    seen = [change for change in page.evaluate("window.seen") if change[0]]
    direct = zoo.runtime.load(var_export)
    scales = len(TokenizerConfig.model_validate(direct.config["tokenizer"]).patch_nums)
    assert len({source for source, _, _ in seen}) >= scales  # the image changed at every scale
    assert all(not hidden and state == "sampling" for _, hidden, state in seen)  # progress shown while sampling
    expected = direct.sample({"classes": [4], "n": 2})
    np.testing.assert_array_equal(data_image(seen[-1][0]), np.asarray(expected.grid()))
    final = page.eval_on_selector_all(".result-image", "images => images.map(image => image.src)")
    np.testing.assert_array_equal(np.stack([data_image(source) for source in final]), expected.images)
    page.close()


def test_results_beside_the_form_one_labelled_row_per_class_and_downloads(zoo_server, browser):
    page = opened(browser, zoo_server, "var")
    page.fill("#option-classes", "3 5")
    page.fill("#option-n", "2")
    submit(page)
    form, results = page.locator("#controls").bounding_box(), page.locator("#results").bounding_box()
    assert results["x"] >= form["x"] + form["width"] and results["y"] < 800  # beside it, above the fold
    assert page.locator(".row-label").all_inner_texts() == ["class 3", "class 5"]
    links = page.eval_on_selector_all(
        ".cell", "cells => cells.map(c => [c.querySelector('img').src, c.querySelector('a[download]').href])"
    )
    assert len(links) == 4 and all(image == link for image, link in links)
    page.wait_for_function("$('download-grid').href.startsWith('data:image/png')")
    grid = data_image(page.get_attribute("#download-grid", "href"))
    assert grid.shape[:2] == (2 * 16, 2 * 16)
    np.testing.assert_array_equal(grid[:16, 16:32], data_image(links[1][0]))
    page.close()


def test_the_sweep_is_a_labelled_grid_beside_its_input_images(zoo_server, browser, tmp_path):
    page = opened(browser, zoo_server, "quantart")
    picture = tmp_path / "content.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(picture)
    page.set_input_files("#option-content", str(picture))
    page.check("#option-sweep")
    submit(page)
    assert page.get_attribute("body", "data-state") == "done", page.inner_text("#error")
    assert page.locator("#inputs img").count() == 1
    assert "content.png" in page.inner_text("#inputs")
    assert page.locator(".result-image").count() == 25
    rows, heads = page.locator(".row-label").all_inner_texts(), page.locator(".grid .head").all_inner_texts()
    assert len(rows) == 5 and len(set(rows)) == 5 and all(text.startswith("content style balance") for text in rows)
    assert len(heads) == 5 and len(set(heads)) == 5 and all(text.startswith("fidelity balance") for text in heads)
    page.close()


def test_errors_replace_each_other_and_a_success_clears_them(zoo_server, browser):
    page = opened(browser, zoo_server, "var")
    page.fill("#option-classes", "99")
    submit(page)
    first = page.inner_text("#error")
    assert "99" in first and "\n" not in first.strip()
    page.fill("#option-classes", "-5")
    submit(page)
    second = page.inner_text("#error")
    assert "-5" in second and "99" not in second  # the new error only
    page.fill("#option-classes", "1")
    submit(page)
    assert page.get_attribute("body", "data-state") == "done"
    assert page.inner_text("#error") == ""
    page.close()


def test_hints_speak_the_api_and_class_buttons_follow_the_field(zoo_server, browser):
    page = opened(browser, zoo_server, "var")
    for model in ("var", "quantart", "vqvae2_pixelcnn"):
        page.select_option("#model", model)
        for hint in page.locator(".hint").all_inner_texts():
            assert "--" not in hint and "directory" not in hint, (model, hint)
    page.select_option("#model", "var")
    page.fill("#option-classes", "3 7")
    on = lambda: page.eval_on_selector_all(".picks button.on", "bs => bs.map(b => b.dataset.pick)")  # noqa: E731
    assert on() == ["3", "7"]
    page.click("button[data-pick='3']")
    assert page.input_value("#option-classes") == "7" and on() == ["7"]
    page.close()


def test_no_horizontal_overflow_on_a_390_px_phone(zoo_server, browser):
    page = opened(browser, zoo_server, "var", width=390, height=844)
    for model in ("var", "quantart", "vqvae2_pixelcnn"):
        page.select_option("#model", model)
        if model == "var":
            page.fill("#option-classes", "1 2 3")
            submit(page)
        assert page.evaluate("document.documentElement.scrollWidth") <= 390, model
    page.close()


def test_stream_is_400_for_a_loop_without_progress(zoo_server):
    response = httpx.post(f"{zoo_server}/v1/models/vqvae2_pixelcnn/sample", params={"stream": "1"}, json={}, timeout=30)
    assert response.status_code == 400
    assert "does not report progress" in response.json()["error"]
