"""Latent side of a StyleGAN2: seeds, truncation, style mixing, per-layer W+ edits, directions.

The dataclasses are the contract that recipe.py and the studio build on; `compute_ws` turns a
`LatentSpec` into the ws one render reads. Directions (SeFa, GANSpace, InterFaceGAN boundary
files) live here too, with a small per-model cache. Interpolation, loops, grids and W/W+
files are further down.
"""

from __future__ import annotations

import math
import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.base import devices
from engine.base.errors import StudioError, cancel_requested
from engine.base.files import atomic_save_npy
from engine.base.images import to_uint8
from engine.gan import networks

MAX_SEED = 2 ** 32 - 1            # numpy RandomState accepts seeds in [0, 2**32 - 1]
NOISE_MODES = ("const", "random", "none")
DIRECTION_METHODS = ("sefa", "ganspace", "file")
LAYER_EDIT_OPS = ("swap", "random", "negate")
W_STATS_SAMPLES = 2000            # mapped samples used to estimate the spread of W
DIRECTION_CACHE_SIZE = 16         # direction sets kept in memory (all models together)


@dataclass
class DirectionEdit:
    """Move along a latent direction by `amount` on the ws in [layer_start, layer_end)."""
    method: str = "sefa"            # 'sefa' | 'ganspace' | 'file'
    index: int = 0                  # which component (sefa / ganspace)
    amount: float = 0.0             # signed step along the unit direction
    layer_start: int = 0            # first w index affected
    layer_end: int | None = None    # one past the last w index (None = all)
    path: str | None = None         # boundary .npy for method 'file'
    layers: list[str] | None = None  # sefa: layers whose affine weights define directions


@dataclass
class LayerEdit:
    """Per-layer W+ edits from the seed notebooks."""
    op: str = "swap"                # 'swap' (take w from another seed) | 'random' | 'negate'
    #                                 ('negate' reflects the w about w_avg: 2 w_avg - w)
    w_index: int = 0                # which w (0 .. num_ws-1)
    seed: int = 0                   # the other seed (swap) or the random w's seed (random)


@dataclass
class LatentSpec:
    """Everything that fixes the ws (and noise) of one render."""
    seed: float = 0.0               # fractional seeds blend neighbouring seeds in Z
    psi: float = 1.0                # truncation
    cutoff: int | None = None       # truncate only the first `cutoff` ws (None = all)
    noise_mode: str = "const"       # 'const' | 'random' | 'none'
    noise_seed: int = 0             # seed of the noise when noise_mode is 'random'
    mix_seed: int | None = None     # style mixing: take ws[mix_start:mix_end] from this seed
    mix_start: int = 0
    mix_end: int | None = None
    class_index: int | None = None  # conditional models: one-hot label
    w: list[list[float]] | None = None  # a saved W+ [num_ws][w_dim]; overrides seed when set
    directions: list[DirectionEdit] = field(default_factory=list)
    layer_edits: list[LayerEdit] = field(default_factory=list)
    # StyleGAN3 only: move the input features as NVlabs gen_images.py --translate/--rotate.
    translate: list[float] | None = None  # [x, y] in image widths (0.1 = a tenth across)
    rotate: float = 0.0                   # degrees, anticlockwise


# ----------------------------------------------------------------------------------------
# Small helpers.


def model_device(G: torch.nn.Module) -> torch.device:
    """The device of a model's parameters (CPU or CUDA, whichever it was moved to)."""
    return next(G.parameters()).device


def slerp(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray, t: float
          ) -> torch.Tensor | np.ndarray:
    """Spherical interpolation along the last axis; exact endpoints at t=0 and t=1.

    Norms are interpolated linearly so that Z samples keep a typical length; nearly
    parallel vectors fall back to lerp (the arc is a line there).
    """
    if t == 0:
        return a.clone() if isinstance(a, torch.Tensor) else np.array(a, copy=True)
    if t == 1:
        return b.clone() if isinstance(b, torch.Tensor) else np.array(b, copy=True)
    is_np = not isinstance(a, torch.Tensor)
    ta = torch.as_tensor(a, dtype=torch.float64)
    tb = torch.as_tensor(b, dtype=torch.float64).to(ta.device)
    na, nb = ta.norm(dim=-1, keepdim=True), tb.norm(dim=-1, keepdim=True)
    ua, ub = ta / na.clamp_min(1e-12), tb / nb.clamp_min(1e-12)
    dot = (ua * ub).sum(dim=-1, keepdim=True).clamp(-1.0, 1.0)
    omega = torch.arccos(dot)
    so = torch.sin(omega)
    near = so.abs() < 1e-6
    wa = torch.where(near, 1 - t, torch.sin((1 - t) * omega) / so.where(~near, 1.0))
    wb = torch.where(near, torch.full_like(so, t), torch.sin(t * omega) / so.where(~near, 1.0))
    direction = wa * ua + wb * ub
    direction = direction / direction.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    out = direction * ((1 - t) * na + t * nb)
    if is_np:
        return out.numpy().astype(np.asarray(a).dtype)
    return out.to(a.dtype)


def lerp(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray, t: float
         ) -> torch.Tensor | np.ndarray:
    """Linear interpolation with exact endpoints (returns copies at t=0 and t=1)."""
    if t == 0:
        return a.clone() if isinstance(a, torch.Tensor) else np.array(a, copy=True)
    if t == 1:
        return b.clone() if isinstance(b, torch.Tensor) else np.array(b, copy=True)
    return a + (b - a) * t


def _int_seed_z(seed: int, z_dim: int) -> np.ndarray:
    return np.random.RandomState(seed).randn(1, z_dim)


def seed_to_z(seed: float, z_dim: int) -> torch.Tensor:
    """z [1, z_dim] float32 (CPU) for a seed; fractional seeds slerp between neighbours.

    Integer seeds follow NVlabs generate.py: `RandomState(seed).randn(1, z_dim)`, so seed
    numbers mean the same faces as in other tools. Seed 3.25 is a quarter of the way along
    the great circle from seed 3's z to seed 4's z: dragging a seed slider is smooth.
    """
    seed = float(seed)
    if not math.isfinite(seed) or seed < 0 or seed > MAX_SEED:
        raise StudioError(f"Seed {seed:g} is out of range: use a number from 0 to {MAX_SEED}.")
    lo = math.floor(seed)
    frac = seed - lo
    z = _int_seed_z(lo, z_dim)
    if frac > 0 and lo + 1 <= MAX_SEED:
        z = slerp(z, _int_seed_z(lo + 1, z_dim), frac)
    return torch.from_numpy(np.asarray(z)).to(torch.float32)


def class_label(G: torch.nn.Module, class_index: int | None) -> torch.Tensor | None:
    """One-hot label [1, c_dim] for a conditional model, None for an unconditional one."""
    c_dim = G.cfg.c_dim
    if c_dim == 0:
        return None
    if class_index is None:
        raise StudioError(f"This model is conditional: choose a class from 0 to {c_dim - 1}.")
    if not 0 <= int(class_index) < c_dim:
        raise StudioError(f"Class {class_index} is out of range: this model has classes "
                          f"0 to {c_dim - 1}.")
    c = torch.zeros(1, c_dim, device=model_device(G))
    c[0, int(class_index)] = 1
    return c


@torch.no_grad()
def seed_to_ws(G: torch.nn.Module, seed: float, psi: float = 1.0, cutoff: int | None = None,
               class_index: int | None = None) -> torch.Tensor:
    """ws [1, num_ws, w_dim] of one (possibly fractional) seed, truncated by psi/cutoff."""
    z = seed_to_z(seed, G.cfg.z_dim).to(model_device(G))
    return G.mapping(z, class_label(G, class_index), psi=psi, cutoff=cutoff)


# ----------------------------------------------------------------------------------------
# Per-model caches. Keyed by id(G) and checked through a weak reference, so a collected
# model's id reused by a new one never returns stale results.

_cache_lock = threading.Lock()


def _after_fork_in_child() -> None:
    global _cache_lock
    _cache_lock = threading.Lock()  # another thread may have held it at fork time


os.register_at_fork(after_in_child=_after_fork_in_child)
_cache: OrderedDict[Hashable, tuple[weakref.ref, Any]] = OrderedDict()


def _cached(G: torch.nn.Module, key: Hashable, make: Callable[[], Any]) -> Any:
    # Values here are numpy arrays, the same for a model and its copies on other devices.
    G = devices.origin_of(G)
    full_key = (id(G), key)
    with _cache_lock:
        hit = _cache.get(full_key)
        if hit is not None and hit[0]() is G:
            _cache.move_to_end(full_key)
            return hit[1]
    value = make()  # computed outside the lock: GANSpace can take a second or two
    with _cache_lock:
        _cache[full_key] = (weakref.ref(G), value)
        _cache.move_to_end(full_key)
        while len(_cache) > DIRECTION_CACHE_SIZE:
            _cache.popitem(last=False)
    return value


def clear_caches() -> None:
    """Forget every cached direction set and W statistic."""
    with _cache_lock:
        _cache.clear()


def w_stats(G: torch.nn.Module, samples: int = W_STATS_SAMPLES, seed: int = 0
            ) -> tuple[np.ndarray, np.ndarray]:
    """(mean, per-dimension std) of mapped w over random z; cached per model."""
    def make() -> tuple[np.ndarray, np.ndarray]:
        w = sample_w(G, samples, seed)
        return w.mean(axis=0), w.std(axis=0)
    return _cached(G, ("w_stats", samples, seed), make)


@torch.no_grad()
def sample_w(G: torch.nn.Module, samples: int, seed: int = 0, batch: int = 1000,
             progress: Callable[[int], Any] | None = None) -> np.ndarray:
    """[samples, w_dim] untruncated w from z ~ N(0, I) (conditional: random classes);
    progress(w sampled so far) after each batch."""
    gen = torch.Generator().manual_seed(seed)
    device = model_device(G)
    out = []
    for start in range(0, samples, batch):
        n = min(batch, samples - start)
        z = torch.randn(n, G.cfg.z_dim, generator=gen).to(device)
        c = None
        if G.cfg.c_dim > 0:
            idx = torch.randint(0, G.cfg.c_dim, (n,), generator=gen)
            c = torch.nn.functional.one_hot(idx, G.cfg.c_dim).float().to(device)
        out.append(G.mapping(z, c)[:, 0].cpu().numpy())
        if progress is not None:
            progress(start + n)
    return np.concatenate(out).astype(np.float32)


# ----------------------------------------------------------------------------------------
# Directions.


def affine_layer_names(G: torch.nn.Module) -> list[str]:
    """Synthesis layers that have an affine (style) layer, in forward order."""
    return list(G.synthesis.layers)


def _affine(G: torch.nn.Module, layer: str) -> torch.nn.Module:
    try:
        return networks.layer_module(G, layer).affine
    except (AttributeError, KeyError, ValueError) as exc:
        raise StudioError(f"Layer {layer!r} does not exist; layers are "
                          f"{', '.join(affine_layer_names(G))}.") from exc


def sefa_layer_names(G: torch.nn.Module) -> list[str]:
    """The layers SeFa factorises by default: every conv layer and the last ToRGB.

    These are genforce/sefa's `layer_idx='all'` for StyleGAN2: style layers 0..num_ws-2 are
    the convs (w index i feeds conv i) and the last index is the final block's ToRGB; the
    ToRGBs of lower resolutions, which skip architectures add, are left out as there.
    """
    names = affine_layer_names(G)
    torgbs = [n for n in names if networks.is_rgb_layer(G, n)]
    return [n for n in names if not networks.is_rgb_layer(G, n)] + torgbs[-1:]


def sefa_directions(G: torch.nn.Module, layers: Sequence[str] | None = None, top: int = 10
                    ) -> np.ndarray:
    """SeFa (Shen & Zhou 2021): unit directions [top, w_dim] that move the styles the most.

    The styles are s = A w + b. A stacks the chosen layers' affine weights [channels, w_dim]
    and, as in the official implementation (genforce/sefa `factorize_weight`), each row (one
    style channel's weights over w) is scaled to unit length, so every style channel counts
    alike whatever its layer's gain. The directions are the eigenvectors of A^T A in order of
    decreasing eigenvalue: orthonormal. Layers default to `sefa_layer_names` (the official
    'all': every conv and the last ToRGB). rosinality's closed_form_factorization.py skips
    the row scaling and all ToRGBs; pass `layers` to choose another set.
    """
    names = tuple(layers) if layers else tuple(sefa_layer_names(G))

    def make() -> np.ndarray:
        with torch.no_grad():
            rows = []
            for name in names:
                weight = _affine(G, name).weight.detach().to("cpu", torch.float64)
                rows.append(weight / weight.norm(dim=1, keepdim=True).clamp_min(1e-12))
            a = torch.cat(rows, dim=0)                         # [sum(channels), w_dim]
            evals, evecs = torch.linalg.eigh(a.t() @ a)        # ascending eigenvalues
            order = torch.argsort(evals, descending=True)
            return evecs[:, order].t().numpy().astype(np.float32)  # rows: directions
    all_dirs = _cached(G, ("sefa", names), make)
    return all_dirs[:_check_top(top, all_dirs.shape[0])].copy()


def _check_top(top: int, limit: int) -> int:
    if top < 1:
        raise StudioError(f"Ask for at least one direction (got top={top}).")
    return min(int(top), limit)


def ganspace_directions(G: torch.nn.Module, samples: int = 10000, top: int = 10,
                        seed: int = 0, progress: Callable[[float, str], Any] | None = None
                        ) -> np.ndarray:
    """GANSpace: principal axes [top, w_dim] of sampled w (scikit-learn PCA); cached.
    progress(fraction, message) at each stage and sampled batch when it is computed."""
    def make() -> np.ndarray:
        say = progress or (lambda fraction, message: None)
        say(0.0, "GANSpace: loading scikit-learn")
        from sklearn.decomposition import PCA  # lazy: scikit-learn is slow to import
        w = sample_w(G, samples, seed, progress=lambda done: say(
            0.1 + 0.6 * done / samples, f"GANSpace: {done:,} of {samples:,} w sampled"))
        say(0.7, f"GANSpace: principal axes of the {samples:,} w (PCA)")
        n = min(w.shape[1], samples)
        pca = PCA(n_components=n, svd_solver="full", random_state=seed).fit(w)
        comps = pca.components_.astype(np.float32)
        return comps / np.linalg.norm(comps, axis=1, keepdims=True)
    all_dirs = _cached(G, ("ganspace", samples, seed), make)
    return all_dirs[:_check_top(top, all_dirs.shape[0])].copy()


def load_boundary(path: str | os.PathLike, G: torch.nn.Module | None = None) -> np.ndarray:
    """An InterFaceGAN boundary .npy: [1, w_dim] or [num_ws, w_dim] float32, rows unit length.

    With G given, the shape is checked against the model (w_dim, num_ws).
    """
    from engine.base.files import regular_file_size
    from engine.base.limits import current_limits

    path = os.fspath(path)
    name = os.path.basename(path)  # messages name the file, not where a server keeps it
    if os.path.lexists(path):
        # A FIFO would block np.load for good and a device never end: regular files only.
        try:
            regular_file_size(path, "boundary file", current_limits().upload_bytes)
        except StudioError as exc:
            raise StudioError(f"Boundary file {name!r} is not a regular .npy file of at most "
                              f"{current_limits().upload_bytes / 2**20:.0f} MiB.") from exc
    try:
        arr = np.load(path, allow_pickle=False)
    except FileNotFoundError as exc:
        raise StudioError(f"Boundary file {name!r} was not found.") from exc
    except (ValueError, OSError) as exc:
        raise StudioError(f"Boundary file {name!r} is not a readable .npy array.") from exc
    arr = np.asarray(arr, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2:
        raise StudioError(f"Boundary file {name!r} has shape {list(arr.shape)}; expected "
                          f"[1, w_dim] or [num_ws, w_dim].")
    if G is not None:
        w_dim, num_ws = G.cfg.w_dim, G.num_ws
        if arr.shape[1] != w_dim or arr.shape[0] not in (1, num_ws):
            raise StudioError(f"Boundary file {name!r} has shape "
                              f"{list(arr.shape)} but this model needs [1, {w_dim}] or "
                              f"[{num_ws}, {w_dim}].")
    if not np.isfinite(arr).all():
        raise StudioError(f"Boundary file {name!r} contains NaN or infinite values.")
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    if (norms < 1e-12).any():
        raise StudioError(f"Boundary file {name!r} has an all-zero row; it has no direction.")
    return arr / norms


def direction_vector(G: torch.nn.Module, edit: DirectionEdit) -> np.ndarray:
    """The unit direction of an edit: [1, w_dim], or [num_ws, w_dim] for a W+ boundary."""
    if edit.method == "file":
        if not edit.path:
            raise StudioError("A direction from a file needs a boundary .npy path.")
        path = os.fspath(edit.path)
        mtime = os.path.getmtime(path) if os.path.exists(path) else None
        return _cached(G, ("file", path, mtime), lambda: load_boundary(path, G))
    top = edit.index + 1
    if edit.method == "sefa":
        dirs = sefa_directions(G, edit.layers, top=top)
    elif edit.method == "ganspace":
        dirs = ganspace_directions(G, top=top)
    else:
        raise StudioError(f"Unknown direction method {edit.method!r}; use one of "
                          f"{', '.join(DIRECTION_METHODS)}.")
    if edit.index < 0 or edit.index >= dirs.shape[0]:
        raise StudioError(f"Direction {edit.index} does not exist; this model has "
                          f"{dirs.shape[0]} {edit.method} directions.")
    return dirs[edit.index][None]


def apply_direction(ws: torch.Tensor, direction: np.ndarray | torch.Tensor, amount: float,
                    layer_start: int = 0, layer_end: int | None = None) -> torch.Tensor:
    """ws + amount * unit direction on ws[:, layer_start:layer_end] (a new tensor)."""
    d = torch.as_tensor(np.asarray(direction), dtype=ws.dtype, device=ws.device)
    if d.ndim == 1:
        d = d[None]
    d = d / d.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    out = ws.clone()
    if d.shape[0] == 1:
        out[:, layer_start:layer_end] += amount * d  # a slice to None runs to the end
    else:  # a W+ boundary: each w moves along its own row
        out[:, layer_start:layer_end] += amount * d[layer_start:layer_end]
    return out


# ----------------------------------------------------------------------------------------
# LatentSpec -> ws.


def _saved_ws(G: torch.nn.Module, w: Any) -> torch.Tensor:
    arr = np.asarray(w, dtype=np.float32)
    num_ws, w_dim = G.num_ws, G.cfg.w_dim
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != w_dim or arr.shape[0] not in (1, num_ws):
        raise StudioError(f"The saved w has shape {list(np.asarray(w).shape)} but this model "
                          f"needs [{num_ws}, {w_dim}] (W+) or [1, {w_dim}] (W).")
    if arr.shape[0] == 1:
        arr = np.repeat(arr, num_ws, axis=0)
    return torch.from_numpy(np.ascontiguousarray(arr))[None].to(model_device(G))


def _random_w(G: torch.nn.Module, seed: int) -> torch.Tensor:
    """A w drawn straight in W (not through the mapping): w_avg + std * N(0, I).

    This is the notebooks' 'random w' on one layer: a style the mapping network would not
    produce, which is what makes the edit interesting.
    """
    _, std = w_stats(G)
    noise = np.random.RandomState(int(seed)).randn(G.cfg.w_dim).astype(np.float32)
    w_avg = G.mapping.w_avg.detach()
    return w_avg + torch.from_numpy(noise * std).to(w_avg.device)


@torch.no_grad()
def compute_ws(G: torch.nn.Module, spec: LatentSpec) -> torch.Tensor:
    """ws [1, num_ws, w_dim] of a spec: seed or saved w, truncation, mixing, edits, directions.

    Order: base ws (seed through the mapping with psi/cutoff, or the saved w truncated the
    same way) -> style mixing -> per-layer edits -> direction offsets.
    """
    problems = validate_latent(spec, G)
    if problems:
        raise StudioError(problems[0])
    c = class_label(G, spec.class_index)
    device = model_device(G)
    if spec.w is not None:
        from engine.gan.stylegan2 import truncate
        ws = truncate(_saved_ws(G, spec.w), G.mapping.w_avg, spec.psi, spec.cutoff)
    else:
        z = seed_to_z(spec.seed, G.cfg.z_dim).to(device)
        ws = G.mapping(z, c, psi=spec.psi, cutoff=spec.cutoff)
    ws = ws.clone()

    def other(seed: float) -> torch.Tensor:
        return G.mapping(seed_to_z(seed, G.cfg.z_dim).to(device), c, psi=spec.psi,
                         cutoff=spec.cutoff)

    if spec.mix_seed is not None:
        end = G.num_ws if spec.mix_end is None else spec.mix_end
        ws[:, spec.mix_start:end] = other(spec.mix_seed)[:, spec.mix_start:end]
    for edit in spec.layer_edits:
        i = edit.w_index
        if edit.op == "swap":
            ws[:, i] = other(edit.seed)[:, i]
        elif edit.op == "random":
            ws[:, i] = _random_w(G, edit.seed).to(device)
        elif edit.op == "negate":
            # Reflect about the average w, where the model's faces live: -w itself lies far
            # outside the distribution W was trained on and renders as mush.
            ws[:, i] = 2 * G.mapping.w_avg.to(ws.dtype) - ws[:, i]
    for d in spec.directions:
        if d.amount == 0:
            continue
        ws = apply_direction(ws, direction_vector(G, d), d.amount, d.layer_start, d.layer_end)
    return ws


def noise_generator(spec: LatentSpec, device: torch.device | str | None = None
                    ) -> torch.Generator | None:
    """A CPU torch.Generator seeded by spec.noise_seed for noise_mode 'random', else None.

    Always on the CPU, whatever `device` the render runs on (kept for callers that pass it):
    CUDA's generator gives other numbers for the same seed, and a recipe must render the same
    everywhere (engine.base.devices)."""
    if spec.noise_mode != "random":
        return None
    return torch.Generator().manual_seed(int(spec.noise_seed))


MAX_TRANSLATE = 10.0   # image widths: beyond this every feature has left the picture


def has_transform(spec: LatentSpec) -> bool:
    """True when the spec moves or turns the input (StyleGAN3's user transform)."""
    return bool(spec.rotate) or any(float(t) != 0 for t in (spec.translate or ()))


def _transform_problems(spec: LatentSpec, G: torch.nn.Module | None) -> list[str]:
    p: list[str] = []
    t = spec.translate
    if t is not None and (not isinstance(t, list | tuple) or len(t) != 2 or not all(
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
            and abs(v) <= MAX_TRANSLATE for v in t)):
        p.append(f"latent.translate: {t!r} must be two numbers [x, y] between "
                 f"-{MAX_TRANSLATE:g} and {MAX_TRANSLATE:g} (image widths).")
    r = spec.rotate
    if isinstance(r, bool) or not isinstance(r, int | float) or not math.isfinite(r) \
            or abs(r) > 360:
        p.append(f"latent.rotate: {r!r} must be a number of degrees between -360 and 360.")
    if not p and G is not None and has_transform(spec) and not networks.is_stylegan3(G):
        p.append("latent.translate: translate and rotate move a StyleGAN3 model's input "
                 "features; this model is StyleGAN2, so set them to 0.")
    return p


def transform_kwargs(G: torch.nn.Module, spec: LatentSpec) -> dict[str, Any]:
    """Per-call synthesis arguments a spec adds beyond ws and noise: the StyleGAN3 input
    transform when it translates or rotates."""
    if not has_transform(spec) or not networks.is_stylegan3(G):
        return {}
    from engine.gan.stylegan3 import input_transform

    t = spec.translate or (0.0, 0.0)
    return {"transform": input_transform((float(t[0]), float(t[1])), float(spec.rotate))}


def validate_latent(spec: LatentSpec, G: torch.nn.Module | None = None) -> list[str]:
    """Problems with a spec, each 'latent.<field>: why'; empty when it renders.

    Without G only the model-independent checks run.
    """
    p: list[str] = []
    num_ws = G.num_ws if G is not None else None

    def check_w_index(name: str, value: int | None, allow_end: bool = False) -> None:
        p.extend(_w_index_problems(name, value, num_ws, allow_end))

    try:
        seed = float(spec.seed)
        if not math.isfinite(seed) or not 0 <= seed <= MAX_SEED:
            p.append(f"latent.seed: {spec.seed} must be between 0 and {MAX_SEED}.")
    except (TypeError, ValueError):
        p.append(f"latent.seed: {spec.seed!r} is not a number.")
    if not isinstance(spec.psi, (int, float)) or not math.isfinite(spec.psi):
        p.append(f"latent.psi: {spec.psi!r} is not a finite number.")
    elif not -5 <= spec.psi <= 5:
        p.append(f"latent.psi: {spec.psi} is outside -5..5; useful values are 0..1.5.")
    if spec.cutoff is not None:
        if spec.cutoff < 0:
            p.append(f"latent.cutoff: {spec.cutoff} must be 0 or more.")
        check_w_index("latent.cutoff", spec.cutoff, allow_end=True)
    if spec.noise_mode not in NOISE_MODES:
        p.append(f"latent.noise_mode: {spec.noise_mode!r} is not one of "
                 f"{', '.join(NOISE_MODES)}.")
    if not 0 <= int(spec.noise_seed) <= MAX_SEED:
        p.append(f"latent.noise_seed: {spec.noise_seed} must be between 0 and {MAX_SEED}.")
    if spec.mix_seed is not None:
        if not 0 <= spec.mix_seed <= MAX_SEED:
            p.append(f"latent.mix_seed: {spec.mix_seed} must be between 0 and {MAX_SEED}.")
        check_w_index("latent.mix_start", spec.mix_start)
        check_w_index("latent.mix_end", spec.mix_end, allow_end=True)
        if spec.mix_end is not None and spec.mix_end <= spec.mix_start:
            p.append(f"latent.mix_end: {spec.mix_end} must be greater than mix_start "
                     f"({spec.mix_start}).")
    if G is not None:
        p += _model_problems(spec, G)
    p += _transform_problems(spec, G)
    for i, e in enumerate(spec.layer_edits):
        name = f"latent.layer_edits[{i}]"
        if e.op not in LAYER_EDIT_OPS:
            p.append(f"{name}.op: {e.op!r} is not one of {', '.join(LAYER_EDIT_OPS)}.")
        check_w_index(f"{name}.w_index", e.w_index)
        if not 0 <= e.seed <= MAX_SEED:
            p.append(f"{name}.seed: {e.seed} must be between 0 and {MAX_SEED}.")
    for i, d in enumerate(spec.directions):
        p += _direction_problems(f"latent.directions[{i}]", d, G)
    return p


def _w_index_problems(name: str, value: int | None, num_ws: int | None,
                      allow_end: bool = False) -> list[str]:
    """A ws index out of this model's range (allow_end: an exclusive end, num_ws allowed)."""
    if value is None or num_ws is None:
        return []
    hi = num_ws if allow_end else num_ws - 1
    if not 0 <= value <= hi:
        return [f"{name}: {value} is out of range 0..{hi} for this model ({num_ws} ws)."]
    return []


def _model_problems(spec: LatentSpec, G: torch.nn.Module) -> list[str]:
    """The checks that need the model: its class count and a saved w's shape."""
    p: list[str] = []
    c_dim = G.cfg.c_dim
    if c_dim > 0 and spec.class_index is None:
        p.append(f"latent.class_index: this model is conditional; choose a class "
                 f"0..{c_dim - 1}.")
    elif c_dim > 0 and not 0 <= spec.class_index < c_dim:
        p.append(f"latent.class_index: {spec.class_index} is out of range 0..{c_dim - 1}.")
    if spec.w is not None:
        try:
            _saved_ws(G, spec.w)
        except StudioError as exc:
            p.append(f"latent.w: {exc}")
        except (TypeError, ValueError):
            p.append("latent.w: is not a numeric [num_ws][w_dim] array.")
    return p


def _direction_problems(name: str, d: DirectionEdit, G: torch.nn.Module | None) -> list[str]:
    """Problems of one direction edit (`name` is its place in the recipe)."""
    p: list[str] = []
    num_ws = G.num_ws if G is not None else None
    if d.method not in DIRECTION_METHODS:
        p.append(f"{name}.method: {d.method!r} is not one of "
                 f"{', '.join(DIRECTION_METHODS)}.")
    if not isinstance(d.amount, (int, float)) or not math.isfinite(d.amount):
        p.append(f"{name}.amount: {d.amount!r} is not a finite number.")
    if d.method in ("sefa", "ganspace"):
        limit = G.cfg.w_dim if G is not None else None
        if d.index < 0 or (limit is not None and d.index >= limit):
            p.append(f"{name}.index: {d.index} is out of range 0..{(limit or 1) - 1}.")
    if d.method == "file":
        if not d.path:
            p.append(f"{name}.path: a boundary .npy path is needed for method 'file'.")
        elif not os.path.exists(d.path):
            p.append(f"{name}.path: {os.path.basename(d.path)!r} does not exist.")
        elif G is not None:
            try:
                load_boundary(d.path, G)
            except StudioError as exc:
                p.append(f"{name}.path: {exc}")
    p += _w_index_problems(f"{name}.layer_start", d.layer_start, num_ws)
    p += _w_index_problems(f"{name}.layer_end", d.layer_end, num_ws, allow_end=True)
    if d.layer_end is not None and d.layer_end <= d.layer_start:
        p.append(f"{name}.layer_end: {d.layer_end} must be greater than layer_start "
                 f"({d.layer_start}).")
    if d.layers and G is not None:
        unknown = [x for x in d.layers if x not in affine_layer_names(G)]
        if unknown:
            p.append(f"{name}.layers: unknown layer(s) {unknown}.")
    return p


# ----------------------------------------------------------------------------------------
# Images.


@torch.no_grad()
def render_ws(G: torch.nn.Module, ws: torch.Tensor, noise_mode: str = "const",
              noise_seed: int = 0, **synthesis_kwargs: Any) -> np.ndarray:
    """ws [N, num_ws, w_dim] -> uint8 [N, H, W, 3]; random noise is seeded by noise_seed."""
    gen = None
    if noise_mode == "random":
        gen = torch.Generator().manual_seed(int(noise_seed))  # CPU: the same on every device
    img = G.synthesis(ws.to(model_device(G)), noise_mode=noise_mode, noise_generator=gen,
                      **synthesis_kwargs)
    return to_uint8(img)


def render_spec(G: torch.nn.Module, spec: LatentSpec, **synthesis_kwargs: Any) -> np.ndarray:
    """One image (uint8 HxWx3) for a spec."""
    ws = compute_ws(G, spec)
    kwargs = {**transform_kwargs(G, spec), **synthesis_kwargs}
    return render_ws(G, ws, spec.noise_mode, spec.noise_seed, **kwargs)[0]


def image_grid(images: Sequence[np.ndarray], cols: int, pad: int = 2,
               background: int = 255) -> np.ndarray:
    """Tile equal-sized uint8 HxWx3 images row by row into one uint8 image."""
    if not images:
        raise StudioError("There are no images to put in a grid.")
    h, w = images[0].shape[:2]
    rows = math.ceil(len(images) / cols)
    out = np.full((rows * h + (rows - 1) * pad, cols * w + (cols - 1) * pad, 3), background,
                  np.uint8)
    for k, im in enumerate(images):
        r, c = divmod(k, cols)
        out[r * (h + pad):r * (h + pad) + h, c * (w + pad):c * (w + pad) + w] = im[..., :3]
    return out


def psi_grid(G: torch.nn.Module, seeds: Sequence[float], psis: Sequence[float],
             cutoff: int | None = None, noise_mode: str = "const",
             class_index: int | None = None, noise_seed: int = 0) -> np.ndarray:
    """Rows: seeds; columns: truncation psi. One uint8 image; random noise (one draw per
    row) from noise_seed."""
    images = []
    for seed in seeds:
        ws = torch.cat([seed_to_ws(G, seed, psi, cutoff, class_index) for psi in psis])
        images.extend(render_ws(G, ws, noise_mode, noise_seed))
    return image_grid(images, cols=len(psis))


def default_mix_ranges(num_ws: int) -> list[tuple[int, int]]:
    """Coarse / middle / fine w ranges (the StyleGAN paper's 4-8 / 16-32 / 64+ split)."""
    coarse = min(4, num_ws)
    middle = min(8, num_ws)
    ranges = [(0, coarse), (coarse, middle), (middle, num_ws)]
    return [r for r in ranges if r[1] > r[0]]


def mix_grid(G: torch.nn.Module, seeds: Sequence[float], mix_seed: float,
             ranges: Sequence[tuple[int, int]] | None = None, psi: float = 1.0,
             noise_mode: str = "const", class_index: int | None = None,
             noise_seed: int = 0) -> np.ndarray:
    """Rows: seeds; columns: the seed, then ws[a:b] taken from mix_seed for each range,
    then mix_seed itself. One uint8 image; random noise (one draw per row) from
    noise_seed."""
    ranges = list(ranges) if ranges else default_mix_ranges(G.num_ws)
    other = seed_to_ws(G, mix_seed, psi, None, class_index)
    images = []
    for seed in seeds:
        base = seed_to_ws(G, seed, psi, None, class_index)
        row = [base]
        for a, b in ranges:
            mixed = base.clone()
            mixed[:, a:b] = other[:, a:b]
            row.append(mixed)
        row.append(other)
        images.extend(render_ws(G, torch.cat(row), noise_mode, noise_seed))
    return image_grid(images, cols=len(ranges) + 2)


# ----------------------------------------------------------------------------------------
# Interpolation and loops.


def _keyframe_ws(G: torch.nn.Module, key: Any, psi: float, cutoff: int | None,
                 class_index: int | None) -> torch.Tensor:
    if isinstance(key, LatentSpec):
        return compute_ws(G, key)
    if isinstance(key, (int, float, np.integer, np.floating)):
        return seed_to_ws(G, float(key), psi, cutoff, class_index)
    return _saved_ws(G, key.detach().cpu().numpy() if isinstance(key, torch.Tensor) else key)


def keyframe_times(frames: int, segments: int, loop: bool) -> list[tuple[int, float]]:
    """(segment, t in [0, 1]) for each frame.

    Open paths hit the first and the last keyframe exactly; loops stop one step before
    returning to the first keyframe, so playing the clip on repeat has no stutter.
    """
    if frames < 1:
        raise StudioError(f"A video needs at least one frame (got {frames}).")
    out = []
    for i in range(frames):
        if loop:
            pos = segments * i / frames
        else:
            pos = segments * i / (frames - 1) if frames > 1 else 0.0
        seg = min(int(pos), segments - 1)
        out.append((seg, pos - seg))
    return out


@torch.no_grad()
def interpolate_ws(G: torch.nn.Module, keyframes: Sequence[Any], frames: int,
                   space: str = "w", loop: bool = False, psi: float = 1.0,
                   cutoff: int | None = None, class_index: int | None = None
                   ) -> Iterator[torch.Tensor]:
    """ws [1, num_ws, w_dim] per frame through keyframes (seeds, LatentSpecs or W/W+ arrays).

    space 'w': lerp between the keyframes' ws. space 'z': slerp between the seeds' z, then
    map (keyframes must be seeds). With loop, the path returns to the first keyframe.
    """
    if len(keyframes) < 1:
        raise StudioError("Give at least one keyframe to interpolate.")
    if space not in ("w", "z"):
        raise StudioError(f"Interpolation space must be 'w' or 'z', not {space!r}.")
    keys = list(keyframes) + ([keyframes[0]] if loop and len(keyframes) > 1 else [])
    segments = max(len(keys) - 1, 1)
    if len(keys) == 1:
        keys = keys * 2
    if space == "z":
        if not all(isinstance(k, (int, float, np.integer, np.floating)) for k in keys):
            raise StudioError("Interpolation in Z needs seeds as keyframes; use W for saved "
                              "latents.")
        device = model_device(G)
        zs = [seed_to_z(float(k), G.cfg.z_dim).to(device) for k in keys]
        c = class_label(G, class_index)
        for seg, t in keyframe_times(frames, segments, loop):
            z = slerp(zs[seg], zs[seg + 1], t)
            yield G.mapping(z, c, psi=psi, cutoff=cutoff)
        return
    ws = [_keyframe_ws(G, k, psi, cutoff, class_index) for k in keys]
    for seg, t in keyframe_times(frames, segments, loop):
        yield lerp(ws[seg], ws[seg + 1], t)


def _orthonormal_pair(z: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two unit vectors orthogonal to z and to each other (Gram-Schmidt on random draws)."""
    rnd = np.random.RandomState(seed).randn(2, z.shape[-1])
    basis = [z / np.linalg.norm(z)]
    for v in rnd:
        for b in basis:
            v = v - (v @ b) * b
        basis.append(v / np.linalg.norm(v))
    return basis[1], basis[2]


@torch.no_grad()
def circle_walk_ws(G: torch.nn.Module, seed: float, frames: int, radius: float = 0.5,
                   psi: float = 1.0, cutoff: int | None = None,
                   class_index: int | None = None, walk_seed: int | None = None,
                   closed: bool = False) -> Iterator[torch.Tensor]:
    """A perfect loop: ws per frame along a circle in Z around a seed's z.

    The circle lies on the sphere of the seed's |z| at angle `radius` (radians) from it, in
    a random plane (walk_seed), so every frame is a typical z. Frame k sits at angle
    2 pi k / frames: frame `frames` would equal frame 0, so the clip repeats seamlessly.
    closed=True also yields that closing frame (frames + 1 in all).
    """
    if frames < 1:
        raise StudioError(f"A loop needs at least one frame (got {frames}).")
    z0 = seed_to_z(seed, G.cfg.z_dim).numpy()[0].astype(np.float64)
    norm = np.linalg.norm(z0)
    u, v = _orthonormal_pair(z0, int(math.floor(seed)) + 1 if walk_seed is None else walk_seed)
    centre = z0 / norm * math.cos(radius)
    c = class_label(G, class_index)
    device = model_device(G)
    for k in range(frames + 1 if closed else frames):
        angle = 2 * math.pi * (k % frames) / frames  # k == frames lands exactly on frame 0
        z = norm * (centre + math.sin(radius) * (math.cos(angle) * u + math.sin(angle) * v))
        zt = torch.from_numpy(z[None].astype(np.float32)).to(device)
        yield G.mapping(zt, c, psi=psi, cutoff=cutoff)


def render_frames(G: torch.nn.Module, ws_frames: Iterable[torch.Tensor],
                  noise_mode: str = "const", noise_seed: int = 0, batch: int = 8,
                  progress: Callable[[int], Any] | None = None, cancel: Any = None,
                  **synthesis_kwargs: Any) -> Iterator[np.ndarray]:
    """Render ws frames to uint8 HxWx3 images lazily, a few at a time.

    Random noise is re-seeded identically for every frame so that it does not flicker.
    progress(i) is called after frame i; `cancel` (callable / Event / bool) stops early.
    """
    if noise_mode == "random":
        batch = 1  # one generator per frame keeps the noise identical frame to frame
    pending: list[torch.Tensor] = []
    done = 0

    def flush() -> Iterator[np.ndarray]:
        nonlocal done
        imgs = render_ws(G, torch.cat(pending), noise_mode, noise_seed, **synthesis_kwargs)
        pending.clear()
        for im in imgs:
            yield im
            if progress is not None:
                progress(done)
            done += 1

    for ws in ws_frames:
        if cancel_requested(cancel):
            from engine.base.video import VideoCancelled
            raise VideoCancelled("Rendering was cancelled.")
        pending.append(ws)
        if len(pending) >= batch:
            yield from flush()
    if pending:
        yield from flush()


def write_walk(G: torch.nn.Module, seeds: Sequence[float], frames: int, out: str | os.PathLike,
               fps: float = 30, loop: bool = False, space: str = "z", psi: float = 1.0,
               radius: float = 0.5, noise_mode: str = "const", noise_seed: int = 0,
               progress: Callable[[int], Any] | None = None, cancel: Any = None,
               size: int | None = None) -> Path:
    """Interpolation video through seeds (mp4/gif); one seed with loop = a circle walk.
    `size` resizes every frame to size x size pixels (a 64 px model's video is tiny)."""
    from engine.base.video import write_video
    if len(seeds) == 1 and loop:
        ws_iter = circle_walk_ws(G, seeds[0], frames, radius=radius, psi=psi)
    else:
        ws_iter = interpolate_ws(G, seeds, frames, space=space, loop=loop, psi=psi)
    images = render_frames(G, ws_iter, noise_mode, noise_seed, cancel=cancel)
    if size:
        images = (_resized(im, int(size)) for im in images)
    return write_video(images, out, fps=fps, progress=progress, cancel=cancel, total=frames)


def _resized(image: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.LANCZOS))


# ----------------------------------------------------------------------------------------
# W / W+ files.


def save_w(path: str | os.PathLike, ws: torch.Tensor | np.ndarray) -> Path:
    """Save W [1, w_dim] or W+ [1, num_ws, w_dim] float32 .npy atomically."""
    arr = ws.detach().cpu().numpy() if isinstance(ws, torch.Tensor) else np.asarray(ws)
    arr = arr.astype(np.float32)
    if arr.ndim == 2 and arr.shape[0] != 1:
        arr = arr[None]  # [num_ws, w_dim] -> [1, num_ws, w_dim]
    return atomic_save_npy(path, arr)


def load_w(path: str | os.PathLike, G: torch.nn.Module | None = None) -> np.ndarray:
    """Load a W or W+ .npy as float32 [1, num_ws, w_dim] (W is repeated when G is given).

    Accepts [w_dim], [1, w_dim], [num_ws, w_dim] and [1, num_ws, w_dim] arrays.
    """
    try:
        arr = np.load(os.fspath(path), allow_pickle=False)
    except FileNotFoundError as exc:
        raise StudioError(f"Latent file {os.fspath(path)!r} was not found.") from exc
    except (ValueError, OSError) as exc:
        raise StudioError(f"Latent file {os.fspath(path)!r} is not a readable .npy "
                          f"array.") from exc
    arr = np.asarray(arr, dtype=np.float32)
    if G is None:
        if arr.ndim == 1:
            arr = arr[None]
        if arr.ndim == 2:
            arr = arr[None]
        if arr.ndim != 3 or arr.shape[0] != 1:
            raise StudioError(f"Latent file has shape {list(arr.shape)}; expected W "
                              f"[1, w_dim] or W+ [1, num_ws, w_dim].")
        return arr
    return _saved_ws(G, arr).cpu().numpy()


def ws_to_list(ws: torch.Tensor | np.ndarray) -> list[list[float]]:
    """W+ as nested lists [num_ws][w_dim] for LatentSpec.w (recipes are JSON)."""
    arr = ws.detach().cpu().numpy() if isinstance(ws, torch.Tensor) else np.asarray(ws)
    arr = arr.reshape(-1, arr.shape[-1]).astype(np.float32)
    return [[float(x) for x in row] for row in arr]


def direction_sheet(G: torch.nn.Module, direction: np.ndarray, seeds: Sequence[float],
                    amounts: Sequence[float], layer_start: int = 0,
                    layer_end: int | None = None, psi: float = 1.0,
                    noise_mode: str = "const") -> np.ndarray:
    """Rows: seeds; columns: amounts along one direction (0 in the middle shows the seed)."""
    images = []
    for seed in seeds:
        base = seed_to_ws(G, seed, psi)
        ws = torch.cat([apply_direction(base, direction, a, layer_start, layer_end)
                        for a in amounts])
        images.extend(render_ws(G, ws, noise_mode))
    return image_grid(images, cols=len(amounts))


# ----------------------------------------------------------------------------------------
# Command line: `interpolate` and `directions`.


def _parse_seeds(text: str) -> list[float]:
    try:
        return [float(s) for s in text.split(",") if s.strip()]
    except ValueError as exc:
        raise StudioError(f"Seeds must be comma-separated numbers, got {text!r}.") from exc


def _tqdm_progress(total: int, desc: str) -> tuple[Any, Callable[..., None]]:
    from tqdm import tqdm
    bar = tqdm(total=total, desc=desc, unit="frame")

    def progress(*_: Any) -> None:
        bar.update(1)
    return bar, progress


def add_cli(subparsers: Any) -> None:
    p = subparsers.add_parser("interpolate", help="render a latent walk through seeds to "
                              "mp4/gif (one seed + --loop: a circle walk around it)")
    p.add_argument("--model", default="default", help="model spec for engine.models.zoo.load")
    p.add_argument("--seeds", required=True, help="keyframe seeds, e.g. 1,5,9")
    p.add_argument("--frames", type=int, default=90, help="number of frames")
    p.add_argument("--fps", type=float, default=30, help="frames per second")
    p.add_argument("--loop", action="store_true", help="return to the first seed seamlessly")
    p.add_argument("--space", choices=("z", "w"), default="z",
                   help="slerp in Z or lerp in W between keyframes")
    p.add_argument("--psi", type=float, default=1.0, help="truncation")
    p.add_argument("--radius", type=float, default=0.5,
                   help="circle walk: angle (radians) from the seed's z")
    p.add_argument("--noise-mode", choices=NOISE_MODES, default="const")
    p.add_argument("--out", required=True, help="output .mp4 or .gif")
    p.set_defaults(func=_cli_interpolate)

    p = subparsers.add_parser("directions", help="find latent directions (SeFa / GANSpace) "
                              "and write a sheet per direction")
    p.add_argument("--model", default="default", help="model spec for engine.models.zoo.load")
    p.add_argument("--method", choices=("sefa", "ganspace"), default="sefa")
    p.add_argument("--top", type=int, default=10, help="number of directions")
    p.add_argument("--layers", default=None,
                   help="sefa: comma list of layers (default: every conv and the last "
                   "ToRGB, as the official SeFa), e.g. b4.conv1,b8.conv0")
    p.add_argument("--samples", type=int, default=10000, help="ganspace: sampled w")
    p.add_argument("--seeds", default="0,1,2,3", help="seeds shown in each sheet (rows)")
    p.add_argument("--amount", type=float, default=3.0, help="largest step shown")
    p.add_argument("--steps", type=int, default=7, help="columns from -amount to +amount")
    p.add_argument("--layer-start", type=int, default=0)
    p.add_argument("--layer-end", type=int, default=None)
    p.add_argument("--psi", type=float, default=0.7, help="truncation of the sheet's seeds")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=_cli_directions)


def _cli_model(spec: str) -> torch.nn.Module:
    from engine.models import zoo  # imported here: zoo pulls in the Hub client
    return zoo.load(spec).G


def _cli_interpolate(args: Any) -> None:
    G = _cli_model(args.model)
    seeds = _parse_seeds(args.seeds)
    bar, progress = _tqdm_progress(args.frames, "rendering")
    with bar:
        path = write_walk(G, seeds, args.frames, args.out, fps=args.fps, loop=args.loop,
                          space=args.space, psi=args.psi, radius=args.radius,
                          noise_mode=args.noise_mode, progress=progress)
    print(f"wrote {path} ({args.frames} frames, {args.fps:g} fps)")


def _cli_directions(args: Any) -> None:
    from PIL import Image
    G = _cli_model(args.model)
    if args.method == "sefa":
        layers = [x.strip() for x in args.layers.split(",")] if args.layers else None
        dirs = sefa_directions(G, layers, top=args.top)
    else:
        dirs = ganspace_directions(G, samples=args.samples, top=args.top)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "directions.npy", dirs)
    seeds = _parse_seeds(args.seeds)
    amounts = np.linspace(-args.amount, args.amount, args.steps).tolist()
    for k, d in enumerate(dirs):
        sheet = direction_sheet(G, d, seeds, amounts, args.layer_start, args.layer_end,
                                args.psi)
        Image.fromarray(sheet).save(out / f"direction_{k:02d}.png")
    print(f"wrote {len(dirs)} {args.method} directions to {out / 'directions.npy'} and a "
          f"sheet per direction (rows: seeds {args.seeds}; columns: amounts "
          f"{-args.amount:g}..{args.amount:g})")
