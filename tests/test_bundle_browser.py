"""Issue #24 in a real browser: a recipe bundle saved in the page of one server and loaded in
the page of a fresh one (another output folder, nothing shared, server files limited to the
studio's own) shows the same image bit for bit, and `python -m engine render bundle.zip`
renders that image too.

The recipe names files that exist only on the first server: with the default model, the
photo being translated and the shipped encoder it goes through (a tiny test model has no
encoder, so there the bundle carries the model file itself, which the recipe names by path).
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from PIL import Image

from tests.helpers.browser import (
    BROWSER_WAIT_MS,
    CHROMIUM_ARGS,
    DEFAULT_MODEL_FILE,
    REPO,
    chromium_path,
    download_recipe_file,
    need_chromium,
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


def open_page(browser, url: str):
    page = browser.new_context(viewport={"width": 1280, "height": 800},
                               accept_downloads=True).new_page()
    page.set_default_timeout(BROWSER_WAIT_MS)
    page.goto(url)
    page.wait_for_selector("#canvas img")
    return page


def edit_and_save_a_bundle(page, photo, bundle) -> tuple[np.ndarray, bool]:
    """Seed, translation (when an encoder is offered), a bend; the bundle goes to `bundle`.
    Returns the canvas's pixels and whether a photo was translated."""
    shown = src(page, "#canvas")
    set_number(page, "#seed", 5)
    shown = wait_new_src(page, "#canvas", shown)
    tab(page, "Translate")
    translated = bool(page.locator("#tr-encoder input").first.input_value())
    if translated:
        page.locator("#tr-input input[type=file]").set_input_files(str(photo))
        page.wait_for_selector("#tr-input img")
        page.click("#tr-go")
        shown = wait_new_src(page, "#canvas", shown)
    tab(page, "Bend")
    page.locator("#add-where").get_by_text("all channels").click()
    page.click("#add-bend")
    shown = wait_new_src(page, "#canvas", shown)
    set_number(page, "#p-slider-0", 70)
    shown = wait_new_src(page, "#canvas", shown)
    download_recipe_file(page, "#recipe-bundle", bundle)
    return pixels(page, src(page, "#canvas")), translated


def test_a_bundle_from_one_server_shows_the_same_image_on_a_fresh_one(tmp_path):
    from sklearn.datasets import load_sample_image

    need_chromium()
    model = os.environ.get("STUDIO_TEST_MODEL") or (
        "default" if DEFAULT_MODEL_FILE.exists() else tiny_model_file(tmp_path))
    photo, bundle = tmp_path / "flower.jpg", tmp_path / "bundle.zip"
    Image.fromarray(load_sample_image("flower.jpg")).save(photo)
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        with studio_server(model, env={"STUDIO_OUTPUT_DIR": str(tmp_path / "a")}) as url:
            want, translated = edit_and_save_a_bundle(open_page(browser, url), photo, bundle)
        fresh = {"STUDIO_OUTPUT_DIR": str(tmp_path / "b" / "out"),
                 "GRADIO_TEMP_DIR": str(tmp_path / "b" / "gradio"),
                 "STUDIO_SERVER_FILES": "studio"}
        with studio_server(model, env=fresh) as url:
            page = open_page(browser, url)
            shown = src(page, "#canvas")
            page.get_by_text("Recipe", exact=True).first.click()
            with page.expect_file_chooser() as chooser:
                page.click("#recipe-load")
            chooser.value.set_files(str(bundle))
            got = pixels(page, wait_new_src(page, "#canvas", shown))
        browser.close()
    inputs = [n for n in zipfile.ZipFile(bundle).namelist() if n.startswith("inputs/")]
    assert inputs and (not translated or any(n.endswith(".png") for n in inputs)), inputs
    assert np.array_equal(got, want)
    rendered = tmp_path / "rendered.png"
    subprocess.run([sys.executable, "-m", "engine", "render", str(bundle), "--out",
                    str(rendered)], cwd=REPO, check=True, timeout=300,
                   env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
    assert np.array_equal(np.asarray(Image.open(rendered).convert("RGB")), want)
