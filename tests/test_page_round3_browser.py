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

WAIT_MS = int(os.environ.get("STUDIO_TEST_WAIT_MS", "120000"))  # polled waits; busy CI
TABS = ("Explore", "Clusters", "Bend", "Translate", "Project", "Train")
# Two animation frames: resize handlers and the layout after them have run (no fixed wait).
AFTER_LAYOUT = "() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)))"
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


IN_VIEW_JS = """(sel) => { const e = document.querySelector(sel);
    if (!e) return false;
    const r = e.getBoundingClientRect();
    return r.height > 0 && r.top >= 0 && r.bottom <= window.innerHeight
           && r.left >= 0 && r.right <= window.innerWidth; }"""


def in_view(page, selector: str) -> bool:
    return page.evaluate(IN_VIEW_JS, selector)


def scrolled(page, wheel: int) -> None:
    """Turn the mouse wheel by `wheel` and wait until the page has moved, or could not (at
    its end)."""
    y = page.evaluate("() => window.scrollY")
    page.mouse.wheel(0, wheel)
    page.wait_for_function("""(y) => window.scrollY !== y || window.scrollY
        + window.innerHeight >= document.documentElement.scrollHeight - 1""", arg=y)


def wait_in_view(page, selector: str, why: str, timeout_ms: int = 10_000) -> None:
    """Poll until `selector` is wholly in the window (a scroll may still be settling)."""
    try:
        page.wait_for_function(IN_VIEW_JS, arg=selector, timeout=timeout_ms)
    except playwright_api.TimeoutError as exc:
        raise AssertionError(why) from exc


# ----------------------------------------------------------------------------------------
# 1. The Recipe panel opens inside the canvas column, in view, at every window height.

def test_item1_recipe_panel_stays_in_the_canvas_column(page):
    page.get_by_text("Recipe", exact=True).first.click()
    page.locator("#recipe-save").wait_for()
    for height in (800, 1000, 1400):
        page.set_viewport_size({"width": 1280, "height": height})
        page.evaluate(AFTER_LAYOUT)  # resize handlers have run, the layout is new
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
        page.evaluate(AFTER_LAYOUT)  # resize handlers have run, the layout is new
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
    # Frames already on their way when it paused must not bring the overlay back: wait
    # until every message the page sent has its answer, then two frames' layout.
    page.wait_for_function("window.studioLive.inflight.length === 0")
    page.evaluate(AFTER_LAYOUT)
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
# 11. The live webcam shows the camera and its translation in the canvas column (the
# translation on the output image, the camera over Before), and Stop takes both and the
# frame rate away.

def test_item11_webcam_feed_and_translation_on_the_canvas_and_stop_clears(server,
                                                                         playwright):
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
        page.wait_for_function("() => { const e = document.querySelector('#live-cam-out');"
                               " return e && e.style.display === 'block'; }")
        # The translation is drawn on the output image, the camera's picture over Before,
        # both in view while the Translate controls are scrolled to the webcam's button.
        page.locator("#live-cam-start").scroll_into_view_if_needed()
        assert page.evaluate("() => !!document.querySelector('#canvas #live-cam-out')")
        page.wait_for_function("() => { const v = document.querySelector('#before "
                               "#live-cam-video'); return v && v.style.display === 'block'"
                               " && v.videoWidth > 0; }")
        for layer, host in (("#live-cam-out", "#canvas"), ("#live-cam-video", "#before")):
            assert in_view(page, layer), layer
            assert covers(page, layer, host), (layer, host)
        page.click("#live-cam-start")  # now "Stop live webcam"
        page.wait_for_function("() => ['#live-cam-out', '#live-cam-video'].every((s) =>"
                               " document.querySelector(s).style.display === 'none')")
        page.wait_for_timeout(1000)  # frames on their way when it stopped stay unshown
        assert page.locator("#live-cam-stats").inner_text() == ""
        assert page.evaluate("() => document.querySelector('#live-cam-out').style.display") \
            == "none"
    finally:
        cam.close()


def covers(page, inner: str, outer: str) -> bool:
    """Whether `inner`'s box lies inside `outer`'s (to the pixel) and fills most of it."""
    return page.evaluate("""([a, b]) => {
        const i = document.querySelector(a).getBoundingClientRect();
        const o = document.querySelector(b).getBoundingClientRect();
        return i.left >= o.left - 1 && i.right <= o.right + 1 && i.top >= o.top - 1
               && i.bottom <= o.bottom + 1 && i.width * i.height > 0.6 * o.width * o.height;
        }""", [inner, outer])


# ----------------------------------------------------------------------------------------
# 9. Train: progress in steps (the unit the user sets), an estimate from the speed this run
# measures as it goes, and an estimate made again after a model switch.

def train_pictures(folder: Path) -> list[str]:
    from engine.training.faces import render_faces

    folder.mkdir(exist_ok=True)
    paths = []
    for i, face in enumerate(render_faces(range(12), 32)):
        paths.append(str(folder / f"face{i}.png"))
        Image.fromarray(face).save(paths[-1])
    return paths


def test_item9_train_reports_steps_and_estimates_from_the_run_and_the_model(page, server,
                                                                            tmp_path):
    _, folder = server
    tab(page, "Train")
    set_number(page, "#gt-steps", 150)
    set_number(page, "#gt-batch", 2)
    page.locator("#gt-files input[type=file]").set_input_files(train_pictures(tmp_path / "p"))
    estimate = page.locator("#gt-estimate")
    first_title = page.locator("#model-card strong").first.inner_text().strip()
    estimate.get_by_text(first_title).wait_for()  # the estimate names the model it timed
    assert "images/s" in estimate.inner_text()
    # A model switch: the old model's estimate goes, and one for the new model comes.
    card = page.locator("#model-card").inner_text()
    page.locator("#model-bar input[type=file]").set_input_files(tiny_model_file(folder))
    page.wait_for_function("(old) => document.querySelector('#model-card').innerText !== old",
                           arg=card)
    title = page.locator("#model-card strong").first.inner_text().strip()
    assert title != first_title
    estimate.get_by_text(title).wait_for()
    assert first_title not in estimate.inner_text()
    assert "150 steps of 2 pictures" in estimate.inner_text()
    set_number(page, "#gt-steps", 500)  # a run that is still going when it is cancelled
    estimate.get_by_text("500 steps of 2 pictures").wait_for()
    # The run says steps (kimg only beside them) and the time left at its own speed.
    page.click("#gt-go")
    try:
        status = page.locator("#gt-status")
        status.get_by_text(re.compile(r"step \d+ of 500")).wait_for()
        estimate.get_by_text("this run measures").wait_for()
        assert re.search(r"Step \d+ of 500: this run measures [\d.]+ images/s, so about "
                         r"\d+ (s|min) left", estimate.inner_text()), estimate.inner_text()
        # 12. The samples' label sits above the grid, not over its top row.
        page.locator("#gt-samples img").wait_for()
        assert label_above_picture(page, "#gt-samples")
    finally:
        page.evaluate("() => { const b = document.querySelector('#gt-cancel');"
                      " if (b && !b.disabled) b.click(); }")
    page.wait_for_function("() => document.querySelector('#gt-cancel').disabled")


def label_above_picture(page, block: str) -> bool:
    """Whether the label of the image block `block` ends above its picture's top."""
    return page.evaluate("""(sel) => {
        const label = document.querySelector(sel + ' label[data-testid="block-label"]');
        const img = document.querySelector(sel + ' img');
        return label.getBoundingClientRect().bottom <= img.getBoundingClientRect().top + 0.5;
        }""", block)


# ----------------------------------------------------------------------------------------
# 12. Grid labels readable at the size shown; labels above pictures, not over them; Before
# in view without scrolling; no blank band under Teach's samples; the cluster-file drop
# zone whole.

def test_item12_grid_labels_are_readable_at_the_size_shown(page):
    page.get_by_text("Grids and walks").click()
    page.get_by_role("button", name="Render grid").click()
    page.locator("#grid-out img").wait_for()
    page.locator("#grid-out").scroll_into_view_if_needed()
    shown = page.evaluate("""() => { const i = document.querySelector('#grid-out img');
        const r = i.getBoundingClientRect();
        return Math.min(r.width / i.naturalWidth, r.height / i.naturalHeight); }""")
    grid = pixels(page, src(page, "#grid-out"))
    # The column labels: the dark rows above the first row of tiles (white margin).
    ink_rows = np.flatnonzero((grid.min(axis=2) < 100).any(axis=1))
    tiles_top = np.flatnonzero((np.abs(grid.astype(int) - 255).sum(axis=2) > 60)
                               .mean(axis=1) > 0.5)[0]
    letters = ink_rows[ink_rows < tiles_top]
    assert letters.size, "no column labels above the tiles"
    on_screen = (letters.max() - letters.min() + 1) * shown
    assert on_screen >= 9, f"labels {on_screen:.1f} px tall on screen"
    assert label_above_picture(page, "#grid-out")


def test_item12_before_in_view_without_scrolling_and_its_label_above_it(page):
    tab(page, "Bend")
    old = src(page, "#canvas")
    page.click("#add-bend")
    wait_new_src(page, "#canvas", old, WAIT_MS)
    page.locator("#before img").wait_for()
    for width, height in SIZES:
        page.set_viewport_size({"width": width, "height": height})
        assert page.evaluate("() => window.scrollY") == 0
        for sel in ("#canvas", "#before"):  # polled: a layout pass follows the resize
            wait_in_view(page, sel, f"{sel} is not in view at {width}x{height}")
        assert label_above_picture(page, "#before"), (width, height)


def test_item12_teach_gallery_leaves_no_blank_band(page):
    page.get_by_text("Teach a direction by example").click()
    page.click("#teach-show")
    page.wait_for_function("() => document.querySelectorAll('#teach-grid img').length >= 12")
    page.locator("#teach-grid").scroll_into_view_if_needed()
    blank = page.evaluate("""() => {
        const g = document.querySelector('#teach-grid').getBoundingClientRect();
        const last = Math.max(...[...document.querySelectorAll('#teach-grid img')]
                              .map((i) => i.getBoundingClientRect().bottom));
        return g.bottom - last; }""")
    assert blank < 40, f"{blank:.0f} px blank under the samples"


def test_item12_cluster_file_drop_zone_is_whole(page):
    page.get_by_text("Recipe", exact=True).first.click()
    zone = page.locator("#recipe-clusters")
    zone.scroll_into_view_if_needed()
    words = zone.get_by_text("Click to Upload")
    words.wait_for()
    box, text = zone.bounding_box(), words.bounding_box()
    overflow = page.evaluate("() => { const z = document.querySelector('#recipe-clusters');"
                             " return z.scrollHeight - z.clientHeight; }")
    assert overflow <= 1 and text["y"] + text["height"] <= box["y"] + box["height"], \
        (overflow, box, text)


# ----------------------------------------------------------------------------------------
# 13. GANSpace's progress moves as it samples and fits (it sat at 10% for 10 s). The only
# test of this module to pick GANSpace: its directions are cached per model afterwards.

def test_item13_ganspace_progress_moves_through_its_stages(page):
    page.evaluate("""() => { window.busyTexts = [];
        new MutationObserver(() => {
            const t = document.querySelector('#busy').innerText.trim();
            if (t && window.busyTexts[window.busyTexts.length - 1] !== t)
                window.busyTexts.push(t);
        }).observe(document.querySelector('#busy'),
                   {subtree: true, childList: true, characterData: true}); }""")
    page.get_by_label("GANSpace").check()
    page.wait_for_function("() => window.busyTexts.some((t) => t.includes('PCA'))")
    page.wait_for_function("() => !document.querySelector('#busy [role=progressbar]')")
    texts = page.evaluate("() => window.busyTexts")
    sampled = [t for t in texts if "w sampled" in t]
    percents = {m for t in texts for m in re.findall(r"([\d.]+)%", t)}
    assert sampled and len(percents) >= 3, texts


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
            for wheel in (0, 400, 20_000):  # at the top, part way, then to the bottom
                page.mouse.move(width * 0.3, height / 2)  # over the controls
                if wheel:
                    scrolled(page, wheel)
                running = page.locator(progress).count() > 0
                for sel in ("#canvas", "#before", "#busy") + ((progress,) if running else ()):
                    wait_in_view(page, sel, f"{sel} left the view on {name} at {size}")
            scrolled(page, -40_000)
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
