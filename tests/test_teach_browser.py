"""Explore's teach-by-example and blend panels in a real browser, and their API.

The teach test labels samples by how bright they are (measured on the pictures the page
shows), trains the boundary in the page, and checks that the first direction slider, which
the new boundary now drives, makes the output brighter one way and darker the other. The
blend test blends the default model with a briefly fine-tuned copy of it.
"""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from PIL import Image

from tests.helpers.browser import (
    launch_chromium,
    new_studio_page,
    page_state,
    studio_client,
    studio_server,
)

pytestmark = pytest.mark.browser
playwright_api = pytest.importorskip("playwright.sync_api")
WAIT_MS = 120_000


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from engine.gan.checkpoints import save_generator
    from engine.models import zoo
    from tests.helpers.runs import fine_tune_briefly

    folder = tmp_path_factory.mktemp("teach-browser")
    tuned = folder / "tuned.safetensors"
    save_generator(fine_tune_briefly(zoo.load("default").G, steps=1), tuned)
    env = {"STUDIO_OUTPUT_DIR": str(folder / "out"),
           "ACTIVATION_STUDIO_CACHE": str(folder / "cache")}
    with studio_server("default", env=env) as url:
        yield url, str(tuned)


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as p:
        chromium = launch_chromium(p)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, server):
    """A fresh page (its own Gradio session, every slider at 0) for each test."""
    url, _ = server
    pg = new_studio_page(browser, url, height=1000, timeout_ms=WAIT_MS)
    yield pg
    pg.context.close()


def _pixels(page, url: str) -> np.ndarray:
    body = page.request.get(url).body()
    return np.asarray(Image.open(io.BytesIO(body)).convert("RGB"), dtype=np.float64)


def _canvas(page) -> str | None:
    el = page.query_selector("#canvas img")
    return el.get_attribute("src") if el else None


def _wait_canvas_change(page, old: str | None) -> str:
    try:
        page.wait_for_function("old => { const i = document.querySelector('#canvas img');"
                               " return i && i.getAttribute('src') !== old; }", arg=old)
    except playwright_api.TimeoutError as exc:
        raise AssertionError(f"the canvas did not change; the page: {page_state(page)}") from exc
    return _canvas(page)


def _set_number(page, selector: str, value: float) -> None:
    box = page.locator(f"{selector} input[type=number]").first
    box.fill(str(value))
    box.press("Enter")


MARK_OF = ("(['yes', 'no'].find(g => [...document.querySelectorAll('#teach-' + g + ' label')]"
           ".find(l => l.innerText.trim() === c).querySelector('input').checked) ?? '')")


def _mark_of(page, caption: str) -> str:
    return page.evaluate(f"([c, want]) => {MARK_OF}", [caption, None])


def _label_page(page, count: int) -> None:
    """Wait for `count` samples, then mark the brighter half 'has it', the rest 'does not'."""
    imgs = page.locator("#teach-grid img")
    page.wait_for_function("n => document.querySelectorAll('#teach-grid img').length === n "
                           "&& document.querySelectorAll('#teach-yes input').length === n",
                           arg=count)
    captions = [t.strip() for t in page.locator("#teach-yes label").all_inner_texts()]
    brightness = [_pixels(page, imgs.nth(i).get_attribute("src")).mean()
                  for i in range(count)]
    median = float(np.median(brightness))
    for caption, value in zip(captions, brightness):
        group = "#teach-yes" if value > median else "#teach-no"
        page.locator(group).get_by_label(caption, exact=True).check()


def test_label_grid_to_a_working_slider(page):
    page.get_by_text("Teach a direction by example").click()
    _set_number(page, "#teach-count", 24)
    page.click("#teach-show")
    _label_page(page, 24)
    status = page.locator("#teach-status")
    status.get_by_text("12 marked 'has it', 12 marked 'does not'").wait_for()
    # Clicking a sample cycles its mark: unmarked -> has it -> does not -> unmarked.
    caption = page.locator("#teach-yes label").first.inner_text().strip()
    cycle = {"": "yes", "yes": "no", "no": ""}
    state = _mark_of(page, caption)
    for _ in range(3):  # round the cycle, back to the mark it had
        page.locator("#teach-grid button.thumbnail-item").first.click()
        state = cycle[state]
        page.wait_for_function(f"([c, want]) => {MARK_OF} === want", arg=[caption, state])
    page.click("#teach-next")  # the first page's marks are kept
    page.wait_for_function("() => document.querySelector('#teach-first input').value "
                           "=== '24'")
    _label_page(page, 24)
    status.get_by_text("24 marked 'has it', 24 marked 'does not'").wait_for()
    page.locator("#teach-name input, #teach-name textarea").first.fill("bright")
    page.click("#teach-train")
    result = page.locator("#teach-result")
    result.get_by_text("cross-validated accuracy").wait_for()
    accuracy = float(result.inner_text().split("cross-validated accuracy ")[1].split()[0])
    assert accuracy > 0.6  # brightness is a strong, nearly linear attribute in W
    assert page.locator("#teach-file a").count() == 1  # the boundary can be downloaded
    base = _canvas(page)
    _set_number(page, "#dir-0", 3)
    brighter = _wait_canvas_change(page, base)
    _set_number(page, "#dir-0", -3)
    darker = _wait_canvas_change(page, brighter)
    levels = [_pixels(page, u).mean() for u in (darker, base, brighter)]
    assert levels[0] < levels[1] < levels[2], levels
    if os.environ.get("STUDIO_SCREENSHOTS") == "1":
        page.locator("#teach").scroll_into_view_if_needed()
        page.screenshot(path="/tmp/teach.png", full_page=False)


def test_blend_with_a_fine_tuned_copy(page, server):
    _, tuned = server
    base = _canvas(page)
    page.get_by_text("Blend with another model").click()
    page.locator("#blend-model input, #blend-model textarea").first.fill(tuned)
    page.locator("#blend-on input").check()
    blended = _wait_canvas_change(page, base)
    assert "b16:A b32:B b64:B" in page.locator("#blend-note").inner_text()
    assert not np.array_equal(_pixels(page, base), _pixels(page, blended))
    # Interpolating with weight 0 (mapping from A) is model A again, pixel for pixel.
    page.locator("#blend-mode").get_by_text("Interpolate").click()
    halfway = _wait_canvas_change(page, blended)
    _set_number(page, "#blend-alpha", 0)
    back = _wait_canvas_change(page, halfway)
    assert np.array_equal(_pixels(page, back), _pixels(page, base))
    # Per-block weights: A's blocks to b16, B's after (the swap's picture, by interpolation).
    alphas = page.locator("#blend-alphas input, #blend-alphas textarea").first
    alphas.fill("0, 0, 0, 1, 1")
    alphas.press("Enter")
    swapped = _wait_canvas_change(page, back)
    assert np.array_equal(_pixels(page, swapped), _pixels(page, blended))
    alphas.fill("0, 1")
    alphas.press("Enter")
    page.get_by_text("give one alpha per block").first.wait_for()
    assert _canvas(page) == swapped  # the refused edit left the blend as it was
    page.locator("#blend-on input").uncheck()


def test_boundary_from_labels_api(server):
    url, _ = server
    client = studio_client(url)
    client.predict("default", api_name="/load_model")
    labels = "seed,label\n" + "".join(f"{s},{'yes' if s % 3 else 'no'}\n" for s in range(30))
    path, summary = client.predict(labels, 1.0, "api", api_name="/boundary_from_labels")
    raw = np.load(path)
    assert raw.shape == (1, 128) and raw.dtype == np.float64
    assert "20 yes / 10 no" in summary and "cross-validated accuracy" in summary
    with pytest.raises(Exception, match="at least 2 samples yes"):
        client.predict("0,yes\n1,no", 1.0, "", api_name="/boundary_from_labels")
