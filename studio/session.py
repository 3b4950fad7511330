"""One visitor's session: the recipe being edited, what is on screen, and undo/redo.

No Gradio here. The page's events, the API endpoints and the tests call the same functions.
Every edit goes through `edit(sess)`: if it raises, the session is restored exactly as it
was (a NaN slider value leaves nothing behind); if it changes the recipe, the recipe from
before goes on a bounded undo stack. A slider dragged over the live channel goes through
`gesture(sess, key)` instead: one undo entry for the whole drag, not one per frame. Both
hold the session's lock, so the page's events and its live channel edit it in turn. Each
edit function is plain data manipulation; whether the result renders is checked by the
caller (engine validation and the render itself run inside the same `edit` block, so a
recipe that cannot render is rolled back too).
"""

from __future__ import annotations

import copy
import dataclasses
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from engine.base.errors import StudioError
from engine.models.zoo import HF_PREFIX
from engine.recipes.incremental import TailCache
from engine.recipes.recipe import Recipe, RecipeError, TranslatorSpec, parse_path
from engine.tools.bending import OPERATIONS, WEIGHT_OPERATIONS, Bend, ChannelSelection, WeightEdit
from engine.tools.blend import BlendSpec
from engine.tools.clusters import ClusterResult
from engine.tools.latents import DirectionEdit, LatentSpec, LayerEdit
from engine.tools.translator import DEFAULTS as TRANSLATE_DEFAULTS
from studio import files
from studio.jobs import Jobs

UNDO_DEPTH = 50   # recipes kept for undo (a recipe is a few KB; a W+ latent ~40 KB)
LATENT_FIELDS = ("seed", "psi", "cutoff", "noise_mode", "noise_seed", "mix_seed", "mix_start",
                 "mix_end", "directions", "translate", "rotate")


@dataclass
class Session:
    """Everything one visitor is editing: a Recipe plus what is on screen."""
    recipe: Recipe                                  # model, latent, bends, weight edits, ...
    clusters: ClusterResult | None = None          # the clustering on screen
    selected: list[int] = field(default_factory=list)  # chosen cluster ids of `clusters`
    current: int | None = None                      # index of the bend being edited
    projected: list[list[float]] | None = None      # last projection's W+ (not yet sent)
    token: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    jobs: Jobs = field(default_factory=Jobs)
    live: Any = None                                # (key, Translator) for webcam frames
    uploads: set[str] = field(default_factory=set)  # upload paths this session's events got
    undo: list[Recipe] = field(default_factory=list)  # recipes before each edit, newest last
    redo: list[Recipe] = field(default_factory=list)
    # What the direction sliders apply with (method, layer range, boundary file), kept while
    # every amount is 0 and the recipe holds no DirectionEdit: a live channel's value then
    # still knows the boundary the page shows.
    direction_settings: DirectionEdit | None = None
    # The live gesture whose undo entry is the newest one: (its key, that entry).
    gesture_entry: tuple[Any, Recipe] | None = field(default=None, repr=False)
    # Activations the live channel keeps to re-render only the layers after an edit
    # (engine.recipes.incremental): capped in bytes, emptied when idle or when the model changes.
    tail: TailCache = field(default_factory=TailCache, repr=False, compare=False)
    # Held by every edit: the page's events run in Gradio's threads, the live channel's in
    # its own, and each edit must see the other's whole.
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)

    def __deepcopy__(self, memo: dict) -> Session:
        # Gradio copies only a State's initial value; a copy drops the cached translator.
        return Session(recipe=copy.deepcopy(self.recipe, memo),
                       clusters=copy.deepcopy(self.clusters, memo),
                       selected=list(self.selected), current=self.current,
                       projected=copy.deepcopy(self.projected, memo),
                       direction_settings=copy.deepcopy(self.direction_settings, memo))

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["live"] = None  # a loaded Translator does not travel between processes
        del state["lock"]     # a lock neither: the copy gets its own
        state.pop("tail", None)  # nor kept activations (and their lock)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, lock=threading.RLock(), tail=TailCache())

    @property
    def model(self) -> str:
        return self.recipe.model

    def snapshot(self) -> dict[str, Any]:
        """What an edit may change, copied, so a failed edit can be undone exactly."""
        return {"recipe": copy.deepcopy(self.recipe), "clusters": self.clusters,
                "selected": list(self.selected), "current": self.current,
                "projected": self.projected, "uploads": set(self.uploads),
                "direction_settings": self.direction_settings,
                "undo": list(self.undo), "redo": list(self.redo)}

    def restore(self, snap: dict[str, Any]) -> None:
        for name, value in snap.items():
            setattr(self, name, value)


def new_session(model: str) -> Session:
    """A fresh session on `model`: seed 0, psi 0.7, no bends."""
    return Session(recipe=Recipe(model=model, latent=LatentSpec(seed=0.0, psi=0.7)))


def successor(old: Session | None, model: str) -> Session:
    """A fresh session on `model` that keeps what belongs to the visitor, not to the model:
    its token (hence its folder and encoders), its uploads and its running job."""
    new = new_session(model)
    if old is not None:
        new.token, new.uploads, new.jobs = old.token, set(old.uploads), old.jobs
    return new


# ----------------------------------------------------------------------------------------
# Transactions and history.

@contextmanager
def edit(sess: Session) -> Iterator[Session]:
    """One edit: all or nothing, and undoable when it changed the recipe."""
    with sess.lock:
        snap = sess.snapshot()
        try:
            yield sess
        except BaseException:
            sess.restore(snap)
            raise
        if sess.recipe != snap["recipe"]:
            sess.undo = (sess.undo + [snap["recipe"]])[-UNDO_DEPTH:]
            sess.redo = []


@contextmanager
def gesture(sess: Session, key: Any) -> Iterator[Session]:
    """One step of a continuous gesture (a slider dragged over the live channel, many steps a
    second): all or nothing like `edit`, but every step of the gesture `key` shares one undo
    entry, the recipe from before its first step. Another edit in between (its entry on top,
    or an undo that took ours) makes the next step start a new entry."""
    with sess.lock:
        before, current, settings = copy.deepcopy(sess.recipe), sess.current, \
            sess.direction_settings
        try:
            yield sess
        except BaseException:
            sess.recipe, sess.current, sess.direction_settings = before, current, settings
            raise
        if sess.recipe == before:
            return
        ours = sess.gesture_entry
        if ours is None or ours[0] != key or not sess.undo or sess.undo[-1] is not ours[1]:
            sess.undo = (sess.undo + [before])[-UNDO_DEPTH:]
            sess.gesture_entry = (key, before)
        sess.redo = []


def undo(sess: Session) -> bool:
    """Go back one edit; False when there is nothing to undo."""
    return _step(sess, "undo", "redo")


def redo(sess: Session) -> bool:
    """Redo the last undone edit; False when there is nothing to redo."""
    return _step(sess, "redo", "undo")


def _step(sess: Session, source_name: str, target_name: str) -> bool:
    with sess.lock:  # the lists are read under the lock: an edit may replace them
        source, target = getattr(sess, source_name), getattr(sess, target_name)
        if not source:
            return False
        target.append(sess.recipe)
        del target[:-UNDO_DEPTH]
        sess.recipe = source.pop()
        _clamp_current(sess)
        return True


def _clamp_current(sess: Session) -> None:
    n = len(sess.recipe.bends)
    if sess.current is not None and not 0 <= sess.current < n:
        sess.current = n - 1 if n else None


# ----------------------------------------------------------------------------------------
# The model and whole recipes.

def switch_model(sess: Session, model: str) -> None:
    """Start over on another model. Everything that depends on the model goes (recipe,
    clustering, selection, projection, webcam translator, history); what belongs to the
    visitor stays (token, uploads, running job)."""
    fresh = successor(sess, model)
    for name in ("recipe", "clusters", "selected", "current", "projected", "live", "undo",
                 "redo"):
        setattr(sess, name, getattr(fresh, name))
    sess.tail.drop()


def load_recipe(sess: Session, rec: Recipe, merge: bool = False) -> None:
    """Replace the recipe (merge=True: append its bends and weight edits to the current
    ones instead, keeping the latent). A recipe for another model resets the clustering."""
    rec = copy.deepcopy(rec)
    if merge:
        if rec.model != sess.model:
            raise StudioError(f"this recipe is for the model {rec.model!r}, not the one "
                              f"loaded; load it instead of merging.")
        sess.recipe.bends += rec.bends
        sess.recipe.weight_edits += rec.weight_edits
        return
    if rec.model != sess.model:
        sess.clusters, sess.selected, sess.projected, sess.live = None, [], None, None
        sess.tail.drop()
    sess.recipe = rec
    sess.current = 0 if rec.bends else None


# ----------------------------------------------------------------------------------------
# The latent.

def set_latent(sess: Session, **fields: Any) -> None:
    """Set fields of the latent (LATENT_FIELDS). Moving the seed leaves a projected W+."""
    unknown = set(fields) - set(LATENT_FIELDS)
    if unknown:
        raise StudioError(f"unknown latent fields: {', '.join(sorted(unknown))}.")
    lat = sess.recipe.latent
    if "seed" in fields and lat.w is not None and float(fields["seed"]) != lat.seed:
        lat.w = None
    for name, value in fields.items():
        setattr(lat, name, copy.deepcopy(value))


DIRECTION_METHODS = {"sefa": "sefa", "ganspace": "ganspace", "file": "file", "SeFa": "sefa",
                     "GANSpace": "ganspace", "Boundary file": "file"}  # value or label -> method


def set_seed_controls(sess: Session, seed: float, frac: float, psi: float,
                      cutoff: float) -> None:
    """The seed box, its fraction slider, psi and the cutoff slider (0: no cutoff)."""
    set_latent(sess, seed=float(int(seed or 0)) + float(frac or 0), psi=float(psi),
               cutoff=int(cutoff) or None)


def move_directions(sess: Session, method: Any, amounts: list[float]) -> None:
    """The direction sliders moved (the live channel): `method` is the dropdown's value or
    label; the layer range and boundary file stay the session's (a trained or uploaded
    boundary stays in use from the first move). With every amount at 0 the recipe holds no
    direction, so the settings come from beside it (Session.direction_settings)."""
    lat = sess.recipe.latent
    old = lat.directions[0] if lat.directions else sess.direction_settings
    method = DIRECTION_METHODS.get(str(method), old.method if old else "sefa")
    if method == "file" and (old is None or not old.path):
        return  # the boundary file is not uploaded yet: nothing to preview
    set_directions(sess, method, [float(a) for a in amounts], old.layer_start if old else 0,
                   old.layer_end if old else None, old.path if old else None)


def set_directions(sess: Session, method: str, amounts: list[float], start: int,
                   end: int | None, path: str | None = None) -> list[str]:
    """Direction sliders: one DirectionEdit per non-zero amount (a boundary file has one),
    and one at its amount (0 included: an amount of 0 renders nothing) for each slider a
    mapping drives. A DirectionEdit's `index` is its slider's number. Mappings follow
    their slider to its new place in the list; returns the names of those dropped (their
    slider is gone)."""
    if method == "file":
        amounts = amounts[:1] if path else []
    sess.direction_settings = DirectionEdit(method=method, index=0, amount=0.0,
                                            layer_start=int(start), layer_end=end, path=path)
    old = sess.recipe.latent.directions
    mapped = {old[i].index for i in _mapped_indices(sess, "direction")}
    new = [DirectionEdit(method=method, index=i, amount=float(a),
                         layer_start=int(start), layer_end=end, path=path)
           for i, a in enumerate(amounts) if a or i in mapped]
    sess.recipe.latent.directions = new
    sliders = [d.index for d in new]
    return _follow_mappings(sess, "direction", [
        sliders.index(d.index) if d.index in sliders else None for d in old])


def direction_target(sess: Session, slider: Any) -> str:
    """The field path of direction slider `slider`'s amount (a mapping's target, "learn").
    The recipe holds DirectionEdits only for sliders in use, so a slider at 0 gets one at
    amount 0 here (it renders nothing), placed in slider order."""
    if not isinstance(slider, int) or isinstance(slider, bool) or not 0 <= slider < 64:
        raise StudioError("click one of the direction sliders.")
    lat = sess.recipe.latent
    for i, d in enumerate(lat.directions):
        if d.index == slider:
            return f"latent.directions.{i}.amount"
    like = lat.directions[0] if lat.directions else sess.direction_settings
    like = like or DirectionEdit(method="sefa", index=0)
    if like.method == "file" and (slider != 0 or not like.path):
        raise StudioError("a boundary file has one slider: upload the file, then click "
                          "the first slider.")
    place = sum(d.index < slider for d in lat.directions)
    positions = [i + (i >= place) for i in range(len(lat.directions))]
    lat.directions.insert(place, dataclasses.replace(like, index=slider, amount=0.0))
    _follow_mappings(sess, "direction", positions)
    return f"latent.directions.{place}.amount"


def set_blend(sess: Session, spec: BlendSpec | None) -> None:
    """Blend the model with another of its architecture (None: stop blending)."""
    sess.recipe.blend = copy.deepcopy(spec)


def add_layer_edit(sess: Session, op: str, w_index: int, seed: int = 0) -> None:
    sess.recipe.latent.layer_edits.append(LayerEdit(op=op, w_index=int(w_index),
                                                    seed=int(seed)))


def remove_layer_edit(sess: Session, index: int | None = None) -> list[str]:
    """Remove one W+ edit (None: all of them); returns the names of the mappings dropped
    with it (the others follow their edit)."""
    edits = sess.recipe.latent.layer_edits
    return _reshape(sess, "layer edit", edits,
                    lambda: edits.clear() if index is None
                    else edits.pop(_index(edits, index, "layer edit")))


def send_projection(sess: Session) -> bool:
    """Use the last projection's W+ as the latent (psi 1, no truncation, no other edits).
    A translation is turned off: it would draw over the fitted latent. Returns whether one
    was on."""
    if sess.projected is None:
        raise StudioError("fit a photo first.")
    lat = sess.recipe.latent
    lat.w, lat.psi, lat.cutoff, lat.mix_seed = copy.deepcopy(sess.projected), 1.0, None, None
    _reshape(sess, "direction", lat.directions, lat.directions.clear)
    _reshape(sess, "layer edit", lat.layer_edits, lat.layer_edits.clear)
    translating = sess.recipe.translator is not None
    sess.recipe.translator = None
    return translating


# ----------------------------------------------------------------------------------------
# Translation.

def set_translator(sess: Session, encoder: str | None, image: str | None,
                   strength: float = TRANSLATE_DEFAULTS.strength,
                   framing: str = TRANSLATE_DEFAULTS.framing,
                   anchor: str = TRANSLATE_DEFAULTS.anchor) -> None:
    """Point the session's recipe at an encoder and a picture (None turns translation off),
    with the domain strength, what it blends towards and the framing
    (engine.tools.translator.render / frame_pictures)."""
    from engine.tools import translator
    if not encoder or not image:
        sess.recipe.translator = None
        return
    if not encoder.startswith(HF_PREFIX):
        files.check_session_file(encoder, sess.token, sess.uploads)
    if framing not in translator.FRAMINGS:
        raise StudioError(f"framing must be one of {', '.join(translator.FRAMINGS)}.")
    sess.recipe.translator = TranslatorSpec(
        encoder=encoder, image=image, strength=translator.check_strength(strength),
        framing=framing, anchor=translator.check_anchor(anchor))


def live_translator(sess: Session, encoder: str, model: Any) -> Any:
    """The session's Translator for webcam frames on the loaded `model` (kept in the
    session, not globally)."""
    from engine.tools import translator
    cache = sess.live
    # Only while it is built on the model loaded now: one the zoo evicted must not live on.
    if cache is not None and cache[0] == (sess.model, encoder) and cache[1].G is model.G:
        return cache[1]
    if not encoder.startswith(HF_PREFIX):
        files.check_session_file(encoder, sess.token, sess.uploads)
    tr = translator.Translator.load(encoder, model.G, model_sha256=model.sha256)
    sess.live = ((sess.model, encoder), tr)
    return tr


# ----------------------------------------------------------------------------------------
# Clusters.

def set_clusters(sess: Session, result: ClusterResult | None) -> None:
    sess.clusters, sess.selected = result, []


def select_clusters(sess: Session, ids: list[int]) -> list[int]:
    """Set the selected cluster ids; returns the ids newly added."""
    c = _need_clusters(sess)
    ids = sorted({int(i) for i in ids})
    bad = [i for i in ids if not 0 <= i < c.k]
    if bad:
        raise StudioError(f"there is no cluster {bad[0]}; this clustering has {c.k}.")
    added = [i for i in ids if i not in sess.selected]
    sess.selected = ids
    return added


def toggle_cluster(sess: Session, cid: int) -> None:
    _need_clusters(sess)
    ids = set(sess.selected) ^ {int(cid)}
    select_clusters(sess, list(ids))


def _need_clusters(sess: Session) -> ClusterResult:
    if sess.clusters is None:
        raise StudioError("compute clusters first.")
    return sess.clusters


def selection_for(sess: Session, mode: str, fraction: float = 0.5,
                  seed: int = 0) -> ChannelSelection:
    """The channel selection a new bend or weight edit gets from the page's choice."""
    if mode == "selected clusters":
        c = sess.clusters
        if c is None or not sess.selected:
            raise StudioError("no clusters are selected; compute clusters on the Clusters tab "
                              "and click the tiles you want, or choose 'all channels'.")
        return ChannelSelection(mode="clusters", layer=c.layer, k=c.k, ids=sorted(sess.selected),
                                samples=c.samples, cluster_seed=c.seed)
    if mode == "random fraction":
        fraction = float(fraction)
        if not 0 < fraction <= 1:  # NaN fails this too
            raise StudioError("the random fraction must be more than 0 and at most 1.")
        return ChannelSelection(mode="random", fraction=fraction, seed=int(seed))
    return ChannelSelection(mode="all")


# ----------------------------------------------------------------------------------------
# Bends and weight edits: add, set, move, toggle, remove.

def default_params(op: str) -> dict[str, Any]:
    return {p.name: p.default for p in OPERATIONS[op].params}


def add_bend(sess: Session, layer: str, op: str, channels: ChannelSelection,
             params: dict[str, Any] | None = None) -> int:
    """Append a bend and make it the one being edited; returns its index."""
    if op not in OPERATIONS:
        raise StudioError(f"unknown operation {op!r}; choose one from the list.")
    if not layer:
        raise StudioError("choose the layer to bend.")
    sess.recipe.bends.append(Bend(layer=layer, op=op, params={**default_params(op),
                                                                **(params or {})},
                                  channels=channels))
    sess.current = len(sess.recipe.bends) - 1
    return sess.current


def set_bend_param(sess: Session, index: int, name: str, value: Any) -> None:
    """Set one parameter of bend `index`, typed by the operation's spec."""
    b = sess.recipe.bends[_index(sess.recipe.bends, index, "bend")]
    spec = next((p for p in OPERATIONS[b.op].params if p.name == name), None)
    if spec is None:
        raise StudioError(f"{OPERATIONS[b.op].title} has no parameter {name!r}; it has "
                          f"{', '.join(p.name for p in OPERATIONS[b.op].params) or 'none'}.")
    b.params[name] = _typed(spec.type, value, name)
    sess.current = index


PARAM_KINDS = {"float": ("float", "int"), "choice": ("choice",), "bool": ("bool",)}
# The bend editor's controls by kind (sliders, dropdowns, checkboxes): the slot-th control of
# a kind sets the slot-th parameter of those types of the bend being edited.


def slot_param(sess: Session, kind: str, slot: int) -> str | None:
    """The parameter the slot-th `kind` control of the bend editor sets, or None (no bend
    being edited, or a slot its operation does not use)."""
    if sess.current is None or not 0 <= sess.current < len(sess.recipe.bends):
        return None
    op = OPERATIONS[sess.recipe.bends[sess.current].op]
    names = [p.name for p in op.params if p.type in PARAM_KINDS[kind]]
    return names[slot] if 0 <= slot < len(names) else None


def set_bend_slot(sess: Session, kind: str, slot: int, value: Any) -> bool:
    """Set what the slot-th `kind` control of the bend editor sets; False when nothing."""
    name = slot_param(sess, kind, slot)
    if name is None:
        return False
    set_bend_param(sess, sess.current, name, value)
    return True


def weight_amount_param(sess: Session, index: int) -> str | None:
    """The parameter the weight editor's amount slider sets on edit `index` (its first float:
    a factor, or a noise std), or None when the operation has none."""
    edits = sess.recipe.weight_edits
    if not 0 <= index < len(edits):
        raise StudioError(f"there is no weight edit {index}.")
    names = [p.name for p in WEIGHT_OPERATIONS[edits[index].op].params if p.type == "float"]
    return names[0] if names else None


def set_weight_amount(sess: Session, index: int, amount: float) -> bool:
    """The amount slider on weight edit `index`; False when the edit has no amount."""
    name = weight_amount_param(sess, index)
    if name is None:
        return False
    set_weight_edit(sess, index, **{name: amount})
    return True


def set_weight_edit(sess: Session, index: int, **params: Any) -> None:
    """Change parameters of weight edit `index` (axis, factor, std, ...)."""
    e = sess.recipe.weight_edits[_index(sess.recipe.weight_edits, index, "weight edit")]
    specs = {p.name: p for p in WEIGHT_OPERATIONS[e.op].params}
    for name, value in params.items():
        if name not in specs:
            raise StudioError(f"{WEIGHT_OPERATIONS[e.op].title} has no parameter {name!r}.")
        e.params[name] = _typed(specs[name].type, value, name)


def add_weight_edit(sess: Session, edit_: WeightEdit) -> int:
    sess.recipe.weight_edits.append(edit_)
    return len(sess.recipe.weight_edits) - 1


def move(sess: Session, kind: str, index: int, delta: int) -> int:
    """Move a bend or weight edit by delta places (clamped); returns its new index.
    Mappings follow the items they drive."""
    items = _items(sess, kind)
    i = _index(items, index, kind)
    j = max(0, min(len(items) - 1, i + int(delta)))
    _reshape(sess, kind, items, lambda: items.insert(j, items.pop(i)))
    if kind == "bend":
        sess.current = j
    return j


def toggle(sess: Session, kind: str, index: int, on: bool) -> None:
    items = _items(sess, kind)
    items[_index(items, index, kind)].enabled = bool(on)


def remove(sess: Session, kind: str, index: int | None = None) -> list[str]:
    """Remove one bend or weight edit (None: all of that kind); returns the names of the
    mappings dropped with it (the others follow their item to its new place)."""
    items = _items(sess, kind)
    dropped = _reshape(sess, kind, items, lambda: items.clear() if index is None
                       else items.pop(_index(items, index, kind)))
    if kind == "bend":
        _clamp_current(sess)
    return dropped


# The recipe lists a mapping's target can index into (engine.recipes.mappings.field_info).
MAPPED_LISTS = {"bend": ["bends"], "weight edit": ["weight_edits"],
                "layer edit": ["latent", "layer_edits"], "direction": ["latent", "directions"]}


def _mapped_index(target: Any, kind: str) -> tuple[list, int] | None:
    """(the target's path parts, its index into the list of `kind`), None when it points
    elsewhere."""
    prefix = MAPPED_LISTS[kind]
    try:
        parts = parse_path(target)
    except (RecipeError, TypeError):
        return None
    n = len(prefix)
    if parts[:n] != prefix or len(parts) <= n or not isinstance(parts[n], int):
        return None
    return parts, parts[n]


def _mapped_indices(sess: Session, kind: str) -> set[int]:
    found = (_mapped_index(m.get("target"), kind) for m in sess.recipe.mappings)
    return {hit[1] for hit in found if hit is not None}


def _follow_mappings(sess: Session, kind: str, positions: list[int | None]) -> list[str]:
    """After the list of `kind` changed: a mapping into item i now targets item
    positions[i]; one whose item is gone (None) is dropped, else every render would fail
    validation until it is unmapped. Returns the dropped mappings' names. A target past
    the old list (already broken) is left for validation to report."""
    kept, dropped = [], []
    for m in sess.recipe.mappings:
        hit = _mapped_index(m.get("target"), kind)
        if hit is None or hit[1] >= len(positions):
            kept.append(m)
        elif positions[hit[1]] is None:
            dropped.append(str(m.get("name")))
        else:
            parts, n = hit[0], len(MAPPED_LISTS[kind])
            parts[n] = positions[hit[1]]
            kept.append({**m, "target": ".".join(str(p) for p in parts)})
    sess.recipe.mappings = kept
    return dropped


def _reshape(sess: Session, kind: str, items: list, change: Any) -> list[str]:
    """Run `change()` on the list `items` of `kind` in place (reorder, remove), then let
    the mappings follow each item by identity; returns the names of those dropped."""
    before = list(items)
    change()
    where = {id(item): i for i, item in enumerate(items)}
    return _follow_mappings(sess, kind, [where.get(id(item)) for item in before])


def _items(sess: Session, kind: str) -> list:
    if kind == "bend":
        return sess.recipe.bends
    if kind == "weight edit":
        return sess.recipe.weight_edits
    raise StudioError(f"unknown kind of edit {kind!r}.")


def _index(items: list, index: Any, what: str) -> int:
    try:
        i = int(index)
    except (TypeError, ValueError) as exc:
        raise StudioError(f"click a {what} first.") from exc
    if not 0 <= i < len(items):
        raise StudioError(f"there is no {what} {i}; the list has {len(items)}.")
    return i


def _typed(kind: str, value: Any, name: str) -> Any:
    """A parameter value as its spec's type; text from the API is parsed."""
    if isinstance(value, str):
        value = _parse(value)
    try:
        if kind == "int":
            return int(round(float(value)))
        if kind == "float":
            return float(value)
        if kind == "bool":
            return bool(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise StudioError(f"{name} must be a number, got {value!r}.") from exc
    return value


def _parse(text: str) -> Any:
    """A parameter value typed as text: number, true/false, or a choice name."""
    t = text.strip()
    if t.lower() in ("true", "false"):
        return t.lower() == "true"
    try:
        return float(t)
    except ValueError:
        return t


# ----------------------------------------------------------------------------------------
# Labels the page shows.

def numbers(text: str, what: str, limit: int) -> list[float]:
    """Comma-separated numbers typed in a box (seeds, psi values), 1 to `limit` of them."""
    try:
        vals = [float(t) for t in str(text).replace(";", ",").split(",") if t.strip()]
    except ValueError as exc:
        raise StudioError(f"{what} must be numbers separated by commas, like 1, 2, 3.") from exc
    if not vals:
        raise StudioError(f"give at least one value for {what}.")
    if len(vals) > limit:
        raise StudioError(f"give at most {limit} values for {what}.")
    return vals


def bend_label(i: int, b: Bend) -> str:
    """One line naming a bend in the stack list."""
    op = OPERATIONS.get(b.op)
    title = op.title if op else b.op
    sel = b.channels
    if sel.mode == "clusters":
        where = f"clusters {','.join(map(str, sel.ids))} (k={sel.k})"
    elif sel.mode == "random":
        where = f"{sel.fraction:.0%} random channels"
    elif sel.mode == "indices":
        where = f"{len(sel.indices)} channels"
    else:
        where = "all channels"
    vals = ", ".join(f"{k}={_short(v)}" for k, v in b.params.items())
    state = "on" if b.enabled else "off"
    return f"{i + 1}. [{state}] {title} @ {b.layer} · {where}" + (f" · {vals}" if vals else "")


def _short(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)
