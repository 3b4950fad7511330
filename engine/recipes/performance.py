"""A recorded performance: a recipe and the stream of its field values over time.

The studio's recorder (studio/sources.py) writes, while the live canvas plays, what changed
in the session's recipe at each frame it showed:

    {"format": "activation-studio-performance", "version": 1, "seconds": 12.5,
     "recipe": {...the recipe when recording started...},
     "events": [{"t": 0.04, "values": {"bends.0.params.angle": 61.5, "latent.psi": 0.4}},
                {"t": 3.2, "recipe": {...the whole recipe, after a bend was added...}}, ...]}

`values` holds the numeric fields (dotted paths, list indexes as numbers) that changed since
the event before; `recipe` replaces the whole recipe (an edit that changed its shape). The
performance renders to video afterwards at full quality: frame i shows the recipe as it was
at i / fps seconds (`recipes`, `write_performance`).
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from engine.base.errors import StudioError

FORMAT = "activation-studio-performance"
MAX_EVENTS = 100_000        # ~55 min at 30 changes a second
MAX_VALUES = 256            # fields changed in one event


def numbers(data: Any, prefix: str = "") -> dict[str, float]:
    """Every numeric leaf of a recipe's dict as {dotted path: value} (bools are not)."""
    out: dict[str, float] = {}
    items = data.items() if isinstance(data, dict) else \
        enumerate(data) if isinstance(data, list) else ()
    for key, value in items:
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, bool):
            continue
        if isinstance(value, int | float):
            out[path] = value
        elif isinstance(value, dict | list):
            out.update(numbers(value, path))
    return out


def changes(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any] | None:
    """The event that turns recipe dict `before` into `after`: {"values": changed numbers},
    {"recipe": after} when more than numbers changed, None when nothing did."""
    if before == after:
        return None
    old, new = numbers(before), numbers(after)
    if old.keys() != new.keys() or len(new) > 10_000 or \
            _without_numbers(before) != _without_numbers(after):
        return {"recipe": copy.deepcopy(after)}
    changed = {p: v for p, v in new.items() if old[p] != v}
    if len(changed) > MAX_VALUES:
        return {"recipe": copy.deepcopy(after)}
    return {"values": changed}


def _without_numbers(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _without_numbers(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_without_numbers(v) for v in data]
    return None if isinstance(data, int | float) and not isinstance(data, bool) else data


def _assign(data: dict[str, Any], path: str, value: float) -> None:
    parts = path.split(".")
    obj: Any = data
    try:
        for part in parts[:-1]:
            obj = obj[int(part)] if isinstance(obj, list) else obj[part]
        last = parts[-1]
        if isinstance(obj, list):
            obj[int(last)] = value
        elif last in obj:
            obj[last] = value
        else:
            raise KeyError(last)
    except (KeyError, IndexError, ValueError, TypeError):
        raise StudioError(f"the performance names {path!r}, which its recipe does not "
                          "have.") from None


def check(perf: Any) -> dict[str, Any]:
    """`perf` when it is a performance this module can play, else one sentence."""
    if not isinstance(perf, dict) or perf.get("format") != FORMAT:
        raise StudioError("this is not a recorded performance (its format is not "
                          f"{FORMAT!r}).")
    events = perf.get("events")
    if not isinstance(perf.get("recipe"), dict) or not isinstance(events, list):
        raise StudioError("a performance needs its recipe and its events.")
    if len(events) > MAX_EVENTS:
        raise StudioError(f"a performance may hold at most {MAX_EVENTS} events.")
    last = 0.0
    for e in events:
        t = e.get("t") if isinstance(e, dict) else None
        if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t) \
                or t < last:
            raise StudioError("each performance event needs a time t, in order.")
        last = t
        values = e.get("values", {})
        if not isinstance(values, dict) or len(values) > MAX_VALUES or not all(
                isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
                for v in values.values()):
            raise StudioError(f"each performance event sets at most {MAX_VALUES} fields to "
                              "finite numbers.")
        if "recipe" in e and not isinstance(e["recipe"], dict):
            raise StudioError("a performance event's recipe must be a recipe.")
    return perf


def duration(perf: dict[str, Any]) -> float:
    """Seconds the performance lasts (its stop, or its last event)."""
    events = perf["events"]
    seconds = perf.get("seconds")
    end = events[-1]["t"] if events else 0.0
    return max(end, float(seconds)) if isinstance(seconds, int | float) and \
        math.isfinite(seconds) else end


def frame_count(perf: dict[str, Any], fps: float) -> int:
    return max(1, math.floor(duration(perf) * fps) + 1)


def recipes(perf: dict[str, Any], fps: float) -> Iterator[Any]:
    """The Recipe at each video frame's time (i / fps s, i = 0 .. frame_count - 1)."""
    from engine.recipes.recipe import Recipe
    check(perf)
    data = copy.deepcopy(perf["recipe"])
    events = perf["events"]
    i = 0
    for frame in range(frame_count(perf, fps)):
        t = frame / fps
        while i < len(events) and events[i]["t"] <= t + 1e-9:
            e = events[i]
            if "recipe" in e:
                data = copy.deepcopy(e["recipe"])
            for path, value in (e.get("values") or {}).items():
                _assign(data, str(path), value)
            i += 1
        yield Recipe.from_dict(copy.deepcopy(data))


def write_performance(perf: dict[str, Any], out: str | os.PathLike, fps: float = 30,
                      model: Any = None, size: int | None = None,
                      progress: Callable[[int], Any] | None = None,
                      cancel: Any = None) -> Path:
    """Render every frame of the performance with engine.render (full quality) into an mp4
    (or gif); `size` sets each frame's side in pixels (the recipe's output_size)."""
    import dataclasses

    import numpy as np

    from engine.base.video import write_video
    from engine.recipes import recipe as R

    def frames() -> Iterator[Any]:
        loaded: dict[str, Any] = {}     # a recording may switch models midway
        for r in recipes(perf, fps):
            if size:
                r = dataclasses.replace(r, output_size=int(size))
            if r.model not in loaded:
                from engine.models import zoo
                loaded = {r.model: model if model is not None and not loaded
                          else zoo.load(r.model)}
            yield np.asarray(R.render(r, loaded[r.model]))

    return write_video(frames(), out, fps=fps, progress=progress, cancel=cancel,
                       total=frame_count(perf, fps))
