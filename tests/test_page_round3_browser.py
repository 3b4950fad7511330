"""Issue #33, the page as a new user meets it (round 3), in a real browser.

One studio server for the module, a fresh page (its own session) per test, so each test
sets up what it needs and the order does not matter. Test names carry the issue's item
numbers.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers.browser import (
    DEFAULT_MODEL_FILE,
    launch_chromium,
    need_chromium,
    new_studio_page,
    page_state,
    set_number,
    src,
    studio_server,
    tab,
    tiny_model_file,
    wait_new_src,
)

pytestmark = pytest.mark.browser
playwright_api = pytest.importorskip("playwright.sync_api")

WAIT_MS = int(os.environ.get("STUDIO_TEST_WAIT_MS", "120000"))  # polled waits; busy CI
TABS = ("Explore", "Clusters", "Bend", "Translate", "Project", "Train")
SIZES = ((1280, 800), (1920, 1080))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    need_chromium()
    folder = tmp_path_factory.mktemp("page-round3")
    model = os.environ.get("STUDIO_TEST_MODEL") or (
        "default" if DEFAULT_MODEL_FILE.exists() else tiny_model_file(folder))
    env = {"STUDIO_OUTPUT_DIR": str(folder / "out"),
           "ACTIVATION_STUDIO_CACHE": str(folder / "cache")}
    with studio_server(model, env=env) as url:
        yield url, folder


@pytest.fixture(scope="module")
def playwright(server):
    with playwright_api.sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(playwright):
    b = launch_chromium(playwright)
    yield b
    b.close()


@pytest.fixture
def page(server, browser):
    """A new page (a new session of its own) at 1280x800, its first canvas image shown."""
    url, _ = server
    pg = new_studio_page(browser, url, timeout_ms=WAIT_MS, accept_downloads=True)
    yield pg
    pg.context.close()


# ----------------------------------------------------------------------------------------
# Helpers.

def toast(page, words: str) -> str:
    el = page.locator(".toast-body", has_text=words).first
    try:
        el.wait_for(state="visible")
    except playwright_api.TimeoutError as exc:
        raise AssertionError(f"no toast saying {words!r}; the page: {page_state(page)}") \
            from exc
    return el.inner_text()


def picture(path: Path, size: int) -> Path:
    """A photo-like test picture: smooth colour gradients and a bright disc."""
    y, x = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    disc = ((x - 0.5) ** 2 + (y - 0.45) ** 2 < 0.08).astype(float)
    rgb = np.stack([0.3 + 0.5 * x + 0.2 * disc, 0.2 + 0.4 * y + 0.4 * disc,
                    0.6 - 0.3 * x + 0.3 * disc], -1)
    Image.fromarray((np.clip(rgb, 0, 1) * 255).astype(np.uint8)).save(path)
    return path


def translate_picture(page, path: Path) -> str:
    """Translate `path` with the first encoder in the list; returns the canvas's new src."""
    tab(page, "Translate")
    page.locator("#tr-encoder input").first.wait_for()
    page.wait_for_function("() => document.querySelector('#tr-encoder input').value !== ''")
    old = src(page, "#canvas")
    page.locator("#tr-input input[type=file]").set_input_files(str(path))
    page.locator("#tr-input img").first.wait_for()
    page.click("#tr-go")
    return wait_new_src(page, "#canvas", old, WAIT_MS)


def in_view(page, selector: str) -> bool:
    return page.evaluate("""(sel) => { const e = document.querySelector(sel);
        if (!e) return false;
        const r = e.getBoundingClientRect();
        return r.height > 0 && r.top >= 0 && r.bottom <= window.innerHeight
               && r.left >= 0 && r.right <= window.innerWidth; }""", selector)


# ----------------------------------------------------------------------------------------
# 1. The Recipe panel opens inside the canvas column, in view, at every window height.

def test_item1_recipe_panel_stays_in_the_canvas_column(page):
    page.get_by_text("Recipe", exact=True).first.click()
    page.locator("#recipe-save").wait_for()
    for height in (800, 1000, 1400):
        page.set_viewport_size({"width": 1280, "height": height})
        page.wait_for_timeout(200)  # a layout pass
        geometry = page.evaluate("""() => {
            const box = (s) => document.querySelector(s).getBoundingClientRect();
            return {col: box('#canvas-col').left, recipe: box('#recipe-acc').left,
                    save: box('#recipe-save').right, width: window.innerWidth,
                    scroll: document.documentElement.scrollWidth}; }""")
        assert geometry["recipe"] == geometry["col"], (height, geometry)  # not a 2nd column
        assert geometry["save"] <= geometry["width"], (height, geometry)
        assert geometry["scroll"] <= geometry["width"], (height, geometry)  # no sideways bar
        page.locator("#recipe-save").scroll_into_view_if_needed()
        assert in_view(page, "#recipe-save"), height


# ----------------------------------------------------------------------------------------
# 2. The loss curve is drawn (its line has a stroke), not only its axes.

def test_item2_encoder_loss_curve_is_drawn(page):
    tab(page, "Translate")
    page.get_by_text("Train an encoder").click()
    set_number(page, "#tr-steps", 10)
    page.locator("#tr-steps input[type=number]").blur()
    page.get_by_role("button", name="Train / resume").click()
    page.get_by_text("Trained 10 steps").first.wait_for()
    page.wait_for_function("() => document.querySelector('#tab-translate .vega-embed "
                           "path[aria-roledescription=\"line mark\"]') !== null")
    strokes = page.evaluate("""() => [...document.querySelectorAll(
            '#tab-translate .vega-embed path[aria-roledescription="line mark"]')]
        .map((p) => [p.getAttribute('stroke'), (p.getAttribute('d') || '').length])""")
    assert strokes and all(s not in (None, "", "none", "transparent") and d > 0
                           for s, d in strokes), strokes


# ----------------------------------------------------------------------------------------
# 3. Sending a projection to Explore turns a translation off, and the seed box says so.

def test_item3_send_to_explore_turns_the_translation_off(page, tmp_path):
    translate_picture(page, picture(tmp_path / "photo.png", 96))
    assert src(page, "#before") is not None  # Before shows the picture the encoder reads
    tab(page, "Project")
    page.locator("#pr-input input[type=file]").set_input_files(
        str(picture(tmp_path / "other.png", 64)))
    page.locator("#pr-input img").first.wait_for()
    set_number(page, "#pr-steps", 10)
    page.locator("#pr-steps input[type=number]").blur()
    page.click("#pr-go")
    page.get_by_text("PSNR", exact=False).first.wait_for()
    fitted = src(page, "#canvas")
    page.click("#pr-send")
    toast(page, "The translation is off")
    wait_new_src(page, "#canvas", fitted, WAIT_MS)
    page.wait_for_function("() => !document.querySelector('#before img')")  # no translation
    label = page.locator("#seed").inner_text()
    assert "fitted in Project" in label, label
    # Typing a seed goes back to seeds, and the label with it.
    old = src(page, "#canvas")
    set_number(page, "#seed", 5)
    wait_new_src(page, "#canvas", old, WAIT_MS)
    page.wait_for_function("() => !document.querySelector('#seed').innerText"
                           ".includes('fitted')")


# ----------------------------------------------------------------------------------------
# 7. While a new fit runs, the previous fit's figures, file and Send are not offered.

def test_item7_a_new_fit_hides_the_previous_ones_results(page, tmp_path):
    tab(page, "Project")
    assert page.locator("#pr-send").is_disabled()  # nothing fitted yet
    page.locator("#pr-input input[type=file]").set_input_files(
        str(picture(tmp_path / "photo.png", 64)))
    page.locator("#pr-input img").first.wait_for()
    set_number(page, "#pr-steps", 10)
    page.locator("#pr-steps input[type=number]").blur()
    page.click("#pr-go")
    page.get_by_text("PSNR", exact=False).first.wait_for()
    page.wait_for_function("() => !document.querySelector('#pr-send').disabled")
    set_number(page, "#pr-steps", 1000)
    page.locator("#pr-steps input[type=number]").blur()
    page.click("#pr-go")
    page.wait_for_function("() => document.querySelector('#pr-send').disabled")
    page.get_by_text("Fitting…").first.wait_for()
    assert page.get_by_text("PSNR", exact=False).count() == 0
    page.click("#pr-cancel")
    page.get_by_text("Projection cancelled").first.wait_for()


def test_item7_progress_line_and_live_label_do_not_overlap(page):
    for width, height in SIZES:
        page.set_viewport_size({"width": width, "height": height})
        page.wait_for_timeout(200)  # a layout pass
        busy, label = page.evaluate("""() => ['#busy', '#live-bar'].map((s) => {
            const r = document.querySelector(s).getBoundingClientRect();
            return [r.left, r.right, r.top, r.bottom]; })""")
        apart = busy[1] <= label[0] or label[1] <= busy[0] or busy[3] <= label[2] \
            or label[3] <= busy[2]
        assert apart, (width, busy, label)


# ----------------------------------------------------------------------------------------
# 4 and 13 (the Pause glyph). A paused live walk leaves the output as it is.

def test_item4_paused_live_walk_leaves_no_frame_over_the_output(page):
    page.get_by_text("Grids and walks").click()
    page.wait_for_function("() => window.studioLive && window.studioLive.mode === 'live'")
    play = page.locator("#live-play-walk")
    play.click()
    page.wait_for_function("() => { const c = document.querySelector('#live-canvas');"
                           " return c && c.style.display === 'block'; }")
    text = play.inner_text()
    assert "Pause" in text and "\u23f8" not in text, text  # no emoji: a CSS glyph
    assert play.locator(".pause-glyph").count() == 1
    play.click()
    page.wait_for_function("() => document.querySelector('#live-canvas').style.display "
                           "=== 'none'")
    # Frames already on their way when it paused must not bring the overlay back.
    page.wait_for_timeout(1500)
    assert page.evaluate("() => document.querySelector('#live-canvas').style.display") \
        == "none"
    assert "Play live" in play.inner_text()


# ----------------------------------------------------------------------------------------
# 13. Idle controls look idle: Cancel with no job, bend controls with no bend picked.

CANCELS = (("Explore", "Grids and walks", "#walk-cancel"),
           ("Clusters", None, "#cl-cancel"),
           ("Bend", "Parameter sweep to video", "#sw-cancel"),
           ("Translate", "Train an encoder", "#tr-cancel"),
           ("Project", None, "#pr-cancel"),
           ("Train", None, "#gt-cancel"))


def test_item13_cancel_is_greyed_out_until_its_job_runs(page):
    for name, accordion, cancel in CANCELS:
        tab(page, name)
        if accordion:
            page.get_by_text(accordion).click()
        page.locator(cancel).wait_for()
        assert page.locator(cancel).is_disabled(), cancel
        assert "Cancel" in page.locator(cancel).inner_text()
    # Translate's accordion is open: an encoder training of 3000 steps runs for minutes.
    tab(page, "Translate")
    set_number(page, "#tr-steps", 3000)
    page.locator("#tr-steps input[type=number]").blur()
    page.get_by_role("button", name="Train / resume").click()
    page.wait_for_function("() => !document.querySelector('#tr-cancel').disabled")
    page.click("#tr-cancel")
    page.wait_for_function("() => document.querySelector('#tr-cancel').disabled")
    page.get_by_text("Training cancelled").first.wait_for()


def test_item13_bend_controls_wait_for_a_bend(page):
    tab(page, "Bend")
    controls = ["#bend-up", "#bend-down", "#bend-remove", "#bend-enabled input"]
    for sel in controls:
        assert page.locator(sel).is_disabled(), sel
    old = src(page, "#canvas")
    page.click("#add-bend")
    wait_new_src(page, "#canvas", old, WAIT_MS)
    for sel in controls:
        page.wait_for_function("(s) => !document.querySelector(s).disabled", arg=sel)
    page.click("#bend-remove")
    for sel in controls:
        page.wait_for_function("(s) => document.querySelector(s).disabled", arg=sel)


# ----------------------------------------------------------------------------------------
# 14. A picture smaller than the encoder's input is said to be scaled up.

def test_item14_tiny_picture_is_said_to_be_scaled_up(page, tmp_path):
    translate_picture(page, picture(tmp_path / "tiny.png", 16))
    text = toast(page, "scaled up")
    assert "16×16 px" in text, text


# ----------------------------------------------------------------------------------------
# 6. Domain strength applies on Enter, as psi and the seed do.

def test_item6_domain_strength_applies_on_enter(page, tmp_path):
    shown = translate_picture(page, picture(tmp_path / "photo.png", 96))
    box = page.locator("#tr-strength input[type=number]")
    box.fill("0.8")  # the starting strength is 0.3
    box.press("Enter")
    wait_new_src(page, "#canvas", shown, WAIT_MS)
    assert page.evaluate("() => document.activeElement.getAttribute('type')") != "number"


# ----------------------------------------------------------------------------------------
# 10. A model with no encoder says so in Translate, before Translate fails.

def test_item10_model_without_encoder_says_so(page, server):
    _, folder = server
    tiny = tiny_model_file(folder)
    card = page.locator("#model-card").inner_text()
    page.locator("#model-bar input[type=file]").set_input_files(tiny)
    page.wait_for_function("(old) => document.querySelector('#model-card').innerText !== old",
                           arg=card)
    tab(page, "Translate")
    page.locator("#tr-encoder").get_by_text("has no encoder yet").wait_for()


# ----------------------------------------------------------------------------------------
# 8. Teaching says what it replaced, and asks for more marks when there are few.

def test_item8_teach_names_replaced_directions_and_asks_for_more_marks(page):
    old = src(page, "#canvas")
    set_number(page, "#dir-0", 5)
    wait_new_src(page, "#canvas", old, WAIT_MS)
    page.get_by_text("Teach a direction by example").click()
    set_number(page, "#teach-count", 6)
    page.click("#teach-show")
    page.wait_for_function("() => document.querySelectorAll('#teach-yes input').length === 6")
    captions = [t.strip() for t in page.locator("#teach-yes label").all_inner_texts()]
    for i, caption in enumerate(captions):
        group = "#teach-yes" if i < 3 else "#teach-no"
        page.locator(group).get_by_label(caption, exact=True).check()
    page.locator("#teach-status").get_by_text("3 marked 'has it', 3 marked 'does not'") \
        .wait_for()
    page.click("#teach-train")
    result = page.locator("#teach-result")
    result.get_by_text("cross-validated accuracy").wait_for()
    text = result.inner_text()
    assert "SeFa direction 0 at 5" in text and "set to 0" in text, text
    assert "mark at least 10 of each" in text, text


# ----------------------------------------------------------------------------------------
# 5. Broad's YAML: the toast counts only transforms left out, and the latent is kept.

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
notes: "a key Broad's generate.py does not read"
"""


def test_item5_broad_yaml_keeps_the_latent_and_counts_what_was_left_out(page, tmp_path):
    old = src(page, "#canvas")
    set_number(page, "#seed", 7)
    seven = wait_new_src(page, "#canvas", old, WAIT_MS)
    config = tmp_path / "config.yaml"
    config.write_text(BROAD_YAML)
    page.get_by_text("Recipe", exact=True).first.click()
    with page.expect_file_chooser() as chooser:
        page.click("#recipe-load")
    chooser.value.set_files(str(config))
    text = toast(page, "left out")
    left = re.search(r"(\d+) transform\(s\) left out", text)
    assert left and left.group(1) == "1", text  # the ignored key is a note, not a transform
    wait_new_src(page, "#canvas", seven, WAIT_MS)
    assert page.locator("#seed input[type=number]").input_value() == "7"
    assert '"seed": 7' in page.locator("#recipe-code").inner_text()


# ----------------------------------------------------------------------------------------
# 11. Stopping the live webcam takes its last frame and frame rate away.

def test_item11_stopped_webcam_leaves_no_frame_or_frame_rate(server, playwright):
    url, _ = server
    # A browser of its own: a fake camera (a moving test pattern) is the webcam.
    cam = launch_chromium(playwright, ("--use-fake-ui-for-media-stream",
                                       "--use-fake-device-for-media-stream"))
    try:
        page = new_studio_page(cam, url, timeout_ms=WAIT_MS, permissions=["camera"])
        tab(page, "Translate")
        page.get_by_text("Webcam (live)").click()
        page.wait_for_function("() => window.studioLive.mode === 'live'")
        page.click("#live-cam-start")
        page.locator("#live-cam-stats").get_by_text("frames/s").wait_for()
        page.wait_for_function("() => document.querySelector('#live-cam-out')"
                               ".style.display === 'block'")
        page.click("#live-cam-start")  # now "Stop live webcam"
        page.wait_for_function("() => document.querySelector('#live-cam-out')"
                               ".style.display === 'none'")
        page.wait_for_timeout(1000)  # frames on their way when it stopped stay unshown
        assert page.locator("#live-cam-stats").inner_text() == ""
        assert page.evaluate("() => document.querySelector('#live-cam-out').style.display") \
            == "none"
    finally:
        cam.close()


# ----------------------------------------------------------------------------------------
# Layout: the canvas, Before and a running job's progress stay in view while any tab's
# controls scroll, at 1280x800 and 1920x1080; with STUDIO_SCREENSHOTS=1 each tab's
# screenshot at both sizes goes to docs/.

DOCS = Path(__file__).resolve().parents[1] / "docs"


@pytest.mark.parametrize("size", SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
def test_canvas_before_and_progress_stay_in_view_while_tabs_scroll(page, size):
    width, height = size
    page.set_viewport_size({"width": width, "height": height})
    page.get_by_text("Grids and walks").click()
    set_number(page, "#walk-frames", 240)
    page.locator("#walk-frames input[type=number]").blur()
    page.locator("#tab-explore input[aria-label='Video size']").first.click()
    page.get_by_role("option", name="512 px").click()
    page.get_by_role("button", name="Render walk video").click()
    progress = "#busy [role=progressbar]"
    page.locator(progress).wait_for()
    try:
        for name in TABS:
            tab(page, name)
            for acc in page.locator("#tabs .label-wrap").all():  # open every accordion
                if acc.is_visible() and "open" not in (acc.get_attribute("class") or ""):
                    acc.click()
            for wheel in (400, 20_000):  # part way, then to the bottom
                page.mouse.move(width * 0.3, height / 2)  # over the controls
                page.mouse.wheel(0, wheel)
                page.wait_for_timeout(300)
                running = page.locator(progress).count() > 0
                for sel in ("#canvas", "#before", "#busy") + ((progress,) if running else ()):
                    assert in_view(page, sel), f"{sel} left the view on {name} at {size}"
            page.mouse.wheel(0, -40_000)
    finally:
        page.evaluate("() => { const b = document.querySelector('#walk-cancel');"
                      " if (b && !b.disabled) b.click(); }")


def test_screenshots_of_every_tab_at_both_sizes(page):
    """docs/screenshot-<tab>-<width>x<height>.png with one bend on, so Before shows too."""
    if os.environ.get("STUDIO_SCREENSHOTS") != "1":
        pytest.skip("set STUDIO_SCREENSHOTS=1 to refresh docs/screenshot-*-*x*.png")
    DOCS.mkdir(exist_ok=True)
    tab(page, "Bend")
    old = src(page, "#canvas")
    page.click("#add-bend")
    wait_new_src(page, "#canvas", old, WAIT_MS)
    page.locator("#before img").wait_for()
    for width, height in SIZES:
        page.set_viewport_size({"width": width, "height": height})
        for name in TABS:
            tab(page, name)
            page.mouse.wheel(0, -40_000)
            page.wait_for_timeout(500)
            page.screenshot(path=str(DOCS / f"screenshot-{name.lower()}-{width}x{height}.png"))
