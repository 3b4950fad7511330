"""Control values from outside the page's sliders: one recipe field set by its path.

OSC messages (studio/osc.py), MIDI controllers, the microphone and the keyboard (the page's
studio/live.js) all end as `{"kind": "field", "path": "bends.0.params.angle", "value": 45}`
messages on a session's live channel, so they render and reach the session exactly as a
slider's value does (studio/live.py: previewed on a copy, applied once its frame rendered).
"""

from __future__ import annotations

import copy
import json
import math
import re
from typing import Any

from engine.base.errors import StudioError
from engine.base.limits import current_limits
from engine.recipes.recipe import Recipe, RecipeError
from engine.recipes.recipe import set_field as recipe_set_field
from studio import files
from studio.gpu import gpu_job
from studio.models import image_seconds, load, small
from studio.session import Session

MAX_PATH = 200
# A recipe field's path: names and list indexes joined by dots ("bends.0.params.angle").
PATH_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.([A-Za-z_][A-Za-z0-9_]*|[0-9]+))*")


def check_path(path: Any) -> str:
    """`path` when it is a well-formed field path, else one sentence."""
    if not isinstance(path, str) or len(path) > MAX_PATH or not PATH_RE.fullmatch(path):
        raise StudioError(f"{str(path)[:60]!r} is not a recipe field path "
                          "(e.g. bends.0.params.angle or latent.psi).")
    return path


def number(value: Any, what: str) -> float:
    """A finite float from an OSC/JSON value (bools are 0/1), else one sentence."""
    if isinstance(value, bool):
        return float(value)
    if not isinstance(value, int | float) or value != value \
            or value in (float("inf"), float("-inf")):
        raise StudioError(f"{what} needs a finite number, got {str(value)[:40]!r}.")
    return float(value)


def set_field(sess: Session, path: Any, value: Any) -> None:
    """Set the numeric recipe field `path` of `sess` (ints rounded), or one sentence."""
    path = check_path(path)
    value = number(value, path)
    try:
        sess.recipe = recipe_set_field(sess.recipe, path, value)
    except RecipeError as exc:
        raise StudioError(f"{exc.problems[0]}.") from None


def set_fields(sess: Session, values: Any) -> None:
    """Set several fields at once, each clamped to its valid range (a mapping's frame)."""
    from engine.recipes import mappings
    if not isinstance(values, dict) or len(values) > MAX_FIELDS:
        raise StudioError(f"send at most {MAX_FIELDS} field values at once.")
    clean = {check_path(p): number(v, str(p)) for p, v in values.items()}
    sess.recipe = mappings.set_fields(sess.recipe, clean)


def learn(sess: Session, msg: dict[str, Any]) -> None:
    """Bind the source of the event the page saw last to the field clicked ("learn"); a
    mapping of the same name or source is replaced."""
    from engine.recipes import mappings
    event, name = msg.get("event"), msg.get("name")
    if not isinstance(event, dict) or event.get("kind") not in mappings.SOURCE_KINDS:
        raise StudioError("move a MIDI control or press a key first, then click a field.")
    out = msg.get("out")
    if out is not None:
        if not isinstance(out, list) or len(out) != 2:
            raise StudioError("a mapping's range needs exactly two numbers, low and high.")
        out = [number(v, "the range") for v in out]
    source = {k: v for k, v in event.items()
              if k in mappings.SOURCE_KEYS.get(event.get("kind"), ())}
    sess.recipe = mappings.learn(sess.recipe, event, _target(sess, msg),
                                 _unique_name(sess.recipe, str(name)[:60], source), out)


def _unique_name(recipe: Recipe, name: str, source: dict[str, Any]) -> str:
    """`name`, or `name-2`, `name-3`... when another source's mapping has it: the page
    names a key's mapping by the key with odd characters made '-', so 'key +' and 'key -'
    were both 'key-', and learning one replaced (deleted) the other."""
    taken = {m.get("name") for m in recipe.mappings if dict(m.get("source") or {}) != source}
    unique, n = name, 2
    while unique in taken:
        unique, n = f"{name}-{n}", n + 1
    return unique


def _target(sess: Session, msg: dict[str, Any]) -> str:
    """The field a learn message names: a path, a direction slider's number `direction`,
    the bend editor's slider `slot` (the bend being edited) or the weight editor's amount
    of edit `weight` (the session layer says which parameter each control sets, as for the
    sliders themselves)."""
    from studio import session as S
    slot, weight = msg.get("slot"), msg.get("weight")
    if msg.get("direction") is not None:  # a direction slider's number, not a list index
        return S.direction_target(sess, msg["direction"])
    if slot is not None:
        name = S.slot_param(sess, "float", slot) if isinstance(slot, int) else None
        if name is None:
            raise StudioError("click a bend first, then one of its number sliders.")
        return f"bends.{sess.current}.params.{name}"
    if weight is not None:
        if not isinstance(weight, int) or weight < 0:
            raise StudioError("choose a weight edit first, then its amount.")
        name = S.weight_amount_param(sess, weight)
        if name is None:
            raise StudioError("this weight edit has no amount to map.")
        return f"weight_edits.{weight}.params.{name}"
    return check_path(msg.get("target"))


def jump(sess: Session, values: Any) -> None:
    """Back to a saved state: its numeric fields (engine.recipes.performance.numbers) set again."""
    from engine.recipes.performance import _assign
    from engine.recipes.recipe import Recipe
    data = sess.recipe.to_dict()
    try:
        for path, value in values.items():
            _assign(data, path, value)
    except StudioError:
        raise StudioError("that saved state no longer fits the recipe (a bend or edit was "
                          "added or removed since); save it again.") from None
    sess.recipe = Recipe.from_dict(data)


def unmap(sess: Session, name: Any) -> None:
    """Remove the mapping called `name` (nothing when there is none)."""
    sess.recipe.mappings = [m for m in sess.recipe.mappings if m.get("name") != name]


# ----------------------------------------------------------------------------------------
# One live page's sources: the mappings played over time, and the recorder.

MAX_FIELDS = 64           # fields in one message
MAX_EVENTS = 256          # source events in one message
MAX_EVENTS_PER_S = 2000   # source events a second from one page (a mic sends 150)
FRAME_S = 1 / 30          # while a smoothed value glides, a frame every this long
SETTLED = 1e-6            # a glide that moved less than this (relative) in a frame has ended
RECORD_MAX_S = 600.0      # longest recording


class Stage:
    """The mappings of a session's recipe played from the source events one page sends
    (MIDI, microphone features, keys; OSC map values), and what the page records."""

    def __init__(self) -> None:
        self.performer: Any = None
        self.mappings: list[dict[str, Any]] | None = None  # those it was built for
        self.sent: dict[str, float] = {}      # field values of the last frame message
        self.fed = False                      # events since the last frame message
        self.window = [0.0, 0]                # [start, events] of this second
        self.states: dict[int, dict[str, float]] = {}   # key 1..9 -> saved field values
        self.recording: dict[str, Any] | None = None
        self.record_t0 = 0.0
        self.record_last: dict[str, Any] = {}
        self.record_bytes = 0                 # the recording as JSON, so far
        self.record_budget = 0                # STUDIO_MAX_RECORDING_BYTES when it started

    def feed(self, recipe: Recipe, events: Any, now: float) -> int:
        """Take a message's source events ([{kind, ..., value}]); returns how many moved a
        mapping. A recipe whose mappings changed gets a new performer first. `recipe` is
        the session's, copied (snapshot): the Stage runs on the event loop, which must never
        wait for the session's lock."""
        from engine.recipes import mappings
        if not isinstance(events, list) or len(events) > MAX_EVENTS:
            raise StudioError(f"send at most {MAX_EVENTS} source events at once.")
        if now - self.window[0] >= 1.0:
            self.window = [now, 0]
        self.window[1] += len(events)
        if self.window[1] > MAX_EVENTS_PER_S:   # routing costs the event loop's time
            raise StudioError(f"at most {MAX_EVENTS_PER_S} source events a second; the "
                              "rest are dropped.")
        self._performer_for(recipe)
        if self.performer is None:
            return 0
        moved = 0
        for event in events:
            if isinstance(event, dict) and event.get("kind") in mappings.SOURCE_KINDS:
                value = number(event.get("value"), "a source event")
                moved += bool(self.performer.feed({**event, "value": value}))
        self.fed = self.fed or moved > 0
        return moved

    def _performer_for(self, recipe: Recipe) -> None:
        from engine.recipes import mappings
        current = [dict(m) for m in recipe.mappings]
        if current != self.mappings:
            self.mappings, self.sent = current, {}
            self.performer = mappings.Performer(copy.deepcopy(recipe)) if current else None

    def frame(self, now: float) -> dict[str, float] | None:
        """The driven fields' values now, when they differ from the last frame's."""
        p = self.performer
        if p is None or not (self.fed or self.sent):
            return None
        values = p.values(now)
        driven = {m["target"] for m in p.mappings
                  if m["name"] in p.inputs or p.offsets.get(m["name"])}
        values = {k: v for k, v in values.items() if k in driven}
        self.fed = False
        if not values or all(abs(v - self.sent.get(k, math.inf)) <= SETTLED * max(1, abs(v))
                             for k, v in values.items()):
            self.sent = {}     # nothing glides: no more frames until the next event
            return None
        self.sent = values
        return values

    def moving(self) -> bool:
        """Whether a frame is due without a new event (a glide or a rate mapping)."""
        return bool(self.sent)

    def state(self, recipe: Recipe | None, msg: dict[str, Any]) -> dict[str, Any] | None:
        """Save the numeric fields of `recipe` (the session's, copied) as state n (1..9), or
        the message that jumps back to it (None when saving)."""
        from engine.recipes.performance import numbers
        n = msg.get("n")
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 9:
            raise StudioError("saved states are numbered 1 to 9.")
        if msg.get("save"):
            assert recipe is not None, "saving a state needs the session's recipe"
            self.states[n] = numbers(recipe.to_dict())
            return None
        if n not in self.states:
            raise StudioError(f"no state {n} is saved yet (Shift+{n} saves one).")
        return {"kind": "jump", "values": self.states[n]}

    # ---- the recorder ------------------------------------------------------------------
    def record(self, recipe: Recipe | None, on: bool, now: float) -> dict[str, Any] | None:
        """Start (on, from `recipe`: the session's, copied) or stop recording; stopping
        returns the performance."""
        from engine.recipes.performance import FORMAT
        if on:
            assert recipe is not None, "recording starts from the session's recipe"
            base = recipe.to_dict()
            self.recording = {"format": FORMAT, "version": 1, "recipe": base, "events": []}
            self.record_t0, self.record_last = now, base
            self.record_budget = current_limits().recording_bytes
            self.record_bytes = len(json.dumps(self.recording))
            return None
        perf, self.recording = self.recording, None
        if perf is not None:
            perf["seconds"] = round(now - self.record_t0, 4)
        return perf

    def shown(self, recipe: Recipe, now: float) -> str | None:
        """A frame of the session was shown (`recipe`: the session's, copied): note what
        changed. The sentence why once the recording has reached its longest, its most
        events or its most bytes (it then stops: each change of the recipe's shape keeps
        the whole recipe, so the bytes are counted, not only the events)."""
        from engine.recipes.performance import MAX_EVENTS, changes
        if self.recording is None:
            return None
        t = now - self.record_t0
        after = recipe.to_dict()
        event = changes(self.record_last, after)
        if event is not None:
            event = {"t": round(t, 4), **event}
            size = len(json.dumps(event)) + 2
            if self.record_bytes + size > self.record_budget:
                return (f"the recording stopped at {self.record_budget >> 10} KiB, the "
                        "limit (STUDIO_MAX_RECORDING_BYTES).")
            self.recording["events"].append(event)
            self.record_bytes += size
            self.record_last = after
        if t >= RECORD_MAX_S:
            return f"the recording stopped at its longest, {RECORD_MAX_S:g} s."
        if len(self.recording["events"]) >= MAX_EVENTS:
            return f"the recording stopped at its most events, {MAX_EVENTS}."
        return None


def snapshot(sess: Session) -> Recipe:
    """A copy of the session's recipe, never of an edit half done (waits for its lock:
    call it off the event loop, e.g. through anyio.to_thread)."""
    with sess.lock:
        return copy.deepcopy(sess.recipe)


def snapshot_now(sess: Session) -> Recipe | None:
    """snapshot(sess) when its lock is free at once, else None (then take it off the
    event loop): a Gradio handler holds the lock for a whole render."""
    if not sess.lock.acquire(blocking=False):
        return None
    try:
        return copy.deepcopy(sess.recipe)
    finally:
        sess.lock.release()


def _video_seconds(sess: Session, perf: dict[str, Any], fps: float, **_: Any) -> float:
    from engine.recipes.performance import frame_count
    return image_seconds(sess.model, frame_count(perf, fps))


@gpu_job(_video_seconds, cpu_if=lambda sess, *_, **__: small(sess.model))
def performance_video(sess: Session, perf: dict[str, Any], fps: float,
                      progress: Any = None, cancel: Any = None, size: int | None = None
                      ) -> str:
    """A recorded performance as an mp4 in the session's folder, each frame rendered in
    full by engine.render (engine/recipes/performance.py)."""
    from engine.recipes.performance import write_performance
    out = files.new_output_path(sess.token, "performance", ".mp4")
    write_performance(perf, out, fps=fps, model=load(sess.model), size=size,
                      progress=progress, cancel=cancel)
    return str(out)
