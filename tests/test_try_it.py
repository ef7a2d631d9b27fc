"""The book's "Try it" page in headless Chromium: it draws the digits it is asked for, with no network.

Serves the built site (``_build/html``) on localhost, drives the page with Playwright (its Python package,
launching Debian's Chromium: Playwright's own browser download does not work offline), asks for 16 samples
of a digit at the page's default settings, reads the canvas pixels back and scores them with the course's
evaluation classifier: at least 90% must carry the requested label. The same run prints the browser's
milliseconds per network evaluation next to PyTorch's on this machine (a benchmark line, not an assertion).
Also: the plain (non-SIMD) WebAssembly build, the Stop button, controls disabled while running, and a
failure shown on the page.

Build the book first, with onnxruntime-web (see README, "The book"). Skipped when there is no built site
with the page's runtime, or no Chromium; ``REQUIRE_BROWSER_TEST=1`` (``.ci/run``) turns those skips into
failures.
"""

from __future__ import annotations

import functools
import http.server
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from browser import CHROMIUM, FLAGS

ROOT = Path(__file__).resolve().parents[1]
HTML = Path(os.environ.get("DDPM_BOOK_HTML", ROOT / "_build" / "html"))
REQUIRED = os.environ.get("REQUIRE_BROWSER_TEST") == "1"
NEEDED = [
    "try_it.html",
    "_static/try_it/page.js",
    "_static/try_it/models/ddpm_mnist_cond.onnx",
    "_static/ort/ort-wasm.wasm",
]
SCALE = 2  # canvas pixels per image pixel (page.js)

pytestmark = pytest.mark.slow


def _skip_or_fail(reason: str):
    if REQUIRED:
        pytest.fail(f"{reason} (REQUIRE_BROWSER_TEST=1)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def site():
    missing = [name for name in NEEDED if not (HTML / name).is_file()]
    if missing:
        _skip_or_fail(f"no built Try it page with its runtime under {HTML} (missing {', '.join(missing)})")
    if CHROMIUM is None:
        _skip_or_fail("no chromium on this machine")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(HTML))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/try_it.html"
    server.shutdown()


@pytest.fixture(scope="module")
def browser():
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield chromium
        chromium.close()


def open_page(browser, url: str):
    page = browser.new_page()
    outside = []
    page.on(
        "request", lambda request: outside.append(request.url) if "127.0.0.1" not in request.url else None
    )
    page.goto(url)
    page.wait_for_function("document.querySelector('#try-status').dataset.state === 'idle'")
    return page, outside


def wait_until_finished(page, timeout_s: float = 300):
    page.wait_for_function(
        "['done', 'stopped', 'error'].includes(document.querySelector('#try-status').dataset.state)",
        timeout=timeout_s * 1000,
    )
    return page.get_attribute("#try-status", "data-state")


def canvas_digits(page) -> torch.Tensor:
    """The 16 digits of the x_t canvas (the samples, once done) as a (16, 1, 28, 28) tensor in [-1, 1]."""
    pixels = page.evaluate(
        """() => { const c = document.querySelector('#try-xt');
                   return Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data); }"""
    )
    side = 4 * 28 * SCALE
    grey = np.array(pixels, dtype=np.float32).reshape(side, side, 4)[
        ::SCALE, ::SCALE, 0
    ]  # one pixel per image pixel
    tiles = grey.reshape(4, 28, 4, 28).transpose(0, 2, 1, 3).reshape(16, 1, 28, 28)
    return torch.from_numpy(tiles / 255.0 * 2 - 1)


def pytorch_ms_per_evaluation(batch: int) -> float:
    from ddpm_lib.pretrained import load_pretrained

    model, _, _ = load_pretrained("ddpm_mnist_cond")
    x, t, y = torch.randn(batch, 1, 28, 28), torch.full((batch,), 500), torch.zeros(batch, dtype=torch.long)
    with torch.inference_mode():
        model(x, t, y)
        start = time.perf_counter()
        for _ in range(5):
            model(x, t, y)
    return (time.perf_counter() - start) / 5 / batch * 1000


@pytest.mark.parametrize("digit", [7, 2])
def test_the_page_draws_the_digit_it_is_asked_for(site, browser, digit):
    from ddpm_lib.metrics import classify
    from ddpm_lib.pretrained import load_classifier

    page, outside = open_page(browser, site)
    page.select_option("#try-digit", str(digit))  # every other control at the page's default settings
    page.click("#try-generate")
    page.wait_for_function("document.querySelector('#try-status').dataset.state === 'running'")
    assert (
        page.is_disabled("#try-generate") and page.is_disabled("#try-digit") and page.is_enabled("#try-stop")
    )
    assert wait_until_finished(page) == "done", page.inner_text("#try-status")
    assert page.is_enabled("#try-generate") and page.is_disabled("#try-stop")
    digits = canvas_digits(page)
    _, probs = classify(load_classifier()[0], digits)
    share = float((probs.argmax(1) == digit).mean())
    browser_ms = float(page.get_attribute("#try-status", "data-ms-per-eval"))
    print(f"\ndigit {digit}: {share:.0%} of 16 classified as {digit}; ms per network evaluation: "
          f"browser (onnxruntime-web, 1 thread) {browser_ms:.1f}, PyTorch on this machine "
          f"({torch.get_num_threads()} threads, batch 32) {pytorch_ms_per_evaluation(32):.1f}")  # fmt: skip
    assert share >= 0.9, probs.argmax(1)
    assert outside == []  # nothing loaded from anywhere but the site itself
    page.close()


def test_without_webassembly_simd_and_with_a_stop_button(site, browser):
    page, _ = open_page(browser, site + "?simd=0&steps=3&digit=none")
    wasm = []
    page.on(
        "request",
        lambda r: wasm.append(r.url.rsplit("/", 1)[-1]) if r.url.endswith(".wasm") else None,
    )
    page.click("#try-generate")
    assert wait_until_finished(page) == "done", page.inner_text("#try-status")
    assert wasm == ["ort-wasm.wasm"]  # the plain build, no SIMD
    page.fill("#try-steps", "1000")
    page.click("#try-generate")
    page.wait_for_function(  # a step or two in
        "Number((document.querySelector('#try-status').textContent.match(/^step (\\d+)\\//) || [0, 0])[1]) >= 2"
    )
    page.click("#try-stop")
    assert wait_until_finished(page) == "stopped"
    assert page.is_enabled("#try-generate")
    page.close()


def test_a_failure_is_shown_on_the_page(site, browser):
    page, _ = open_page(browser, site)
    page.route("**/ddpm_mnist_cond.onnx", lambda route: route.abort())  # the model cannot be fetched
    page.click("#try-generate")
    assert wait_until_finished(page) == "error"
    status = page.locator("#try-status")
    assert status.inner_text().startswith("failed:") and "try-error" in status.get_attribute("class")
    assert page.is_enabled("#try-generate")
    page.fill("#try-steps", "0")
    page.click("#try-generate")
    assert wait_until_finished(page) == "error" and "steps must be" in status.inner_text()
    page.close()
