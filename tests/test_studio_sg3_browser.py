"""The page on a StyleGAN3 model (Chromium through Playwright): its layer names, the
translate/rotate sliders of Explore, and a bend on an alias-free layer."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
from PIL import Image

from tests.helpers.browser import (
    launch_chromium,
    need_chromium,
    new_studio_page,
    studio_server,
)

pytestmark = pytest.mark.browser
playwright_api = pytest.importorskip("playwright.sync_api")
WAIT_MS = 120_000


@pytest.fixture(scope="module")
def sg3_browser(tmp_path_factory):
    """One server on a tiny StyleGAN3 model and one Chromium for the module: (browser, url)."""
    need_chromium()
    from engine.gan.checkpoints import save_generator
    from tests.conftest import make_tiny_stylegan3

    folder = tmp_path_factory.mktemp("studio-sg3")
    model = folder / "tiny-sg3.safetensors"
    save_generator(make_tiny_stylegan3("stylegan3-t", seed=3, resolution=32), model,
                   source="random tiny stylegan3-t")
    env = {"STUDIO_OUTPUT_DIR": str(folder / "out"),
           "ACTIVATION_STUDIO_CACHE": str(folder / "cache")}
    with studio_server(str(model), env=env) as url, \
            playwright_api.sync_playwright() as p:
        browser = launch_chromium(p)
        yield browser, url
        browser.close()


@pytest.fixture
def sg3_page(sg3_browser):
    """A fresh page (its own Gradio session) per test: nothing left by another test's tab
    or bends, in any order."""
    browser, url = sg3_browser
    page = new_studio_page(browser, url, timeout_ms=WAIT_MS)
    yield page
    page.context.close()


def src(page) -> str | None:
    el = page.query_selector("#canvas img")
    return el.get_attribute("src") if el else None


def wait_new_src(page, old: str | None) -> str:
    deadline = time.monotonic() + WAIT_MS / 1000
    while time.monotonic() < deadline:
        now = src(page)
        if now and now != old:
            return now
        page.wait_for_timeout(100)
    raise AssertionError(f"the canvas did not change from {old}")


def pixels(page, url: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(page.request.get(url).body())).convert("RGB"))


def set_number(page, selector: str, value: float) -> None:
    box = page.locator(f"{selector} input[type=number]").first
    box.fill(str(value))
    box.press("Enter")


def test_translate_slider_moves_the_picture(sg3_page):
    page = sg3_page
    assert "StyleGAN3" in page.locator("#model-card").inner_text()
    page.locator("#sg3-move").wait_for(state="visible")
    first = src(page)
    set_number(page, "#translate-x", 0.25)
    moved = wait_new_src(page, first)
    assert not np.array_equal(pixels(page, first), pixels(page, moved))
    set_number(page, "#rotate", 45)
    wait_new_src(page, moved)


def test_bend_on_a_stylegan3_layer(sg3_page):
    page = sg3_page
    page.get_by_role("tab", name="Bend").click()
    layer = page.locator("#add-layer input").first.input_value()
    assert layer.startswith("L") and "_" in layer   # NVlabs names, e.g. L3_36_16
    before = src(page)
    page.click("#add-bend")
    after = wait_new_src(page, before)
    assert layer in page.locator("#stack").inner_text()
    assert not np.array_equal(pixels(page, before), pixels(page, after))
