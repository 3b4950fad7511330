"""OSC over UDP (studio/osc.py): addresses, settings, hostile packets, and a real python-osc
client moving a bend on the live canvas in Chromium."""

from __future__ import annotations

import logging
import socket
import time

import numpy as np
import pytest
from pythonosc.osc_bundle_builder import IMMEDIATELY, OscBundleBuilder
from pythonosc.osc_message_builder import OscMessageBuilder
from pythonosc.udp_client import SimpleUDPClient

import engine
from engine.base.errors import StudioError
from studio import live, osc
from studio import session as S


def test_addresses_name_a_session_and_a_field_or_a_mapping() -> None:
    m = osc.parse("/studio/KEY/bends/0/params/angle", [45])
    assert (m.key, m.path, m.name, m.value) == ("KEY", "bends.0.params.angle", None, 45.0)
    assert osc.parse("/studio/KEY/latent.psi", [0.5]).path == "latent.psi"
    m = osc.parse("/studio/KEY/map/knob1", [0.25])
    assert (m.name, m.path, m.value) == ("knob1", None, 0.25)
    assert osc.parse("/studio/KEY/latent/psi", [True]).value == 1.0


@pytest.mark.parametrize("address, params, says", [
    ("/other/KEY/latent/psi", [1], "start with /studio/"),
    ("/studio/KEY", [1], "names no session key and field"),
    ("/studio/KEY/latent/psi", [], "exactly one number"),
    ("/studio/KEY/latent/psi", [1, 2], "exactly one number"),
    ("/studio/KEY/latent/psi", ["x"], "finite number"),
    ("/studio/KEY/latent/psi", [float("nan")], "finite number"),
    ("/studio/KEY/latent/../psi", [1], "not a recipe field path"),
    ("/studio/KEY/map", [1], "a mapping's address"),
    ("/studio/KEY/map/a/b", [1], "a mapping's address"),
])
def test_a_bad_message_gets_one_sentence(address, params, says) -> None:
    with pytest.raises(StudioError, match=says):
        osc.parse(address, params)


def test_listening_is_loopback_unless_configured_and_off_on_a_space(monkeypatch) -> None:
    monkeypatch.delenv("SPACE_ID", raising=False)
    monkeypatch.delenv(osc.ENV, raising=False)
    assert osc.where() == ("127.0.0.1", 9000)
    monkeypatch.setenv(osc.ENV, "0.0.0.0:9100")
    assert osc.where() == ("0.0.0.0", 9100)
    monkeypatch.setenv(osc.ENV, "9200")
    assert osc.where() == ("127.0.0.1", 9200)
    monkeypatch.setenv(osc.ENV, "off")
    assert osc.where() is None
    monkeypatch.setenv(osc.ENV, "loud")
    with pytest.raises(StudioError, match="STUDIO_OSC must be"):
        osc.where()
    monkeypatch.setenv(osc.ENV, "127.0.0.1:9000")
    monkeypatch.setenv("SPACE_ID", "someone/activation-studio")
    assert osc.where() is None                   # strangers share a Space's server


def _until(condition, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_hostile_packets_are_dropped_with_a_logged_sentence_and_the_listener_goes_on(
        monkeypatch, caplog) -> None:
    sess = S.new_session("default")
    key = live.key_for(sess)
    pushed: list[tuple[S.Session, dict]] = []
    monkeypatch.setattr(live, "push", lambda s, m: pushed.append((s, m)) or 1)
    listener = osc.listen("127.0.0.1", 0)
    try:
        host, port = listener.address
        raw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        client = SimpleUDPClient(host, port)
        with caplog.at_level(logging.WARNING, logger="studio.osc"):
            raw.sendto(b"\x00garbage", (host, port))
            raw.sendto(b"/studio/" + b"x" * osc.MAX_PACKET, (host, port))
            bundle = OscBundleBuilder(IMMEDIATELY)
            for _ in range(osc.MAX_PER_PACKET + 1):
                m = OscMessageBuilder(f"/studio/{key}/latent/psi")
                m.add_arg(0.1)
                bundle.add_content(m.build())
            raw.sendto(bundle.build().dgram, (host, port))
            client.send_message("/studio/not-a-key/latent/psi", 0.2)
            client.send_message(f"/studio/{key}/latent/psi", "x")
            client.send_message(f"/studio/{key}/latent/psi", 0.25)   # good (exact in float32)
            client.send_message(f"/studio/{key}/map/knob", 0.75)
            _until(lambda: len(pushed) == 2)
        logged = caplog.text
        for says in ("not OSC", f"at most {osc.MAX_PACKET} bytes",
                     f"at most {osc.MAX_PER_PACKET} messages", "no session has that key",
                     "finite number"):
            assert says in logged, (says, logged)
        (s1, field), (s2, source) = pushed
        assert s1 is sess and s2 is sess
        assert (field["kind"], field["path"], field["value"]) == ("field", "latent.psi", 0.25)
        assert source["kind"] == "source"
        assert source["events"] == [{"kind": "osc", "address": "/studio/map/knob",
                                     "value": 0.75}]
        assert field["g"] == source["g"]          # one burst: one undo entry
        assert listener.thread.is_alive()
    finally:
        listener.stop()


def test_messages_past_the_rate_are_dropped(monkeypatch, caplog) -> None:
    sess = S.new_session("default")
    key = live.key_for(sess)
    pushed: list[dict] = []
    monkeypatch.setattr(live, "push", lambda s, m: pushed.append(m) or 1)
    monkeypatch.setattr(osc, "MAX_RATE", 5)
    listener = osc.listen("127.0.0.1", 0)
    try:
        bundle = OscBundleBuilder(IMMEDIATELY)
        for i in range(20):
            m = OscMessageBuilder(f"/studio/{key}/latent/psi")
            m.add_arg(i / 20)
            bundle.add_content(m.build())
        with caplog.at_level(logging.WARNING, logger="studio.osc"):
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(
                bundle.build().dgram, listener.address)
            _until(lambda: "messages a second" in caplog.text)
        assert len(pushed) == 5
    finally:
        listener.stop()


def test_a_message_for_a_session_without_a_page_goes_nowhere(caplog) -> None:
    sess = S.new_session("default")
    listener = osc.listen("127.0.0.1", 0)
    try:
        with caplog.at_level(logging.WARNING, logger="studio.osc"):
            SimpleUDPClient(*listener.address).send_message(
                f"/studio/{live.key_for(sess)}/latent/psi", 0.1)
            _until(lambda: "no live page open" in caplog.text)
        assert sess.recipe.latent.psi == 0.7
    finally:
        listener.stop()


# ----------------------------------------------------------------------------------------
# In the browser: a real client, a real server, the live canvas.

@pytest.mark.browser
def test_a_python_osc_client_moves_a_bend_on_the_live_canvas(tmp_path) -> None:
    """SimpleUDPClient -> the server's listener -> the page's live channel: each value's
    frame shows engine.render of the page's recipe with that angle, and the session (the
    page's recipe view) holds the last one."""
    playwright = pytest.importorskip("playwright.sync_api")
    from engine.recipes.recipe import Recipe, set_field
    from tests.helpers.browser import (
        download_recipe_file,
        launch_chromium,
        studio_server,
        tab,
    )
    from tests.test_live import _live_pixels

    with studio_server("default", env={osc.ENV: "127.0.0.1:0"}) as url, \
            playwright.sync_playwright() as p:
        browser = launch_chromium(p)
        page = browser.new_page(viewport={"width": 1280, "height": 800}, accept_downloads=True)
        page.set_default_timeout(120_000)
        page.goto(url)
        page.wait_for_function("window.studioLive && window.studioLive.mode === 'live'")
        tab(page, "Bend")
        page.click("#add-bend")
        page.wait_for_selector("#p-slider-0 input[type=range]", state="visible")
        recipe = Recipe.load(download_recipe_file(page, "#recipe-save",
                                                  tmp_path / "page.json"))
        assert recipe.bends and recipe.bends[0].params["angle"] == 45
        page.click("#perf-open")
        key = page.evaluate("window.studioLive.key")
        page.wait_for_function(f"document.querySelector('#perf-osc').dataset.key === {key!r}")
        assert f"/studio/{key}/" in page.inner_text("#perf-osc")    # the page shows its key
        host, port = page.evaluate("window.studioLive.osc").rsplit(":", 1)
        client = SimpleUDPClient(host, int(port))
        before = np.asarray(engine.render(recipe), dtype=np.float32)
        for angle in (120, 200):
            n = page.evaluate("window.studioLive.frames.length")
            client.send_message(f"/studio/{key}/bends/0/params/angle", float(angle))
            # The first frame after a change may be a block's running image (a preview);
            # the full picture follows when the values rest (studio/live.py).
            page.wait_for_function(f"window.studioLive.frames.slice({n})"
                                   ".some(f => f.kind === 0 && f.preview === 0)")
            shown = _live_pixels(page)
            want = np.asarray(engine.render(set_field(recipe, "bends.0.params.angle", angle)),
                              dtype=np.float32)
            assert np.abs(shown - want).mean() < 3.0, angle   # JPEG q92 of the same picture
            assert np.abs(shown - before).mean() > 5.0, angle
        # The session holds the value: the page's recipe view catches up (the sync).
        page.click("#recipe-acc button, #recipe-acc .label-wrap")
        page.wait_for_function("document.querySelector('#recipe-code').innerText"
                               ".includes('\"angle\": 200')")
        browser.close()
