"""Mappings: a recipe's numeric fields driven by live sources (MIDI, OSC, audio, keys).

A mapping is part of the recipe (its `mappings` list, plain JSON), so a performance set
saves, loads, bundles and replays with the recipe it plays:

    {"name": "knob1", "target": "bends.0.params.angle",
     "source": {"kind": "midi", "type": "cc", "channel": 0, "number": 21},
     "in": [0, 127], "out": [0, 180], "curve": "linear", "steps": 4,
     "attack": 0.05, "release": 0.3, "mode": "set"}

- `target` is a field path into the recipe, the sweep's syntax (`engine.recipes.fields.parse_path`):
  dots, with list indices as numbers (`bends.0.params.angle`; `bends[0].params.angle` reads
  the same). The fields a mapping can drive are listed in `field_info`.
- `source` says which input drives it: `midi` (type cc / note / pitchbend, channel 0-15,
  number 0-127), `osc` (an address; `/studio/map/<name>` always reaches it), `audio`
  (feature loudness / bass / mid / treble / onset, each 0..1 per video frame) or `key`
  (a key name as the browser spells it: 1 while held, 0 when released).
- `in` is the input range (default by source: MIDI 0..127, pitch bend 0..16383, else 0..1);
  inputs outside it are held at its ends. `out` is the field range the input spans; it must
  lie inside the field's valid range. lo > hi inverts.
- `curve` shapes the normalised input t in 0..1: linear t; exponential
  (100^t - 1) / 99 (a fader's feel: fine control low, fast rise high); smoothstep
  3t^2 - 2t^3; steps quantises t to `steps` levels (2 or more).
- `attack` / `release` are smoothing time constants in seconds for rising / falling values
  (0: follow at once): each frame moves 1 - exp(-dt / tau) of the way to the new value.
- `mode`: `set` (the field takes the mapped value), `add` (each input received adds its
  mapped value to the field: beat jumps on onsets, a key that steps the seed) or `rate` (the
  mapped value is a speed in field units per second: a walk whose speed follows loudness).

`validate` reports a bad mapping in one sentence per problem; `map_value` applies range and
curve; `Smoother` smooths with attack/release given the time; `apply` writes values into a
copy of the recipe, each clamped to its field's valid range; `Performer` ties them together
for a stream of events over time (the live channel, the music video).
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from engine.base.errors import StudioError
from engine.base.limits import Limits, above_limit, current_limits
from engine.recipes.fields import RecipeError, parse_path

SOURCE_KINDS = ("midi", "osc", "audio", "key")
MIDI_TYPES = ("cc", "note", "pitchbend")
AUDIO_FEATURES = ("loudness", "bass", "mid", "treble", "onset")
CURVES = ("linear", "exponential", "smoothstep", "steps")
MODES = ("set", "add", "rate")
MAPPING_KEYS = ("name", "target", "source", "in", "out", "curve", "steps", "attack",
                "release", "mode")
SOURCE_KEYS = {"midi": ("kind", "type", "channel", "number"), "osc": ("kind", "address"),
               "audio": ("kind", "feature"), "key": ("kind", "key")}
DEFAULT_STEPS = 4
MAX_STEPS = 128
MAX_SMOOTHING_SECONDS = 60.0
EXPONENTIAL_BASE = 100.0    # the exponential curve spans 40 dB, as a fader does
MAX_OSC_ADDRESS = 128
MAX_KEY_NAME = 32
OSC_MAP_PREFIX = "/studio/map/"
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")   # it appears in OSC addresses and URLs
_OSC_ADDRESS = re.compile(r"^/[A-Za-z0-9_./-]*$")
MAX_SEED = 2 ** 32 - 1  # engine.tools.latents.MAX_SEED (not imported: that module pulls in torch)
MAX_TRANSLATE = 10.0    # engine.tools.latents.MAX_TRANSLATE


class MappingError(StudioError):
    """A mapping that cannot drive its field: unknown path, bad range, unknown source."""


def default_in(source: Mapping[str, Any]) -> tuple[float, float]:
    """The input range a source gives when a mapping does not say."""
    if source.get("kind") == "midi":
        return (0.0, 16383.0) if source.get("type") == "pitchbend" else (0.0, 127.0)
    return 0.0, 1.0


# ----------------------------------------------------------------------------------------
# Fields a mapping can drive.


@dataclass(frozen=True)
class FieldInfo:
    """A numeric recipe field: its kind ('int' / 'float'), valid range (None: open) and
    current value."""
    path: str
    kind: str
    lo: float | None
    hi: float | None
    current: float

    def clamp(self, value: float) -> float | int:
        if self.lo is not None:
            value = max(self.lo, value)
        if self.hi is not None:
            value = min(self.hi, value)
        return int(round(value)) if self.kind == "int" else float(value)


# (parent parts, field) -> (kind, lo, hi) for the fields with a fixed range.
_LATENT_FIELDS = {"seed": ("float", 0.0, float(MAX_SEED)), "psi": ("float", -5.0, 5.0),
                  "rotate": ("float", -360.0, 360.0),
                  "noise_seed": ("int", 0.0, float(MAX_SEED)),
                  "mix_seed": ("int", 0.0, float(MAX_SEED))}
MAPPABLE = ("latent.seed", "latent.psi", "latent.rotate", "latent.noise_seed",
            "latent.mix_seed", "latent.translate.<0|1>", "latent.directions.<i>.amount",
            "latent.layer_edits.<i>.seed", "bends.<i>.params.<name>",
            "weight_edits.<i>.params.<name>", "bends.<i>.channels.fraction",
            "weight_edits.<i>.channels.fraction", "blend.alpha", "blend.alphas.<i>",
            "translator.strength")


def _not_mappable(path: str, why: str = "") -> MappingError:
    return MappingError(f"{path!r} is not a field a mapping can drive{why} (mappable: "
                        f"{', '.join(MAPPABLE)})")


def _item(items: Any, index: Any, path: str, what: str) -> Any:
    if not isinstance(index, int) or not isinstance(items, list) \
            or not 0 <= index < len(items):
        count = len(items) if isinstance(items, list) else 0
        raise MappingError(f"{path!r} names {what} {index}, and the recipe has {count}")
    return items[index]


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not math.isfinite(value):
        raise ValueError(value)
    return float(value)


def field_info(recipe: Any, path: str) -> FieldInfo:
    """What the field at `path` takes; MappingError when a mapping cannot drive it."""

    if not isinstance(path, str) or not path.strip():
        raise MappingError("a mapping's target must be a field path such as "
                           "bends.0.params.angle")
    try:
        parts = parse_path(path)
    except RecipeError:
        raise _not_mappable(path) from None
    try:
        return _field_info(recipe, parts, path)
    except ValueError:  # the field holds something that is not a finite number
        raise MappingError(f"{path!r} holds no number to drive") from None


def _field_info(recipe: Any, parts: list, path: str) -> FieldInfo:
    head, rest = parts[0], parts[1:]
    if head == "latent":
        return _latent_info(recipe.latent, rest, path)
    if head in ("bends", "weight_edits") and len(rest) >= 2:
        entry = _item(getattr(recipe, head), rest[0], path,
                      "bend" if head == "bends" else "weight edit")
        if rest[1:] == ["channels", "fraction"]:
            return FieldInfo(path, "float", 1 / 1024, 1.0, _number(entry.channels.fraction))
        if len(rest) == 3 and rest[1] == "params" and isinstance(rest[2], str):
            return _param_info(head, entry, rest[2], path)
    if head == "blend" and recipe.blend is not None:
        if rest == ["alpha"]:
            return FieldInfo(path, "float", 0.0, 1.0, _number(recipe.blend.alpha))
        if len(rest) == 2 and rest[0] == "alphas":
            alpha = _item(recipe.blend.alphas or [], rest[1], path, "block alpha")
            return FieldInfo(path, "float", 0.0, 1.0, _number(alpha))
    if head == "blend" and recipe.blend is None:
        raise _not_mappable(path, ": the recipe has no blend")
    if head == "translator" and rest == ["strength"]:
        if recipe.translator is None:
            raise _not_mappable(path, ": the recipe has no translator")
        return FieldInfo(path, "float", 0.0, 1.0, _number(recipe.translator.strength))
    raise _not_mappable(path)


def _latent_info(latent: Any, rest: list, path: str) -> FieldInfo:
    if len(rest) == 1 and rest[0] in _LATENT_FIELDS:
        kind, lo, hi = _LATENT_FIELDS[rest[0]]
        value = getattr(latent, rest[0])
        if value is None:  # mix_seed: no style mixing to drive
            raise _not_mappable(path, f": the recipe sets no {rest[0]}")
        return FieldInfo(path, kind, lo, hi, _number(value))
    if len(rest) == 2 and rest[0] == "translate":
        if latent.translate is None:
            raise _not_mappable(path, ": the recipe sets no translate (set it to [0, 0])")
        value = _item(latent.translate, rest[1], path, "translate coordinate")
        return FieldInfo(path, "float", -MAX_TRANSLATE, MAX_TRANSLATE, _number(value))
    if len(rest) == 3 and rest[0] == "directions" and rest[2] == "amount":
        edit = _item(latent.directions, rest[1], path, "direction")
        return FieldInfo(path, "float", None, None, _number(edit.amount))
    if len(rest) == 3 and rest[0] == "layer_edits" and rest[2] == "seed":
        edit = _item(latent.layer_edits, rest[1], path, "layer edit")
        return FieldInfo(path, "int", 0.0, float(MAX_SEED), _number(edit.seed))
    raise _not_mappable(path)


def _param_info(head: str, entry: Any, name: str, path: str) -> FieldInfo:
    from engine.tools.bending import OPERATIONS, WEIGHT_OPERATIONS

    registry = OPERATIONS if head == "bends" else WEIGHT_OPERATIONS
    op = registry.get(entry.op)
    spec = op.spec(name) if op is not None else None
    if spec is None:
        raise MappingError(f"{path!r}: operation {entry.op!r} has no parameter {name!r}")
    if spec.type not in ("int", "float"):
        raise MappingError(f"{path!r}: parameter {name!r} is a {spec.type}, not a number")
    current = entry.params.get(name, spec.default) if isinstance(entry.params, dict) \
        else spec.default
    return FieldInfo(path, spec.type, spec.min, spec.max, _number(current))


def _assign(recipe: Any, path: str, value: float | int) -> None:
    """Set the (already checked) field at `path` of `recipe` in place."""

    *parents, last = parse_path(path)
    obj = recipe
    for part in parents:
        obj = obj[part] if isinstance(part, int) or isinstance(obj, dict) else getattr(obj,
                                                                                       part)
    if isinstance(obj, dict | list):
        obj[last] = value
    else:
        setattr(obj, last, value)


def set_fields(recipe: Any, values: Mapping[str, float]) -> Any:
    """A copy of `recipe` with each field path set to its value, clamped to the field's
    valid range (ints rounded). MappingError for a path no mapping can drive or a value that
    is not a finite number."""
    out = copy.deepcopy(recipe)
    for path, value in values.items():
        info = field_info(out, path)
        try:
            number = _number(value)
        except ValueError:
            raise MappingError(f"{path}: {value!r} is not a finite number") from None
        _assign(out, path, info.clamp(number))
    return out


# ----------------------------------------------------------------------------------------
# Validation.


def _pair(value: Any) -> tuple[float, float] | None:
    if not isinstance(value, list | tuple) or len(value) != 2:
        return None
    try:
        return _number(value[0]), _number(value[1])
    except ValueError:
        return None


def _source_problems(source: Any) -> list[str]:
    if not isinstance(source, Mapping):
        return [f"{source!r} is not an object such as {{'kind': 'midi', 'type': 'cc', "
                f"'channel': 0, 'number': 21}}"]
    kind = source.get("kind")
    if kind not in SOURCE_KINDS:
        return [f"kind {kind!r} is not one of {', '.join(SOURCE_KINDS)}"]
    unknown = [k for k in source if k not in SOURCE_KEYS[kind]]
    if unknown:
        return [f"unknown key {unknown[0]!r} for a {kind} source (known: "
                f"{', '.join(SOURCE_KEYS[kind])})"]
    if kind == "midi":
        return _midi_problems(source)
    if kind == "osc":
        address = source.get("address")
        if not isinstance(address, str) or len(address) > MAX_OSC_ADDRESS \
                or not _OSC_ADDRESS.match(address):
            return [f"address {address!r} must be an OSC address such as /studio/map/knob1 "
                    f"(letters, digits, _ . - and /; at most {MAX_OSC_ADDRESS} characters)"]
    if kind == "audio" and source.get("feature") not in AUDIO_FEATURES:
        return [f"feature {source.get('feature')!r} is not one of {', '.join(AUDIO_FEATURES)}"]
    if kind == "key":
        key = source.get("key")
        if not isinstance(key, str) or not 1 <= len(key) <= MAX_KEY_NAME \
                or not key.isprintable():
            return [f"key {key!r} must be a key name such as 'a' or 'ArrowUp'"]
    return []


def _midi_problems(source: Mapping[str, Any]) -> list[str]:
    kind = source.get("type")
    if kind not in MIDI_TYPES:
        return [f"type {kind!r} is not one of {', '.join(MIDI_TYPES)}"]
    out = []
    channel = source.get("channel", 0)
    if isinstance(channel, bool) or not isinstance(channel, int) or not 0 <= channel <= 15:
        out.append(f"channel {channel!r} must be a whole number from 0 to 15")
    number = source.get("number")
    if kind == "pitchbend":
        if number is not None:
            out.append("a pitchbend has no number (one bend wheel per channel)")
    elif isinstance(number, bool) or not isinstance(number, int) or not 0 <= number <= 127:
        out.append(f"number {number!r} must be a whole number from 0 to 127 (the "
                   f"{'controller' if kind == 'cc' else 'note'})")
    return out


def _shape_problems(m: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(key, reason) for the keys of one mapping that do not depend on the recipe."""
    out: list[tuple[str, str]] = []
    unknown = [k for k in m if k not in MAPPING_KEYS]
    if unknown:
        out.append((str(unknown[0]), f"unknown key (known: {', '.join(MAPPING_KEYS)})"))
    out += [("source", why) for why in _source_problems(m.get("source"))]
    source = m.get("source") if isinstance(m.get("source"), Mapping) else {}
    lo_hi = _pair(m.get("in", default_in(source)))
    if lo_hi is None:
        out.append(("in", f"{m.get('in')!r} must be two numbers [lo, hi]"))
    elif lo_hi[0] == lo_hi[1]:
        out.append(("in", f"{list(lo_hi)} is empty: lo and hi must differ"))
    if "out" not in m:
        out.append(("out", "required: the field values [lo, hi] the input spans"))
    elif _pair(m["out"]) is None:
        out.append(("out", f"{m['out']!r} must be two numbers [lo, hi]"))
    if m.get("curve", "linear") not in CURVES:
        out.append(("curve", f"{m.get('curve')!r} is not one of {', '.join(CURVES)}"))
    steps = m.get("steps", DEFAULT_STEPS)
    if isinstance(steps, bool) or not isinstance(steps, int) or not 2 <= steps <= MAX_STEPS:
        out.append(("steps", f"{steps!r} must be a whole number from 2 to {MAX_STEPS}"))
    for key in ("attack", "release"):
        value = m.get(key, 0.0)
        try:
            ok = 0 <= _number(value) <= MAX_SMOOTHING_SECONDS
        except ValueError:
            ok = False
        if not ok:
            out.append((key, f"{value!r} must be seconds from 0 to {MAX_SMOOTHING_SECONDS:g}"))
    if m.get("mode", "set") not in MODES:
        out.append(("mode", f"{m.get('mode')!r} is not one of {', '.join(MODES)}"))
    return out


def _target_problems(recipe: Any, m: Mapping[str, Any]) -> list[tuple[str, str]]:
    try:
        info = field_info(recipe, m.get("target"))
    except MappingError as exc:
        return [("target", str(exc))]
    pair = _pair(m.get("out"))
    if pair is None or m.get("mode", "set") != "set":
        return []  # add / rate values are steps and speeds: the field clamps their sum
    for end in pair:
        if (info.lo is not None and end < info.lo) or (info.hi is not None and end > info.hi):
            lo = "" if info.lo is None else f"{info.lo:g}"
            hi = "" if info.hi is None else f"{info.hi:g}"
            return [("out", f"{end:g} is outside {info.path}'s range {lo}..{hi}")]
    return []


def mapping_problems(recipe: Any, limits: Limits | None = None) -> list[str]:
    """Every problem of the recipe's mappings as 'mappings[i].key: reason'."""
    mappings = getattr(recipe, "mappings", [])
    if not isinstance(mappings, list):
        return [f"mappings: {type(mappings).__name__} is not a list"]
    why = above_limit("mappings", len(mappings), limits or current_limits())
    if why:
        return [f"mappings: {why.replace(' is above', ' entries are above', 1)}"]
    out: list[str] = []
    seen: set[str] = set()
    for i, m in enumerate(mappings):
        where = f"mappings[{i}]"
        if not isinstance(m, Mapping):
            out.append(f"{where}: {m!r:.40} is not an object")
            continue
        name = m.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            out.append(f"{where}.name: {name!r:.70} must be 1 to 64 letters, digits, _ or -")
        elif name in seen:
            out.append(f"{where}.name: {name!r} names another mapping too")
        else:
            seen.add(name)
        found = _shape_problems(m) + _target_problems(recipe, m)
        out += [f"{where}.{key}: {reason}" for key, reason in found]
    return out


def validate(recipe: Any, limits: Limits | None = None) -> None:
    """Raise MappingError naming every problem of the recipe's mappings."""
    problems = mapping_problems(recipe, limits)
    if problems:
        count = len(problems)
        raise MappingError(f"The mappings have {count} problem{'s' if count > 1 else ''}: "
                           + "; ".join(problems[:20]))


# ----------------------------------------------------------------------------------------
# Values.


def curve_value(curve: str, t: float, steps: int = DEFAULT_STEPS) -> float:
    """A curve at t in 0..1 (t outside is held at the ends); 0 at 0 and 1 at 1."""
    t = min(1.0, max(0.0, t))
    if curve == "linear":
        return t
    if curve == "exponential":
        return (EXPONENTIAL_BASE ** t - 1) / (EXPONENTIAL_BASE - 1)
    if curve == "smoothstep":
        return t * t * (3 - 2 * t)
    if curve == "steps":
        return min(math.floor(t * steps), steps - 1) / (steps - 1)
    raise MappingError(f"curve {curve!r} is not one of {', '.join(CURVES)}")


def map_value(mapping: Mapping[str, Any], x: float) -> float:
    """An input value through a mapping's input range, curve and output range."""
    in_lo, in_hi = mapping.get("in") or default_in(mapping.get("source") or {})
    out_lo, out_hi = mapping["out"]
    t = (float(x) - in_lo) / (in_hi - in_lo)
    if not math.isfinite(t):  # a NaN from a broken device: the input's low end
        t = 0.0
    shaped = curve_value(mapping.get("curve", "linear"), t,
                         int(mapping.get("steps", DEFAULT_STEPS)))
    return out_lo + (out_hi - out_lo) * shaped


class Smoother:
    """Exponential smoothing with separate time constants for rising and falling values.

    `update(target, now)` moves the value 1 - exp(-dt / tau) of the way to `target`, dt the
    seconds since the last update and tau `attack` when rising, `release` when falling (0
    jumps at once). Time is passed in, so a video render and its replay agree exactly.
    """

    def __init__(self, attack: float = 0.0, release: float = 0.0,
                 value: float | None = None):
        self.attack, self.release = float(attack), float(release)
        self.value = value
        self.time: float | None = None

    def update(self, target: float, now: float) -> float:
        if self.value is None:
            self.value = float(target)
        else:
            dt = 0.0 if self.time is None else max(0.0, now - self.time)
            tau = self.attack if target > self.value else self.release
            share = 1.0 if tau <= 0 else 1.0 - math.exp(-dt / tau)
            self.value += (float(target) - self.value) * share
        self.time = now
        return self.value


def apply(recipe: Any, values: Mapping[str, float]) -> Any:
    """A copy of `recipe` with each named mapping's target set to its value (field units,
    clamped to the field's valid range). MappingError for a name no mapping has."""
    by_name = {m.get("name"): m for m in recipe.mappings if isinstance(m, Mapping)}
    fields: dict[str, float] = {}
    for name, value in values.items():
        if name not in by_name:
            raise MappingError(f"no mapping is named {name!r}")
        fields[by_name[name]["target"]] = value
    return set_fields(recipe, fields)


# ----------------------------------------------------------------------------------------
# Events and performances.


def matches(source: Mapping[str, Any], event: Mapping[str, Any], name: str = "") -> bool:
    """Whether an input event (a source dict plus 'value') is the mapping's source.

    A MIDI event names type, channel and number (a pitchbend no number); an OSC event its
    address (`/studio/map/<name>` reaches the mapping named so whatever its source); an
    audio event its feature; a key event its key.
    """
    kind = event.get("kind")
    if kind == "osc" and name and event.get("address") == OSC_MAP_PREFIX + name:
        return True
    if kind != source.get("kind"):
        return False
    keys = [k for k in SOURCE_KEYS[kind] if k != "kind"] if kind in SOURCE_KEYS else []
    if kind == "midi":
        return (event.get("type"), event.get("channel", 0), event.get("number")) == (
            source.get("type"), source.get("channel", 0), source.get("number"))
    return all(event.get(k) == source.get(k) for k in keys)


def route(mappings: Sequence[Mapping[str, Any]], event: Mapping[str, Any]) -> list[str]:
    """Names of the mappings an event drives, in recipe order."""
    return [m["name"] for m in mappings if matches(m["source"], event, m["name"])]


def learn(recipe: Any, event: Mapping[str, Any], target: str, name: str,
          out: Sequence[float] | None = None) -> Any:
    """A copy of `recipe` with a mapping from the event's source to `target` ("learn": move
    a knob, then pick the field). A mapping of the same name or the same source is replaced.
    `out` defaults to the field's valid range, or 0..1 around an open field's value."""
    source = {k: v for k, v in event.items() if k in SOURCE_KEYS.get(event.get("kind"), ())}
    info = field_info(recipe, target)
    if out is None:
        if info.lo is not None and info.hi is not None and info.hi - info.lo <= 1000:
            out = (info.lo, info.hi)
        else:
            out = (info.current, info.current + 1)
    new = {"name": name, "target": target, "source": source, "in": list(default_in(source)),
           "out": [float(out[0]), float(out[1])]}
    result = copy.deepcopy(recipe)
    result.mappings = [m for m in result.mappings
                       if m.get("name") != name and dict(m.get("source") or {}) != source]
    result.mappings.append(new)
    validate(result)
    return result


class Performer:
    """A recipe played over time: input events in, one recipe per frame out.

    Each mapping contributes to its target: a `set` mapping its mapped value, an `add`
    mapping the sum of its mapped values, a `rate` mapping its speed integrated over time;
    the field is the last `set` value (else the recipe's own) plus the add / rate offsets.
    Each contribution is smoothed with the mapping's attack / release.
    """

    def __init__(self, recipe: Any):
        validate(recipe)
        self.recipe = recipe
        self.mappings = [dict(m) for m in recipe.mappings]
        self.base = {m["target"]: field_info(recipe, m["target"]).current
                     for m in self.mappings}
        self.inputs: dict[str, float] = {}      # set / rate: the latest mapped value
        self.offsets = {m["name"]: 0.0 for m in self.mappings}  # add / rate: running sums
        # A set mapping glides from the field's own value, an offset from 0.
        self.smoothers = {m["name"]: Smoother(
            m.get("attack", 0.0), m.get("release", 0.0),
            self.base[m["target"]] if m.get("mode", "set") == "set" else 0.0)
            for m in self.mappings}
        self.time: float | None = None

    def feed(self, event: Mapping[str, Any]) -> list[str]:
        """Take one input event ({source keys..., 'value': x}); returns the mappings it moved."""
        names = route(self.mappings, event)
        for m in self.mappings:
            if m["name"] in names:
                mapped = map_value(m, event.get("value", 0.0))
                if m.get("mode", "set") == "add":
                    self.offsets[m["name"]] += mapped
                else:
                    self.inputs[m["name"]] = mapped
        return names

    def feed_all(self, events: Iterable[Mapping[str, Any]]) -> None:
        for event in events:
            self.feed(event)

    def values(self, now: float) -> dict[str, float]:
        """Each driven field's value at time `now` (seconds, non-decreasing)."""
        dt = 0.0 if self.time is None else max(0.0, now - self.time)
        self.time = now
        fields = dict(self.base)
        offsets = {path: 0.0 for path in fields}
        for m in self.mappings:
            name, mode, target = m["name"], m.get("mode", "set"), m["target"]
            if mode == "rate":
                self.offsets[name] += self.inputs.get(name, 0.0) * dt
            if mode == "set":  # every smoother's clock runs, driven or not
                value = self.smoothers[name].update(self.inputs.get(name, fields[target]), now)
                if name in self.inputs:
                    fields[target] = value
            else:
                offsets[target] += self.smoothers[name].update(self.offsets[name], now)
        return {path: fields[path] + offsets[path] for path in fields}

    def frame(self, now: float) -> Any:
        """The recipe at time `now` with every driven field set (clamped)."""
        return set_fields(self.recipe, self.values(now))
