"""The Performance panel in Chromium (studio/perform.js): a fake Web MIDI device and the fake
microphone drive the live canvas through learned mappings."""

from __future__ import annotations

import json

import numpy as np
import pytest

import engine
from tests.helpers.browser import launch_chromium, studio_server, tab
from tests.test_live import _live_pixels

# A MIDIAccess with one input whose messages the test sends (window.__midi([status, a, b])).
FAKE_MIDI = """
window.__midiInput = { name: "Fake knobs", onmidimessage: null };
navigator.requestMIDIAccess = async () => ({
  inputs: new Map([["fake", window.__midiInput]]), outputs: new Map(), onstatechange: null });
window.__midi = (bytes) => window.__midiInput.onmidimessage({ data: new Uint8Array(bytes) });
"""
MEDIA = ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"]


def _full_frame_after(page, n: int) -> None:
    """Wait for a full (not preview) canvas frame after the first n frames."""
    page.wait_for_function(f"window.studioLive.frames.slice({n})"
                           ".some(f => f.kind === 0 && f.preview === 0)")


def _frames(page) -> int:
    return page.evaluate("window.studioLive.frames.length")


@pytest.mark.browser
def test_midi_and_microphone_drive_the_canvas_through_learned_mappings() -> None:
    playwright = pytest.importorskip("playwright.sync_api")
    with studio_server("default", env={"STUDIO_OSC": "off"}) as url, \
            playwright.sync_playwright() as p:
        browser = launch_chromium(p, tuple(MEDIA))
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        context.add_init_script(FAKE_MIDI)
        page = context.new_page()
        page.set_default_timeout(120_000)
        page.goto(url)
        page.wait_for_function("window.studioLive && window.studioLive.mode === 'live'")
        page.click("#perf-open")
        page.click("#perf-midi")
        page.wait_for_function("document.querySelector('#perf-status').textContent"
                               ".includes('Fake knobs')")

        # MIDI learn: move CC 7, click ψ; then CC 7 at 127 sets ψ to the slider's top (2).
        page.click("#perf-learn")
        page.evaluate("window.__midi([0xB0, 7, 0])")
        n = _frames(page)
        page.click("#psi input[type=range]")
        assert "Mapped CC 7 ch1 to psi" in page.inner_text("#perf-status")
        page.wait_for_function(f"window.studioLive.frames.length > {n}")   # learn answered
        for value, psi in ((127, 2.0), (64, -1 + 3 * 64 / 127)):
            n = _frames(page)
            page.evaluate(f"window.__midi([0xB0, 7, {value}])")
            _full_frame_after(page, n)
            want = engine.render(engine.recipes.recipe.Recipe.from_json(json.dumps(
                {"model": "default", "latent": {"seed": 0, "psi": psi}})))
            shown = _live_pixels(page)
            assert np.abs(shown - np.asarray(want, dtype=np.float32)).mean() < 3.0, value
        level = page.get_attribute('#perf-meters [data-source="CC 7 ch1"]', "data-level")
        assert float(level) == pytest.approx(64 / 127, abs=1e-3)    # the meter shows it

        # The recorder: the page's MIDI moves between Record and Stop come back as the
        # performance (the stream of ψ values), offered as a JSON file.
        page.click("#perf-record")
        for value in (0, 127):
            n = _frames(page)
            page.evaluate(f"window.__midi([0xB0, 7, {value}])")
            page.wait_for_function(f"window.studioLive.frames.length > {n}")
        page.click("#perf-record")
        page.wait_for_function("window.studioPerform.performance !== null")
        perf = page.evaluate("window.studioPerform.performance")
        psis = [e["values"]["latent.psi"] for e in perf["events"] if "values" in e]
        assert psis[-2:] == [-1.0, 2.0], perf["events"]
        assert "Recorded" in page.inner_text("#perf-recorded")
        assert page.get_attribute("#perf-recorded a", "download") == "performance.json"

        # Full window: the canvas and the meters fill the screen; Esc puts them back.
        page.click("#perf-full")
        page.wait_for_selector("#perf-stage #live-canvas")
        assert page.locator("#perf-stage #perf-meters").count() == 1
        box = page.locator("#perf-stage").bounding_box()
        assert box["width"] == 1280 and box["height"] == 900
        page.keyboard.press("Escape")
        page.wait_for_selector("#perf-stage", state="detached")
        assert page.locator("#canvas #live-canvas").count() == 1
        assert page.locator("#perf-panel #perf-meters").count() == 1

        # A browser without Web MIDI is told so.
        page.evaluate("navigator.requestMIDIAccess = undefined")
        page.click("#perf-midi")
        assert "This browser has no Web MIDI" in page.inner_text("#perf-status")

        # The microphone (Chromium's fake device beeps): its loudness, learned onto a
        # bend's angle by a click on its meter, keeps the canvas moving.
        tab(page, "Bend")
        page.click("#add-bend")
        page.wait_for_selector("#p-slider-0 input[type=range]", state="visible")
        page.click("#perf-mic")
        page.wait_for_selector('#perf-meters [data-source="mic loudness"]')
        page.click('#perf-meters span[data-learn="mic loudness"]')
        page.click("#p-slider-0 input[type=range]")
        assert "Mapped mic loudness to p-slider-0" in page.inner_text("#perf-status")
        page.wait_for_function("window.studioPerform.features && "
                               "window.studioPerform.features.loudness > 0.2")
        n = _frames(page)
        seen = []
        for _ in range(40):
            page.wait_for_function(f"window.studioLive.frames.length > {n}")
            n = _frames(page)
            seen.append(_live_pixels(page))
            if len(seen) >= 2 and np.abs(seen[-1] - seen[0]).mean() > 2.0:
                break
        assert np.abs(seen[-1] - seen[0]).mean() > 2.0, "the canvas did not follow the mic"
        page.click("#perf-mic")                                  # stop
        assert page.evaluate("window.studioPerform.mic") is None
        browser.close()


# A microphone that is a tone the test sets (window.__tone(hz, gain)), instead of the
# device's: the page's features must tell bass from treble, loud from quiet, and onsets.
TONE_MIC = """
navigator.mediaDevices.getUserMedia = async () => {
  const ctx = new AudioContext();
  const osc = ctx.createOscillator(), gain = ctx.createGain();
  const out = ctx.createMediaStreamDestination();
  osc.connect(gain).connect(out);
  osc.start();
  window.__tone = (hz, level) => { osc.frequency.value = hz; gain.gain.value = level; };
  window.__tone(100, 0.5);
  return out.stream;
};
"""


@pytest.mark.browser
def test_microphone_features_tell_bands_loudness_and_onsets_apart() -> None:
    playwright = pytest.importorskip("playwright.sync_api")
    with studio_server("default", env={"STUDIO_OSC": "off"}) as url, \
            playwright.sync_playwright() as p:
        browser = launch_chromium(p)
        context = browser.new_context()
        context.add_init_script(TONE_MIC)
        page = context.new_page()
        page.set_default_timeout(120_000)
        page.goto(url)
        page.wait_for_function("window.studioLive && window.studioLive.mode === 'live'")
        page.click("#perf-open")
        page.click("#perf-mic")

        def settled(hz: float, level: float) -> dict:
            page.evaluate(f"window.__tone({hz}, {level})")
            page.wait_for_timeout(400)            # the analyser's window moves on
            return page.evaluate("window.studioPerform.features")

        page.wait_for_function("window.studioPerform.features !== undefined")
        low, high = settled(100, 0.5), settled(8000, 0.5)
        assert low["bass"] > low["treble"] + 0.3, low
        assert high["treble"] > high["bass"] + 0.3, high
        quiet = settled(1000, 0.01)
        assert quiet["loudness"] < settled(1000, 0.5)["loudness"] - 0.3
        settled(1000, 0.0)
        page.evaluate("window.__onsets = 0; setInterval(() => { window.__onsets += "
                      "window.studioPerform.features.onset; }, 33)")
        page.evaluate("window.__tone(1000, 0.8)")        # a note starts: an onset
        page.wait_for_function("window.__onsets > 0", timeout=5_000)
        browser.close()
