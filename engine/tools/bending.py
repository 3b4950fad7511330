"""Network bending: spatial operations inserted into chosen layers, on chosen channels, per call.

An `Operation` is a function on the activations of the SELECTED channels of one layer,
[N, C_sel, H, W] -> same shape, with a list of `ParamSpec`s that the studio turns into
controls and that validation checks. A `Bend` names a layer, an operation, its parameters
and a `ChannelSelection`; `make_taps` turns a list of bends (and `WeightEdit`s, which edit a
conv's weight instead of its output) into the per-call `taps` / `weight_taps` dicts of
`SynthesisNetwork.forward`. Nothing here touches the model's parameters: two users bending
one shared model never see each other's bends.

Randomised operations (shuffle, vanish, jitter, noise) take a `seed` and draw their random
numbers on the CPU, so a bend renders the same on CPU and CUDA, and the same for every
sample of a batch (a batch of seeds shows one bend on many faces).

Sources. Each operation's help names whose semantics it has: "ours", "seed" (Jasper Zheng's
`NetworkOperations.py`, TensorFlow / tensorflow-addons 0.13 on each channel map) or "Broad"
(Terence Broad's `transform_layers.py`, OpenCV on each channel map). Where the two sources
differ from ours, a parameter selects their behaviour (interpolation, fill, border, pivot,
shape, donors, source) or a separate operation carries their formula (resize_pad, sharpness,
half_turn, sin_disrupt, instance_norm); `engine.recipes.recipe` imports both formats through these,
and tests/test_bend_sources.py re-derives every one from the sources' code in numpy.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from engine.base import devices
from engine.base.errors import StudioError
from engine.base.limits import ENV_NAMES, Limits, above_limit, current_limits
from engine.gan import networks

PARAM_TYPES = ("float", "int", "bool", "choice")
SELECTION_MODES = ("all", "indices", "random", "clusters")
DEFAULT_CLUSTER_K = 5
DEFAULT_CLUSTER_SAMPLES = 128
FILL_MODES = ("zero", "reflect")
_PADDING_MODE = {"zero": "zeros", "reflect": "reflection"}


class BendError(StudioError):
    """A bend or weight edit that cannot be applied: unknown op or layer, bad parameter."""


# ----------------------------------------------------------------------------------------
# Parameter specs.


@dataclass
class ParamSpec:
    """One parameter of an operation; the studio builds a slider / checkbox / dropdown."""
    name: str
    type: str = "float"             # 'float' | 'int' | 'bool' | 'choice'
    default: Any = 0.0
    min: float | None = None        # inclusive bounds of numeric types
    max: float | None = None
    step: float | None = None       # slider step
    help: str = ""
    choices: tuple[str, ...] = ()   # allowed values of a 'choice'

    def check(self, value: Any) -> str | None:
        """Why `value` is not valid for this parameter, or None when it is."""
        if self.type == "bool":
            return None if isinstance(value, bool) else f"{value!r} is not true or false"
        if self.type == "choice":
            if not isinstance(value, str) or value not in self.choices:
                return f"{value!r} is not one of {list(self.choices)}"
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"{value!r} is not a number"
        if not math.isfinite(value):
            return f"{value!r} is not a finite number"
        if self.type == "int" and float(value) != int(value):
            return f"{value!r} is not a whole number"
        if self.min is not None and value < self.min:
            return f"{value!r} is below the minimum {_fmt(self.min)}"
        if self.max is not None and value > self.max:
            return f"{value!r} is above the maximum {_fmt(self.max)}"
        return None

    def coerce(self, value: Any) -> Any:
        """The value in this parameter's Python type (after `check` passed)."""
        if self.type == "int":
            return int(value)
        if self.type == "float":
            return float(value)
        return value


def _fmt(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else str(v)


@dataclass
class Operation:
    """A registered bending (or weight-edit) operation.

    fn(x, **params) -> tensor of x's shape, where x holds only the selected channels and
    params are resolved (defaults filled, types coerced); randomised operations take a
    `seed` parameter and draw on the CPU (same result on every device). With `whole=True`
    fn instead receives (x_all, selected), `selected` a LongTensor of channel indices
    (None = all), and returns the whole tensor (vanish needs the unselected channels).
    """
    name: str
    title: str
    params: list[ParamSpec]
    fn: Callable[..., torch.Tensor]
    help: str = ""
    whole: bool = False

    def spec(self, name: str) -> ParamSpec | None:
        return next((p for p in self.params if p.name == name), None)

    def defaults(self) -> dict[str, Any]:
        return {p.name: p.default for p in self.params}


def check_params(op: Operation, params: Mapping[str, Any], where: str = "params"
                 ) -> list[str]:
    """Problems of `params` for `op`, each as 'where.name: reason'."""
    if not isinstance(params, Mapping):
        return [f"{where}: must be a mapping of parameter names to values"]
    problems = []
    for name, value in params.items():
        spec = op.spec(name)
        if spec is None:
            known = ", ".join(p.name for p in op.params) or "none"
            problems.append(f"{where}.{name}: unknown parameter of {op.name} (known: {known})")
            continue
        why = spec.check(value)
        if why:
            problems.append(f"{where}.{name}: {why}")
    return problems


def resolve_params(op: Operation, params: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults overridden by `params`, each coerced to its type (after validation)."""
    out = op.defaults()
    for name, value in params.items():
        spec = op.spec(name)
        if spec is not None:
            out[name] = spec.coerce(value)
    return out


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


# ----------------------------------------------------------------------------------------
# Spatial helpers.


def _warp(x: torch.Tensor, theta: torch.Tensor, fill: str, mode: str = "bilinear"
          ) -> torch.Tensor:
    """Resample x by the affine map theta [2, 3] (output -> input, normalised coords)."""
    n = x.shape[0]
    theta = theta.to(device=x.device, dtype=x.dtype).unsqueeze(0).expand(n, 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode=mode, padding_mode=_PADDING_MODE[fill],
                         align_corners=False)


def _reflect_coords(c: torch.Tensor, n: int) -> torch.Tensor:
    """TensorFlow's 'reflect' fill ([abcd] -> [dcba|abcd|dcba], the edge pixel repeated) on
    pixel coordinates (centres at integers), then clamped to [0, n - 1] as TF does."""
    if n <= 1:
        return torch.zeros_like(c)
    sz2 = 2 * n
    neg = c < 0
    cn = sz2 * torch.trunc(-c / sz2) + c
    cn = torch.where(cn < -n, cn + sz2, -cn - 1)
    cp = c - sz2 * torch.trunc(c / sz2)
    cp = torch.where(cp >= n, sz2 - cp - 1, cp)
    out = torch.where(neg, cn, torch.where(c > n - 1, cp, c))
    return out.clamp(0, n - 1)


def _warp_nearest(x: torch.Tensor, theta: torch.Tensor, fill: str) -> torch.Tensor:
    """Nearest-neighbour resampling by theta (normalised, output -> input) with TensorFlow's
    conventions: source pixel coordinates rounded half up, 'reflect' as `_reflect_coords`,
    'zero' for anything outside. tfa.image.rotate / translate do this (the seed's ops)."""
    h, w = x.shape[-2:]
    t = theta.to(torch.float64)
    grid = _identity_grid(h, w).to(torch.float64)[0]                       # [H, W, 2]
    src = grid @ t[:, :2].T + t[:, 2]
    px = ((src[..., 0] + 1) * w - 1) / 2                                   # pixel coords
    py = ((src[..., 1] + 1) * h - 1) / 2
    if fill == "reflect":
        px, py = _reflect_coords(px, w), _reflect_coords(py, h)
    ix, iy = torch.floor(px + 0.5).long(), torch.floor(py + 0.5).long()
    inside = (ix >= 0) & (ix < w) & (iy >= 0) & (iy < h)
    flat = (iy.clamp(0, h - 1) * w + ix.clamp(0, w - 1)).reshape(-1).to(x.device)
    out = x.reshape(*x.shape[:-2], h * w).index_select(-1, flat).reshape(x.shape)
    if not bool(inside.all()):
        out = out * inside.to(device=x.device, dtype=x.dtype)
    return out


def _warp_opencv(x: torch.Tensor, theta: torch.Tensor, fill: str) -> torch.Tensor:
    """Bilinear resampling at the positions OpenCV 4's warpAffine uses: the inverse map's
    terms in 1/1024 pixel fixed point, rounded, summed, then cut to 1/32 pixel
    (INTER_BITS = 5). Broad's translate / rotate / scale ran through it."""
    h, w = x.shape[-2:]
    t = theta.to(torch.float64)
    # theta (normalised output -> input) as a pixel-space map, pixel centres at integers.
    m00, m01, m10, m11 = t[0, 0], t[0, 1] * w / h, t[1, 0] * h / w, t[1, 1]
    b0 = (t[0, 0] * (1 - w) + t[0, 1] * (w / h) * (1 - h) + w * (t[0, 2] + 1) - 1) / 2
    b1 = (t[1, 0] * (h / w) * (1 - w) + t[1, 1] * (1 - h) + h * (t[1, 2] + 1) - 1) / 2
    xs = torch.arange(w, dtype=torch.float64)
    ys = torch.arange(h, dtype=torch.float64).unsqueeze(1)
    qx = torch.round((m01 * ys + b0) * 1024) + 16 + torch.round(m00 * xs * 1024)
    qy = torch.round((m11 * ys + b1) * 1024) + 16 + torch.round(m10 * xs * 1024)
    px, py = torch.floor(qx / 32) / 32, torch.floor(qy / 32) / 32   # 1/32-pixel positions
    grid = torch.stack([(2 * px + 1) / w - 1, (2 * py + 1) / h - 1], dim=-1).unsqueeze(0)
    return _sample_grid(x, grid, fill)


def _resample(x: torch.Tensor, theta: torch.Tensor, fill: str, interpolation: str,
              sampling: str = "exact") -> torch.Tensor:
    if interpolation == "nearest":
        return _warp_nearest(x, theta, fill)
    if sampling == "opencv":
        return _warp_opencv(x, theta, fill)
    return _warp(x, theta, fill)


def _about_pivot(m: torch.Tensor, pivot: str, h: int, w: int) -> torch.Tensor:
    """theta [2, 3] applying the linear part m [2, 2] about the map centre, or about OpenCV's
    centre (W/2, H/2) in pixel-centre coordinates, half a pixel right of and below the true
    centre ('half_pixel': cv2.getRotationMatrix2D as Broad calls it)."""
    # float64 so that float64 maps resample exactly; _warp casts to the maps' dtype.
    p = torch.tensor([1.0 / w, 1.0 / h], dtype=torch.float64) if pivot == "half_pixel" \
        else torch.zeros(2, dtype=torch.float64)
    return torch.cat([m, (p - m @ p).unsqueeze(1)], dim=1)


def _reflect_index(i: torch.Tensor, n: int) -> torch.Tensor:
    """numpy / tf.pad 'reflect' ([abcd] -> c b | a b c d | c b: the edge not repeated) for
    any distance, periodic beyond one reflection."""
    if n == 1:
        return torch.zeros_like(i)
    m = torch.remainder(i, 2 * n - 2)
    return torch.where(m >= n, 2 * n - 2 - m, m)


def _pad_reflect(x: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    rows = _reflect_index(torch.arange(-lo, h + hi), h).to(x.device)
    cols = _reflect_index(torch.arange(-lo, w + hi), w).to(x.device)
    return x.index_select(-2, rows).index_select(-1, cols)


def _sample_grid(x: torch.Tensor, grid: torch.Tensor, fill: str) -> torch.Tensor:
    grid = grid.to(device=x.device, dtype=x.dtype).expand(x.shape[0], -1, -1, -1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=_PADDING_MODE[fill],
                         align_corners=False)


@functools.lru_cache(maxsize=32)
def _identity_grid(h: int, w: int, device: torch.device | None = None) -> torch.Tensor:
    """[1, H, W, 2] normalised (x, y) coordinates of pixel centres (align_corners=False),
    made once per size and device (callers must not modify it)."""
    ys = (torch.arange(h, dtype=torch.float32) * 2 + 1) / h - 1
    xs = (torch.arange(w, dtype=torch.float32) * 2 + 1) / w - 1
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx, gy], dim=-1).unsqueeze(0).to(device or "cpu")


def _pad_same(x: torch.Tensor, k: int) -> torch.Tensor:
    """Replicate-pad so that a k x k stride-1 window keeps the size and covers its centre."""
    lo, hi = (k - 1) // 2, k // 2
    return F.pad(x, (lo, hi, lo, hi), mode="replicate")


def _box(x: torch.Tensor, k: int, border: str = "replicate") -> torch.Tensor:
    if k <= 1:
        return x
    padded = _pad_reflect(x, (k - 1) // 2, k // 2) if border == "reflect" else _pad_same(x, k)
    return F.avg_pool2d(padded, k, stride=1)


def _ellipse(k: int) -> np.ndarray:
    """OpenCV's MORPH_ELLIPSE structuring element of size k x k (getStructuringElement):
    row dy spans c +- round(c * sqrt(1 - dy^2 / r^2)); for k = 3 it is a cross."""
    r = c = k // 2
    elem = np.zeros((k, k), dtype=bool)
    for i in range(k):
        dy = i - r
        if abs(dy) <= r:
            dx = int(np.rint(c * np.sqrt((r * r - dy * dy) / (r * r)))) if r else 0
            elem[i, max(c - dx, 0):min(c + dx + 1, k)] = True
    return elem


def _morph(x: torch.Tensor, k: int, shape: str, largest: bool) -> torch.Tensor:
    """Max (dilate) or min (erode) over a k x k square or ellipse around each pixel. The
    border is replicated, which equals ignoring outside pixels (OpenCV's and TF's default)
    for both shapes: a replicated value is always inside the footprint too."""
    if k <= 1:
        return x
    v = x if largest else -x
    if shape == "square":
        out = F.max_pool2d(_pad_same(v, k), k, stride=1)
    else:
        # The ellipse row by row: a 1 x width max along each row, shifted by its offset.
        padded = _pad_same(v, k)
        h, w = x.shape[-2:]
        out = None
        for i, row in enumerate(_ellipse(k)):
            cols = np.nonzero(row)[0]
            if cols.size == 0:
                continue
            a, b = int(cols[0]), int(cols[-1]) + 1
            strip = padded[..., i:i + h, a:a + w + (b - a) - 1]
            m = F.max_pool2d(strip, (1, b - a), stride=1)
            out = m if out is None else torch.maximum(out, m)
    return out if largest else -out


# ----------------------------------------------------------------------------------------
# Operations on activations. Each gets the selected channels [N, C, H, W].


def op_identity(x: torch.Tensor, **_: Any) -> torch.Tensor:
    return x


def op_ablate(x: torch.Tensor, **_: Any) -> torch.Tensor:
    return torch.zeros_like(x)


def op_multiply(x: torch.Tensor, factor: float = 2.0, **_: Any) -> torch.Tensor:
    return x * factor


def op_add(x: torch.Tensor, amount: float = 1.0, **_: Any) -> torch.Tensor:
    return x + amount


def op_invert(x: torch.Tensor, offset: float = 0.0, **_: Any) -> torch.Tensor:
    # offset 0 is a plain negation; Broad's 'invert' is offset 1 (1 - x).
    return offset - x


def op_threshold(x: torch.Tensor, threshold: float = 0.5, high: float = 1.0, **_: Any
                 ) -> torch.Tensor:
    return (x > threshold).to(x.dtype) * high


def op_translate(x: torch.Tensor, x_shift: float = 0.0, y_shift: float = 0.0,
                 fill: str = "reflect", interpolation: str = "bilinear",
                 sampling: str = "exact", **_: Any) -> torch.Tensor:
    # Shifts are fractions of the map size, positive = right / down, so a bend means the
    # same thing at every resolution. Normalised coordinates span 2 units per map size.
    theta = torch.tensor([[1.0, 0.0, -2.0 * x_shift], [0.0, 1.0, -2.0 * y_shift]],
                         dtype=torch.float64)
    return _resample(x, theta, fill, interpolation, sampling)


def op_rotate(x: torch.Tensor, angle: float = 0.0, fill: str = "zero",
              interpolation: str = "bilinear", pivot: str = "centre", sampling: str = "exact",
              **_: Any) -> torch.Tensor:
    h, w = x.shape[-2:]
    quarter = angle / 90.0
    if h == w and quarter == round(quarter) and pivot == "centre" and sampling == "exact":
        # Exact (and cheaper) for right angles; rot90 with dims (H, W) turns anticlockwise.
        return torch.rot90(x, int(round(quarter)) % 4, dims=(2, 3))
    a = math.radians(angle)
    c, s = math.cos(a), math.sin(a)
    # Anticlockwise on screen (y down): sample the input at the output point turned back.
    m = torch.tensor([[c, -s * h / w], [s * w / h, c]], dtype=torch.float64)
    return _resample(x, _about_pivot(m, pivot, h, w), fill, interpolation, sampling)


def op_zoom(x: torch.Tensor, scale: float = 1.5, fill: str = "zero", pivot: str = "centre",
            sampling: str = "exact", **_: Any) -> torch.Tensor:
    h, w = x.shape[-2:]
    m = torch.eye(2, dtype=torch.float64) / scale
    return _resample(x, _about_pivot(m, pivot, h, w), fill, "bilinear", sampling)


def _gaussian_resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] weights of tf.image.resize(method='gaussian', antialias=False) along one
    axis (TensorFlow's ScaleAndTranslate: Gaussian kernel, radius 1.5, sigma 0.5, taps
    clamped to the image and the weights renormalised to sum 1)."""
    radius, sigma = 1.5, 0.5
    mat = np.zeros((n_out, n_in))
    for x in range(n_out):
        sample = (x + 0.5) * n_in / n_out
        if sample < 0 or sample > n_in:
            continue
        start = min(max(math.ceil(sample - radius - 0.5), 0), n_in - 1)
        end = min(max(math.floor(sample + radius - 0.5), 0), n_in - 1) + 1
        src = np.arange(start, end)
        d = np.abs(src + 0.5 - sample)
        wts = np.where(d < radius, np.exp(-d * d / (2 * sigma * sigma)), 0.0)
        if wts.sum() > 0:
            mat[x, start:end] = wts / wts.sum()
    return mat


def _crop_or_pad(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """tf.image.resize_with_crop_or_pad: centre crop, or zero pad (the odd pixel after)."""
    def axis(t: torch.Tensor, dim: int, target: int) -> torch.Tensor:
        size = t.shape[dim]
        if size > target:
            return t.narrow(dim, (size - target) // 2, target)
        if size < target:
            before = (target - size) // 2
            pad = [0, 0] * (-dim - 1) + [before, target - size - before]
            return F.pad(t, pad)
        return t
    return axis(axis(x, -2, h), -1, w)


def op_resize_pad(x: torch.Tensor, pixels: int = -2, **_: Any) -> torch.Tensor:
    """The seed's 'scale': resize the map to (size + pixels) with TensorFlow's Gaussian
    kernel, then centre-crop or zero-pad it back to its size."""
    h, w = x.shape[-2:]
    nh, nw = max(1, h + int(pixels)), max(1, w + int(pixels))
    ry = torch.from_numpy(_gaussian_resize_matrix(h, nh)).to(x.device, x.dtype)
    rx = torch.from_numpy(_gaussian_resize_matrix(w, nw)).to(x.device, x.dtype)
    resized = torch.einsum("ih,nchw,jw->ncij", ry, x, rx)
    return _crop_or_pad(resized, h, w)


def op_flip_h(x: torch.Tensor, **_: Any) -> torch.Tensor:
    return x.flip(-1)


def op_flip_v(x: torch.Tensor, **_: Any) -> torch.Tensor:
    return x.flip(-2)


def op_mirror_lr(x: torch.Tensor, **_: Any) -> torch.Tensor:
    """The left half mirrored onto the right half."""
    w = x.shape[-1]
    half = w // 2
    out = x.clone()
    out[..., w - half:] = x[..., :half].flip(-1)
    return out


def op_mirror_tb(x: torch.Tensor, **_: Any) -> torch.Tensor:
    """The top half mirrored onto the bottom half."""
    h = x.shape[-2]
    half = h // 2
    out = x.clone()
    out[..., h - half:, :] = x[..., :half, :].flip(-2)
    return out


def op_shuffle(x: torch.Tensor, selected: torch.Tensor | None, seed: int = 0,
               source: str = "selected", **_: Any) -> torch.Tensor:
    """'selected' (ours): the selected channels permuted among themselves. 'all' (seed:
    tf.random.shuffle of every channel, then the selected ones kept): each selected channel
    takes the channel a permutation of the whole layer puts there."""
    c = x.shape[1]
    if source == "all":
        perm = torch.randperm(c, generator=_generator(seed))
        idx = selected.cpu() if selected is not None else torch.arange(c)
        return x.index_copy(1, idx.to(x.device), x.index_select(1, perm[idx].to(x.device)))
    if selected is None:
        return x.index_select(1, torch.randperm(c, generator=_generator(seed)).to(x.device))
    if selected.numel() == 0:
        return x
    perm = torch.randperm(selected.numel(), generator=_generator(seed)).to(x.device)
    return x.index_copy(1, selected, x.index_select(1, selected[perm]))


def op_vanish(x: torch.Tensor, selected: torch.Tensor | None, seed: int = 0,
              donors: str = "random", **_: Any) -> torch.Tensor:
    """Replace the selected channels with copies of unselected ones: randomly chosen (ours),
    or 'repeat' (seed): with the L unselected channels u0 < u1 < ..., the layer's C
    channels are written as u0 repeated C // L times, u1 as often, ..., then u0, u1, ...
    for the C % L left over (tf.repeat + concat), and the selected channels take theirs."""
    c = x.shape[1]
    if selected is None:
        return torch.zeros_like(x)  # nothing is left unselected to copy from
    mask = torch.ones(c, dtype=torch.bool)
    mask[selected.cpu()] = False
    pool = mask.nonzero().flatten()
    if pool.numel() == 0:
        return x.index_fill(1, selected, 0.0)
    if donors == "repeat":
        full = torch.cat([pool.repeat_interleave(c // pool.numel()), pool[:c % pool.numel()]])
        src = full[selected.cpu()].to(x.device)
    else:
        pick = torch.randint(pool.numel(), (selected.numel(),), generator=_generator(seed))
        src = pool[pick].to(x.device)
    return x.index_copy(1, selected, x.index_select(1, src))


def op_half_turn(x: torch.Tensor, selected: torch.Tensor | None, keep: str = "top",
                 **_: Any) -> torch.Tensor:
    """The seed's mirrorY / mirrorX: the map turned 180 degrees (tfa.image.rotate by pi)
    replaces one part of it. 'top' (mirrorY): the top half kept, the bottom half taken from
    the turned map, a point reflection of the top. 'left': the same across columns.
    'low_channels' (mirrorX as its code runs: it concatenates along the channel axis):
    channels below H / 2 kept, every selected channel from index H / 2 on turned whole."""
    h, w = x.shape[-2:]
    idx = selected if selected is not None else torch.arange(x.shape[1], device=x.device)
    if keep == "low_channels":
        idx = idx[idx >= h // 2]
    if idx.numel() == 0:
        return x
    part = x.index_select(1, idx)
    turned = part.flip(-2, -1)
    if keep == "top":
        turned = torch.cat([part[..., :h // 2, :], turned[..., h // 2:, :]], dim=-2)
    elif keep == "left":
        turned = torch.cat([part[..., :w // 2], turned[..., w // 2:]], dim=-1)
    return x.index_copy(1, idx, turned)


def op_mean_filter(x: torch.Tensor, kernel: int = 3, border: str = "replicate", **_: Any
                   ) -> torch.Tensor:
    # 'reflect' is tfa.image.mean_filter2d's default padding (the seed's mean_filter).
    return _box(x, int(kernel), border)


def op_sharpen(x: torch.Tensor, factor: float = 1.0, **_: Any) -> torch.Tensor:
    # Unsharp mask: add back the detail a 3x3 blur removes.
    return x + factor * (x - _box(x, 3))


_PIL_SMOOTH = torch.tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]],
                           dtype=torch.float64) / 13.0  # float64: exact for float64 maps


def op_sharpness(x: torch.Tensor, factor: float = 2.0, uint8_clip: bool = False, **_: Any
                 ) -> torch.Tensor:
    """tfa.image.sharpness (PIL's ImageEnhance.Sharpness): blend the map away from its PIL
    'smooth' blur (interior pixels only; the border keeps the original): blurred +
    factor * (x - blurred). With uint8_clip, as tfa 0.13 does for the seed: a factor in
    (0, 1) rounds the result, any other factor except 0 and 1 rounds and clips it to
    [0, 255] (tfa's blend was written for 8-bit pictures)."""
    n, c, h, w = x.shape
    blurred = x.clone()
    if h >= 3 and w >= 3:
        k = _PIL_SMOOTH.to(device=x.device, dtype=x.dtype).view(1, 1, 3, 3)
        inner = F.conv2d(x.reshape(n * c, 1, h, w), k).reshape(n, c, h - 2, w - 2)
        blurred[..., 1:-1, 1:-1] = inner
    if factor == 0.0:
        return blurred
    if factor == 1.0:
        return x
    out = blurred + factor * (x - blurred)
    if not uint8_clip:
        return out
    if 0.0 < factor < 1.0:
        return torch.round(out)
    return torch.round(out.clamp(0.0, 255.0))


def op_erode(x: torch.Tensor, kernel: int = 3, shape: str = "square", **_: Any
             ) -> torch.Tensor:
    return _morph(x, int(kernel), shape, largest=False)


def op_dilate(x: torch.Tensor, kernel: int = 3, shape: str = "square", **_: Any
              ) -> torch.Tensor:
    return _morph(x, int(kernel), shape, largest=True)


_SOBEL = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8.0


def op_sobel(x: torch.Tensor, **_: Any) -> torch.Tensor:
    """Gradient magnitude per channel (Sobel, replicate border)."""
    n, c, h, w = x.shape
    k = torch.stack([_SOBEL, _SOBEL.t()]).unsqueeze(1).to(device=x.device, dtype=x.dtype)
    g = F.conv2d(_pad_same(x.reshape(n * c, 1, h, w), 3), k)   # [N*C, 2, H, W]
    return g.square().sum(dim=1).add(1e-12).sqrt().reshape(n, c, h, w)


def op_sinusoidal(x: torch.Tensor, freq_x: float = 2.0, freq_y: float = 0.0,
                  phase: float = 0.0, amplitude: float = 0.5, mode: str = "multiply",
                  **_: Any) -> torch.Tensor:
    """A sine wave across the map: multiplies the activations, or displaces them ('warp')."""
    h, w = x.shape[-2:]
    ys = (torch.arange(h, dtype=torch.float32) + 0.5) / h
    xs = (torch.arange(w, dtype=torch.float32) + 0.5) / w
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    wave = torch.sin(2 * math.pi * (freq_x * gx + freq_y * gy) + math.radians(phase))
    if mode == "multiply":
        return x * (1.0 + amplitude * wave.to(device=x.device, dtype=x.dtype))
    # Warp: move each pixel across the wave fronts (perpendicular to the wave vector) by
    # amplitude * sin, a fraction of the map size: columns (or rows) ripple.
    norm = math.hypot(freq_x, freq_y)
    dx, dy = (-freq_y / norm, freq_x / norm) if norm > 0 else (0.0, 1.0)
    shift = 2.0 * amplitude * wave
    grid = _identity_grid(h, w) + torch.stack([shift * dx, shift * dy], dim=-1).unsqueeze(0)
    return _sample_grid(x, grid, "reflect")


def op_sin_disrupt(x: torch.Tensor, row_freq: float = 1.0, col_freq: float = 1.0,
                   row_shift: float = 4.0, col_shift: float = 2.0, amplitude: float = 4.0,
                   **_: Any) -> torch.Tensor:
    """The seed's sin_disrupt: the maps are REPLACED by a fixed pattern, whatever they held:
    amplitude * (sin((row - row_shift) / H * row_freq) + sin((col - col_shift) / H *
    col_freq)), H the map height for both terms as in the seed. The seed's call is
    row_freq = sinX, col_freq = sinY, row_shift = 4 + translateY, col_shift = 2 +
    translateX, amplitude 4."""
    h, w = x.shape[-2:]
    rows = torch.arange(h, dtype=torch.float64).unsqueeze(1)
    cols = torch.arange(w, dtype=torch.float64).unsqueeze(0)
    wave = amplitude * (torch.sin((rows - row_shift) / h * row_freq)
                        + torch.sin((cols - col_shift) / h * col_freq))
    return wave.to(device=x.device, dtype=x.dtype).expand_as(x).clone()


def op_instance_norm(x: torch.Tensor, **_: Any) -> torch.Tensor:
    """StyleGAN1's InstanceNorm (the seed's with_norm): each map minus its mean, divided by
    sqrt(mean square + 1e-8)."""
    x = x - x.mean(dim=(2, 3), keepdim=True)
    return x * torch.rsqrt(x.square().mean(dim=(2, 3), keepdim=True) + 1e-8)


def op_jitter(x: torch.Tensor, amount: float = 1.0, seed: int = 0, **_: Any) -> torch.Tensor:
    """Displace every pixel by a seeded random offset of up to `amount` pixels."""
    h, w = x.shape[-2:]
    # Drawn on the CPU (the same offsets on every device), kept on x's device.
    unit = devices.seeded("uniform", (1, h, w, 2), seed, x.device)
    offsets = (unit * 2 - 1) * amount
    scale = torch.tensor([2.0 / w, 2.0 / h], device=x.device)
    return _sample_grid(x, _identity_grid(h, w, x.device) + offsets * scale, "reflect")


def op_gaussian_noise(x: torch.Tensor, std: float = 0.5, seed: int = 0, **_: Any
                      ) -> torch.Tensor:
    noise = devices.seeded("normal", (1, *x.shape[1:]), seed, x.device, x.dtype)
    return x + std * noise


def _f(name: str, default: float, lo: float, hi: float, step: float, help: str) -> ParamSpec:
    return ParamSpec(name, "float", default, lo, hi, step, help)


def _i(name: str, default: int, lo: int, hi: int, help: str) -> ParamSpec:
    return ParamSpec(name, "int", default, lo, hi, 1, help)


def _seed() -> ParamSpec:
    return _i("seed", 0, 0, 2**31 - 1, "random seed: the same seed gives the same result")


def _fill(default: str) -> ParamSpec:
    return ParamSpec("fill", "choice", default, help="what fills the uncovered border",
                     choices=FILL_MODES)


def _choice(name: str, default: str, choices: tuple[str, ...], help: str) -> ParamSpec:
    return ParamSpec(name, "choice", default, help=help, choices=choices)


def _interp() -> ParamSpec:
    return _choice("interpolation", "bilinear", ("bilinear", "nearest"),
                   "bilinear, or nearest (tfa's default, the seed's)")


def _pivot() -> ParamSpec:
    return _choice("pivot", "centre", ("centre", "half_pixel"),
                   "about the map centre, or half a pixel right and down of it "
                   "(OpenCV's getRotationMatrix2D centre, Broad's)")


def _sampling() -> ParamSpec:
    return _choice("sampling", "exact", ("exact", "opencv"),
                   "bilinear at exact positions, or at OpenCV 4's 1/32-pixel positions "
                   "(warpAffine, Broad's)")


def _shape() -> ParamSpec:
    return _choice("shape", "square", ("square", "ellipse"),
                   "window shape: square (ours, the seed's 3 x 3) or ellipse (OpenCV "
                   "MORPH_ELLIPSE, Broad's)")


# Help texts name whose semantics each operation has: ours, the seed's (Zheng,
# NetworkOperations.py) or Broad's (transform_layers.py); engine.recipes.recipe's importers map
# their files onto exactly these parameters.
OPERATIONS: dict[str, Operation] = {op.name: op for op in [
    Operation("identity", "Identity", [], op_identity,
              "leave the activations as they are (seed 'none')"),
    Operation("ablate", "Ablate", [], op_ablate,
              "set the channels to zero (Broad 'ablate', seed 'block')"),
    Operation("multiply", "Multiply", [_f("factor", 2.0, -10, 10, 0.05, "scale factor")],
              op_multiply, "multiply by a constant (Broad 'scalar-multiply')"),
    Operation("add", "Add (brightness)", [_f("amount", 1.0, -10, 10, 0.05, "value added")],
              op_add, "add a constant (seed 'brightness': tf.image.adjust_brightness adds "
              "its delta, unclipped on floats)"),
    Operation("invert", "Invert", [_f("offset", 0.0, -10, 10, 0.05,
                                      "result is offset - x (0: negate)")],
              op_invert, "offset - x: seed 'invert' is offset 0 (-x), Broad 'invert' is "
              "offset 1 (1 - x)"),
    Operation("threshold", "Binary threshold",
              [_f("threshold", 0.5, -10, 10, 0.01, "values above it become high, others 0"),
               _f("high", 1.0, -10, 10, 0.05, "the value above the threshold")],
              op_threshold, "binarise the activations (Broad 'binary-thresh': high 1)"),
    Operation("translate", "Translate",
              [_f("x_shift", 0.25, -1, 1, 0.01, "horizontal shift, fraction of the width"),
               _f("y_shift", 0.0, -1, 1, 0.01, "vertical shift, fraction of the height"),
               _fill("reflect"), _interp(), _sampling()], op_translate,
              "shift the maps; seed 'translate' (pixels / size, reflect fill, nearest), "
              "Broad 'translate' (fractions, zero fill, OpenCV sampling)"),
    Operation("rotate", "Rotate",
              [_f("angle", 45.0, -360, 360, 1, "degrees, anticlockwise"), _fill("zero"),
               _interp(), _pivot(), _sampling()], op_rotate,
              "rotate; seed 'rotate' (radians -> degrees, reflect fill, nearest), Broad "
              "'rotate' (degrees, zero fill, half-pixel pivot, OpenCV sampling)"),
    Operation("zoom", "Zoom", [_f("scale", 1.5, 0.05, 20, 0.01, "above 1 magnifies"),
                               _fill("zero"), _pivot(), _sampling()], op_zoom,
              "scale about the centre (Broad 'scale': zero fill, half-pixel pivot, OpenCV "
              "sampling)"),
    Operation("resize_pad", "Resize by pixels",
              [_i("pixels", -2, -256, 256, "pixels added to the map size (negative shrinks)")],
              op_resize_pad, "seed 'scale': resize to size + pixels with TensorFlow's "
              "Gaussian kernel, then centre-crop or zero-pad back (0 still blurs a little)"),
    Operation("flip_h", "Flip horizontally", [], op_flip_h,
              "mirror left and right (Broad 'flip-h')"),
    Operation("flip_v", "Flip vertically", [], op_flip_v,
              "mirror top and bottom (Broad 'flip-v')"),
    Operation("mirror_lr", "Mirror left to right", [], op_mirror_lr,
              "copy the left half mirrored onto the right (ours)"),
    Operation("mirror_tb", "Mirror top to bottom", [], op_mirror_tb,
              "copy the top half mirrored onto the bottom (ours)"),
    Operation("half_turn", "Half turn",
              [_choice("keep", "top", ("top", "left", "low_channels"),
                       "top: seed mirrorY; left: the same across columns; low_channels: "
                       "seed mirrorX as its code runs")],
              op_half_turn, "part of the map replaced by the map turned 180 degrees (seed "
              "'mirrorY' / 'mirrorX')", whole=True),
    Operation("shuffle", "Shuffle channels",
              [_seed(), _choice("source", "selected", ("selected", "all"),
                                "permute among the selected channels (ours), or draw from "
                                "every channel of the layer (seed)")],
              op_shuffle, "permute channels (seed 'shuffle': source all)", whole=True),
    Operation("vanish", "Vanish",
              [_seed(), _choice("donors", "random", ("random", "repeat"),
                                "random unselected channels (ours), or the seed's repeat "
                                "pattern")],
              op_vanish, "replace the selected channels with copies of unselected ones "
              "(seed 'vanish': donors repeat)", whole=True),
    Operation("mean_filter", "Mean filter",
              [_i("kernel", 3, 1, 31, "window size"),
               _choice("border", "replicate", ("replicate", "reflect"),
                       "edge padding: replicate (ours) or reflect (tfa, the seed's)")],
              op_mean_filter, "box blur (seed 'mean_filter': border reflect)"),
    Operation("sharpen", "Sharpen", [_f("factor", 1.0, 0, 20, 0.1, "strength")], op_sharpen,
              "unsharp mask against a 3 x 3 box blur (ours)"),
    Operation("sharpness", "Sharpness (PIL)",
              [_f("factor", 2.0, 0, 20, 0.1, "1 leaves the map, 0 gives the blur, above 1 "
                  "sharpens"),
               ParamSpec("uint8_clip", "bool", False, help="round and clip to 0..255 as "
                         "tfa does (the seed's sharpen)")],
              op_sharpness, "PIL sharpness against its smooth kernel (seed 'sharpen' is "
              "tfa.image.sharpness: uint8_clip on)"),
    Operation("erode", "Erode", [_i("kernel", 3, 1, 31, "window size"), _shape()], op_erode,
              "minimum over a window (seed 'erosion': square 3; Broad 'erode' r: "
              "ellipse 2r + 1)"),
    Operation("dilate", "Dilate", [_i("kernel", 3, 1, 31, "window size"), _shape()],
              op_dilate, "maximum over a window (seed 'dilation': square 3; Broad "
              "'dilate' r: ellipse 2r + 1)"),
    Operation("sobel", "Sobel edges", [], op_sobel, "gradient magnitude (ours)"),
    Operation("sinusoidal", "Sinusoidal disruption",
              [_f("freq_x", 2.0, -64, 64, 0.1, "cycles across the width"),
               _f("freq_y", 0.0, -64, 64, 0.1, "cycles down the height"),
               _f("phase", 0.0, -360, 360, 1, "degrees"),
               _f("amplitude", 0.5, -10, 10, 0.01,
                  "strength (multiply) or displacement as a fraction of the map (warp)"),
               ParamSpec("mode", "choice", "multiply", help="multiply or displace",
                         choices=("multiply", "warp"))],
              op_sinusoidal, "a sine wave across the maps (ours)"),
    Operation("sin_disrupt", "Sine pattern (seed)",
              [_f("row_freq", 1.0, -1000, 1000, 0.1, "radians per map height, down rows "
                  "(seed sinX)"),
               _f("col_freq", 1.0, -1000, 1000, 0.1, "radians per map height, across "
                  "columns (seed sinY)"),
               _f("row_shift", 4.0, -1024, 1024, 1, "pixels (seed: 4 + translateY)"),
               _f("col_shift", 2.0, -1024, 1024, 1, "pixels (seed: 2 + translateX)"),
               _f("amplitude", 4.0, -100, 100, 0.1, "height of each sine (seed: 4)")],
              op_sin_disrupt, "replace the maps by the seed's sin_disrupt pattern"),
    Operation("instance_norm", "Instance norm", [], op_instance_norm,
              "normalise each map to mean 0, mean square 1 (seed 'with_norm')"),
    Operation("jitter", "Spatial jitter", [_f("amount", 1.0, 0, 64, 0.1, "pixels"), _seed()],
              op_jitter, "random per-pixel displacement (ours)"),
    Operation("gaussian_noise", "Gaussian noise",
              [_f("std", 0.5, 0, 20, 0.01, "standard deviation"), _seed()],
              op_gaussian_noise, "add seeded noise (ours)"),
]}


# ----------------------------------------------------------------------------------------
# Weight edits: fn(w) on the selected output (or input) channels of a conv weight [O, I, k, k].


def _wn(w: torch.Tensor, std: float = 0.1, seed: int = 0, **_: Any) -> torch.Tensor:
    # Noise relative to the weight's own scale, so one std suits every layer.
    noise = devices.seeded("normal", tuple(w.shape), seed, w.device, w.dtype)
    return w + std * w.std().clamp_min(1e-8) * noise


def _centre_only(w: torch.Tensor, **_: Any) -> torch.Tensor:
    kh, kw = w.shape[-2:]
    out = torch.zeros_like(w)
    out[..., kh // 2, kw // 2] = w[..., kh // 2, kw // 2]
    return out


_AXIS = ParamSpec("axis", "choice", "out", help="edit output channels (out) or input channels "
                  "(in); demodulation undoes a uniform scale of whole output channels",
                  choices=("out", "in"))

WEIGHT_OPERATIONS: dict[str, Operation] = {op.name: op for op in [
    Operation("zero", "Zero", [_AXIS], lambda w, **_: torch.zeros_like(w)),
    Operation("negate", "Negate", [_AXIS], lambda w, **_: -w),
    Operation("scale", "Scale", [_f("factor", 2.0, -100, 100, 0.05, "scale factor"), _AXIS],
              lambda w, factor=2.0, **_: w * factor),
    Operation("transpose", "Transpose kernel", [_AXIS], lambda w, **_: w.transpose(-1, -2)),
    Operation("rotate90", "Rotate kernel 90", [_AXIS],
              lambda w, **_: torch.rot90(w, 1, dims=(-2, -1))),
    Operation("rotate180", "Rotate kernel 180", [_AXIS],
              lambda w, **_: torch.rot90(w, 2, dims=(-2, -1))),
    Operation("centre_only", "Keep centre tap", [_AXIS], _centre_only),
    Operation("noise", "Add noise", [_f("std", 0.1, 0, 10, 0.01, "relative to the weight's "
                                        "standard deviation"), _seed(), _AXIS], _wn),
]}


# ----------------------------------------------------------------------------------------
# Channel selection, bends, weight edits.


@dataclass
class ChannelSelection:
    """Which channels of a layer an operation touches."""
    mode: str = "all"               # 'all' | 'indices' | 'random' | 'clusters'
    indices: list[int] = field(default_factory=list)  # mode 'indices'
    fraction: float = 0.5           # mode 'random': share of channels picked
    seed: int = 0                   # mode 'random': which channels
    layer: str | None = None        # mode 'clusters': clustered layer (None = the bend's)
    k: int = DEFAULT_CLUSTER_K      # mode 'clusters': number of clusters
    ids: list[int] = field(default_factory=list)      # mode 'clusters': chosen cluster ids
    samples: int = DEFAULT_CLUSTER_SAMPLES  # mode 'clusters': latents the clustering used
    cluster_seed: int = 0           # mode 'clusters': seed of the clustering


@dataclass
class Bend:
    """One operation on one layer's output."""
    layer: str
    op: str = "identity"
    params: dict[str, Any] = field(default_factory=dict)
    channels: ChannelSelection = field(default_factory=ChannelSelection)
    enabled: bool = True


@dataclass
class WeightEdit:
    """One edit of a conv layer's weight (before modulation)."""
    layer: str
    op: str = "zero"
    params: dict[str, Any] = field(default_factory=dict)
    channels: ChannelSelection = field(default_factory=ChannelSelection)
    enabled: bool = True


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# The longest channel or cluster list a selection may give (a selection built in Python,
# not read by engine.recipes.recipe): more than any layer's channels (StyleGAN3's widest has 1024).
MAX_SELECTION_ENTRIES = 4096


def validate_selection(sel: ChannelSelection, channels: int | None, G: Any = None,
                       where: str = "channels", limits: Limits | None = None) -> list[str]:
    """Problems of a channel selection; `channels` = the layer's channel count if known.
    A clustering's k and samples are capped by `limits` (default: as the environment sets
    them now): a recipe's clustering runs on the server like the page's."""
    if not isinstance(sel, ChannelSelection):
        return [f"{where}: must be a channel selection"]
    problems = []
    if sel.mode not in SELECTION_MODES:
        return [f"{where}.mode: {sel.mode!r} is not one of {list(SELECTION_MODES)}"]
    if sel.mode == "indices":
        if not isinstance(sel.indices, list) or not sel.indices:
            problems.append(f"{where}.indices: give at least one channel index")
        elif len(sel.indices) > MAX_SELECTION_ENTRIES:
            problems.append(f"{where}.indices: {len(sel.indices)} entries are more than any "
                            f"layer's channels (at most {MAX_SELECTION_ENTRIES})")
        else:
            for i, c in enumerate(sel.indices):
                if not _is_int(c):
                    problems.append(f"{where}.indices[{i}]: {c!r} is not a whole number")
                elif c < 0 or (channels is not None and c >= channels):
                    top = f"0..{channels - 1}" if channels is not None else "0 or more"
                    problems.append(f"{where}.indices[{i}]: channel {c} is out of range "
                                    f"({top})")
    elif sel.mode == "random":
        f = sel.fraction
        if isinstance(f, bool) or not isinstance(f, int | float) or not 0 < f <= 1:
            problems.append(f"{where}.fraction: {f!r} must be a number in (0, 1]")
        if not _is_int(sel.seed) or sel.seed < 0:
            problems.append(f"{where}.seed: {sel.seed!r} must be a whole number >= 0")
    elif sel.mode == "clusters":
        limits = limits or current_limits()
        k_ok = _is_int(sel.k) and 2 <= sel.k <= limits.cluster_k
        if not k_ok:
            problems.append(f"{where}.k: {sel.k!r} must be a whole number from 2 to "
                            f"{limits.cluster_k} ({ENV_NAMES['cluster_k']})")
        if not isinstance(sel.ids, list) or not sel.ids:
            problems.append(f"{where}.ids: give at least one cluster id")
        elif len(sel.ids) > MAX_SELECTION_ENTRIES:
            problems.append(f"{where}.ids: {len(sel.ids)} entries are more than a clustering "
                            f"has clusters (at most {MAX_SELECTION_ENTRIES})")
        else:
            for i, c in enumerate(sel.ids):
                if not _is_int(c):
                    problems.append(f"{where}.ids[{i}]: {c!r} is not a whole number")
                elif k_ok and not 0 <= c < sel.k:
                    problems.append(f"{where}.ids[{i}]: cluster {c} is out of range "
                                    f"(0..{sel.k - 1} for k={sel.k})")
        if not _is_int(sel.samples) or sel.samples < 1:
            problems.append(f"{where}.samples: {sel.samples!r} must be a whole number >= 1")
        elif above_limit("cluster_samples", sel.samples, limits):
            problems.append(f"{where}.samples: "
                            f"{above_limit('cluster_samples', sel.samples, limits)}")
        if not _is_int(sel.cluster_seed) or sel.cluster_seed < 0:
            problems.append(f"{where}.cluster_seed: {sel.cluster_seed!r} must be a whole "
                            f"number >= 0")
        if sel.layer is not None:
            if not isinstance(sel.layer, str):
                problems.append(f"{where}.layer: {sel.layer!r} is not a layer name")
            elif G is not None and sel.layer not in G.synthesis.layers:
                problems.append(f"{where}.layer: unknown layer {sel.layer!r}")
            elif G is not None and channels is not None and \
                    G.layer_shapes()[sel.layer][0] != channels:
                problems.append(f"{where}.layer: {sel.layer} has "
                                f"{G.layer_shapes()[sel.layer][0]} channels, the bent layer "
                                f"{channels}")
    return problems


def _validate_edit(item: Bend | WeightEdit, registry: Mapping[str, Operation], G: Any,
                   kind: str, limits: Limits | None = None) -> list[str]:
    problems = []
    layers = list(G.synthesis.layers) if G is not None else None
    if not isinstance(item.layer, str):
        problems.append(f"layer: {item.layer!r} is not a layer name")
    elif layers is not None and item.layer not in layers:
        problems.append(f"layer: unknown layer {item.layer!r} (layers: {', '.join(layers)})")
    if not isinstance(item.enabled, bool):
        problems.append(f"enabled: {item.enabled!r} is not true or false")
    op = registry.get(item.op) if isinstance(item.op, str) else None
    if op is None:
        problems.append(f"op: unknown {kind} {item.op!r} (known: {', '.join(registry)})")
    else:
        problems += check_params(op, item.params)
    channels = None
    if G is not None and isinstance(item.layer, str) and item.layer in layers:
        channels = G.layer_shapes()[item.layer][0]
        if isinstance(item, WeightEdit) and isinstance(item.params, Mapping) and \
                item.params.get("axis") == "in":
            channels = _weight_of(G, item.layer).shape[1]
    problems += validate_selection(item.channels, channels, G, limits=limits)
    return problems


def validate_bend(bend: Bend, G: Any = None, limits: Limits | None = None) -> list[str]:
    """Every problem of one bend as 'field: reason'; G (optional) checks layers and channels."""
    return _validate_edit(bend, OPERATIONS, G, "operation", limits)


def validate_weight_edit(edit: WeightEdit, G: Any = None, limits: Limits | None = None
                         ) -> list[str]:
    """Every problem of one weight edit as 'field: reason'."""
    return _validate_edit(edit, WEIGHT_OPERATIONS, G, "weight edit", limits)


def undone_by_demodulation(edit: WeightEdit, G: Any = None) -> bool:
    """True for a scale that changes nothing: a positive scale of whole output channels, or
    of every input channel, of a demodulated conv (every conv but the RGB ones) leaves its
    normalised weights as they were. Valid, but worth telling a user before they add it.
    Without G, layers are read as StyleGAN2 names."""
    if edit.op != "scale" or not isinstance(edit.layer, str) \
            or not isinstance(edit.params, Mapping):
        return False
    rgb = networks.is_rgb_layer(G, edit.layer) if G is not None and edit.layer in \
        getattr(G.synthesis, "layers", ()) else edit.layer.endswith("torgb")
    if rgb:
        return False
    factor = edit.params.get("factor", 2.0)
    whole_weight = edit.params.get("axis", "out") == "out" or edit.channels.mode == "all"
    return isinstance(factor, int | float) and factor > 0 and whole_weight


def _weight_of(G: Any, layer: str) -> torch.Tensor:
    return networks.layer_module(G, layer).weight


def resolve_channels(sel: ChannelSelection, G: Any, layer: str, channels: int,
                     model_key: str | None = None) -> torch.Tensor | None:
    """Channel indices (sorted LongTensor) a selection picks; None means every channel."""
    if sel.mode == "all":
        return None
    if sel.mode == "indices":
        idx = sorted(set(int(i) for i in sel.indices))
    elif sel.mode == "random":
        count = max(1, int(round(sel.fraction * channels)))
        idx = sorted(np.random.RandomState(sel.seed).permutation(channels)[:count].tolist())
    elif sel.mode == "clusters":
        from engine.tools import clusters  # lazy: clustering pulls in scikit-learn

        key = model_key if model_key is not None else clusters.model_key_of(G)
        labels = np.asarray(clusters.cluster_labels(G, key, sel.layer or layer, sel.k,
                                                    sel.samples, sel.cluster_seed))
        idx = np.nonzero(np.isin(labels, list(sel.ids)))[0].tolist()
    else:
        raise BendError(f"unknown channel selection mode {sel.mode!r}")
    if len(idx) == channels:
        return None
    return torch.tensor(idx, dtype=torch.long)


def apply_operation(op: Operation, x: torch.Tensor, params: Mapping[str, Any],
                    selected: torch.Tensor | None = None) -> torch.Tensor:
    """Run `op` (resolved params) on the `selected` channels of x [N, C, H, W]."""
    if op.whole:
        return op.fn(x, selected.to(x.device) if selected is not None else None, **params)
    if selected is None:
        return op.fn(x, **params)
    if selected.numel() == 0:
        return x
    idx = selected.to(x.device)
    return x.index_copy(1, idx, op.fn(x.index_select(1, idx), **params))


def _compose(steps: Sequence[tuple[Operation, dict[str, Any], torch.Tensor | None]]
             ) -> Callable[[torch.Tensor], torch.Tensor]:
    def tap(x: torch.Tensor) -> torch.Tensor:
        for op, params, selected in steps:
            x = apply_operation(op, x, params, selected)
        return x
    return tap


def _weight_step(op: Operation, params: dict[str, Any], selected: torch.Tensor | None
                 ) -> tuple[Operation, dict[str, Any], torch.Tensor | None, int]:
    params = dict(params)
    axis = 1 if params.pop("axis", "out") == "in" else 0
    return op, params, selected, axis


def _compose_weight(steps: Sequence[tuple[Operation, dict[str, Any], torch.Tensor | None, int]]
                    ) -> Callable[[torch.Tensor], torch.Tensor]:
    def tap(w: torch.Tensor) -> torch.Tensor:
        for op, params, selected, axis in steps:
            if selected is None:
                w = op.fn(w, **params)
            elif selected.numel():
                idx = selected.to(w.device)
                w = w.index_copy(axis, idx, op.fn(w.index_select(axis, idx), **params))
        return w
    return tap


def make_taps(G: Any, bends: Iterable[Bend] = (), weight_edits: Iterable[WeightEdit] = (),
              model_key: str | None = None, validated: bool = False
              ) -> tuple[dict[str, Callable], dict[str, Callable]]:
    """Per-call (taps, weight_taps) for G.synthesis; bends on one layer compose in order.

    Raises BendError listing every problem when a bend or edit is invalid, unless the caller
    `validated` them already (engine.recipes.recipe.render_tensor: a recipe is validated once, where
    it renders). Channel selections (including clusters) are resolved here, once, not at
    every forward pass.
    """
    bends, weight_edits = list(bends), list(weight_edits)
    if not validated:
        problems = [f"bends[{i}].{p}" for i, b in enumerate(bends)
                    for p in validate_bend(b, G)]
        problems += [f"weight_edits[{i}].{p}" for i, e in enumerate(weight_edits)
                     for p in validate_weight_edit(e, G)]
        if problems:
            raise BendError("invalid bends: " + "; ".join(problems))
    shapes = G.layer_shapes()
    steps: dict[str, list] = {}
    for b in bends:
        if not b.enabled:
            continue
        op = OPERATIONS[b.op]
        sel = resolve_channels(b.channels, G, b.layer, shapes[b.layer][0], model_key)
        if op.name == "identity":
            continue  # nothing to run: keep the layer's fast path
        steps.setdefault(b.layer, []).append((op, resolve_params(op, b.params), sel))
    wsteps: dict[str, list] = {}
    for e in weight_edits:
        if not e.enabled:
            continue
        op = WEIGHT_OPERATIONS[e.op]
        params = resolve_params(op, e.params)
        count = _weight_of(G, e.layer).shape[1 if params.get("axis") == "in" else 0]
        sel = resolve_channels(e.channels, G, e.layer, count, model_key)
        wsteps.setdefault(e.layer, []).append(_weight_step(op, params, sel))
    # Channel indices move to the model's device here, once, not inside every forward pass.
    dev = devices.module_device(G.synthesis) if hasattr(G, "synthesis") else None
    if dev is not None and dev.type != "cpu":
        steps = {layer: [(op, params, sel if sel is None else sel.to(dev))
                         for op, params, sel in s] for layer, s in steps.items()}
        wsteps = {layer: [(op, params, sel if sel is None else sel.to(dev), axis)
                          for op, params, sel, axis in s] for layer, s in wsteps.items()}
    taps = {layer: _compose(s) for layer, s in steps.items()}
    weight_taps = {layer: _compose_weight(s) for layer, s in wsteps.items()}
    return taps, weight_taps
