"""Sources on the live channel (studio/sources.py): MIDI, microphone features and keys drive
the recipe's mappings (engine/recipes/mappings.py) through the channel's edit path; "learn" binds a
source to a field; the recorder keeps the stream of field values and renders it to mp4
(engine/recipes/performance.py)."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

import engine
from engine.base.errors import StudioError
from engine.recipes import performance
from engine.tools.bending import ChannelSelection
from studio import live
from studio import session as S
from tests.test_live import FakeSocket, _run_async, text

CC7 = {"kind": "midi", "type": "cc", "channel": 0, "number": 7}


def _bent_session(**mapping) -> S.Session:
    sess = S.new_session("default")
    S.add_bend(sess, "b16.conv1", "rotate", ChannelSelection(), {"angle": 45.0})
    sess.recipe.mappings = [{"name": "knob", "target": "bends.0.params.angle",
                             "source": CC7, "in": [0, 127], "out": [0, 180], **mapping}]
    return sess


def _source(seq: int, *events: dict) -> dict:
    return text(json.dumps({"kind": "source", "seq": seq, "events": list(events)}))


class PacedSocket(FakeSocket):
    """A FakeSocket whose inbox holds (frames shown before it, message) pairs."""

    async def receive(self) -> dict:
        if self.inbox:
            for _ in range(3000):
                if len(self.frames) >= self.inbox[0][0]:
                    break
                await asyncio.sleep(0.01)
            return self.inbox.pop(0)[1]
        return {"type": "websocket.disconnect"}


def _play(sess: S.Session, inbox: list, until, seconds: float = 120,
          socket: type = FakeSocket) -> FakeSocket:
    """A connection reads the inbox, then renders until `until(ws)` holds."""
    ws = socket(inbox)

    async def run() -> None:
        conn = ws.conn = live.Connection(ws, sess)
        renderer = asyncio.get_running_loop().create_task(conn.render())
        await conn.receive()
        for _ in range(int(seconds / 0.02)):
            if until(ws):
                break
            await asyncio.sleep(0.02)
        renderer.cancel()

    _run_async(run(), timeout=seconds + 30)
    return ws


def test_a_midi_control_change_drives_a_mapped_bend_through_the_channel() -> None:
    sess = _bent_session()
    ws = _play(sess, [_source(1, {**CC7, "value": 127})],
               lambda ws: {"outside": 1} in ws.texts)
    assert sess.recipe.bends[0].params["angle"] == 180       # out's top: the session has it
    assert ws.frames and ws.frames[-1][1] == 1               # the page's newest seq
    assert {"outside": 1} in ws.texts                        # the page's recipe catches up
    assert S.undo(sess) and sess.recipe.bends[0].params["angle"] == 45


def test_an_unmapped_source_changes_nothing_and_a_bad_event_gets_a_sentence() -> None:
    sess = _bent_session()
    other = {"kind": "midi", "type": "cc", "channel": 0, "number": 8, "value": 64}
    ws = _play(sess, [_source(1, other), _source(2, {**CC7, "value": "loud"})],
               lambda ws: ws.texts, seconds=10)
    assert ws.texts == [{"error": "a source event needs a finite number, got 'loud'.",
                         "kind": 0}]
    assert ws.frames == [] and sess.recipe.bends[0].params["angle"] == 45


def test_attack_glides_over_several_frames_to_the_mapped_value() -> None:
    """With attack 0.3 s a knob turned to the top reaches 180 over frames that come on
    their own (no further events), each nearer; then the frames stop."""
    from studio import render
    sess = _bent_session(attack=0.3)
    render.render(sess)          # the model loaded: frames take milliseconds, not seconds
    seen: list[float] = []

    def done(ws: FakeSocket) -> bool:
        angle = sess.recipe.bends[0].params["angle"]
        if not seen or seen[-1] != angle:
            seen.append(angle)
        return ws.conn is not None and not ws.conn.stage.moving() and len(seen) > 2

    _play(sess, [_source(1, {**CC7, "value": 127})], done)
    assert len(seen) >= 3, seen
    assert all(b > a for a, b in zip(seen, seen[1:])), seen    # rising, never past
    assert 179.99 < seen[-1] <= 180.0


@pytest.mark.parametrize("event, source", [
    ({"kind": "audio", "feature": "bass", "value": 0.5}, {"kind": "audio", "feature": "bass"}),
    ({"kind": "key", "key": "a", "value": 1}, {"kind": "key", "key": "a"}),
    ({"kind": "midi", "type": "pitchbend", "channel": 2, "value": 16383},
     {"kind": "midi", "type": "pitchbend", "channel": 2}),
    ({"kind": "midi", "type": "note", "channel": 0, "number": 60, "value": 100},
     {"kind": "midi", "type": "note", "channel": 0, "number": 60}),
])
def test_learn_binds_the_last_source_to_the_clicked_field(event, source) -> None:
    """The page's learn: move a control, click a field; the next event of that source
    sets the field through the mapping's range (psi here, out 0..1)."""
    sess = _bent_session()
    learn = {"kind": "learn", "seq": 1, "event": source, "target": "latent.psi",
             "name": "m1", "out": [0, 1]}
    ws = _play(sess, [text(json.dumps(learn)), _source(2, event)],
               lambda ws: sess.recipe.latent.psi != 0.7)
    [m] = [m for m in sess.recipe.mappings if m["name"] == "m1"]
    assert (m["name"], m["target"], m["source"]) == ("m1", "latent.psi", source)
    assert sess.recipe.latent.psi == pytest.approx(
        engine.recipes.mappings.map_value(m, event["value"]))
    assert not [t for t in ws.texts if "error" in t]


def test_learn_without_a_source_gets_one_sentence() -> None:
    sess = _bent_session()
    with pytest.raises(StudioError, match="move a MIDI control or press a key first"):
        live.apply(sess, [{"kind": "learn", "event": None, "target": "latent.psi",
                           "name": "m"}])
    with pytest.raises(StudioError, match="not a recipe field path"):
        live.apply(sess, [{"kind": "field", "path": "bends[0]", "value": 1}])


def test_a_recorded_performance_replays_the_field_values_and_renders_to_mp4(
        tmp_path) -> None:
    sess = _bent_session()
    # Each message once the frames before it are shown (a page playing by hand).
    inbox = [(0, text(json.dumps({"kind": "record", "on": True}))),
             (0, _source(1, {**CC7, "value": 0})),
             (1, _source(2, {**CC7, "value": 127})),
             (2, text(json.dumps({"kind": "record", "on": False})))]
    ws = _play(sess, inbox, lambda ws: any("recorded" in t for t in ws.texts),
               socket=PacedSocket)
    [rec] = [t["recorded"] for t in ws.texts if "recorded" in t]
    perf = rec["performance"]
    assert perf is sess.performance or perf == sess.performance
    angles = [e["values"]["bends.0.params.angle"] for e in perf["events"]]
    assert angles == [0.0, 180.0], perf["events"]
    assert perf["recipe"]["bends"][0]["params"]["angle"] == 45
    # Every frame of the video is the recipe at its time: 45 before the first event.
    fps = 10
    recipes = list(performance.recipes(perf, fps))
    assert len(recipes) == performance.frame_count(perf, fps)
    t1 = perf["events"][1]["t"]
    for i, r in enumerate(recipes):
        t = i / fps
        want = 45.0 if t < perf["events"][0]["t"] else 0.0 if t < t1 else 180.0
        assert r.bends[0].params["angle"] == want, (i, t)
    out = performance.write_performance(perf, tmp_path / "perf.mp4", fps=fps)
    import imageio_ffmpeg
    reader = imageio_ffmpeg.read_frames(str(out))
    meta = next(reader)
    frames = [np.frombuffer(f, np.uint8).reshape(*meta["size"][::-1], 3) for f in reader]
    assert len(frames) == len(recipes)
    last = np.asarray(engine.render(recipes[-1]), dtype=np.float32)
    assert np.abs(frames[-1] - last).mean() < 4.0            # x264 at quality 8


def test_a_hostile_performance_gets_one_sentence() -> None:
    good = {"format": performance.FORMAT, "recipe": {"model": "default"}, "events": []}
    assert performance.check(good) is good
    for bad, says in [({}, "not a recorded performance"),
                      ({**good, "events": [{"t": 2}, {"t": 1}]}, "in order"),
                      ({**good, "events": [{"t": 0, "values": {"a": float("nan")}}]},
                       "finite numbers"),
                      ({**good, "events": [{"t": 0}] * (performance.MAX_EVENTS + 1)},
                       "at most")]:
        with pytest.raises(StudioError, match=says):
            performance.check(bad)
    with pytest.raises(StudioError, match="does not have"):
        list(performance.recipes({**good, "events": [{"t": 0, "values": {"nope.x": 1}}]},
                                 10))


def test_the_panel_renders_the_sessions_recording_and_refuses_without_one(tmp_path) -> None:
    """'Render the recording to mp4': the session's last recording, every frame through
    engine.render, in the long-job lane; one sentence without a recording or over the
    frame limit."""
    import gradio as gr
    import imageio_ffmpeg

    from studio.limits import LIMITS
    from studio.tabs import perform

    sess = _bent_session()
    ui = object()
    with pytest.raises(gr.Error, match="record a performance first"):
        perform.render_recording(ui, sess, 10, "0", progress=lambda *a, **k: None)
    base = sess.recipe.to_dict()
    sess.performance = {"format": performance.FORMAT, "version": 1, "recipe": base,
                        "seconds": 0.5, "events": [
                            {"t": 0.25, "values": {"bends.0.params.angle": 90.0}}]}
    out = perform.render_recording(ui, sess, 10, "0", progress=lambda *a, **k: None)
    reader = imageio_ffmpeg.read_frames(out)
    meta = next(reader)
    frames = [np.frombuffer(f, np.uint8).reshape(*meta["size"][::-1], 3) for f in reader]
    assert len(frames) == 6                              # 0, 0.1, ... 0.5 s
    for i, angle in ((0, 45.0), (5, 90.0)):
        sess.recipe.bends[0].params["angle"] = angle
        want = np.asarray(engine.render(sess.recipe), dtype=np.float32)
        assert np.abs(frames[i] - want).mean() < 4.0, i
    sess.performance["seconds"] = LIMITS.video_frames      # one frame a second too many
    with pytest.raises(gr.Error, match="STUDIO_MAX_VIDEO_FRAMES"):
        perform.render_recording(ui, sess, 1, "0", progress=lambda *a, **k: None)


def test_a_saved_state_comes_back_on_its_key() -> None:
    """Shift+1 saves the state, 1 jumps back to it (through the channel's edit path); a
    state never saved, or one that no longer fits the recipe, gets one sentence."""
    sess = _bent_session()

    def msg(**m) -> dict:
        return text(json.dumps(m))

    inbox = [(0, msg(kind="state", n=1, save=True)),
             (0, msg(kind="field", seq=1, path="latent.psi", value=0.2)),
             (1, msg(kind="field", seq=2, path="bends.0.params.angle", value=10)),
             (2, msg(kind="state", seq=3, n=1)),
             (3, msg(kind="state", seq=4, n=2))]
    ws = _play(sess, inbox, lambda ws: len(ws.frames) >= 3 and ws.texts, socket=PacedSocket)
    assert (sess.recipe.latent.psi, sess.recipe.bends[0].params["angle"]) == (0.7, 45.0)
    assert ws.texts == [{"error": "no state 2 is saved yet (Shift+2 saves one).", "kind": 0}]
    sess.recipe.bends.clear()
    with pytest.raises(StudioError, match="no longer fits"):
        live.apply(sess, [{"kind": "jump", "values": {"bends.0.params.angle": 45.0}}])


def test_learn_finds_the_field_of_a_bend_slider_or_a_weight_amount() -> None:
    """The page names a bend slider by its slot and the weight amount by its edit, as the
    sliders' own messages do; the session layer says which parameter that is."""
    from engine.recipes.recipe import WeightEdit
    sess = _bent_session()
    midi = {"kind": "midi", "type": "cc", "channel": 0, "number": 1}
    live.apply(sess, [{"kind": "learn", "event": midi, "slot": 0, "name": "a"}])
    assert sess.recipe.mappings[-1]["target"] == "bends.0.params.angle"
    S.add_weight_edit(sess, WeightEdit(layer="b16.conv1", op="scale",
                                       params={"factor": 1.0}))
    live.apply(sess, [{"kind": "learn", "event": {**midi, "number": 2}, "weight": 0,
                       "name": "b"}])
    assert sess.recipe.mappings[-1]["target"] == "weight_edits.0.params.factor"
    for bad, says in [({"slot": 9}, "one of its number sliders"),
                      ({"weight": 5}, "there is no weight edit 5"),
                      ({"weight": -1}, "choose a weight edit first")]:
        with pytest.raises(StudioError, match=says):
            live.apply(sess, [{"kind": "learn", "event": midi, "name": "c", **bad}])


def test_a_page_flooding_source_events_is_held_to_the_rate() -> None:
    from studio import sources
    sess, stage = _bent_session(), sources.Stage()
    burst = [{**CC7, "value": 1}] * sources.MAX_EVENTS
    sent = 0
    with pytest.raises(StudioError, match="source events a second"):
        while True:
            stage.feed(sess.recipe, burst, now=100.0)
            sent += len(burst)
    assert sent <= sources.MAX_EVENTS_PER_S
    assert stage.feed(sess.recipe, burst, now=101.5) == len(burst)   # the next second: room again


def test_a_source_message_never_makes_the_event_loop_wait_for_the_session_lock() -> None:
    """A Gradio handler holds the session's lock for a whole render; a MIDI event arriving
    meanwhile must wait for it off the event loop (it froze the loop, so every visitor's
    channel, before): a coroutine scheduled after the message runs while the lock is
    still held, and the event takes effect once it is free."""
    import threading

    sess = _bent_session()
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with sess.lock:
            holding.set()
            release.wait(timeout=10)   # bounds the test if the loop is frozen (the bug)
            holding.clear()

    holder = threading.Thread(target=hold)
    holder.start()
    assert holding.wait(timeout=10)
    ws = FakeSocket([_source(1, {**CC7, "value": 127})])
    seen: list[bool] = []

    async def run() -> dict | None:
        conn = ws.conn = live.Connection(ws, sess)
        loop = asyncio.get_running_loop()
        reader = loop.create_task(conn.receive())    # takes the message at its first step

        async def probe() -> None:
            seen.append(holding.is_set())
            release.set()

        await loop.create_task(probe())
        await reader
        return conn.stage.frame(1e9)

    try:
        values = _run_async(run(), timeout=60)
    finally:
        release.set()
        holder.join()
    assert seen == [True]                      # the loop ran on while the lock was held
    assert values == {"bends.0.params.angle": 180.0}   # and the event still took effect


def test_a_recording_of_shape_changes_stops_at_its_byte_budget(monkeypatch) -> None:
    """Each change of the recipe's shape (a bend added or removed) keeps the whole recipe:
    a recording of many stops at STUDIO_MAX_RECORDING_BYTES with one sentence (only the
    event count and the length held it before: gigabytes a session)."""
    from engine.recipes.recipe import Recipe
    from studio import sources
    budget = 200_000
    monkeypatch.setenv("STUDIO_MAX_RECORDING_BYTES", str(budget))
    one = _bent_session().recipe
    two = Recipe.from_dict(one.to_dict())
    two.bends.append(two.bends[0])
    stage = sources.Stage()
    stage.record(one, True, now=0.0)
    why = None
    for i in range(5000):
        why = stage.shown((two, one)[i % 2], now=0.01 * (i + 1))
        if why is not None:
            break
    assert why == "the recording stopped at 195 KiB, the limit (STUDIO_MAX_RECORDING_BYTES)."
    perf = stage.record(None, False, now=60.0)
    assert budget - 2000 < len(json.dumps(perf)) <= budget
    assert all("recipe" in e for e in perf["events"])      # shape changes, each whole


def test_learn_refuses_a_range_that_is_not_two_numbers() -> None:
    sess = _bent_session()
    midi = {"kind": "midi", "type": "cc", "channel": 0, "number": 1}
    for out in ([1], [], [0, 1, 2], "0..1"):
        with pytest.raises(StudioError, match="exactly two numbers"):
            live.apply(sess, [{"kind": "learn", "event": midi, "target": "latent.psi",
                               "name": "m", "out": out}])
    with pytest.raises(StudioError, match="finite number"):
        live.apply(sess, [{"kind": "learn", "event": midi, "target": "latent.psi",
                           "name": "m", "out": [0, float("inf")]}])
    assert [m["name"] for m in sess.recipe.mappings] == ["knob"]


def test_two_keys_the_page_names_alike_keep_both_mappings() -> None:
    """The page makes a key's odd characters '-': 'key +' and 'key -' are both 'key-'.
    Learning the second kept only it (a name replaces its mapping); now it gets 'key--2',
    and learning a key again still replaces its own mapping."""
    sess = _bent_session()
    plus, minus = {"kind": "key", "key": "+"}, {"kind": "key", "key": "-"}
    for event, target in ((plus, "latent.psi"), (minus, "bends.0.params.angle"),
                          (plus, "latent.psi")):
        live.apply(sess, [{"kind": "learn", "event": event, "target": target,
                           "name": "key-"}])
    assert [(m["name"], m["source"]["key"]) for m in sess.recipe.mappings[1:]] == \
        [("key--2", "-"), ("key-", "+")]
