"""Frames of a recipe being edited, faster than a full render and from the same model.

Two tools for a control that moves many times a second (the studio's live channel):

- Tail renders (`TailCache`). An edit at layer L leaves every activation before L as it was.
  A cache (one per session) keeps the activation entering L and the running RGB image with
  it; the next render whose recipe agrees on everything before L starts there (the synthesis
  network's `start`), so a bend on b256.conv1 of a 1024 px model costs only the blocks from
  256 on. The same operations run on the same inputs: the result equals a full render bit
  for bit. Memory is capped per cache (`max_bytes`, least recently used entries go first) and
  everything is dropped once the cache has been idle `idle_s` seconds (`sweep_idle`).
- Previews (`BlockCosts`, `preview_block`). In the skip architecture each block adds its
  ToRGB output to a running image; that image after block r (`stop`), carried up to the
  output size by the network's own 2x upsampling, is the full picture without the detail of
  the blocks above r. `BlockCosts` learns each block's seconds from the renders it is shown,
  and `preview_block` picks the deepest block whose render fits a frame budget.

Only StyleGAN2 generators (skip or orig architecture) take part, and only recipes that render
the same for the same inputs (no translator, no per-render random noise); anything else
renders whole.
"""

from __future__ import annotations

import copy
import dataclasses
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any

import torch

from engine import recipe as R
from engine.stylegan2 import SynthesisNetwork, upsample_image

DEFAULT_MAX_BYTES = 192 * 2**20  # per cache: the input of b512.conv1 at 1024 px is 64 MiB
DEFAULT_IDLE_S = 120.0           # a cache unused this long is emptied by the next sweep
# A smaller running image says too little about the picture. (Not 64: on 2 CPU cores block
# b64 of a config-f model alone takes ~0.25 s, so a b32 edit must be able to show b32.)
MIN_PREVIEW_RES = 32
EMA = 0.5                        # weight of a new measurement in a block's running cost

_caches: weakref.WeakSet[TailCache] = weakref.WeakSet()
_caches_lock = threading.Lock()


def generator_of(model: Any) -> Any:
    """The Generator of a LoadedModel (or the Generator itself)."""
    return model if isinstance(model, torch.nn.Module) else model.G


def can_start(G: Any) -> bool:
    """Whether G's synthesis can start part-way (StyleGAN2, not the resnet architecture)."""
    return isinstance(G.synthesis, SynthesisNetwork) and G.cfg.architecture != "resnet"


def can_preview(G: Any) -> bool:
    """Whether G's synthesis has a running image to stop at (the skip architecture)."""
    return isinstance(G.synthesis, SynthesisNetwork) and G.cfg.architecture == "skip"


def repeatable(recipe: R.Recipe) -> bool:
    """A recipe whose activations depend only on the recipe: no translator input picture, no
    noise drawn afresh in a sequence that a partial render would not replay."""
    return recipe.translator is None and recipe.latent.noise_mode != "random"


def block_of(layer: str) -> int:
    """The resolution of a layer's block: 'b256.conv1' -> 256."""
    return int(layer.split(".")[0][1:])


def entry_point(layer: str) -> tuple[str, str | None] | None:
    """What a render needs to begin at `layer`: (the conv layer whose output enters it, the
    running image that goes with that output, None when there is none yet); None for the
    first layer, which a render always runs."""
    res, part = block_of(layer), layer.split(".")[1]
    if part == "conv1" and res > 4:
        return f"b{res}.conv0", f"b{res // 2}.img"
    if part == "torgb":
        return f"b{res}.conv1", (f"b{res // 2}.img" if res > 4 else None)
    if part == "conv0":
        return f"b{res // 2}.conv1", (f"b{res // 4}.img" if res > 8 else None)
    return None


# ----------------------------------------------------------------------------------------
# What a recipe asks of each layer.

def _edits_by_layer(recipe: R.Recipe) -> dict[str, list]:
    """The enabled bends and weight edits of each layer, in recipe order (deep copies: the
    session edits its recipe in place)."""
    out: dict[str, list] = {}
    for b in recipe.bends:
        if b.enabled:
            out.setdefault(b.layer, []).append(("bend", copy.deepcopy(b)))
    for e in recipe.weight_edits:
        if e.enabled:
            out.setdefault(e.layer, []).append(("weight", copy.deepcopy(e)))
    return out


def _base(recipe: R.Recipe) -> R.Recipe:
    """What every layer depends on: the recipe without its bends, weight edits and resize."""
    return copy.deepcopy(dataclasses.replace(recipe, bends=[], weight_edits=[],
                                             output_size=None))


@dataclass
class _State:
    """A recipe as the cache compares it, layer by layer."""
    base: R.Recipe
    edits: dict[str, list]

    def before(self, layers: list[str], layer: str) -> list:
        """The edits of every layer before `layer`, in forward order."""
        return [self.edits.get(name, []) for name in layers[:layers.index(layer)]]

    def first_change(self, other: _State | None, layers: list[str]) -> str | None:
        """The first layer whose output can differ between self and other (the first layer
        when the latent or anything else shared differs); None when they render the same."""
        if other is None or other.base != self.base:
            return layers[0]
        return next((name for name in layers
                     if self.edits.get(name, []) != other.edits.get(name, [])), None)


@dataclass
class _Entry:
    layer: str               # the first layer a render from here runs
    model: weakref.ref       # the Generator the activations came from
    base: R.Recipe
    before: list             # edits of the layers before `layer`
    start: tuple             # synthesis start: (layer, activation[, running image])
    nbytes: int
    used: float


def _nbytes(*tensors: torch.Tensor | None) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


# ----------------------------------------------------------------------------------------
# The cache.

class TailCache:
    """One session's kept activations: a render starts from the deepest one still valid for
    its recipe, and keeps the input of the first layer that changed since the last render."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES, idle_s: float = DEFAULT_IDLE_S):
        self.max_bytes, self.idle_s = int(max_bytes), float(idle_s)
        self._entries: dict[str, _Entry] = {}   # entry layer -> entry
        self._last: _State | None = None        # the recipe rendered last
        self._lock = threading.Lock()
        self.used = time.monotonic()
        with _caches_lock:
            _caches.add(self)

    @property
    def nbytes(self) -> int:
        with self._lock:
            return sum(e.nbytes for e in self._entries.values())

    def layers(self) -> list[str]:
        """The entry layers kept now, in no particular order."""
        with self._lock:
            return list(self._entries)

    def drop(self) -> None:
        """Forget every kept activation (a model change, a closed page, idleness)."""
        with self._lock:
            self._entries.clear()
            self._last = None

    def plan(self, recipe: R.Recipe, G: Any) -> tuple[str | None, str | None]:
        """(the layer a render of `recipe` would start at, None for the first; the first
        layer that differs from the last render, None when nothing does or when the recipe
        always renders whole: a translator, another network)."""
        if not can_start(G) or recipe.translator is not None:
            return None, None
        if not repeatable(recipe):
            return None, G.synthesis.layers[0]   # every frame renders from the start
        state, layers = _State(_base(recipe), _edits_by_layer(recipe)), G.synthesis.layers
        with self._lock:
            entry = self._valid_entry(state, G)
            return (entry.layer if entry else None), state.first_change(self._last, layers)

    def render(self, recipe: R.Recipe, model: Any, stop: str | None = None,
               block_seconds: dict[int, float] | None = None) -> torch.Tensor:
        """recipe's image [1, 3, R, R] in [-1, 1] (before output_size), or with `stop` the
        running image after that block [1, 3, r, r]; equal to R.render_tensor's."""
        G = generator_of(model)
        sweep_idle()
        self.used = time.monotonic()
        kwargs: dict[str, Any] = {"block_seconds": block_seconds} if block_seconds is not None \
            else {}
        if stop is not None:
            kwargs["stop"] = stop
        if not can_start(G) or recipe.translator is not None:
            if stop is not None:
                raise ValueError("only a StyleGAN2 skip network's own recipe stops early")
            return R.render_tensor(recipe, model)
        if not repeatable(recipe):
            return R.render_tensor(recipe, model, **kwargs)
        layers = G.synthesis.layers
        state = _State(_base(recipe), _edits_by_layer(recipe))
        with self._lock:
            entry = self._valid_entry(state, G)
            if entry is not None:
                entry.used = time.monotonic()
            keep = self._what_to_keep(state, G, entry, stop)
        if entry is not None:
            kwargs["start"] = entry.start
        if keep is not None:
            kwargs["capture"] = {name for name in entry_point(keep) if name}
        out = R.render_tensor(recipe, model, **kwargs)
        img, captured = out if keep is not None else (out, {})
        if entry is not None and len(entry.start) > 2:   # the image it started with
            captured.setdefault(entry_point(entry.layer)[1], entry.start[2])
        with self._lock:
            self._last = state
            if keep is not None:
                self._keep(keep, state, G, captured, layers)
        return img

    def _valid_entry(self, state: _State, G: Any) -> _Entry | None:
        """The deepest kept entry whose recipe agrees with `state` before its layer."""
        layers = G.synthesis.layers
        best = None
        for e in self._entries.values():
            if e.model() is G and e.base == state.base and \
                    e.before == state.before(layers, e.layer):
                if best is None or layers.index(e.layer) > layers.index(best.layer):
                    best = e
        return best

    def _what_to_keep(self, state: _State, G: Any, entry: _Entry | None,
                      stop: str | None) -> str | None:
        """The layer whose input this render should keep: the first one that changed since
        the last render, when the render computes its input and it is not kept already."""
        layers = G.synthesis.layers
        changed = state.first_change(self._last, layers)
        if changed is None or entry_point(changed) is None or (
                entry is not None and entry.layer == changed):
            return None
        source, image = entry_point(changed)
        first = layers.index(entry.layer) if entry is not None else 0
        if layers.index(source) < first:
            return None                      # starting past it: its input is not computed
        start_res = block_of(entry.layer) if entry is not None else 4
        if image is not None and block_of(image) < start_res and \
                entry_point(entry.layer)[1] != image:   # (the start's own image is there)
            return None
        if stop is not None and block_of(source) > block_of(stop):
            return None
        return changed

    def _keep(self, layer: str, state: _State, G: Any, captured: dict, layers: list[str]
              ) -> None:
        source, image = entry_point(layer)
        x = captured.get(source)
        img = captured.get(image) if image else None
        if x is None:
            return
        size = _nbytes(x, img)
        self._entries.pop(layer, None)       # a stale entry at this layer
        if size > self.max_bytes:
            return
        while self._entries and sum(e.nbytes for e in self._entries.values()) + size > \
                self.max_bytes:
            oldest = min(self._entries.values(), key=lambda e: e.used)
            del self._entries[oldest.layer]
        start = (source, x) if img is None else (source, x, img)
        self._entries[layer] = _Entry(layer, weakref.ref(G), state.base,
                                      state.before(layers, layer), start, size,
                                      time.monotonic())


def sweep_idle(now: float | None = None) -> None:
    """Empty every cache unused for its idle_s (run at each render, so an abandoned session
    holds its activations no longer than the next visitor's frame)."""
    now = time.monotonic() if now is None else now
    with _caches_lock:
        caches = list(_caches)
    for c in caches:
        if now - c.used > c.idle_s and c._entries:
            c.drop()


# ----------------------------------------------------------------------------------------
# Previews: what each block costs here, and the deepest one a frame budget affords.

class BlockCosts:
    """Seconds each synthesis block of one generator takes on this machine, learnt from the
    renders it is shown (a running average); a block not seen yet is estimated from the
    measured ones by its share of the multiply-adds."""

    def __init__(self, G: Any):
        cfg = G.cfg
        self.work: dict[int, float] = {}
        for res in cfg.block_resolutions:
            c_out, c_in = cfg.channels(res), cfg.channels(res // 2) if res > 4 else 0
            self.work[res] = res * res * (9 * c_out * (c_out + c_in) + 3 * c_out)
        self.seconds: dict[int, float] = {}
        self.overhead = 0.0              # per frame outside the blocks: mapping, encode, ...
        self._lock = threading.Lock()

    def observe(self, block_seconds: dict[int, float], start: str | None = None,
                frame_seconds: float | None = None) -> None:
        """Learn from one render's block_seconds. start: the layer it began at (TailCache.plan),
        whose input's block ran only in part and is left out. frame_seconds: the whole
        frame's time, the rest of which is the per-frame overhead."""
        start_res = block_of(entry_point(start)[0]) if start and entry_point(start) else None
        with self._lock:
            for res, s in block_seconds.items():
                if res in self.work and res != start_res:
                    old = self.seconds.get(res)
                    self.seconds[res] = s if old is None else (1 - EMA) * old + EMA * s
            if frame_seconds is not None:
                rest = max(0.0, frame_seconds - sum(block_seconds.values()))
                self.overhead = (1 - EMA) * self.overhead + EMA * rest

    def block(self, res: int) -> float | None:
        """Seconds for block `res`: measured, else scaled from the measured block nearest in
        size; None before anything was measured."""
        with self._lock:
            if res in self.seconds:
                return self.seconds[res]
            if not self.seconds:
                return None
            near = min(self.seconds, key=lambda r: abs(r - res))
            return self.seconds[near] * self.work[res] / self.work[near]

    def estimate(self, start_res: int, stop_res: int) -> float | None:
        """Seconds for a frame that runs the blocks from start_res to stop_res."""
        parts = [self.block(r) for r in self.work if start_res <= r <= stop_res]
        if any(p is None for p in parts):
            return None
        return sum(parts) + self.overhead


_costs: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_costs_lock = threading.Lock()


def costs_for(G: Any) -> BlockCosts:
    """The BlockCosts of a generator (one per loaded model, shared by its sessions)."""
    with _costs_lock:
        c = _costs.get(G)
        if c is None:
            c = _costs[G] = BlockCosts(G)
        return c


def preview_block(G: Any, costs: BlockCosts, budget_s: float, start: str | None,
                  changed: str | None) -> str | None:
    """The block to stop at for a frame within budget_s (None: the full picture).

    start: the layer the render begins at (None: the first); changed: the first layer the
    frame's edit touches (None: the whole picture is wanted). A preview never stops below the
    edit, which would not show it, nor below MIN_PREVIEW_RES. The deepest block whose
    estimated frame fits wins; when none does, the cheapest; before anything was measured,
    the cheapest too (its render is the first measurement)."""
    if changed is None or not can_preview(G):
        return None
    out = G.cfg.resolution
    start_res = block_of(start) if start else 4
    lowest = max(block_of(changed), MIN_PREVIEW_RES, start_res)
    candidates = [r for r in G.cfg.block_resolutions if lowest <= r <= out] or [out]
    estimates = {r: costs.estimate(start_res, r) for r in candidates}
    fits = [r for r, s in estimates.items() if s is not None and s <= budget_s]
    res = max(fits) if fits else min(candidates)
    return None if res == out else f"b{res}"


def to_picture(G: Any, img: torch.Tensor, recipe: R.Recipe) -> Any:
    """A render_tensor image, or a preview's running image carried up to the output size,
    as the recipe's PIL picture (engine.recipe.render's conversion and resize)."""
    from PIL import Image

    if img.shape[-1] < G.cfg.resolution:
        img = upsample_image(G.synthesis, img)
    return R._resize(Image.fromarray(R.to_uint8(img)[0]), recipe.output_size)
