"""Recipe: the JSON-able description of one output; validation, rendering, sweeps, imports.

A `Recipe` names a model, a latent (`engine.tools.latents.LatentSpec`), bends and weight edits
(`engine.tools.bending`), optionally a translator (encoder + input image) and an output size.
`render(recipe)` gives the image; `Recipe.save/load` round-trip JSON; `validate` reports
every bad field with its path (`bends[1].params.angle: 400 is above the maximum 360`).
Imports of the seed notebooks' bending template and Broad's network-bending YAML live in
`engine.recipes.bend_import`, whose `load_recipe_file` reads any of the three formats; the
`render` and `sweep` verbs are in `engine.recipes.cli`.
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import functools
import json
import math
import os
import threading
import types
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.base.errors import StudioError
from engine.base.files import atomic_write_text
from engine.base.images import to_uint8
from engine.base.limits import Limits, above_limit, current_limits
from engine.recipes.fields import RecipeError, parse_path
from engine.tools.bending import (
    OPERATIONS,
    WEIGHT_OPERATIONS,
    Bend,
    WeightEdit,
    make_taps,
    validate_bend,
    validate_weight_edit,
)
from engine.tools.blend import BlendSpec, blend_problems
from engine.tools.latents import LatentSpec
from engine.tools.translator import DEFAULTS as TRANSLATE_DEFAULTS

RECIPE_VERSION = 1
MIN_OUTPUT_SIZE, MAX_OUTPUT_SIZE = 8, 4096


# The longest list a recipe field takes (channel indices, cluster ids, ...): above any
# layer's channel count, so only a mistake or an attack is refused, before a million-entry
# list costs seconds of checks and a problem line per entry.
MAX_LIST_ENTRIES = 4096


@dataclass
class TranslatorSpec:
    """Image-to-image translation: an encoder writes a layer's activations from a picture."""
    encoder: str = ""               # encoder file path or id
    image: str | None = None        # input picture path (None: the caller supplies one)
    input_size: int | None = None   # resize the picture to this before encoding (None: auto)
    # The defaults are engine.tools.translator.DEFAULTS: the page's, the CLI's and the API's.
    strength: float = TRANSLATE_DEFAULTS.strength  # 1 the picture's layout, lower the model's
    framing: str = TRANSLATE_DEFAULTS.framing      # how the picture becomes a square
    anchor: str = TRANSLATE_DEFAULTS.anchor        # strength < 1 blends towards: latent/match
    # A recipe file written before a field existed meant this by leaving it out, so it
    # renders as it did then (the defaults above may change; what a file meant may not).
    ABSENT_IN_FILE: typing.ClassVar[dict[str, Any]] = {
        "strength": 1.0, "framing": "crop", "anchor": "latent"}


@dataclass
class Recipe:
    """Everything that fixes one output image."""
    version: int = RECIPE_VERSION
    model: str = "default"          # engine.models.zoo spec: 'default', a Hub id, a file path
    latent: LatentSpec = field(default_factory=LatentSpec)
    bends: list[Bend] = field(default_factory=list)
    weight_edits: list[WeightEdit] = field(default_factory=list)
    translator: TranslatorSpec | None = None
    output_size: int | None = None  # resize the output to this many pixels a side
    blend: BlendSpec | None = None  # mix the model with another of the same architecture
    # Live controls bound to numeric fields (engine.recipes.mappings): plain JSON objects.
    mappings: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self, indent: int | None = 2) -> str:
        try:
            return json.dumps(self.to_dict(), indent=indent, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise RecipeError([f"recipe: cannot be written as JSON ({exc})"]) from exc

    @classmethod
    def from_dict(cls, data: Any) -> Recipe:
        """Build from parsed JSON; raises RecipeError for unknown keys and wrong types."""
        problems: list[str] = []
        recipe = _build(cls, data, "", problems)
        if problems:
            raise RecipeError(problems)
        return recipe

    @classmethod
    def from_json(cls, text: str) -> Recipe:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RecipeError([f"recipe: not valid JSON ({exc.msg} at line {exc.lineno})"]
                              ) from exc
        except RecursionError as exc:  # json recurses per bracket: "[" * 10**5 ends here
            raise RecipeError(["recipe: nested too deeply to be a recipe"]) from exc
        except ValueError as exc:  # int() refuses over 4300 digits (sys.get_int_max_str_digits)
            raise RecipeError(["recipe: holds a number too long to be a recipe value"]) from exc
        return cls.from_dict(data)

    def save(self, path: str | os.PathLike) -> Path:
        """Write JSON atomically (temp file + rename)."""
        return atomic_write_text(path, self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> Recipe:
        from engine.base.files import regular_file_size
        from engine.base.limits import current_limits

        path = Path(path)
        if not path.exists():
            raise StudioError(f"recipe file not found: {path}")
        regular_file_size(path, "recipe file", current_limits().upload_bytes)
        try:
            return cls.from_json(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as exc:
            raise RecipeError([f"recipe: {path.name} is not UTF-8 text"]) from exc


# ----------------------------------------------------------------------------------------
# Typed (de)serialisation of nested dataclasses.


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    # Cached: resolving string annotations costs more than a small render's bends.
    return typing.get_type_hints(cls)


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return "a list"
    if origin is dict:
        return "a mapping"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "an object"
    return {int: "a whole number", float: "a number", str: "text", bool: "true or false"
            }.get(tp, getattr(tp, "__name__", str(tp)))


def _build(tp: Any, data: Any, path: str, problems: list[str]) -> Any:
    """Convert JSON data to `tp`, appending 'path: reason' for everything that does not fit."""
    where = path or "recipe"
    origin = typing.get_origin(tp)
    if tp is Any:
        return data
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if data is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _build(inner[0], data, path, problems)
        for a in inner:  # first member that takes the value without complaint
            trial: list[str] = []
            value = _build(a, data, path, trial)
            if not trial:
                return value
        problems.append(f"{where}: {data!r} is not {_type_name(tp)}")
        return data
    if dataclasses.is_dataclass(tp):
        if not isinstance(data, Mapping):
            problems.append(f"{where}: {_short(data)} is not an object")
            return tp() if _constructible(tp) else data
        hints = _hints(tp)
        names = [f.name for f in dataclasses.fields(tp)]
        kwargs = {}
        for key, value in data.items():
            if key not in hints:
                problems.append(f"{_join(path, str(key))}: unknown field "
                                f"(known: {', '.join(names)})")
                continue
            kwargs[key] = _build(hints[key], value, _join(path, key), problems)
        missing = [f.name for f in dataclasses.fields(tp) if f.name not in kwargs
                   and f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING]
        for name in missing:
            problems.append(f"{_join(path, name)}: required field is missing")
            kwargs[name] = None
        for name, value in getattr(tp, "ABSENT_IN_FILE", {}).items():
            kwargs.setdefault(name, value)
        return tp(**kwargs)
    if origin is list:
        if not isinstance(data, list):
            problems.append(f"{where}: {_short(data)} is not a list")
            return []
        if len(data) > MAX_LIST_ENTRIES:
            problems.append(f"{where}: {len(data)} entries are more than a recipe list holds "
                            f"(at most {MAX_LIST_ENTRIES})")
            return []
        (item,) = typing.get_args(tp) or (Any,)
        return [_build(item, v, f"{path}[{i}]", problems) for i, v in enumerate(data)]
    if origin is dict:
        if not isinstance(data, Mapping) or not all(isinstance(k, str) for k in data):
            problems.append(f"{where}: {_short(data)} is not a mapping of names to values")
            return {}
        return dict(data)
    why = _scalar_problem(tp, data)
    if why:
        problems.append(f"{where}: {why}")
        return data
    if tp is int and isinstance(data, float):
        return int(data)  # 5.0 from a JSON writer that does not keep integers
    return data


def _constructible(tp: type) -> bool:
    return all(f.default is not dataclasses.MISSING or f.default_factory is not
               dataclasses.MISSING for f in dataclasses.fields(tp))


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _scalar_problem(tp: Any, value: Any) -> str | None:
    if tp is bool:
        return None if isinstance(value, bool) else f"{_short(value)} is not true or false"
    if tp is str:
        return None if isinstance(value, str) else f"{_short(value)} is not text"
    if tp in (int, float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"{_short(value)} is not a number"
        if not math.isfinite(value):
            return f"{value!r} is not a finite number"
        if tp is int and float(value) != int(value):
            return f"{value!r} is not a whole number"
    return None


def _type_problems(tp: Any, value: Any, path: str) -> list[str]:
    """Type problems of an already built object (a recipe made in Python, or edited)."""
    origin = typing.get_origin(tp)
    where = path or "recipe"
    if tp is Any:
        return []
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return []
        inner = [a for a in args if a is not type(None)]
        results = [_type_problems(a, value, path) for a in inner]
        if any(not r for r in results):
            return []
        return results[0] if len(inner) == 1 else [f"{where}: {_short(value)} is not "
                                                   f"{_type_name(tp)}"]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, tp):
            return [f"{where}: {_short(value)} is not {_type_name(tp)}"]
        out = []
        for name, hint in _hints(tp).items():
            out += _type_problems(hint, getattr(value, name), _join(path, name))
        return out
    if origin is list:
        if not isinstance(value, list):
            return [f"{where}: {_short(value)} is not a list"]
        if len(value) > MAX_LIST_ENTRIES:
            return [f"{where}: {len(value)} entries are more than a recipe list holds "
                    f"(at most {MAX_LIST_ENTRIES})"]
        (item,) = typing.get_args(tp) or (Any,)
        return [p for i, v in enumerate(value) for p in _type_problems(item, v, f"{path}[{i}]")]
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            return [f"{where}: {_short(value)} is not a mapping of names to values"]
        return []
    why = _scalar_problem(tp, value)
    if why:
        return [f"{where}: {why}"]
    if tp is int and not isinstance(value, int):
        return [f"{where}: {value!r} must be written as a whole number ({int(value)})"]
    return []


# ----------------------------------------------------------------------------------------
# Validation.


def _generator_of(model: Any) -> Any:
    if model is None:
        return None
    if isinstance(model, torch.nn.Module):
        return model
    return model.G


def _count_problems(recipe: Recipe, limits: Limits) -> list[str]:
    """How many bends and edits a recipe holds, against the limits: checked first, so a
    recipe with ten thousand bends is refused before any of them is looked at."""
    counts = {"bends": recipe.bends, "weight_edits": recipe.weight_edits,
              "mappings": recipe.mappings}
    latent = recipe.latent
    if isinstance(latent, LatentSpec):
        counts.update({"latent.layer_edits": latent.layer_edits,
                       "latent.directions": latent.directions})
    out = []
    for path, items in counts.items():
        if isinstance(items, list):
            why = above_limit(path.rsplit(".", 1)[-1], len(items), limits)
            if why:
                out.append(f"{path}: {why.replace(' is above', ' entries are above', 1)}")
    return out


def recipe_problems(recipe: Any, G: Any = None, limits: Limits | None = None) -> list[str]:
    """Every problem of a recipe as 'path: reason' (empty when it renders).

    `limits` (default: engine.base.limits as the environment sets them now) caps what a recipe may
    ask for, the same caps the studio's sliders stop at: this is the one check every render
    path (engine.render, the CLI, the studio, API calls) goes through."""
    if not isinstance(recipe, Recipe):
        return [f"recipe: {_short(recipe)} is not a Recipe"]
    limits = limits or current_limits()
    too_many = _count_problems(recipe, limits)
    if too_many:
        return too_many
    problems = _type_problems(Recipe, recipe, "")

    def clean(prefix: str) -> bool:  # semantic checks only where the types are right
        return not any(p.startswith(prefix) for p in problems)

    out = list(problems)
    if clean("version") and recipe.version != RECIPE_VERSION:
        out.append(f"version: {recipe.version} is not supported (this engine reads "
                   f"version {RECIPE_VERSION})")
    if clean("model") and not recipe.model.strip():
        out.append("model: name a model (for example 'default')")
    if clean("output_size") and recipe.output_size is not None:
        why = above_limit("output_size", recipe.output_size, limits)
        if why:
            out.append(f"output_size: {why}")
        elif not MIN_OUTPUT_SIZE <= recipe.output_size <= MAX_OUTPUT_SIZE:
            out.append(f"output_size: {recipe.output_size} must be from {MIN_OUTPUT_SIZE} to "
                       f"{MAX_OUTPUT_SIZE}")
    if clean("latent"):
        out += _latent_problems(recipe.latent, G)
    if isinstance(recipe.bends, list):
        for i, b in enumerate(recipe.bends):
            if clean(f"bends[{i}]"):
                out += [f"bends[{i}].{p}" for p in validate_bend(b, G, limits)]
    if isinstance(recipe.weight_edits, list):
        for i, e in enumerate(recipe.weight_edits):
            if clean(f"weight_edits[{i}]"):
                out += [f"weight_edits[{i}].{p}" for p in validate_weight_edit(e, G, limits)]
    if recipe.blend is not None and clean("blend"):
        out += [f"blend.{p}" for p in blend_problems(recipe.blend, G)]
    if recipe.mappings and clean("mappings"):
        from engine.recipes.mappings import mapping_problems  # lazy: it imports this module

        out += mapping_problems(recipe, limits)
    t = recipe.translator
    if t is not None and clean("translator"):
        if not t.encoder.strip():
            out.append("translator.encoder: name an encoder file or id")
        if t.image is not None and not Path(t.image).is_file():
            out.append(f"translator.image: file not found: {t.image}")
        if t.input_size is not None:
            why = above_limit("translator_input_size", t.input_size, limits)
            if why:
                out.append(f"translator.input_size: {why}")
            elif not 16 <= t.input_size <= 2048:
                out.append(f"translator.input_size: {t.input_size} must be from 16 to 2048")
        if not (isinstance(t.strength, int | float) and 0.0 <= t.strength <= 1.0):
            out.append(f"translator.strength: {t.strength!r} must be from 0 to 1")
        from engine.tools.translator import ANCHORS, FRAMINGS
        if t.framing not in FRAMINGS:
            out.append(f"translator.framing: {t.framing!r} must be one of {', '.join(FRAMINGS)}")
        if t.anchor not in ANCHORS:
            out.append(f"translator.anchor: {t.anchor!r} must be one of {', '.join(ANCHORS)}")
    return out


def _latent_problems(spec: LatentSpec, G: Any) -> list[str]:
    from engine.tools.latents import validate_latent

    try:
        found = validate_latent(spec, G)
    except (TypeError, ValueError, AttributeError, OverflowError) as exc:
        return [f"latent: cannot be checked ({exc})"]
    # latents.py ends its messages with a full stop; recipe messages are joined by '; '.
    return [p.rstrip(".") for p in found]


def validate(recipe: Recipe, G: Any = None, limits: Limits | None = None) -> None:
    """Raise RecipeError listing every problem; G (or a LoadedModel) adds model checks."""
    problems = recipe_problems(recipe, _generator_of(G), limits)
    if problems:
        raise RecipeError(problems)


# ----------------------------------------------------------------------------------------
# Rendering.


def _load_model(recipe: Recipe, model: Any) -> tuple[Any, str | None]:
    """(G, model_key) from a LoadedModel, a bare Generator, or engine.models.zoo.load."""
    if model is None:
        from engine.models import zoo  # lazy: zoo pulls in huggingface_hub

        model = zoo.load(recipe.model)
    if isinstance(model, torch.nn.Module):
        return model, None
    key = getattr(model, "sha256", None) or getattr(model, "id", None)
    return model.G, key


def _blended(spec: BlendSpec, G: Any, key: str | None) -> tuple[Any, str | None]:
    """(the blended generator, its cache key) for a recipe's blend of G with spec.model."""
    from engine.models import zoo  # lazy: zoo pulls in huggingface_hub
    from engine.tools.blend import blended_generator, describe

    loaded_b = zoo.load(spec.model)
    blended = blended_generator(G, loaded_b.G, spec)
    key_b = getattr(loaded_b, "sha256", None) or getattr(loaded_b, "id", None)
    # Clusters and other per-model caches must not mix the blend up with model A.
    return blended, None if key is None else f"{key}+{key_b}|{describe(spec, G)}"


@torch.no_grad()
def render_tensor(recipe: Recipe, model: Any = None, seeds: Sequence[float] | None = None,
                  ws: torch.Tensor | None = None, validated: bool = False,
                  **synthesis: Any) -> Any:
    """Render a batch: [N, 3, H, W] in [-1, 1] (before output_size resizing).

    The ws come from the recipe's latent, or one per entry of `seeds` (the recipe's latent
    with each seed), or are given directly as `ws` [N, num_ws, w_dim]. Bends apply to all.
    `synthesis` passes further per-call arguments to G.synthesis (start, stop, capture,
    block_seconds: engine.recipes.incremental's tail renders and previews); with `capture` the
    answer is (image, captured) as the synthesis network gives it.
    """
    G, key = _load_model(recipe, model)
    if not validated:
        validate(recipe, G)
    if recipe.blend is not None:
        G, key = _blended(recipe.blend, G, key)
    from engine.tools.latents import compute_ws, noise_generator, transform_kwargs

    device = next(G.parameters()).device
    if ws is None:
        specs = [recipe.latent] if seeds is None else [
            dataclasses.replace(recipe.latent, seed=float(s)) for s in seeds]
        ws = torch.cat([compute_ws(G, s) for s in specs])
    ws = ws.to(device)
    # Validated just above: the taps need not check the bends again. A caller that validated
    # (a sweep's ends, a music video's base recipe) still has each frame's bends checked.
    taps, weight_taps = make_taps(G, recipe.bends, recipe.weight_edits, key,
                                  validated=not validated)
    gen = noise_generator(recipe.latent, device=device)
    if recipe.translator is not None:
        if synthesis:
            raise ValueError("a translated recipe renders whole: no start, stop or capture")
        return _render_translated(recipe, G, ws, taps, weight_taps, gen)
    return G.synthesis(ws, noise_mode=recipe.latent.noise_mode, taps=taps,
                       weight_taps=weight_taps, noise_generator=gen,
                       **transform_kwargs(G, recipe.latent), **synthesis)


_TRANSLATORS: collections.OrderedDict[tuple, Any] = collections.OrderedDict()
_TRANSLATORS_LOCK = threading.Lock()


def _after_fork_in_child() -> None:
    global _TRANSLATORS_LOCK
    _TRANSLATORS_LOCK = threading.Lock()  # another thread may have held it at fork time


os.register_at_fork(after_in_child=_after_fork_in_child)
TRANSLATOR_CACHE_SIZE = 4


def cached_translator(encoder: str, G: Any) -> Any:
    """Translator.load, remembered for the last few (encoder file, model) pairs: reading the
    encoder again for every re-render of a slider drag would cost as much as the render.
    A changed file (mtime or size) is read again."""
    from engine.tools.translator import Translator

    path = Path(encoder)
    stamp = (path.stat().st_mtime_ns, path.stat().st_size) if path.is_file() else None
    key = (str(encoder), stamp, id(G))
    with _TRANSLATORS_LOCK:
        tr = _TRANSLATORS.get(key)
        if tr is not None and tr.G is G:  # (an id can be reused once a model is freed)
            _TRANSLATORS.move_to_end(key)
            return tr
    tr = Translator.load(encoder, G)
    _listen_to_evictions()
    with _TRANSLATORS_LOCK:
        _TRANSLATORS[key] = tr
        while len(_TRANSLATORS) > TRANSLATOR_CACHE_SIZE:
            _TRANSLATORS.popitem(last=False)
    return tr


@functools.cache
def _listen_to_evictions() -> None:
    from engine.models import zoo  # lazy, as above; registered once, when the cache first fills
    zoo.on_evict(_forget_translators)


def _forget_translators(model: Any) -> None:
    """A model left zoo's LRU: drop the translators built on it, or they keep it in memory."""
    with _TRANSLATORS_LOCK:
        for key in [k for k, tr in _TRANSLATORS.items() if tr.G is model.G]:
            del _TRANSLATORS[key]



def _render_translated(recipe: Recipe, G: Any, ws: torch.Tensor, taps: dict,
                       weight_taps: dict, gen: torch.Generator | None) -> torch.Tensor:
    t = recipe.translator
    if t.image is None:
        raise StudioError("this recipe translates a picture: set translator.image to one")
    from PIL import Image

    tr = cached_translator(t.encoder, G)
    try:
        image = Image.open(t.image).convert("RGB")
    except OSError as exc:
        raise StudioError(f"cannot read the translator's input picture {t.image}: {exc}"
                          ) from exc
    return tr.translate_tensor(image, ws=ws, noise_mode=recipe.latent.noise_mode, taps=taps,
                               weight_taps=weight_taps, noise_generator=gen,
                               input_size=t.input_size, framing=t.framing,
                               strength=t.strength, anchor=t.anchor)


def _resize(img: Any, size: int | None) -> Any:
    from PIL import Image

    if size is None or img.size == (size, size):
        return img
    return img.resize((size, size), Image.Resampling.LANCZOS)


def render(recipe: Recipe, model: Any = None) -> Any:
    """The recipe's image as a PIL.Image (RGB)."""
    return _picture(recipe, model)


def _picture(recipe: Recipe, model: Any = None, validated: bool = False) -> Any:
    """The one way a recipe becomes a picture (render, and every frame of walks and sweeps)."""
    from PIL import Image

    img = render_tensor(recipe, model, validated=validated)
    return _resize(Image.fromarray(to_uint8(img)[0]), recipe.output_size)


# ----------------------------------------------------------------------------------------
# Field paths and sweeps: 'bends.0.params.angle', 'bends[0].params.angle', 'latent.seed'.


def _field_hint(obj: Any, name: str) -> Any:
    return _hints(type(obj)).get(name) if dataclasses.is_dataclass(obj) else None


def _numeric_kind(hint: Any, current: Any, op_spec: Any = None) -> str | None:
    """'int' / 'float' when a field takes numbers, else None."""
    if op_spec is not None:
        return op_spec.type if op_spec.type in ("int", "float") else None
    args = {hint} | set(typing.get_args(hint)) if hint is not None else set()
    if float in args:
        return "float"
    if int in args:
        return "int"
    if hint is None and isinstance(current, int | float) and not isinstance(current, bool):
        return "int" if isinstance(current, int) else "float"
    return None


def set_field(recipe: Recipe, path: str, value: float) -> Recipe:
    """A copy of `recipe` with the numeric field at `path` set to `value` (ints rounded)."""
    out = copy.deepcopy(recipe)
    parts = parse_path(path)
    chain: list[Any] = [out]
    for i, part in enumerate(parts[:-1]):
        chain.append(_step(chain[-1], part, parts[:i + 1], path))
    obj, last = chain[-1], parts[-1]
    owner = chain[-2] if len(chain) >= 2 else None
    if isinstance(obj, dict) and parts[-2] == "params" and isinstance(owner, Bend | WeightEdit):
        registry = WEIGHT_OPERATIONS if isinstance(owner, WeightEdit) else OPERATIONS
        op = registry.get(owner.op)
        spec = op.spec(str(last)) if op is not None else None
        if spec is None:
            raise RecipeError([f"{path}: operation {owner.op!r} has no parameter {last!r}"],
                              "The sweep")
        current = obj.get(last, spec.default)
        kind = _numeric_kind(None, current, spec)
    elif isinstance(last, str) and dataclasses.is_dataclass(obj) and hasattr(obj, last):
        current = getattr(obj, last)
        kind = _numeric_kind(_field_hint(obj, last), current)
    elif isinstance(last, int) and isinstance(obj, list) and 0 <= last < len(obj):
        current = obj[last]
        kind = _numeric_kind(None, current)
    else:
        raise RecipeError([f"{path}: no such field"], "The sweep")
    if kind is None:
        raise RecipeError([f"{path}: {_short(current)} is not a numeric field"], "The sweep")
    new = int(round(value)) if kind == "int" else float(value)
    if isinstance(obj, dict | list):
        obj[last] = new
    else:
        setattr(obj, last, new)
    return out


def _step(obj: Any, part: str | int, so_far: list, path: str) -> Any:
    try:
        if isinstance(part, int) or isinstance(obj, dict):
            return obj[part]
        if not dataclasses.is_dataclass(obj):
            raise TypeError(part)
        return getattr(obj, part)
    except (IndexError, KeyError, AttributeError, TypeError):
        where = ".".join(str(p) for p in so_far)
        raise RecipeError([f"{path}: no such field {where!r}"], "The sweep") from None


def sweep_values(start: float, stop: float, frames: int, loop: bool = False) -> np.ndarray:
    """The swept values, start..stop; with loop, back again without repeating either end
    (so playing it on repeat has no jump)."""
    if frames < 1:
        raise RecipeError([f"frames: {frames} must be 1 or more"], "The sweep")
    values = np.linspace(start, stop, frames) if frames > 1 else np.array([start])
    return np.concatenate([values, values[-2:0:-1]]) if loop else values


def _model_for(recipe: Recipe, model: Any) -> Any:
    if model is None:
        from engine.models import zoo

        model = zoo.load(recipe.model)
    return model


def sweep_recipes(recipe: Recipe, path: str, start: float, stop: float, frames: int,
                  loop: bool = False) -> Iterator[Recipe]:
    """One recipe per frame of a sweep: the field at `path` from start to stop (with loop,
    back again: sweep_values)."""
    for v in sweep_values(start, stop, frames, loop):
        yield set_field(recipe, path, float(v))


def walk_ws(recipe: Recipe, G: Any, seeds: Sequence[float], frames: int, loop: bool = False,
            space: str = "z", radius: float = 0.5) -> Iterator[torch.Tensor]:
    """The ws [1, num_ws, w_dim] of each frame of a walk through keyframe seeds, mapped with
    the recipe's psi, cutoff and class. One seed with loop is a circle walk around it
    (engine.tools.latents.circle_walk_ws: a seamless loop of `frames`); otherwise the keyframes
    are interpolated in Z (slerp) or W (lerp), back to the first with loop."""
    from engine.tools.latents import circle_walk_ws, interpolate_ws

    lat = recipe.latent
    if len(seeds) == 1 and loop:
        return circle_walk_ws(G, float(seeds[0]), frames, radius=radius, psi=lat.psi,
                              cutoff=lat.cutoff, class_index=lat.class_index)
    return interpolate_ws(G, list(seeds), frames, space=space, loop=loop, psi=lat.psi,
                          cutoff=lat.cutoff, class_index=lat.class_index)


def at_ws(recipe: Recipe, ws: torch.Tensor) -> Recipe:
    """A copy of the recipe showing `ws` (a walk's frame): its latent's w is set (psi 1 and
    no cutoff: walk_ws applied them); bends, weight edits, mixing, layer edits, directions
    and the translator stay and apply to the frame as to the picture."""
    from engine.tools.latents import ws_to_list

    r = copy.deepcopy(recipe)
    r.latent.w = ws_to_list(ws)
    r.latent.psi, r.latent.cutoff = 1.0, None
    return r


def walk_recipes(recipe: Recipe, seeds: Sequence[float], frames: int, model: Any = None,
                 loop: bool = False, space: str = "z", radius: float = 0.5
                 ) -> Iterator[Recipe]:
    """One recipe per frame of a walk through keyframe seeds (walk_ws, at_ws)."""
    G = _generator_of(_model_for(recipe, model))
    for ws in walk_ws(recipe, G, seeds, frames, loop=loop, space=space, radius=radius):
        yield at_ws(recipe, ws)


def recipe_frames(recipes: Iterable[Recipe], model: Any = None) -> Iterator[np.ndarray]:
    """Each recipe rendered to a uint8 HxWx3 frame, its output_size applied: exactly
    np.asarray(render(r)). The one renderer of walks and sweeps, for the video files and the
    studio's live playback alike. The first recipe is validated; the others differ from it
    by a w the model made or by a swept value between checked ends."""
    first = True
    for r in recipes:
        model = _model_for(r, model)
        yield np.asarray(_picture(r, model, validated=not first))
        first = False


def walk_frames(recipe: Recipe, seeds: Sequence[float], frames: int, model: Any = None,
                loop: bool = False, space: str = "z", radius: float = 0.5
                ) -> Iterator[np.ndarray]:
    """The frames of a walk through keyframe seeds with everything the recipe does."""
    model = _model_for(recipe, model)
    return recipe_frames(walk_recipes(recipe, seeds, frames, model, loop=loop, space=space,
                                      radius=radius), model)


def sweep_frames(recipe: Recipe, path: str, start: float, stop: float, frames: int,
                 model: Any = None, loop: bool = False) -> Iterator[np.ndarray]:
    """Render one uint8 HxWx3 frame per value of the field at `path`, start..stop."""
    model = _model_for(recipe, model)
    G = _generator_of(model)
    values = sweep_values(start, stop, frames)
    # Check both ends before rendering anything: a bad range fails at once, not mid-video.
    for v in (values[0], values[-1]):
        validate(set_field(recipe, path, float(v)), G)
    return recipe_frames(sweep_recipes(recipe, path, start, stop, frames, loop=loop), model)


def sweep(recipe: Recipe, path: str, start: float, stop: float, frames: int,
          out: str | os.PathLike, fps: float = 30, model: Any = None,
          progress: Callable[[int], Any] | None = None, cancel: Any = None) -> Path:
    """Animate a numeric field into a .mp4 or .gif; returns the written path."""
    from engine.base.video import write_video

    return write_video(sweep_frames(recipe, path, start, stop, frames, model), out, fps=fps,
                       progress=progress, cancel=cancel)


def walk(recipe: Recipe, seeds: Sequence[float], frames: int, out: str | os.PathLike,
         fps: float = 30, model: Any = None, loop: bool = False, space: str = "z",
         radius: float = 0.5, progress: Callable[[int], Any] | None = None,
         cancel: Any = None) -> Path:
    """A walk through keyframe seeds (walk_frames: bends and all) into a .mp4 or .gif."""
    from engine.base.video import write_video

    return write_video(walk_frames(recipe, seeds, frames, model, loop=loop, space=space,
                                   radius=radius), out, fps=fps, progress=progress,
                       cancel=cancel, total=frames)
