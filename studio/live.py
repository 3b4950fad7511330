"""The live channel: control values in, JPEG frames out, one WebSocket per page.

Gradio's events make a round trip through the queue, an SSE stream, a PNG file and a
download for every picture (~120 ms on top of a 19 ms render here). The page's sliders and
its webcam instead talk to `/live/ws`, a WebSocket route on the same server as the page
(uvicorn serves it with the `websockets` package), so one frame costs the render, a JPEG
encode and one message.

- The page learns a per-session key (`key_html`, shown by the model bar) and sends it first;
  the connection then belongs to that session and to nothing else.
- Only the newest state is rendered: messages that arrive while a frame is being rendered
  replace each other (latest wins, never a backlog); a webcam frame that is overtaken is
  answered with `{"dropped": seq}` so the page knows to send the next one.
- A control's value is rendered on a copy of the session's recipe through the same
  session-layer functions as the Gradio event; once that frame has rendered, the same
  values are applied to the session itself (`session.gesture`: one undo entry per drag,
  not one per frame). The session is the truth, so the page's Gradio events for these
  sliders fire only when a drag ends (`.release`, for the API and the fallback) and skip
  their render when the channel already showed that state; a Gradio event first waits
  (`settle`, bounded) until the channel has applied what it received, so the two never
  apply one drag out of order. When the gesture ends and the channel has answered its
  newest message (so the session holds it), the page clicks a hidden "sync" button: one
  render brings the Gradio output (download, recipe JSON) up to date.
- If the channel cannot connect, nothing changes: the Gradio events render as before, and
  the page says which path it is on.
- Big models stay live: while a control moves, a frame that would not fit the frame budget
  (STUDIO_LIVE_BUDGET_MS, measured per block on this machine: engine.recipes.incremental) shows
  the running image of the deepest block that fits, and an edit re-renders only from its
  layer on (the session's kept activations). When no new value has come for REST_S, the
  full picture follows, losslessly (PNG): its pixels are engine.render's.

Frames go back as one binary message: 1 byte kind (0 canvas, 1 webcam), 4 bytes sequence
number of the newest message the frame includes, 4 bytes render milliseconds (float32),
2 bytes what it shows (0 the full picture, else the resolution of the block whose running
image a preview shows), then the JPEG (or PNG).
"""

from __future__ import annotations

import asyncio
import copy
import functools
import json
import logging
import os
import secrets
import struct
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import numpy as np
from PIL import Image

from engine.base.errors import StudioError
from engine.recipes import recipe
from studio import gpu, models, render, sources, translation
from studio import session as S
from studio.limits import LIMITS
from studio.session import Session

log = logging.getLogger(__name__)

PATH = "/live/ws"
KIND_CANVAS, KIND_CAM = 0, 1
HEADER = struct.Struct(">BIfH")      # kind, sequence number, render ms, shown block (0 full)
JPEG_QUALITY = 92                   # small models: artefacts would show at 64 px
MAX_MESSAGE_BYTES = 4 * 2**20       # one webcam frame or one JSON message
MAX_CONNECTIONS = 3                 # open live channels per session (tabs of one visitor)
JS_FILE = Path(__file__).with_name("live.js")
REST_S = 0.25                       # no new value this long: the gesture rests, show it whole


def budget_s() -> float:
    """The frame budget while a control moves (STUDIO_LIVE_BUDGET_MS, default 150 ms)."""
    try:
        return max(0.0, float(os.environ.get("STUDIO_LIVE_BUDGET_MS", 150))) / 1000
    except ValueError:
        return 0.15
# A "play" button beside a walk or sweep video's controls (studio/live.js reads them).
PLAY_HTML = ('<button id="live-play-{what}" class="lg secondary live-play" data-what="{what}">'
             '▶ Play live on the canvas</button>')

# The renders of every live connection share the interactive lane's width, so many open
# pages cannot take more threads than the Gradio events would.
_RENDER_SLOTS = anyio.CapacityLimiter(LIMITS.concurrency)
# Threads that wait for a session's lock (a Gradio render holds it) for the sources' copy
# of the recipe: the event loop never waits for a session's lock itself.
_SNAPSHOT_SLOTS = anyio.CapacityLimiter(8)

# What a connection's hello tells the page besides the greeting, from modules that feed the
# channel (studio.osc adds where OSC listens); they register here, so live imports none.
HELLO_PARTS: list[Callable[[], dict[str, Any]]] = []

_keys: dict[str, weakref.ref[Session]] = {}  # live key -> its session
_open: dict[int, int] = {}                   # id(session) -> open connections
_lock = threading.Lock()
_conns: dict[int, set[Connection]] = {}      # id(session) -> its open connections
_settled = threading.Condition()             # notified when a connection has nothing left
SETTLE_S = 1.0                               # longest a Gradio event waits for the channel


def _after_fork_in_child() -> None:
    """A ZeroGPU worker is a fork taken at any moment: fresh locks, none held by a thread
    that does not exist there."""
    global _lock, _settled
    _lock, _settled = threading.Lock(), threading.Condition()


os.register_at_fork(after_in_child=_after_fork_in_child)


def key_for(sess: Session) -> str:
    """The session's live key (made once); a page that knows it may drive that session."""
    with _lock:
        key = getattr(sess, "live_key", None)
        if key is None or key not in _keys:
            key = secrets.token_urlsafe(18)
            sess.live_key = key
            _keys[key] = weakref.ref(sess)
        return key


def key_html(sess: Session) -> str:
    """A hidden element that hands the page its session's key."""
    return f'<span data-live-key="{key_for(sess)}"></span>'


def session_for(key: Any) -> Session | None:
    with _lock:
        ref = _keys.get(key) if isinstance(key, str) else None
    return ref() if ref is not None else None


def is_active(sess: Session | None) -> bool:
    """True while a page of this session has the live channel open: its sliders' frames come
    over the channel, so their Gradio events need not render."""
    return sess is not None and _open.get(id(sess), 0) > 0


def settle(sess: Session | None, timeout: float = SETTLE_S) -> bool:
    """Wait (at most `timeout` s) until this session's live channels have applied every
    control value they received, so a Gradio event that follows a drag applies after it.
    Returns at once when no channel is open; False when it gave up waiting."""
    if sess is None or not is_active(sess):
        return True
    with _settled:
        return _settled.wait_for(
            lambda: not any(c.busy() for c in list(_conns.get(id(sess), ()))), timeout)


# ----------------------------------------------------------------------------------------
# What one message does to a copy of the session's recipe.

def _copy(sess: Session) -> Session:
    with sess.lock:  # never a copy of an edit half done
        return Session(recipe=copy.deepcopy(sess.recipe), clusters=sess.clusters,
                       selected=list(sess.selected), current=sess.current, token=sess.token,
                       direction_settings=sess.direction_settings, tail=sess.tail)


def preview(sess: Session, messages: list[dict[str, Any]]) -> Session:
    """A copy of `sess` with the newest control values applied, as the Gradio events would
    apply them; the session itself is not touched."""
    tmp = _copy(sess)
    apply(tmp, messages)
    return tmp


# What applying one control value may raise for a hostile or stale value: one sentence.
REFUSALS = (StudioError, ValueError, TypeError, KeyError)


def preview_each(sess: Session, messages: list[dict[str, Any]]
                 ) -> tuple[Session, list[dict[str, Any]], list[str]]:
    """preview, each message on its own: one bad value (an OSC path the recipe lacks) must
    not sink the others of its frame. Returns the copy, the messages it took and the
    sentences of those it refused; raises the first refusal when it took none."""
    tmp, good, refused = _copy(sess), [], []
    for msg in messages:
        try:
            apply(tmp, [msg])
            good.append(msg)
        except REFUSALS as exc:
            if not refused and not isinstance(exc, StudioError):
                exc = StudioError(str(exc))
            refused.append(exc)
    if refused and not good:
        raise refused[0]
    return tmp, good, [str(e) for e in refused]


def commit(sess: Session, messages: list[dict[str, Any]], gesture: Any) -> None:
    """Apply control values to the session itself, as one step of `gesture` (its frame has
    rendered): the values are applied again, not the previewed recipe copied over, so an
    edit the page made meanwhile (a bend added) stays."""
    with S.gesture(sess, gesture):
        apply(sess, messages)


def apply(sess: Session, messages: list[dict[str, Any]]) -> None:
    """The control values of `messages` set on `sess` through the session layer."""
    for msg in messages:
        kind = msg.get("kind")
        if kind == "latent":
            _apply_latent(sess, msg.get("values") or {})
        elif kind == "bend":  # the bend editor's slot-th slider
            S.set_bend_slot(sess, "float", _index(msg, "slot"),
                            _number({"v": msg.get("value")}, "v", 0.0))
        elif kind == "weight":
            amount = _number({"v": msg.get("value")}, "v", 0.0)
            if not S.set_weight_amount(sess, _index(msg, "index"), amount):
                raise StudioError("this weight edit has no amount to set.")
        elif kind == "field":   # OSC, MIDI, the microphone, keys (studio/sources.py)
            sources.set_field(sess, msg.get("path"), msg.get("value"))
        elif kind == "fields":  # the mappings' values at one frame
            sources.set_fields(sess, msg.get("values"))
        elif kind == "learn":
            sources.learn(sess, msg)
        elif kind == "unmap":
            sources.unmap(sess, msg.get("name"))
        elif kind == "jump":    # a key's saved state (studio/sources.py)
            sources.jump(sess, msg.get("values") or {})


def _number(values: dict[str, Any], name: str, default: float) -> float:
    raw = values.get(name, default)
    try:
        value = float(default if raw in (None, "") else raw)
    except (TypeError, ValueError) as exc:
        raise StudioError(f"{name} must be a number, got {raw!r}.") from exc
    if value != value or value in (float("inf"), float("-inf")):
        raise StudioError(f"{name} must be a finite number.")
    return value


def _seq(msg: dict[str, Any]) -> int:
    """The message's sequence number; anything that is not a finite number counts as 0, so a
    malformed message cannot end the connection's render loop."""
    raw = msg.get("seq")
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or raw != raw \
            or raw in (float("inf"), float("-inf")):
        return 0
    return int(raw) & 0xFFFFFFFF


def _index(msg: dict[str, Any], name: str) -> int:
    raw = msg.get(name)
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or raw != raw \
            or raw in (float("inf"), float("-inf")) or raw != int(raw):
        raise StudioError(f"{name} must be a whole number.")
    return int(raw)


def _apply_latent(tmp: Session, values: dict[str, Any]) -> None:
    """The Explore sliders' values (numbers checked here, mapped to edits in the session)."""
    lat = tmp.recipe.latent
    S.set_seed_controls(tmp, _number(values, "seed", lat.seed // 1),
                        _number(values, "seed-frac", lat.seed % 1),
                        _number(values, "psi", lat.psi), _number(values, "cutoff", lat.cutoff or 0))
    amounts = values.get("dir")
    if isinstance(amounts, list) and len(amounts) <= 16:
        S.move_directions(tmp, values.get("method"), [_number({"a": a}, "a", 0.0)
                                                      for a in amounts])


def _jpeg(pic: Image.Image | np.ndarray) -> bytes:
    """libjpeg-turbo through simplejpeg: ~4x faster than PIL's encoder for these sizes."""
    import simplejpeg
    arr = np.ascontiguousarray(np.asarray(pic, dtype=np.uint8)[..., :3])
    return simplejpeg.encode_jpeg(arr, quality=JPEG_QUALITY, colorspace="RGB")


def render_edit(sess: Session, messages: list[dict[str, Any]], gesture: Any
                ) -> tuple[bytes, int]:
    """A frame of the session with `messages` applied, within the frame budget (a preview
    when the full picture would not fit), then the values applied to the session (only once
    they rendered: a value the engine refuses never reaches the session). Returns (JPEG,
    0 for the full picture or the preview's block resolution)."""
    tmp, messages, refused = preview_each(sess, messages) if messages else (sess, [], [])
    pic, shown = render.render_frame(sess, tmp.recipe, budget_s(), final=False)
    commit(sess, messages, gesture)
    return _jpeg(pic), shown, refused[:1]    # one sentence: the others are alike


def render_rest(sess: Session) -> tuple[bytes, int]:
    """The full picture of the session once a gesture rests after previews, as PNG: the
    page then shows engine.render's pixels, not a JPEG of them."""
    import io
    with sess.lock:
        rec = copy.deepcopy(sess.recipe)
    pic, _ = render.render_frame(sess, rec, budget_s(), final=True)
    out = io.BytesIO()
    pic.save(out, format="PNG", compress_level=1)   # level 1: ~4x faster, a bit larger
    return out.getvalue(), 0


def render_play(make: Callable[[], Session]) -> tuple[bytes, int]:
    """A frame of a walk or sweep playing live, within the frame budget as a drag's: a
    preview (an earlier block's running image) when the full picture would not fit. The
    page labels it; (JPEG, 0 for the full picture or the preview's block resolution)."""
    tmp = make()
    pic, shown = render.render_frame(tmp, tmp.recipe, budget_s(), final=False)
    return _jpeg(pic), shown


def translate_cam(sess: Session, encoder: str, jpeg: bytes) -> tuple[bytes, int]:
    """One webcam frame (JPEG bytes, through the one checked reader) translated, as JPEG,
    within the frame budget (a preview of an earlier block when the whole picture would not
    fit); (JPEG, 0 or the preview's block resolution)."""
    out, shown = translation.translate_frame_within(sess, _encoder_path(sess, encoder), jpeg,
                                                    budget_s())
    return _jpeg(out), shown


def play_frames(sess: Session, msg: dict[str, Any]
                ) -> tuple[list[Callable[[], Session]], float, bool]:
    """A walk or a sweep played live: one maker per frame of the frame's session (made when
    it is shown, so a long walk of a big model holds only its ws), its fps and loop.

    walk: the Explore keyframe seeds, the walk video's frames (engine.recipes.recipe.walk_ws and
    at_ws: interpolated in z or w, one looped seed circling around it) with everything the
    session's recipe does. sweep: one parameter of the bend being edited, from -> to (and
    back with loop: engine.recipes.recipe.sweep_values). Limits are the video limits (frames,
    fps)."""
    frames = int(_number(msg, "frames", 48))
    fps = _number(msg, "fps", 24)
    if not 2 <= frames <= LIMITS.video_frames or not 0 < fps <= LIMITS.video_fps:
        raise StudioError(f"play at most {LIMITS.video_frames} frames at up to "
                          f"{LIMITS.video_fps} frames/s.")
    loop = bool(msg.get("loop", True))
    if msg.get("what") == "walk":
        seeds = S.numbers(str(msg.get("seeds") or ""), "keyframe seeds", LIMITS.grid_values)
        G = models.generator(sess.model)
        # The frames of the walk video (engine.recipes.recipe.walk_ws / at_ws), each made when
        # shown.
        walk = recipe.walk_ws(sess.recipe, G, seeds, frames, loop=loop,
                              space=str(msg.get("space") or "z"))
        out = [functools.partial(_walk_frame, sess, ws.detach().cpu()) for ws in walk]
    elif msg.get("what") == "sweep":
        if sess.current is None:
            raise StudioError("click a bend with a numeric parameter first.")
        path = f"bends.{sess.current}.params.{msg.get('param')}"
        lo, hi = _number(msg, "from", 0.0), _number(msg, "to", 1.0)
        recipe.set_field(sess.recipe, path, float(lo))  # a bad parameter fails before playing
        out = [functools.partial(_sweep_frame, sess, path, float(v))
               for v in recipe.sweep_values(lo, hi, frames, loop)]
    else:
        raise StudioError("play a walk or a sweep.")
    return out, fps, loop


def _walk_frame(sess: Session, ws: Any) -> Session:
    tmp = preview(sess, [])
    tmp.recipe = recipe.at_ws(tmp.recipe, ws)
    return tmp


def _sweep_frame(sess: Session, path: str, value: float) -> Session:
    tmp = preview(sess, [])
    tmp.recipe = recipe.set_field(tmp.recipe, path, value)
    return tmp


def _encoder_path(sess: Session, shown: str) -> str:
    """The encoder the page's dropdown shows (its label or its value)."""
    options = translation.encoder_options(translation.encoder_choices(sess))
    for label, path in options:
        if shown in (label, path):
            return path
    if options and not shown:
        return options[0][1]
    raise StudioError("choose an encoder in the list first.")


# ----------------------------------------------------------------------------------------
# The connection.

class Connection:
    """One page's channel: newest canvas state and newest webcam frame, rendered in turn."""

    def __init__(self, ws: Any, sess: Session) -> None:
        self.ws, self.sess = ws, sess
        self.pending: dict[str, dict[str, Any]] = {}   # message key -> newest message
        self.cam: tuple[int, bytes] | None = None      # newest webcam frame (seq, jpeg)
        self.encoder = ""
        self.wake = asyncio.Event()
        self.player: asyncio.Task | None = None       # a walk or sweep playing live
        self.drawing = False                           # a canvas frame is being rendered
        self.unrested: int | None = None               # seq of a preview not yet made whole
        self.loop: asyncio.AbstractEventLoop | None = None  # set once it receives
        self.last_seq = 0                              # the page's newest sequence number
        self.stage = sources.Stage()                   # mappings played, the recorder
        self.stage_gesture = 0x50000000                # undo entry of the mappings' frames
        self.staging: asyncio.Task | None = None      # the newest source message's handling

    def busy(self) -> bool:
        """Control values received and not yet applied to the session (settle waits)."""
        return self.drawing or bool(self.pending)

    async def receive(self) -> None:
        """Read messages until the page goes; keep only the newest of each kind."""
        self.loop = asyncio.get_running_loop()
        while True:
            msg = await self.ws.receive()
            if msg["type"] == "websocket.disconnect":
                return
            data = msg.get("bytes")
            if data is not None:
                self._frame_in(data)
            elif msg.get("text") is not None:
                self._message_in(msg["text"])
            if self.staging is not None and not self.staging.done():
                await asyncio.wait([self.staging])   # the page's messages stay in order
            self.wake.set()

    def _frame_in(self, data: bytes) -> None:
        if len(data) < 5 or data[0] != KIND_CAM:
            return
        seq = struct.unpack(">I", data[1:5])[0]
        if len(data) > MAX_MESSAGE_BYTES:
            asyncio.get_running_loop().create_task(self._send_text(
                {"error": f"a webcam frame may be at most {MAX_MESSAGE_BYTES >> 20} MiB; "
                          "send a smaller picture.", "kind": KIND_CAM, "seq": seq}))
            return
        if self.cam is not None:  # overtaken before it was rendered: the page sends on
            asyncio.get_running_loop().create_task(self._send_text({"dropped": self.cam[0]}))
        self.cam = (seq, data[5:])

    def _message_in(self, text: str) -> None:
        if len(text) > MAX_MESSAGE_BYTES:
            return
        try:
            msg = json.loads(text)
        except (ValueError, RecursionError):  # '[' x 100000 overflows the parser's stack
            return
        if not isinstance(msg, dict):
            return
        self.last_seq = max(self.last_seq, _seq(msg))
        self.take(msg)

    def push(self, msg: dict[str, Any]) -> None:
        """A control value from outside the page (OSC), shown as the page's newest frame:
        it carries the page's newest sequence number."""
        self.take({**msg, "seq": self.last_seq, "outside": True})
        self.wake.set()

    def take(self, msg: dict[str, Any]) -> None:
        """Keep `msg` as the newest of its kind (or start or stop what it asks)."""
        kind = msg.get("kind")
        if kind in ("source", "record", "state"):
            return self._source(msg)
        if kind in ("latent", "bend", "weight", "field", "play", "stop") \
                and self.player is not None:
            self.player.cancel()   # an edit, a new play or stop ends the one playing
            self.player = None
        if kind == "play":
            self.player = asyncio.get_running_loop().create_task(self._play(msg))
        elif kind == "cam":
            self.encoder = str(msg.get("encoder") or "")[:4096]
        elif kind in ("latent", "weight"):
            self.pending[str(kind)] = msg
        elif kind in ("bend", "field"):
            key = self._field_key(msg)
            if key is not None:
                self.pending[key] = msg
        elif kind in ("learn", "unmap"):
            self.pending[str(kind)] = msg

    def _field_key(self, msg: dict[str, Any]) -> str | None:
        """The pending key of a bend slider's or a field's value (the newest of each wins);
        None, with a sentence, for a malformed path or one field too many (a page or OSC
        naming ever new paths must not grow the pending values without bound)."""
        try:
            if msg.get("kind") == "field":
                key = f"field-{sources.check_path(msg.get('path'))}"
            else:
                key = f"bend-{_index(msg, 'slot')}"
            if key not in self.pending and sum(
                    k.startswith(("field-", "bend-")) for k in self.pending) >= sources.MAX_FIELDS:
                raise StudioError(f"at most {sources.MAX_FIELDS} different fields wait for "
                                  "one frame; the rest are dropped.")
        except StudioError as exc:
            self._later(self._send_text({"error": str(exc), "kind": KIND_CANVAS,
                                         "seq": _seq(msg)}))
            return None
        return key

    def _source(self, msg: dict[str, Any]) -> None:
        """Source events (MIDI, microphone, keys, OSC map values) feed the mappings; the
        recorder starts or stops (stopping hands the page the performance). Each message
        is handled in its turn by a task of its own: it may wait for the session's recipe
        (snapshot), and the event loop must not."""
        before = self.staging
        self.staging = asyncio.get_running_loop().create_task(
            self._source_after(before, msg, time.monotonic()))

    async def _source_after(self, before: asyncio.Task | None, msg: dict[str, Any],
                            now: float) -> None:
        if before is not None and not before.done():
            await asyncio.wait([before])   # in the order they came
        kind, on = msg.get("kind"), bool(msg.get("on"))
        needs_recipe = kind == "source" or (kind == "state" and msg.get("save")) \
            or (kind == "record" and on)
        try:
            recipe = await self._snapshot() if needs_recipe else None
            if kind == "source":
                self.stage.feed(recipe, msg.get("events"), now)
                self.wake.set()
                return
            if kind == "state":
                jump = self.stage.state(recipe, msg)
                if jump is not None:
                    self.pending["jump"] = {**jump, "seq": _seq(msg), "g": msg.get("g")}
                    self.wake.set()
                return
            perf = self.stage.record(recipe, on, now)
        except StudioError as exc:
            await self._send_text({"error": str(exc), "kind": KIND_CANVAS})
            return
        if perf is not None:
            self._recorded(perf)

    async def _snapshot(self) -> recipe.Recipe:
        """A copy of the session's recipe: at once when its lock is free, else from a
        thread that waits for it (a Gradio handler holds it for a whole render)."""
        now = sources.snapshot_now(self.sess)
        if now is not None:
            return now
        return await anyio.to_thread.run_sync(sources.snapshot, self.sess,
                                              limiter=_SNAPSHOT_SLOTS)

    def _recorded(self, perf: dict[str, Any]) -> None:
        self.sess.performance = perf   # the Performance panel's "Render to mp4" reads it
        self._later(self._send_text({"recorded": {
            "seconds": perf["seconds"], "events": len(perf["events"]), "performance": perf}},
            off_loop=True))   # up to STUDIO_MAX_RECORDING_BYTES of JSON

    def _later(self, coroutine: Any) -> None:
        asyncio.get_running_loop().create_task(coroutine)

    def _perform(self) -> None:
        """The mappings' values now, as the newest "fields" message (when they moved)."""
        values = self.stage.frame(time.monotonic())
        if values:
            self.pending["perform"] = {"kind": "fields", "values": values,
                                       "seq": self.last_seq, "g": self.stage_gesture,
                                       "outside": True}

    async def render(self) -> None:
        """Render whatever is newest, one frame at a time, until the page goes."""
        while True:
            gliding = self.stage.moving()   # a mapping's value glides: frames come on their own
            wait = sources.FRAME_S if gliding else REST_S if self.unrested is not None else None
            if not await self._moved_within(wait) and self.unrested is not None \
                    and not gliding:
                seq, self.unrested = self.unrested, None
                await self._send_frame(KIND_CANVAS, seq, render_rest, self.sess)
                continue
            self.wake.clear()
            self._perform()
            while self.pending or self.cam is not None:
                if self.pending:
                    self.drawing = True
                    messages, self.pending = list(self.pending.values()), {}
                    try:
                        await self._canvas(messages)
                    finally:
                        self.drawing = False
                        with _settled:
                            _settled.notify_all()
                if self.cam is not None:
                    (seq, jpeg), self.cam = self.cam, None
                    await self._webcam(seq, jpeg)

    async def _moved_within(self, seconds: float | None) -> bool:
        """Wait for a message at most `seconds` (None: until one comes); False when none
        came (the gesture rests)."""
        if seconds is None:
            await self.wake.wait()
            return True
        try:
            await asyncio.wait_for(self.wake.wait(), seconds)
            return True
        except TimeoutError:
            return bool(self.pending)

    async def _play(self, msg: dict[str, Any]) -> None:
        """Render a walk or sweep frame by frame at its fps (slower if rendering is)."""
        try:
            frames, fps, loop = await anyio.to_thread.run_sync(
                lambda: play_frames(self.sess, msg), limiter=_RENDER_SLOTS)
        except (StudioError, ValueError, TypeError) as exc:
            await self._send_text({"error": str(exc), "kind": KIND_CANVAS})
            return
        seq = _seq(msg)
        while True:
            for make in frames:
                t0 = time.perf_counter()
                await self._send_frame(KIND_CANVAS, seq, render_play, make)
                await asyncio.sleep(max(0.0, 1 / fps - (time.perf_counter() - t0)))
            if not loop:
                break
        await self._send_text({"played": seq})

    async def _canvas(self, messages: list[dict[str, Any]]) -> None:
        """The newest control values rendered, then applied to the session; the page numbers
        its gestures (`g`), and the steps of one share an undo entry."""
        seq = max(_seq(m) for m in messages)
        gesture = (id(self), max(_seq({"seq": m.get("g")}) for m in messages))
        shown = await self._send_frame(KIND_CANVAS, seq, render_edit, self.sess, messages,
                                       gesture)
        if any(m.get("outside") for m in messages):  # the page's recipe view catches up
            await self._send_text({"outside": seq})
        if self.stage.recording is not None:
            full = self.stage.shown(await self._snapshot(), time.monotonic())
            if full is not None:     # the longest, largest recording: it stops
                self._recorded(self.stage.record(None, False, time.monotonic()))
                await self._send_text({"error": full, "kind": KIND_CANVAS})
        self.unrested = seq if shown else None   # a preview: the full picture follows

    async def _webcam(self, seq: int, jpeg: bytes) -> None:
        await self._send_frame(KIND_CAM, seq, translate_cam, self.sess, self.encoder, jpeg)

    async def _send_frame(self, kind: int, seq: int, fn: Any, *args: Any) -> int | None:
        """Render fn(*args) (a picture's bytes, or (bytes, shown)) and send it; returns what
        it shows (0 the full picture, else a preview's block), None after an error."""
        t0 = time.perf_counter()
        try:
            out = await anyio.to_thread.run_sync(lambda: fn(*args), limiter=_RENDER_SLOTS)
        except (StudioError, ValueError, TypeError, KeyError) as exc:
            await self._send_text({"error": str(exc), "kind": kind, "seq": seq})
            return None
        except Exception:  # a bug must not end the channel; the log keeps the traceback
            log.exception("live render failed")
            await self._send_text({"error": "this frame could not be rendered.",
                                   "kind": kind, "seq": seq})
            return None
        data, shown, *refused = out if isinstance(out, tuple) else (out, 0)
        ms = (time.perf_counter() - t0) * 1000
        await self.ws.send_bytes(HEADER.pack(kind, seq & 0xFFFFFFFF, ms, shown) + data)
        for sentence in refused[0] if refused else ():   # values of the frame refused
            await self._send_text({"error": sentence, "kind": kind, "seq": seq})
        return shown

    async def _send_text(self, payload: dict[str, Any], off_loop: bool = False) -> None:
        try:
            text = await anyio.to_thread.run_sync(json.dumps, payload) if off_loop \
                else json.dumps(payload)
            await self.ws.send_text(text)
        except Exception:  # the page went away meanwhile
            pass


async def _refuse(ws: Any, sentence: str, code: int) -> None:
    """Say why and close. A client already gone is not an error: left to Starlette, every
    connection that hangs up before its refusal logged two tracebacks (a free log flood)."""
    try:
        await ws.send_text(json.dumps({"error": sentence}))
        await ws.close(code=code)
    except Exception:
        pass


async def endpoint(ws: Any) -> None:
    """The WebSocket route: the first message is the session's key, then the channel."""
    await ws.accept()
    try:
        first = json.loads(await asyncio.wait_for(ws.receive_text(), timeout=10))
        sess = session_for(first.get("key"))
    except Exception:
        sess = None
    if sess is None:
        await _refuse(ws, "unknown session; reload the page.", 4401)
        return
    with _lock:  # a few tabs of one session are fine; more would crowd the render lane
        crowded = _open.get(id(sess), 0) >= MAX_CONNECTIONS
        if not crowded:
            _open[id(sess)] = _open.get(id(sess), 0) + 1
    if crowded:
        await _refuse(ws, f"this session already has {MAX_CONNECTIONS} live pages open; "
                          f"close one and reload.", 4429)
        return
    hello: dict[str, Any] = {"hello": "live"}
    for part in HELLO_PARTS:
        hello.update(part())
    await ws.send_text(json.dumps(hello))
    conn = Connection(ws, sess)
    # Before the tasks start (they copy this context): the visitor ZeroGPU charges, and one
    # held GPU call for this page's frames (studio.gpu.Hold).
    hold = gpu.open_channel(getattr(ws, "headers", None), first.get("headers"))
    with _settled:
        _conns.setdefault(id(sess), set()).add(conn)
    renderer = asyncio.get_running_loop().create_task(conn.render())
    try:
        await conn.receive()
    except Exception:  # a dropped connection ends here like a closed one
        pass
    finally:
        renderer.cancel()
        if conn.player is not None:
            conn.player.cancel()
        hold.close()
        with _settled:  # a page gone has nothing left to apply
            mine = _conns.get(id(sess), set())
            mine.discard(conn)
            if not mine:
                _conns.pop(id(sess), None)
            _settled.notify_all()
        with _lock:
            left = _open.get(id(sess), 1) - 1
            if left > 0:
                _open[id(sess)] = left
            else:
                _open.pop(id(sess), None)
        if left <= 0:
            sess.tail.drop()   # the last page went: its kept activations go too


def push(sess: Session, msg: dict[str, Any]) -> int:
    """Hand a control value from another thread (the OSC listener) to every live page of
    `sess`; returns how many pages got it (0: none is open, the value goes nowhere)."""
    with _settled:
        conns = [c for c in _conns.get(id(sess), ()) if c.loop is not None]
    reached = 0
    for conn in conns:
        try:
            conn.loop.call_soon_threadsafe(conn.push, msg)
            reached += 1
        except RuntimeError:  # its loop closed: the page is going
            pass
    return reached


def routes() -> list[Any]:
    """The live channel's routes, for the page's FastAPI app (`app_kwargs={"routes": ...}`)."""
    from starlette.routing import WebSocketRoute
    return [WebSocketRoute(PATH, endpoint)]


def available() -> bool:
    """The channel needs a WebSocket implementation for uvicorn; STUDIO_LIVE=off turns it
    off (the page then stays on Gradio events)."""
    import importlib.util
    import os
    if os.environ.get("STUDIO_LIVE", "on").lower() in ("off", "0", "false", "no"):
        return False
    return any(importlib.util.find_spec(m) is not None for m in ("websockets", "wsproto"))


def page_js() -> str:
    """The page side of the channel (studio/live.js), run once when the page loads."""
    return JS_FILE.read_text()
