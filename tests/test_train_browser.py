"""The Train tab in a real browser, on a 16 px model so a run takes seconds: upload pictures,
read how long it will take, start, cancel, resume to the end, load the result."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from PIL import Image

from engine.training.faces import render_faces
from tests.helpers.browser import (
    need_chromium,
    open_studio_page,
    studio_server,
)

pytestmark = pytest.mark.browser
playwright_api = pytest.importorskip("playwright.sync_api")

TINY16 = str(Path(__file__).parent / "data" / "tiny16" / "generator.safetensors")
WAIT_MS = 120_000


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    need_chromium()
    folder = tmp_path_factory.mktemp("train-browser")
    env = {"STUDIO_OUTPUT_DIR": str(folder / "out"),
           "ACTIVATION_STUDIO_CACHE": str(folder / "cache")}
    with studio_server(TINY16, env=env) as url, playwright_api.sync_playwright() as p:
        browser, pg = open_studio_page(p, url, timeout_ms=WAIT_MS)
        yield pg
        browser.close()


def test_fine_tune_cancel_resume_and_load(page, tmp_path):
    pictures = []
    for i, face in enumerate(render_faces(range(12), 32)):
        pictures.append(str(tmp_path / f"face{i}.png"))
        Image.fromarray(face).save(pictures[-1])
    page.get_by_role("tab", name="Train").click()
    steps = page.locator("#gt-steps input[type=number]").first
    steps.fill("150")
    steps.press("Enter")
    page.locator("#gt-batch input[type=number]").first.fill("4")
    page.locator("#gt-batch input[type=number]").first.press("Enter")
    page.locator("#gt-files input[type=file]").set_input_files(pictures)
    estimate = page.locator("#gt-estimate")
    estimate.get_by_text("images/s").wait_for()
    assert "12 pictures" in estimate.inner_text()
    assert "this CPU" in estimate.inner_text()  # said before anything starts
    assert "150 steps of 4 pictures" in estimate.inner_text()
    page.click("#gt-go")
    page.locator("#gt-status").get_by_text("kimg").wait_for()  # running: steps reported
    page.click("#gt-cancel")
    page.locator("#gt-status").get_by_text("cancelled after a checkpoint").wait_for()
    # Issue #33 item 2: the loss curves have strokes (a plot first sent an empty frame drew
    # none).
    page.wait_for_function("""() => document.querySelector(
        '#tab-train .vega-embed path[aria-roledescription="line mark"]') !== null""")
    strokes = page.evaluate("""() => [...document.querySelectorAll(
            '#tab-train .vega-embed path[aria-roledescription="line mark"]')]
        .map((p) => p.getAttribute('stroke'))""")
    assert strokes and all(s not in (None, "", "none", "transparent") for s in strokes), \
        strokes

    steps.fill("8")  # fewer steps than already done: resuming exports at once
    steps.press("Enter")
    page.click("#gt-go")
    page.locator("#gt-status").get_by_text("Done:").wait_for()
    assert page.locator("#gt-samples img").get_attribute("src")

    page.click("#gt-load")
    box = page.locator("#model-box input").first
    deadline = time.monotonic() + WAIT_MS / 1000
    while "fine-tuned here" not in box.input_value():  # the model loaded now is the new one
        assert time.monotonic() < deadline, box.input_value()
        page.wait_for_timeout(200)
    page.locator("#canvas img").wait_for()
    # Issue #33 item 13: the card is headed by the model's name, not its file name.
    page.locator("#model-card").get_by_text("fine-tuned here").wait_for()
    assert page.locator("#model-card strong").first.inner_text().startswith("fine-tuned")
