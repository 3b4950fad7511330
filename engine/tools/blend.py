"""Model blending: two generators of one architecture mixed block by block.

As in "toonify" (Pinkney & Adler 2020) and Autolume, a fine-tuned model and its base share
every parameter name and shape, so they can be mixed:

- **layer swap** at resolution N: every synthesis block up to and including b{N} (its
  convs, noise, ToRGB) comes from model A, every later block from model B;
- **interpolation**: each block's parameters are (1 - alpha) A + alpha B, with one alpha
  per block resolution (or one for all), so alpha 0 is A and alpha 1 is B, bit for bit;
- the **mapping network** (and its w_avg) comes whole from A or from B.

A swap is the interpolation whose alphas step from 0 to 1 after b{N}. The blended generator
is a new module (the shared models are never touched) and the last few are cached, so a
live slider re-blends only when its value changes.
"""

from __future__ import annotations

import copy
import math
import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch

from engine.base.errors import StudioError

BLEND_MODES = ("swap", "interpolate")
MAPPING_SOURCES = ("a", "b")
BLEND_CACHE_SIZE = 2   # blended generators kept (each is a full copy of a model)
# Configuration fields that change what the weights mean; the channel counts per block and
# the parameter shapes are compared after them.
ARCHITECTURE_FIELDS = ("resolution", "z_dim", "w_dim", "c_dim", "img_channels",
                       "architecture", "mapping_layers", "mapping_lr_mul")


@dataclass
class BlendSpec:
    """Blend the recipe's model (A) with another model (B) of the same architecture."""
    model: str = ""                     # model B: engine.models.zoo spec (id, hf://..., file path)
    mode: str = "swap"                  # 'swap' | 'interpolate'
    swap_res: int = 16                  # swap: blocks b4..b{swap_res} from A, the rest from B
    alpha: float = 0.5                  # interpolate: weight of B in every block (0 A, 1 B)
    alphas: list[float] | None = None   # interpolate: weight of B per block b4, b8, ...
    mapping: str = "a"                  # mapping network and w_avg from 'a' or 'b'


def block_resolutions(G: torch.nn.Module) -> list[int]:
    """Resolutions of the synthesis blocks, from 4 up."""
    return list(G.synthesis.block_resolutions)


def blend_problems(spec: BlendSpec, G: torch.nn.Module | None = None) -> list[str]:
    """Problems of a BlendSpec as 'field: why' (empty when it blends); G adds model checks."""
    p: list[str] = []
    if not isinstance(spec.model, str) or not spec.model.strip():
        p.append("model: name model B to blend with (an id, hf://... or a file)")
    if spec.mode not in BLEND_MODES:
        p.append(f"mode: {spec.mode!r} is not one of {', '.join(BLEND_MODES)}")
    if spec.mapping not in MAPPING_SOURCES:
        p.append(f"mapping: {spec.mapping!r} is not 'a' or 'b'")
    resolutions = block_resolutions(G) if G is not None else None
    if spec.mode == "swap" and resolutions is not None and spec.swap_res not in resolutions:
        p.append(f"swap_res: {spec.swap_res} is not a block resolution of this model "
                 f"({', '.join(map(str, resolutions))})")
    values = [spec.alpha] + list(spec.alphas or [])
    if not all(isinstance(a, (int, float)) and math.isfinite(a) and 0 <= a <= 1
               for a in values):
        p.append("alpha: every alpha must be a number from 0 (model A) to 1 (model B)")
    if spec.alphas is not None and resolutions is not None and \
            len(spec.alphas) != len(resolutions):
        p.append(f"alphas: give one alpha per block ({len(resolutions)}: "
                 f"{', '.join(f'b{r}' for r in resolutions)}), got {len(spec.alphas)}")
    return p


def block_alphas(spec: BlendSpec, G: torch.nn.Module) -> dict[int, float]:
    """The weight of model B in each block, {resolution: alpha}."""
    resolutions = block_resolutions(G)
    if spec.mode == "swap":
        return {r: 0.0 if r <= spec.swap_res else 1.0 for r in resolutions}
    if spec.alphas is not None:
        return {r: float(a) for r, a in zip(resolutions, spec.alphas)}
    return {r: float(spec.alpha) for r in resolutions}


def _shape(t: torch.Tensor) -> str:
    return "[" + ", ".join(map(str, t.shape)) + "]"


def architecture_difference(GA: torch.nn.Module, GB: torch.nn.Module) -> str | None:
    """The first way B's architecture differs from A's, as a phrase; None when they match."""
    if type(GA) is not type(GB):
        return f"A is a {type(GA).__name__} but B is a {type(GB).__name__}"
    ca, cb = GA.cfg, GB.cfg
    names = {f.name for f in fields(ca)}
    for name in ARCHITECTURE_FIELDS:
        if name in names and getattr(ca, name) != getattr(cb, name):
            return f"{name} is {getattr(ca, name)} in A but {getattr(cb, name)} in B"
    for res in block_resolutions(GA):
        if hasattr(ca, "channels") and ca.channels(res) != cb.channels(res):
            return (f"block b{res} has {ca.channels(res)} channels in A but "
                    f"{cb.channels(res)} in B")
    sa, sb = GA.state_dict(), GB.state_dict()
    for name, ta in sa.items():
        if name not in sb:
            return f"A has the parameter {name} and B does not"
        if ta.shape != sb[name].shape:
            return f"{name} is {_shape(ta)} in A but {_shape(sb[name])} in B"
    extra = [name for name in sb if name not in sa]
    if extra:
        return f"B has the parameter {extra[0]} and A does not"
    return None


def check_blendable(GA: torch.nn.Module, GB: torch.nn.Module) -> None:
    """Raise StudioError naming the first difference unless A and B can be blended."""
    for which, G in (("A", GA), ("B", GB)):
        if not hasattr(getattr(G, "synthesis", None), "block_resolutions"):
            raise StudioError(f"Model {which} has no StyleGAN2 blocks (b4, b8, ...); blending "
                              f"swaps and mixes those blocks, so it needs StyleGAN2 models.")
    diff = architecture_difference(GA, GB)
    if diff is not None:
        raise StudioError(f"These models cannot be blended because {diff}; blending needs "
                          f"two models of one architecture, such as a fine-tuned model and "
                          f"its base.")


def _parameter_alpha(name: str, alphas: Mapping[int, float], mapping: str) -> float:
    """Weight of B for one state-dict entry: its block's alpha, or 0/1 for the mapping."""
    head = name.split(".")
    if head[0] == "synthesis" and len(head) > 1 and head[1].startswith("b") \
            and head[1][1:].isdigit():
        return alphas[int(head[1][1:])]
    if head[0] == "mapping":
        return 0.0 if mapping == "a" else 1.0
    return 0.0  # anything outside the blocks and the mapping stays A's


@torch.no_grad()
def blend_generators(GA: torch.nn.Module, GB: torch.nn.Module, alphas: Mapping[int, float],
                     mapping: str = "a") -> torch.nn.Module:
    """A new generator: block r = (1 - alphas[r]) A + alphas[r] B; mapping from 'a' or 'b'.

    An alpha of exactly 0 or 1 copies A's or B's tensor, so those blocks equal the source bit
    for bit. Integer buffers (if any) come from whichever model has the larger weight.
    """
    check_blendable(GA, GB)
    if mapping not in MAPPING_SOURCES:
        raise StudioError(f"The mapping network comes from model 'a' or 'b', not {mapping!r}.")
    missing = [r for r in block_resolutions(GA) if r not in alphas]
    if missing:
        raise StudioError(f"Give a blend weight for every block; b{missing[0]} has none.")
    blended = copy.deepcopy(GA).eval()
    for attr in ("sha256", "model_key"):  # A's identity would mislabel per-model caches
        blended.__dict__.pop(attr, None)
    sb = GB.state_dict()
    for name, target in blended.state_dict().items():  # tensors share the module's storage
        alpha = _parameter_alpha(name, alphas, mapping)
        b = sb[name].to(target.device)
        if alpha == 0:
            continue  # the deep copy already holds A's tensor
        if alpha == 1 or not target.is_floating_point():
            if alpha >= 0.5:
                target.copy_(b)
            continue
        target.copy_(torch.lerp(target, b.to(target.dtype), alpha))
    return blended


# ----------------------------------------------------------------------------------------
# Cache of blended generators, keyed by the two models (through weak references) and the
# blend weights, so re-rendering the same blend costs nothing.

_lock = threading.Lock()


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()  # another thread may have held it at fork time


os.register_at_fork(after_in_child=_after_fork_in_child)
_cache: OrderedDict[tuple, tuple[weakref.ref, weakref.ref, torch.nn.Module]] = OrderedDict()


def blended_generator(GA: torch.nn.Module, GB: torch.nn.Module, spec: BlendSpec
                      ) -> torch.nn.Module:
    """The generator a BlendSpec describes (cached for the last few blends)."""
    problems = blend_problems(spec, GA)
    if problems:
        raise StudioError(f"The blend is not valid: {problems[0]}.")
    alphas = block_alphas(spec, GA)
    key = (id(GA), id(GB), tuple(sorted(alphas.items())), spec.mapping)
    with _lock:
        hit = _cache.get(key)
        if hit is not None and hit[0]() is GA and hit[1]() is GB:
            _cache.move_to_end(key)
            return hit[2]
    G = blend_generators(GA, GB, alphas, spec.mapping)  # outside the lock: copies a model
    with _lock:
        _cache[key] = (weakref.ref(GA), weakref.ref(GB), G)
        _cache.move_to_end(key)
        while len(_cache) > BLEND_CACHE_SIZE:
            _cache.popitem(last=False)
    return G


def clear_cache() -> None:
    """Forget every cached blend."""
    with _lock:
        _cache.clear()


def describe(spec: BlendSpec, G: Any) -> str:
    """One line saying where each block comes from, for logs and the page."""
    alphas = block_alphas(spec, G)
    parts = [f"b{r}:{'A' if a == 0 else 'B' if a == 1 else f'{a:.2f}'}"
             for r, a in alphas.items()]
    return f"mapping {spec.mapping.upper()}; " + " ".join(parts)


# ----------------------------------------------------------------------------------------
# Command line: `blend`.


def _parse_alphas(text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(a) for a in text.split(",") if a.strip()]
    except ValueError as exc:
        raise StudioError(f"--alphas must be comma-separated numbers, got {text!r}.") from exc


def add_cli(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "blend", help="blend two models of one architecture (layer swap or interpolation) "
                      "into a new checkpoint",
        description="Write a new model whose synthesis blocks mix model A (--model) and model "
                    "B (--with): --swap-res N takes blocks up to bN from A and the rest from "
                    "B; --alpha / --alphas interpolate the weights (0 = A, 1 = B).")
    p.add_argument("--model", default="default", help="model A: id, hf://... or a file")
    p.add_argument("--with", dest="other", required=True, help="model B, same architecture")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--swap-res", type=int, help="layer swap: blocks b4..bN from A")
    how.add_argument("--alpha", type=float, help="interpolate every block by this weight of B")
    how.add_argument("--alphas", help="interpolate per block b4,b8,...: e.g. 0,0,0.5,1,1")
    p.add_argument("--mapping", choices=MAPPING_SOURCES, default="a",
                   help="take the mapping network (and w_avg) from A or B")
    p.add_argument("--out", required=True, help="output .safetensors (with a .json sidecar)")
    p.set_defaults(func=_cli_blend)


def _cli_blend(args: Any) -> None:
    from engine.gan.checkpoints import save_generator
    from engine.tools.cli_models import load_model
    a, b = load_model(args.model), load_model(args.other)
    spec = BlendSpec(model=args.other, mapping=args.mapping)
    if args.swap_res is not None:
        spec.mode, spec.swap_res = "swap", args.swap_res
    else:
        spec.mode = "interpolate"
        spec.alpha = 0.5 if args.alpha is None else args.alpha
        spec.alphas = _parse_alphas(args.alphas)
    G = blended_generator(a.G, b.G, spec)
    source = {"blend": {"a": args.model, "b": args.other, "mode": spec.mode,
                        "blocks": {f"b{r}": w for r, w in block_alphas(spec, a.G).items()},
                        "mapping": spec.mapping}}
    save_generator(G, args.out, source=source)
    print(f"wrote {args.out}: {describe(spec, a.G)} (0 = A, 1 = B)")
