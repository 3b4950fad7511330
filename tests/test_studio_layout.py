"""Issue #24 in a real browser at 1280x800: undo/redo (buttons and Ctrl+Z), the canvas and
progress line in view at the bottom of every tab, stale panels cleared after a model
switch, and Broad's network-bending YAML loaded through Load recipe."""

from __future__ import annotations

import os

import numpy as np
import pytest

from tests.helpers.browser import (
    BROWSER_WAIT_MS,
    DEFAULT_MODEL_FILE,
    launch_chromium,
    need_chromium,
    new_studio_page,
    pixels,
    set_number,
    src,
    studio_server,
    tab,
    tiny_model_file,
    wait_new_src,
)

pytestmark = pytest.mark.browser
playwright_api = pytest.importorskip("playwright.sync_api")

TABS = ("Explore", "Clusters", "Bend", "Translate", "Project", "Train")
BROAD_YAML = """\
transforms:
- layer: 4
  transform: "translate"
  params: [0.25, 0.0]
  features: "all"
  feature-param:
- layer: 3
  transform: "no-such-transform"
  params: []
  features: "all"
  feature-param:
"""


@pytest.fixture(scope="module")
def studio_url(tmp_path_factory):
    need_chromium()
    folder = tmp_path_factory.mktemp("studio-layout")
    model = os.environ.get("STUDIO_TEST_MODEL") or (
        "default" if DEFAULT_MODEL_FILE.exists() else tiny_model_file(folder))
    env = {"STUDIO_OUTPUT_DIR": str(folder / "out"),
           "ACTIVATION_STUDIO_CACHE": str(folder / "cache")}
    with studio_server(model, env=env) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as p:
        chromium = launch_chromium(p)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, studio_url):
    """A fresh page (its own Gradio session) for each test, so none depends on another."""
    pg = new_studio_page(browser, studio_url, timeout_ms=BROWSER_WAIT_MS)
    yield pg
    pg.context.close()


IN_VIEW_JS = """(sel) => {
    const r = document.querySelector(sel).getBoundingClientRect();
    return r.top >= 0 && r.bottom <= window.innerHeight && r.height > 0; }"""


def test_undo_and_redo_with_buttons_and_keys(page):
    start = src(page, "#canvas")
    set_number(page, "#seed", 7)
    seven = wait_new_src(page, "#canvas", start)
    page.click("#undo")
    back = wait_new_src(page, "#canvas", seven)
    assert np.array_equal(pixels(page, back), pixels(page, start))
    assert page.locator("#seed input[type=number]").input_value() == "0"
    page.locator("body").click(position={"x": 5, "y": 5})  # keys go to the page, not a box
    page.keyboard.press("Control+Shift+Z")
    again = wait_new_src(page, "#canvas", back)
    assert np.array_equal(pixels(page, again), pixels(page, seven))
    page.keyboard.press("Control+Z")
    wait_new_src(page, "#canvas", again)


def test_canvas_and_progress_line_stay_in_view_at_1280x800(page):
    for name in TABS:
        tab(page, name)
        for acc in page.locator("#tabs .label-wrap").all():  # open every accordion
            if acc.is_visible():
                acc.click()
        y = page.evaluate("() => window.scrollY")
        page.mouse.wheel(0, 20_000)
        page.wait_for_function("""(y) => window.scrollY !== y || window.scrollY
            + window.innerHeight >= document.documentElement.scrollHeight - 1""", arg=y)
        for sel, what in (("#canvas", "the canvas"), ("#busy", "the progress line")):
            try:  # polled: the scroll may still be settling
                page.wait_for_function(IN_VIEW_JS, arg=sel, timeout=10_000)
            except playwright_api.TimeoutError as exc:
                raise AssertionError(f"{what} left the view on {name}") from exc
    page.mouse.wheel(0, -20_000)


def test_a_model_switch_clears_the_old_models_panels(page):
    tab(page, "Clusters")
    set_number(page, "#cl-k", 3)
    page.click("#cl-compute")
    page.locator("#cl-gallery button.thumbnail-item").nth(2).wait_for()
    assert page.locator("#cl-selected input").count() == 3
    page.click("#load-model")
    page.wait_for_function("() => document.querySelectorAll('#cl-selected input').length == 0")
    assert page.locator("#cl-gallery button.thumbnail-item").count() == 0


def test_broad_yaml_loads_through_load_recipe(page, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(BROAD_YAML)
    before = src(page, "#canvas")
    page.get_by_text("Recipe", exact=True).first.click()
    with page.expect_file_chooser() as chooser:
        page.click("#recipe-load")
    chooser.value.set_files(str(config))
    wait_new_src(page, "#canvas", before)
    tab(page, "Bend")
    assert "Translate" in page.locator("#stack").inner_text()
    page.get_by_text("no-such-transform", exact=False).first.wait_for()  # one warning line
