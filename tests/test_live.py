"""The live channel (studio/live.py): previews on a copy of the session, and in Chromium the
canvas following a slider, webcam frames, the fallback and two sessions kept apart."""

from __future__ import annotations

import asyncio
import io
import json
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import engine
from studio import live
from studio import session as S
from tests.helpers.browser import (
    CHROMIUM_ARGS,
    chromium_path,
    need_chromium,
    src,
    studio_server,
    wait_new_src,
)


def test_preview_edits_a_copy_and_matches_the_session_edit() -> None:
    sess = S.new_session("default")
    before = sess.recipe.to_json()
    msg = {"kind": "latent", "values": {"seed": "3", "seed-frac": "0.25", "psi": "0.5",
                                        "cutoff": "0", "dir": ["1.5", "0", "0", "0", "0"],
                                        "method": "sefa"}}
    tmp = live.preview(sess, [msg])
    assert sess.recipe.to_json() == before                   # the session is untouched
    S.set_latent(sess, seed=3.25, psi=0.5, cutoff=None)       # what the Gradio event does
    S.set_directions(sess, "sefa", [1.5, 0, 0, 0, 0], 0, None)
    assert tmp.recipe == sess.recipe


def test_preview_refuses_bad_values_in_one_sentence() -> None:
    sess = S.new_session("default")
    with pytest.raises(engine.base.errors.StudioError, match="psi must be a number"):
        live.preview(sess, [{"kind": "latent", "values": {"psi": "x"}}])
    with pytest.raises(engine.base.errors.StudioError, match="finite"):
        live.preview(sess, [{"kind": "latent", "values": {"psi": float("nan")}}])


def test_keys_name_one_session_each() -> None:
    a, b = S.new_session("default"), S.new_session("default")
    ka, kb = live.key_for(a), live.key_for(b)
    assert ka != kb and live.key_for(a) == ka
    assert live.session_for(ka) is a and live.session_for(kb) is b
    assert live.session_for("guess") is None and live.session_for(None) is None


def test_an_edit_recorded_after_its_sync_still_reaches_the_gradio_canvas() -> None:
    """The race a loaded CI machine hit: the page's sync (400 ms after a typed seed) ran in
    the interactive lane before the Gradio event recording that seed, rendered the old seed,
    and the event, seeing the channel open, skipped its render: the canvas never changed.
    Now the channel applies the value before it answers (the page syncs after the answer),
    and a Gradio event skips its render only when it changed nothing."""
    from types import SimpleNamespace

    from studio.tabs import canvas
    from studio.ui import live_pictures

    sess = S.new_session("default")
    ui = SimpleNamespace(session="session", output="output", before="before", stack="stack")
    live._open[id(sess)] = 1                 # a page holds this session's channel open
    try:
        # The channel applied seed 3 and answered; the sync shows it; the slider's Gradio
        # event then finds nothing to change and leaves the picture to that sync.
        live.commit(sess, [{"kind": "latent", "values": {"seed": 3}}], ("page", 1))
        assert np.array_equal(canvas.sync(ui, sess)["output"], _render(sess))
        assert "output" not in live_pictures(ui, sess, changed=False)
        # An event that records a value the channel never applied renders it itself.
        old = canvas.sync(ui, sess)["output"]
        S.set_latent(sess, seed=7.0)
        shown = live_pictures(ui, sess, changed=True)["output"]
        assert np.array_equal(shown, _render(sess)) and not np.array_equal(shown, old)
    finally:
        live._open.pop(id(sess), None)


def test_a_boundary_at_amount_zero_drives_the_first_value_the_channel_gets() -> None:
    """A trained or uploaded boundary comes with its slider at 0, when the recipe holds no
    direction to name it; the channel's first value must still use it (it was dropped, so a
    value typed after training left the canvas as it was)."""
    sess = S.new_session("default")
    S.set_directions(sess, "file", [0.0], 2, 6, "/studio/out/bright.npy")
    assert sess.recipe.latent.directions == []
    live.apply(sess, [{"kind": "latent", "values": {"dir": ["3", "0", "0", "0", "0"],
                                                    "method": "file"}}])
    [d] = sess.recipe.latent.directions
    assert (d.method, d.amount, d.path, d.layer_start, d.layer_end) == \
        ("file", 3.0, "/studio/out/bright.npy", 2, 6)
    assert live.preview(sess, []).direction_settings == sess.direction_settings


def _render(sess) -> np.ndarray:
    from studio import render
    return np.asarray(render.render(sess))



class FakeSocket:
    """Enough of a Starlette WebSocket for one Connection: an inbox, and what it sent."""

    def __init__(self, inbox: list[dict]) -> None:
        self.inbox, self.texts, self.frames = inbox, [], []
        self.conn: live.Connection | None = None

    async def receive(self) -> dict:
        # One message at a time: the next arrives once the renderer has applied the last, so
        # "latest wins" merges none of them. (A fixed 50 ms pause was too short on a loaded
        # machine, where the first render also loads the model: messages merged, the bad one
        # was never rendered, and its error never came.)
        for _ in range(3000):
            if self.conn is None or not self.conn.busy():
                break
            await asyncio.sleep(0.01)
        return self.inbox.pop(0) if self.inbox else {"type": "websocket.disconnect"}

    async def send_text(self, text: str) -> None:
        self.texts.append(json.loads(text))

    async def send_bytes(self, data: bytes) -> None:
        self.frames.append(live.HEADER.unpack(data[:live.HEADER.size]))


def text(t: str) -> dict:
    return {"type": "websocket.receive", "text": t}


def _run_async(coroutine, timeout: float = 120) -> Any:
    """asyncio.run in a thread of its own: the module's Playwright (sync API) keeps an event
    loop running in the main thread once a browser test has run, in any test order."""
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result(timeout=timeout)


def _run_channel(ws: FakeSocket, sess: S.Session, last_seq: int) -> None:
    """One connection reads the inbox, then renders until the frame `last_seq` has gone."""
    async def run() -> None:
        conn = ws.conn = live.Connection(ws, sess)
        renderer = asyncio.get_running_loop().create_task(conn.render())
        await conn.receive()
        for _ in range(200):            # the last render may still be running
            if any(f[1] == last_seq for f in ws.frames):
                break
            await asyncio.sleep(0.05)
        renderer.cancel()

    _run_async(run())


def test_malformed_messages_get_a_sentence_and_the_channel_keeps_rendering() -> None:
    """A hostile page's NaN/string sequence numbers, a non-integer slot or an oversized
    frame must not end the render loop: the next good message still gets its frame."""
    sess = S.new_session("default")
    big = bytes([live.KIND_CAM, 0, 0, 0, 9]) + bytes(live.MAX_MESSAGE_BYTES)
    ws = FakeSocket([text('{"kind":"latent","seq":"abc","values":{"seed":1}}'),
                     text('{"kind":"latent","seq":NaN,"values":{"seed":2}}'),
                     text('{"kind":"bend","seq":3,"slot":"x","value":1}'),
                     text('{"kind":"play","what":"walk","frames":4,"seeds":"1,2",'
                          '"seq":Infinity}'),
                     text('{"kind":"stop"}'),
                     {"type": "websocket.receive", "bytes": big},
                     text("[" * 100_000),  # overflowed json's parser: a RecursionError
                     text('{"kind":"latent","seq":7,"values":{"seed":3}}')])

    _run_channel(ws, sess, 7)
    assert (live.KIND_CANVAS, 7) in [(f[0], f[1]) for f in ws.frames]
    errors = [t["error"] for t in ws.texts if "error" in t]
    assert "slot must be a whole number." in errors
    assert any("webcam frame may be at most" in e for e in errors)

def test_channel_edits_reach_the_session_as_one_undo_entry_per_gesture() -> None:
    """Values are applied to the session itself once their frame rendered (a refused one
    never); a drag is one undo entry however many frames it took."""
    sess = S.new_session("default")

    def latent(seq: int, g: int, **values: object) -> dict:
        return text(json.dumps({"kind": "latent", "seq": seq, "g": g, "values": values}))

    ws = FakeSocket([latent(1, 1, psi=0.2), latent(2, 1, psi=0.3), latent(3, 1, psi=0.4),
                     latent(4, 1, psi="x"),
                     latent(5, 2, psi=0.4, seed=5)])
    _run_channel(ws, sess, 5)
    assert [t["error"] for t in ws.texts] == ["psi must be a number, got 'x'."]
    assert sess.recipe.latent.psi == 0.4 and sess.recipe.latent.seed == 5.0
    assert len(sess.undo) == 2                        # gesture 1, gesture 2
    assert S.undo(sess) and sess.recipe.latent.seed == 0.0 and sess.recipe.latent.psi == 0.4
    assert S.undo(sess) and sess.recipe.latent.psi == 0.7


def test_a_rapid_gesture_on_a_big_model_gets_previews_then_the_full_frame(
        tmp_path, monkeypatch) -> None:
    """With no frame fitting the budget, a drag on a b32 bend of a 256 px model is answered
    by previews (the running image of b32, the cheapest that shows the edit, carried up to
    256 px);
    once it rests, the full picture follows as PNG with engine.render's pixels."""
    from engine.gan.checkpoints import save_generator
    from engine.tools.bending import ChannelSelection
    from studio import models
    from tests.conftest import make_tiny_generator

    path = tmp_path / "g256.safetensors"
    save_generator(make_tiny_generator(0, resolution=256, channel_base=2048, channel_max=16),
                   path, source="random test model")
    monkeypatch.setenv("STUDIO_LIVE_BUDGET_MS", "0")
    sess = S.new_session(str(path))
    S.add_bend(sess, "b32.conv1", "rotate", ChannelSelection(), {"angle": 0.0})
    ws = PictureSocket([text(json.dumps({"kind": "bend", "seq": i, "g": 1, "slot": 0,
                                         "value": 10 * i})) for i in range(1, 5)])

    async def run() -> None:
        conn = ws.conn = live.Connection(ws, sess)
        renderer = asyncio.get_running_loop().create_task(conn.render())
        await conn.receive()
        for _ in range(1200):           # the gesture rests, then its full frame comes
            if any(f[0][3] == 0 for f in ws.frames):
                break
            await asyncio.sleep(0.05)
        renderer.cancel()

    _run_async(run(), timeout=300)
    shown = [(seq, res) for (_, seq, _, res), _ in ws.frames]
    # (A machine too loaded to send the next value within REST_S shows a rest between.)
    assert [s for s in shown if s[1]] == [(1, 32), (2, 32), (3, 32), (4, 32)], shown
    assert shown[-1] == (4, 0), shown
    preview = np.asarray(Image.open(io.BytesIO(ws.frames[0][1])))
    assert preview.shape == (256, 256, 3)
    rested = ws.frames[-1][1]
    assert rested[:4] == b"\x89PNG"
    assert sess.recipe.bends[0].params["angle"] == 40
    want = engine.render(sess.recipe, models.load(str(path)))
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(rested))), np.asarray(want))
    assert sess.tail.layers() == ["b32.conv1.raw"]   # kept before the bend


def _play_walk(sess, seq: int) -> list:
    """The frames (header, picture) a non-looping 3-frame walk played live sends."""
    ws = PictureSocket([])

    async def run() -> None:
        conn = live.Connection(ws, sess)
        conn._message_in(json.dumps({"kind": "play", "what": "walk", "seeds": "1, 2",
                                     "frames": 3, "fps": 60, "loop": False, "seq": seq}))
        await asyncio.wait([conn.player], timeout=240)

    _run_async(run(), timeout=300)
    assert {"played": seq} in ws.texts, ws.texts
    return ws.frames


def test_a_walk_played_live_on_a_big_model_comes_as_previews_within_the_budget(
        tmp_path, monkeypatch) -> None:
    """As a drag: with no frame fitting the frame budget a walk's frames are the running
    image of b32 carried up to 256 px (the page labels them 'preview b32'); with room for
    the whole picture they are whole."""
    from engine.gan.checkpoints import save_generator
    from tests.conftest import make_tiny_generator

    path = tmp_path / "g256.safetensors"
    save_generator(make_tiny_generator(0, resolution=256, channel_base=2048, channel_max=16),
                   path, source="random test model")
    sess = S.new_session(str(path))
    monkeypatch.setenv("STUDIO_LIVE_BUDGET_MS", "0")
    frames = _play_walk(sess, 7)
    assert [res for (_, seq, _, res), _ in frames] == [32, 32, 32]
    assert np.asarray(Image.open(io.BytesIO(frames[0][1]))).shape == (256, 256, 3)
    monkeypatch.setenv("STUDIO_LIVE_BUDGET_MS", "1000000")
    assert [res for (_, seq, _, res), _ in _play_walk(sess, 8)] == [0, 0, 0]


def test_webcam_frames_of_a_big_model_come_within_the_budget(tmp_path, monkeypatch) -> None:
    """As a drag: a webcam frame whose whole translation would not fit the frame budget is
    the running image of an earlier block brought up to 256 px (b32: the encoder writes b16,
    and previews start at 32); with room it is the whole translation, translate_frame's."""
    from engine.gan.checkpoints import save_generator
    from engine.tools import anchors
    from engine.tools import translator as T
    from studio import models, translation
    from tests.conftest import make_tiny_generator

    monkeypatch.setenv("ACTIVATION_STUDIO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(anchors, "build_count", lambda G: 64)
    path = tmp_path / "g256.safetensors"
    save_generator(make_tiny_generator(0, resolution=256, channel_base=2048, channel_max=16),
                   path, source="random test model")
    sess = S.new_session(str(path))
    G = models.load(str(path)).G
    anchors.bank_for(G)   # the default anchor picks from it (made by the Translate button)
    torch.manual_seed(0)
    enc = translation.encoder_dir(sess) / "enc"   # trained here: the page's list has it
    encoder = str(T.save_encoder(
        T.make_encoder(G, "b16.conv1", width=8, max_width=16), enc,
        meta={"base_model_id": "g256", "base_model_sha256": "f" * 64,
              "base_model_weights_sha256": T.weights_sha256(G)}))
    frame = (np.random.default_rng(0).random((64, 80, 3)) * 255).astype(np.uint8)
    monkeypatch.setenv("STUDIO_LIVE_BUDGET_MS", "0")
    data, shown = live.translate_cam(sess, encoder, live._jpeg(frame))
    assert shown == 32
    assert np.asarray(Image.open(io.BytesIO(data))).shape == (256, 256, 3)
    monkeypatch.setenv("STUDIO_LIVE_BUDGET_MS", "1000000")
    assert live.translate_cam(sess, encoder, live._jpeg(frame))[1] == 0
    whole, shown = translation.translate_frame_within(sess, encoder, frame, 1000.0)
    assert shown == 0
    assert np.array_equal(whole, translation.translate_frame(sess, encoder, frame))


def test_live_frames_of_a_stylegan3_model_are_whole_and_equal_engine_render(tmp_path) -> None:
    """No previews or kept activations for StyleGAN3 (no running image, no start): its
    frames are full renders, equal to engine.render's."""
    from engine.gan.checkpoints import save_generator
    from studio import models, render
    from tests.conftest import make_tiny_stylegan3

    path = tmp_path / "sg3.safetensors"
    save_generator(make_tiny_stylegan3(), path, source="random test model")
    sess = S.new_session(str(path))
    for psi in (0.5, 0.6):
        S.set_latent(sess, psi=psi)
        pic, shown = render.render_frame(sess, sess.recipe, 0.0, final=False)
        want = engine.render(sess.recipe, models.load(str(path)))
        assert shown == 0 and np.array_equal(np.asarray(pic), np.asarray(want))
    assert sess.tail.layers() == []


class PictureSocket(FakeSocket):
    """A FakeSocket that keeps each frame's picture bytes beside its header."""

    async def send_bytes(self, data: bytes) -> None:
        self.frames.append((live.HEADER.unpack(data[:live.HEADER.size]),
                            data[live.HEADER.size:]))


def test_a_gradio_event_waits_until_the_channel_applied_what_it_got() -> None:
    import threading

    sess = S.new_session("default")
    assert live.settle(sess, timeout=0)               # no channel: nothing to wait for
    conn = live.Connection(None, sess)
    conn.pending["latent"] = {"kind": "latent", "values": {"psi": 0.1}}
    live._conns[id(sess)], live._open[id(sess)] = {conn}, 1
    try:
        assert not live.settle(sess, timeout=0.1)     # busy: gives up after the timeout

        def applied() -> None:
            conn.pending.clear()
            with live._settled:
                live._settled.notify_all()

        threading.Timer(0.2, applied).start()
        assert live.settle(sess, timeout=30)
    finally:
        live._conns.pop(id(sess), None)
        live._open.pop(id(sess), None)


# ----------------------------------------------------------------------------------------
# In the browser.

CAMERA_ARGS = ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"]


@pytest.fixture(scope="module")
def browser():
    playwright = pytest.importorskip("playwright.sync_api")
    need_chromium()
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS + CAMERA_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def server():
    with studio_server("default") as url:
        yield url


def _open(browser, url):
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.goto(url)
    page.wait_for_function("window.studioLive && window.studioLive.mode !== 'connecting'",
                           timeout=90_000)
    return page


def _slide(page, elem_id: str, value: float) -> None:
    page.evaluate("""([id, v]) => { const r = document.querySelector(`#${id} input[type=range]`);
        r.value = v; r.dispatchEvent(new Event('input', {bubbles: true})); }""", [elem_id, value])


def _frames(page, kind: int = 0) -> int:
    return page.evaluate(f"window.studioLive.frames.filter(f => f.kind === {kind}).length")


def _live_pixels(page) -> np.ndarray:
    """The pixels the live canvas shows (the decoded frame, read back losslessly)."""
    import base64
    url = page.evaluate("document.querySelector('#live-canvas').toDataURL('image/png')")
    data = base64.b64decode(url.split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float32)


@pytest.mark.browser
def test_canvas_follows_a_slider_over_the_live_channel(browser, server) -> None:
    page = _open(browser, server)
    gradio_canvas = src(page, "#canvas")
    assert page.evaluate("window.studioLive.mode") == "live"
    assert "Live channel" in page.inner_text("#live-status")
    page.evaluate("""() => { const L = window.studioLive;    // a refused value first
        L.ws.send(JSON.stringify({kind: "latent", seq: ++L.seq, values: {psi: "x"}})); }""")
    page.wait_for_function("document.querySelector('#live-error').textContent.includes('psi')",
                           timeout=30_000)
    for psi in (0.2, 0.35, 0.5):
        n = _frames(page)
        _slide(page, "psi", psi)
        page.wait_for_function(f"window.studioLive.frames.filter(f => f.kind === 0).length > {n}",
                               timeout=30_000)
    page.wait_for_function("document.querySelector('#live-canvas').dataset.seq == "
                           "String(window.studioLive.seq)", timeout=30_000)
    assert page.inner_text("#live-error").strip() == ""     # good frames cleared the error
    assert page.inner_text("#live-shown") == "full"         # 64 px: every frame is whole
    shown = _live_pixels(page)
    want = np.asarray(engine.render(engine.recipes.recipe.Recipe.from_json(json.dumps(
        {"model": "default", "latent": {"seed": 0, "psi": 0.5}}))), dtype=np.float32)
    assert shown.shape == want.shape
    assert np.abs(shown - want).mean() < 3.0   # JPEG at quality 92: the same picture
    # The gesture's end syncs the Gradio side (its canvas is rendered again): the recipe
    # holds the last value.
    wait_new_src(page, "#canvas", gradio_canvas, timeout_ms=30_000)
    page.click("#recipe-acc button, #recipe-acc .label-wrap", timeout=10_000)
    page.wait_for_function("document.querySelector('#recipe-code').innerText.includes('0.5')",
                           timeout=30_000)
    page.close()


@pytest.mark.browser
def test_webcam_frames_keep_coming(browser, server) -> None:
    page = _open(browser, server)
    page.get_by_role("tab", name="Translate").click()
    page.get_by_text("Webcam (live)").click()
    page.click("#live-cam-start")
    page.wait_for_function("window.studioLive.frames.filter(f => f.kind === 1).length >= 15",
                           timeout=90_000)
    first = _frames(page, 1)
    page.wait_for_function(f"window.studioLive.frames.filter(f => f.kind === 1).length"
                           f" > {first}", timeout=30_000)  # still coming
    assert "frames/s" in page.inner_text("#live-cam-stats")
    assert page.evaluate("window.studioLive.errors") == []
    page.close()


@pytest.mark.browser
def test_two_sessions_streams_stay_apart(browser, server) -> None:
    a, b = _open(browser, server), _open(browser, server)
    assert a.evaluate("window.studioLive.key") != b.evaluate("window.studioLive.key")
    n_b = _frames(b)
    n = _frames(a)
    a_canvas = src(a, "#canvas")
    _slide(a, "psi", -0.4)
    a.wait_for_function(f"window.studioLive.frames.filter(f => f.kind === 0).length > {n}",
                        timeout=30_000)
    wait_new_src(a, "#canvas", a_canvas, timeout_ms=30_000)  # a's sync has run
    assert _frames(b) == n_b                               # b saw none of a's frames
    n = _frames(b)
    _slide(b, "psi", 1.2)
    b.wait_for_function(f"window.studioLive.frames.filter(f => f.kind === 0).length > {n}",
                        timeout=30_000)
    pa, pb = _live_pixels(a), _live_pixels(b)
    assert np.abs(pa - pb).mean() > 5                      # each its own picture
    a.close()
    b.close()


@pytest.mark.browser
def test_fallback_when_the_channel_is_off(browser) -> None:
    with studio_server("default", env={"STUDIO_LIVE": "off"}) as url:
        page = _open(browser, url)
        page.wait_for_function("window.studioLive.mode === 'fallback'", timeout=30_000)
        assert "Gradio events" in page.inner_text("#live-status")
        old = page.get_attribute("#canvas img", "src")
        _slide(page, "psi", -0.5)
        page.wait_for_function(f"document.querySelector('#canvas img').src !== {old!r}",
                               timeout=30_000)
        old = page.get_attribute("#canvas img", "src")
        page.locator("#seed input[type=number]").first.fill("9")   # typed, no Enter
        page.wait_for_function(f"document.querySelector('#canvas img').src !== {old!r}",
                               timeout=30_000)
        assert _frames(page) == 0
        page.close()


def test_stop_ends_a_walk_playing_live_for_good() -> None:
    """Pause sends "stop": the player task is cancelled and over, so no frame can follow (a
    fact of the task, not a window watched for frames that do not come)."""
    sess = S.new_session("default")
    ws = FakeSocket([])

    async def run() -> tuple[asyncio.Task, int, int]:
        conn = live.Connection(ws, sess)
        conn._message_in(json.dumps({"kind": "play", "what": "walk", "seeds": "0, 1",
                                     "frames": 48, "fps": 60, "loop": True, "seq": 5}))
        player = conn.player
        for _ in range(12000):
            if len(ws.frames) >= 2:
                break
            await asyncio.sleep(0.005)
        conn._message_in(json.dumps({"kind": "stop", "seq": 6}))
        at_stop = len(ws.frames)
        await asyncio.wait([player], timeout=60)
        return player, at_stop, len(ws.frames)

    player, at_stop, at_end = _run_async(run())
    assert at_stop >= 2
    assert player.done() and player.cancelled()
    assert at_end - at_stop <= 1                       # at most the frame in flight
    assert not any("played" in t for t in ws.texts)


@pytest.mark.browser
def test_a_walk_plays_live_and_pauses(browser, server) -> None:
    page = _open(browser, server)
    page.get_by_text("Grids and walks").click()
    page.click("#live-play-walk")
    page.wait_for_function("window.studioLive.frames.filter(f => f.kind === 0).length >= 10",
                           timeout=60_000)
    assert page.inner_text("#live-play-walk").strip() == "Pause"   # its glyph is CSS
    assert page.locator("#live-play-walk .pause-glyph").count() == 1
    walk_seq = page.evaluate("window.studioLive.frames.filter(f => f.kind === 0).at(-1).seq")
    page.click("#live-play-walk")                     # pause
    page.wait_for_function("window.studioLive.inflight.length === 0", timeout=30_000)
    n = page.evaluate("window.studioLive.frames.length")
    # An edit as a barrier, not a watch window: the channel answers in order, so once the
    # edit's frame is here, any walk frame still being made would have come before it (the
    # walk renders at its fps while the edit renders). At most the one in flight may.
    page.locator("#seed input[type=number]").first.fill("9")
    page.wait_for_function(f"window.studioLive.frames.slice({n}).some(f => f.kind === 0 "
                           f"&& f.seq !== {walk_seq})", timeout=60_000)
    after = page.evaluate(f"window.studioLive.frames.slice({n}).map(f => f.seq)")
    edit_at = next(i for i, seq in enumerate(after) if seq != walk_seq)
    assert after[:edit_at].count(walk_seq) <= 1, after   # at most the frame in flight
    assert walk_seq not in after[edit_at:], after
    assert page.inner_text("#live-play-walk").startswith("▶")
    page.close()


def test_a_session_gets_a_few_live_channels_not_unlimited() -> None:
    import asyncio

    sess = S.new_session("default")
    key = live.key_for(sess)

    class Socket:
        """Enough of a Starlette WebSocket: a key, then a page that stays until told."""
        def __init__(self, leave: asyncio.Event) -> None:
            self.sent: list[str] = []
            self.closed: int | None = None
            self.leave = leave

        async def accept(self) -> None:
            pass

        async def receive_text(self) -> str:
            return json.dumps({"key": key})

        async def receive(self) -> dict:
            await self.leave.wait()
            return {"type": "websocket.disconnect"}

        async def send_text(self, text: str) -> None:
            self.sent.append(text)

        async def close(self, code: int) -> None:
            self.closed = code

    async def run() -> list[Socket]:
        leave = asyncio.Event()
        socks = [Socket(leave) for _ in range(live.MAX_CONNECTIONS + 1)]
        tasks = [asyncio.create_task(live.endpoint(s)) for s in socks]
        for _ in range(6000):  # until each has its answer: a hello, or the refusal
            if all(s.sent for s in socks):
                break
            await asyncio.sleep(0.005)
        assert live.is_active(sess)
        leave.set()
        await asyncio.gather(*tasks)
        return socks

    socks = _run_async(run(), timeout=60)
    refused = [s for s in socks if s.closed == 4429]
    assert len(refused) == 1 and "already has" in refused[0].sent[0]
    assert all('"hello"' in s.sent[0] for s in socks if s not in refused)
    assert not live.is_active(sess)                      # every channel counted out


def test_the_sync_after_a_live_bend_value_relabels_the_bend_stack() -> None:
    """A value typed into a bend's number box reaches the session through the channel only;
    the sync at the end of the gesture brings the stack's label up to that value (it kept
    showing the old angle while the canvas showed the new one)."""
    from types import SimpleNamespace

    from engine.tools.bending import ChannelSelection
    from studio.tabs import canvas

    sess = S.new_session("default")
    ui = SimpleNamespace(session="session", output="output", before="before", stack="stack")
    S.add_bend(sess, "b16.conv1", "rotate", ChannelSelection(), {"angle": 45.0})
    live._open[id(sess)] = 1
    try:
        live.commit(sess, [{"kind": "bend", "slot": 0, "value": 120}], ("page", 1))
        assert sess.recipe.bends[0].params["angle"] == 120
        labels = canvas.sync(ui, sess)["stack"]["choices"]
        assert "120" in labels[0][0] and "45" not in labels[0][0], labels
    finally:
        live._open.pop(id(sess), None)


def test_a_client_gone_before_its_refusal_raises_nothing() -> None:
    """An unkeyed client that hangs up at once: the refusal's send fails, and that must
    end quietly (left to Starlette, each such connection logged two tracebacks)."""

    from starlette.websockets import WebSocketDisconnect

    class Gone:
        async def accept(self) -> None:
            pass

        async def receive_text(self) -> str:
            raise WebSocketDisconnect(1001)

        async def send_text(self, text: str) -> None:
            raise WebSocketDisconnect(1001)

        async def close(self, code: int) -> None:
            raise RuntimeError("already closed")

    _run_async(live.endpoint(Gone()), timeout=30)


def test_one_bad_field_path_does_not_sink_the_good_values_of_its_frame() -> None:
    """OSC names any path: one the recipe lacks, in the same frame as a good value, gets
    one sentence and the good value still renders and reaches the session (the whole frame
    was refused before)."""
    sess = S.new_session("default")
    ws = FakeSocket([])

    async def run() -> None:
        conn = ws.conn = live.Connection(ws, sess)
        conn.take({"kind": "field", "seq": 1, "path": "bends.9.params.angle", "value": 1})
        conn.take({"kind": "field", "seq": 2, "path": "latent.psi", "value": 0.3})
        renderer = asyncio.get_running_loop().create_task(conn.render())
        conn.wake.set()
        for _ in range(6000):                 # the first render loads the model
            if ws.frames and ws.texts:
                break
            await asyncio.sleep(0.02)
        renderer.cancel()

    _run_async(run())
    assert [f[1] for f in ws.frames] == [2]
    [refusal] = ws.texts
    assert refusal["seq"] == 2 and "bend" in refusal["error"], refusal
    assert sess.recipe.latent.psi == 0.3


def test_ever_new_field_paths_and_bend_slots_leave_the_pending_values_bounded() -> None:
    from studio import sources
    sess = S.new_session("default")
    ws = FakeSocket([])

    async def run() -> int:
        conn = live.Connection(ws, sess)
        for i in range(10_000):
            conn.take({"kind": "field", "seq": i, "path": f"bends.{i}.params.angle",
                       "value": 1})
            conn.take({"kind": "bend", "seq": i, "slot": i, "value": 1})
        await asyncio.sleep(0)               # the refusals' sentences go out
        return len(conn.pending)

    assert _run_async(run()) == sources.MAX_FIELDS
    assert ws.texts[0]["error"].startswith(f"at most {sources.MAX_FIELDS} different fields")
