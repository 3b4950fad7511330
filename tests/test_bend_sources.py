"""Fidelity to the two bending sources users bring.

Each reference below is numpy written from reading the sources' code (no TensorFlow,
OpenCV or torch in the references):
* seed: jasper-zheng/manipulated-network, codes/NetworkOperations.py (Block.call), run by
  TensorFlow 2 / tensorflow-addons 0.13 on each channel map (the maps are the batch of
  images: transpose [1, 2, 3, 0]), then `tf.where(mask, out, inputs)` keeps the
  unselected channels;
* Broad: terrybroad/network-bending, transform_layers.py and transforms/*/op.cpp (OpenCV on
  each channel map).
Our operations run in float64 on random activations and must agree with the reference
within the tolerance each test states (TOL_* below). The two example files (the seed
README's template, Broad's example_transform_config.yaml with example_cluster_dict.yaml)
are typed in as data and imported bend by bend.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import make_tiny_generator

from engine.base.errors import StudioError
from engine.recipes.bend_import import (
    SEED_CLUSTER_K,
    import_broad_yaml,
    import_notebook_template,
    load_recipe_file,
)
from engine.tools.bending import OPERATIONS, Bend, ChannelSelection, apply_operation, resolve_params

TOL_EXACT = 1e-12      # same arithmetic in a different order (float64)
TOL_RESAMPLE = 1e-9    # resampling: our normalised grid vs their pixel coordinates (float64)

RNG = np.random.default_rng(20)


def acts(n: int = 2, c: int = 12, size: int = 16) -> np.ndarray:
    """Random activations shaped like a leaky-ReLU layer's output."""
    x = RNG.normal(size=(n, c, size, size))
    return np.where(x > 0, x, 0.2 * x) * 1.4


def ours(name: str, x: np.ndarray, selected: list[int] | None = None, **params) -> np.ndarray:
    op = OPERATIONS[name]
    assert not op.params or all(OPERATIONS[name].spec(k) for k in params), params
    sel = torch.tensor(selected) if selected is not None else None
    out = apply_operation(op, torch.from_numpy(x), resolve_params(op, params), sel)
    return out.numpy()


def per_map(fn, x: np.ndarray) -> np.ndarray:
    return np.stack([np.stack([fn(m) for m in sample]) for sample in x])


def seed_mask(x: np.ndarray, out: np.ndarray, selected: list[int] | None) -> np.ndarray:
    """Block.call's last step: tf.where(mask from `sequences`, out, inputs)."""
    if selected is None:
        return out
    seq = np.zeros(x.shape[1], dtype=bool)
    seq[selected] = True
    return np.where(seq[None, :, None, None], out, x)


# ----------------------------------------------------------------------------------------
# The seed: TensorFlow references.


def tf_gaussian_resize_1d(n_in: int, n_out: int) -> np.ndarray:
    """tf.image.resize(method='gaussian', antialias=False) along one axis: TensorFlow's
    ScaleAndTranslate spans with GaussianKernelFunc(radius 1.5, sigma radius / 3)."""
    scale = n_out / n_in
    mat = np.zeros((n_out, n_in))
    for x in range(n_out):
        sample_f = (x + 0.5) / scale
        if sample_f < 0 or sample_f > n_in:
            continue
        start = int(np.clip(math.ceil(sample_f - 1.5 - 0.5), 0, n_in - 1))
        end = int(np.clip(math.floor(sample_f + 1.5 - 0.5), 0, n_in - 1)) + 1
        weights = []
        for source in range(start, end):
            pos = abs(source + 0.5 - sample_f)
            weights.append(0.0 if pos >= 1.5 else math.exp(-pos * pos / (2 * 0.5 ** 2)))
        total = sum(weights)
        for source, w in zip(range(start, end), weights):
            mat[x, source] = w / total
    return mat


def tf_resize_with_crop_or_pad(img: np.ndarray, target: int) -> np.ndarray:
    h, w = img.shape
    diff_h, diff_w = target - h, target - w
    crop_h, crop_w = max(-diff_h // 2, 0), max(-diff_w // 2, 0)
    pad_h, pad_w = max(diff_h // 2, 0), max(diff_w // 2, 0)
    cropped = img[crop_h:crop_h + min(target, h), crop_w:crop_w + min(target, w)]
    out = np.zeros((target, target))
    out[pad_h:pad_h + cropped.shape[0], pad_w:pad_w + cropped.shape[1]] = cropped
    return out


def seed_scale(m: np.ndarray, scale: float) -> np.ndarray:
    x = m.shape[-1]
    x_new = int(x + scale)
    r = tf_gaussian_resize_1d(x, x_new)
    return tf_resize_with_crop_or_pad(r @ m @ r.T, x)


def tf_map_reflect(c: float, n: int) -> float:
    """ImageProjectiveTransformV3 fill_mode 'reflect' ([abcd] -> [dcba|abcd|dcba])."""
    if c < 0:
        if n <= 1:
            c = 0
        else:
            sz2 = 2 * n
            if c < sz2:
                c = sz2 * int(-c / sz2) + c
            c = c + sz2 if c < -n else -c - 1
    elif c > n - 1:
        if n <= 1:
            c = 0
        else:
            sz2 = 2 * n
            c -= sz2 * int(c / sz2)
            if c >= n:
                c = sz2 - c - 1
    return min(max(c, 0.0), n - 1.0)


def tf_round(v: float) -> int:
    return int(math.floor(abs(v) + 0.5)) * (1 if v >= 0 else -1)   # std::round


def tf_transform_nearest_reflect(img: np.ndarray, k: list[float]) -> np.ndarray:
    """tfa.image.transform(interpolation='nearest', fill_mode='reflect') with the 8-vector
    k mapping output (x, y) to input ((k0 x + k1 y + k2) / p, (k3 x + k4 y + k5) / p)."""
    h, w = img.shape
    out = np.zeros_like(img)
    for y in range(h):
        for x in range(w):
            p = k[6] * x + k[7] * y + 1.0
            ix = tf_map_reflect((k[0] * x + k[1] * y + k[2]) / p, w)
            iy = tf_map_reflect((k[3] * x + k[4] * y + k[5]) / p, h)
            out[y, x] = img[tf_round(iy), tf_round(ix)]
    return out


def tfa_rotate(img: np.ndarray, angle: float) -> np.ndarray:
    """tfa.image.rotate: angles_to_projective_transforms, counter-clockwise radians."""
    h, w = img.shape
    c, s = math.cos(angle), math.sin(angle)
    x_off = ((w - 1) - (c * (w - 1) - s * (h - 1))) / 2.0
    y_off = ((h - 1) - (s * (w - 1) + c * (h - 1))) / 2.0
    return tf_transform_nearest_reflect(img, [c, -s, x_off, s, c, y_off, 0.0, 0.0])


def tfa_translate(img: np.ndarray, dx: float, dy: float) -> np.ndarray:
    return tf_transform_nearest_reflect(img, [1.0, 0.0, -dx, 0.0, 1.0, -dy, 0.0, 0.0])


def tfa_mean_filter(img: np.ndarray, k: int) -> np.ndarray:
    """tfa.image.mean_filter2d: tf.pad REFLECT ((k-1)//2 before), box sum / area."""
    lo, hi = (k - 1) // 2, k - 1 - (k - 1) // 2
    p = np.pad(img, ((lo, hi), (lo, hi)), mode="reflect")
    h, w = img.shape
    return np.array([[p[i:i + k, j:j + k].mean() for j in range(w)] for i in range(h)])


def tfa_sharpness(img: np.ndarray, factor: float) -> np.ndarray:
    """tfa 0.13 _sharpness_image + compose_ops.blend(result, orig, factor)."""
    kernel = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]]) / 13.0
    h, w = img.shape
    result = img.copy()
    for i in range(1, h - 1):
        for j in range(1, w - 1):
            result[i, j] = (img[i - 1:i + 2, j - 1:j + 2] * kernel).sum()
    if factor == 0.0:
        return result
    if factor == 1.0:
        return img
    temp = result + factor * (img - result)
    if 0.0 < factor < 1.0:
        return np.round(temp)
    return np.round(np.clip(temp, 0.0, 255.0))


def tf_morph(img: np.ndarray, largest: bool) -> np.ndarray:
    """tf.nn.dilation2d / erosion2d with a zero 3 x 3 filter, padding SAME."""
    h, w = img.shape
    fill = -np.inf if largest else np.inf
    p = np.pad(img, 1, constant_values=fill)
    pick = np.max if largest else np.min
    return np.array([[pick(p[i:i + 3, j:j + 3]) for j in range(w)] for i in range(h)])


def seed_sin_disrupt(shape: tuple, sin_x: float, sin_y: float, tx: float, ty: float
                     ) -> np.ndarray:
    n, c, w, h = shape
    base = np.zeros((1, c, h, w))
    for x in range(w):
        for y in range(h):
            base[:, :, x, y] += np.sin((x - 4 - ty) / w * sin_x) * 4
            base[:, :, x, y] += np.sin((y - 2 - tx) / w * sin_y) * 4
    return np.broadcast_to(base, shape)


def seed_vanish(x: np.ndarray, sequences: np.ndarray) -> np.ndarray:
    c = x.shape[1]
    selected = -sequences + 1
    pattern = np.where(selected == 1)[0]
    sliced = x[:, pattern]
    lens = sliced.shape[1]
    repeated = np.repeat(sliced, int(c / lens), axis=1)
    return np.concatenate([repeated, sliced[:, :c % lens]], axis=1)


def seed_mirror(x: np.ndarray, axis: str) -> np.ndarray:
    """mirrorY / mirrorX on the transposed [C, H, W, N] tensor, as the seed writes them."""
    t = np.transpose(x, (1, 2, 3, 0))
    full = np.stack([np.stack([tfa_rotate(t[c, :, :, n], np.pi) for n in range(t.shape[3])],
                              axis=-1) for c in range(t.shape[0])])
    half = int(t.shape[1] / 2)
    if axis == "y":
        mirror = np.concatenate([t[:, :half], full[:, half:]], axis=1)
    else:
        mirror = np.concatenate([t[:half], full[half:]], axis=0)
    return np.transpose(mirror, (3, 0, 1, 2))


def stylegan1_instance_norm(x: np.ndarray) -> np.ndarray:
    x = x - x.mean(axis=(2, 3), keepdims=True)
    return x / np.sqrt((x ** 2).mean(axis=(2, 3), keepdims=True) + 1e-8)


SEL = [0, 3, 4, 7, 9]                      # the channels a seed 'sequences' mask selects


@pytest.mark.parametrize("scale", [-3, -1, 0, 2, 5])
def test_seed_scale_is_a_gaussian_resize_by_pixels(scale):
    x = acts()
    want = seed_mask(x, per_map(lambda m: seed_scale(m, scale), x), SEL)
    got = ours("resize_pad", x, SEL, pixels=scale)
    assert np.abs(got - want).max() < TOL_EXACT * 100


def test_seed_invert_brightness_block():
    x = acts()
    assert np.abs(ours("invert", x, SEL) - seed_mask(x, -x, SEL)).max() == 0
    assert np.abs(ours("add", x, SEL, amount=0.7) - seed_mask(x, x + 0.7, SEL)).max() \
        < TOL_EXACT
    assert np.abs(ours("ablate", x, SEL) - seed_mask(x, 0 * x, SEL)).max() == 0


@pytest.mark.parametrize("tx,ty", [(3, 0), (-2, 5), (7, -9), (16, 1), (-20, 30)])
def test_seed_translate_pixels_reflect_nearest(tx, ty):
    x = acts()
    size = x.shape[-1]
    want = seed_mask(x, per_map(lambda m: tfa_translate(m, tx, ty), x), SEL)
    bends, _ = import_notebook_template([{"resolution": size, "install_after": "Conv1",
                                          "layers": [{"operation": "translate",
                                                      "translateX": tx, "translateY": ty}]}])
    got = ours("translate", x, SEL, **bends[0].params)
    assert np.abs(got - want).max() < TOL_EXACT


@pytest.mark.parametrize("radians", [0.3, -1.1, 2.0, math.pi / 2, 5.5])
def test_seed_rotate_radians_reflect_nearest(radians):
    x = acts()
    want = seed_mask(x, per_map(lambda m: tfa_rotate(m, radians), x), SEL)
    bends, _ = import_notebook_template([{"resolution": 16, "install_after": "Conv1",
                                          "layers": [{"operation": "rotate",
                                                      "rotation": radians}]}])
    got = ours("rotate", x, SEL, **bends[0].params)
    assert np.abs(got - want).max() < TOL_EXACT


def test_seed_tf23_border_is_said_once_per_transform():
    layers = [{"operation": "rotate", "rotation": 0.3}, {"operation": "rotate",
                                                         "rotation": math.pi / 2},
              {"operation": "translate", "translateX": 2.5}, {"operation": "translate",
                                                               "translateX": 2}]
    _, warnings = import_notebook_template([{"resolution": 16, "install_after": "Conv1",
                                             "layers": layers}])
    tf23 = [w.split(":")[0] for w in warnings if "TensorFlow 2.3" in w]
    assert tf23 == ["template[0].layers[0]", "template[0].layers[2]"]


@pytest.mark.parametrize("k", [2, 3, 5])
def test_seed_mean_filter_reflect_border(k):
    x = acts()
    want = seed_mask(x, per_map(lambda m: tfa_mean_filter(m, k), x), SEL)
    got = ours("mean_filter", x, SEL, kernel=k, border="reflect")
    assert np.abs(got - want).max() < TOL_EXACT


@pytest.mark.parametrize("factor", [0.0, 0.5, 1.0, 5.0])
def test_seed_sharpen_is_tfa_sharpness(factor):
    x = acts() * 40          # on this scale rounding and clipping both show
    want = seed_mask(x, per_map(lambda m: tfa_sharpness(m, factor), x), SEL)
    got = ours("sharpness", x, SEL, factor=factor, uint8_clip=True)
    assert np.abs(got - want).max() < TOL_EXACT * 1e3
    if factor == 5.0:        # tfa's 8-bit blend: whole numbers in 0..255 only
        assert (got[:, SEL] >= 0).all() and np.array_equal(got[:, SEL], np.round(got[:, SEL]))


def test_seed_erosion_and_dilation():
    x = acts()
    for name, largest in (("erode", False), ("dilate", True)):
        want = seed_mask(x, per_map(lambda m, lg=largest: tf_morph(m, lg), x), SEL)
        got = ours(name, x, SEL, kernel=3, shape="square")
        assert np.abs(got - want).max() == 0, name


def test_seed_mirror_y_and_mirror_x():
    x = acts()
    want_y = seed_mask(x, seed_mirror(x, "y"), SEL)
    assert np.abs(ours("half_turn", x, SEL, keep="top") - want_y).max() == 0
    # mirrorX concatenates along the channel axis: channels >= H/2 (= 8) turn whole.
    want_x = seed_mask(x, seed_mirror(x, "x"), SEL)
    got_x = ours("half_turn", x, SEL, keep="low_channels")
    assert np.abs(got_x - want_x).max() == 0
    assert np.array_equal(got_x[:, 7], x[:, 7]) and not np.array_equal(got_x[:, 9], x[:, 9])


@pytest.mark.parametrize("sin_x,sin_y,tx,ty", [(1, 1, 0, 0), (6.5, -3, 2, -5)])
def test_seed_sin_disrupt(sin_x, sin_y, tx, ty):
    x = acts()
    want = seed_mask(x, seed_sin_disrupt(x.shape, sin_x, sin_y, tx, ty), SEL)
    bends, _ = import_notebook_template([{"resolution": 16, "install_after": "Conv1",
                                          "layers": [{"operation": "sin_disrupt",
                                                      "sinX": [sin_x], "sinY": sin_y,
                                                      "translateX": tx, "translateY": ty}]}])
    got = ours("sin_disrupt", x, SEL, **bends[0].params)
    assert np.abs(got - want).max() < TOL_EXACT * 100


def test_seed_vanish_repeats_the_unselected_channels():
    x = acts(c=12)
    seq = np.zeros(12, dtype=int)
    seq[SEL] = 1
    want = seed_mask(x, seed_vanish(x, seq), SEL)
    assert np.abs(ours("vanish", x, SEL, donors="repeat") - want).max() == 0


def test_seed_with_norm_is_stylegan1_instance_norm():
    x = acts()
    assert np.abs(ours("instance_norm", x) - stylegan1_instance_norm(x)).max() < TOL_EXACT


def test_seed_shuffle_draws_from_every_channel():
    # tf.random.shuffle's permutation cannot be reproduced; its structure can: each selected
    # channel holds a distinct channel of the whole layer, the others are untouched.
    x = acts()
    got = ours("shuffle", x, SEL, source="all", seed=1)
    keep = [c for c in range(12) if c not in SEL]
    assert np.array_equal(got[:, keep], x[:, keep])
    sources = [next(c for c in range(12) if np.array_equal(got[:, s], x[:, c])) for s in SEL]
    assert len(set(sources)) == len(SEL) and set(sources) - set(SEL)


# ----------------------------------------------------------------------------------------
# Broad: OpenCV references.


def cv_warp_affine(img: np.ndarray, m: np.ndarray, exact: bool = False) -> np.ndarray:
    """cv2.warpAffine(src, M, size) of OpenCV 4 (imgwarp.cpp): M inverted
    (invertAffineTransform), each output pixel's source position in 1/1024-pixel fixed point
    (terms rounded with cvRound, + half a 1/32 step), cut to 1/32 pixel (INTER_BITS 5), then
    bilinear with BORDER_CONSTANT 0. exact=True: the same at unrounded positions."""
    d = m[0, 0] * m[1, 1] - m[0, 1] * m[1, 0]
    d = 1.0 / d if d != 0 else 0.0
    i00, i01, i10, i11 = m[1, 1] * d, -m[0, 1] * d, -m[1, 0] * d, m[0, 0] * d
    b0, b1 = -i00 * m[0, 2] - i01 * m[1, 2], -i10 * m[0, 2] - i11 * m[1, 2]
    h, w = img.shape
    out = np.zeros_like(img)

    def px(yy: int, xx: int) -> float:
        return img[yy, xx] if 0 <= yy < h and 0 <= xx < w else 0.0

    for y in range(h):
        x0_fixed = int(np.rint((i01 * y + b0) * 1024)) + 16
        y0_fixed = int(np.rint((i11 * y + b1) * 1024)) + 16
        for x in range(w):
            if exact:
                sx, sy = i00 * x + i01 * y + b0, i10 * x + i11 * y + b1
            else:
                sx = ((x0_fixed + int(np.rint(i00 * x * 1024))) >> 5) / 32
                sy = ((y0_fixed + int(np.rint(i10 * x * 1024))) >> 5) / 32
            x0, y0 = math.floor(sx), math.floor(sy)
            fx, fy = sx - x0, sy - y0
            out[y, x] = ((1 - fy) * ((1 - fx) * px(y0, x0) + fx * px(y0, x0 + 1))
                         + fy * ((1 - fx) * px(y0 + 1, x0) + fx * px(y0 + 1, x0 + 1)))
    return out


def cv_rotation_matrix(img: np.ndarray, angle: float, scale: float) -> np.ndarray:
    """getRotationMatrix2D(centre = (size(0) / 2, size(1) / 2), angle, scale)."""
    cx, cy = img.shape[0] / 2.0, img.shape[1] / 2.0
    a = scale * math.cos(math.radians(angle))
    b = scale * math.sin(math.radians(angle))
    return np.array([[a, b, (1 - a) * cx - b * cy], [-b, a, b * cx + (1 - a) * cy]])


def cv_ellipse(k: int) -> np.ndarray:
    """getStructuringElement(MORPH_ELLIPSE, (k, k))."""
    r = c = k // 2
    inv_r2 = 1.0 / (r * r) if r else 0.0
    elem = np.zeros((k, k), dtype=bool)
    for i in range(k):
        dy = i - r
        if abs(dy) <= r:
            dx = int(np.rint(c * math.sqrt((r * r - dy * dy) * inv_r2)))
            elem[i, max(c - dx, 0):min(c + dx + 1, k)] = True
    return elem


def cv_morph(img: np.ndarray, radius: int, largest: bool) -> np.ndarray:
    """cv2.erode / dilate with the ellipse of size 2r + 1 anchored at (r, r); the default
    border leaves outside pixels out."""
    elem = cv_ellipse(2 * radius + 1)
    h, w = img.shape
    out = np.zeros_like(img)
    for y in range(h):
        for x in range(w):
            vals = [img[y + i - radius, x + j - radius] for i, j in zip(*np.nonzero(elem))
                    if 0 <= y + i - radius < h and 0 <= x + j - radius < w]
            out[y, x] = max(vals) if largest else min(vals)
    return out


BROAD_SEL = [1, 2, 6, 10]


def broad(name: str, params: list, x: np.ndarray) -> np.ndarray:
    """Our op as Broad's YAML imports it, on the BROAD_SEL channels of a 16 px layer."""
    bends, _ = import_broad_yaml({"transforms": [{"layer": 4, "transform": name,
                                                  "params": params, "features": "all"}]})
    assert len(bends) == 1, name
    return ours(bends[0].op, x, BROAD_SEL, **bends[0].params)


def broad_mask(x: np.ndarray, fn) -> np.ndarray:
    """transform_layers.py: torch.split per channel, the op on `indicies` only, cat."""
    out = x.copy()
    for n in range(x.shape[0]):
        for c in BROAD_SEL:
            out[n, c] = fn(x[n, c])
    return out


def broad_exact(name: str, params: list, x: np.ndarray) -> np.ndarray:
    """Broad's transform with our exact bilinear positions instead of OpenCV's 1/32 grid."""
    bends, _ = import_broad_yaml({"transforms": [{"layer": 4, "transform": name,
                                                  "params": params}]})
    return ours(bends[0].op, x, BROAD_SEL, **{**bends[0].params, "sampling": "exact"})


@pytest.mark.parametrize("tx,ty", [(0.25, 0.0), (0.5, -0.2), (0.13, 0.31)])
def test_broad_translate(tx, ty):
    x = acts()
    size = x.shape[-1]
    m = np.array([[1, 0, tx * size], [0, 1, ty * size]])
    want = broad_mask(x, lambda img: cv_warp_affine(img, m))
    assert np.abs(broad("translate", [tx, ty], x) - want).max() < TOL_RESAMPLE
    exact = broad_mask(x, lambda img: cv_warp_affine(img, m, exact=True))
    assert np.abs(broad_exact("translate", [tx, ty], x) - exact).max() < TOL_RESAMPLE


@pytest.mark.parametrize("angle", [45.0, 10.0, 90.0, 300.0])
def test_broad_rotate_degrees_about_opencv_centre(angle):
    x = acts()
    want = broad_mask(x, lambda img: cv_warp_affine(img, cv_rotation_matrix(img, angle, 1)))
    assert np.abs(broad("rotate", [angle], x) - want).max() < TOL_RESAMPLE
    exact = broad_mask(x, lambda img: cv_warp_affine(img, cv_rotation_matrix(img, angle, 1),
                                                     exact=True))
    assert np.abs(broad_exact("rotate", [angle], x) - exact).max() < TOL_RESAMPLE


@pytest.mark.parametrize("scale", [1.2, 0.7, 2.0])
def test_broad_scale(scale):
    x = acts()
    want = broad_mask(x, lambda img: cv_warp_affine(img, cv_rotation_matrix(img, 0, scale)))
    assert np.abs(broad("scale", [scale], x) - want).max() < TOL_RESAMPLE
    exact = broad_mask(x, lambda img: cv_warp_affine(img, cv_rotation_matrix(img, 0, scale),
                                                     exact=True))
    assert np.abs(broad_exact("scale", [scale], x) - exact).max() < TOL_RESAMPLE


@pytest.mark.parametrize("radius", [0, 1, 2, 3])
def test_broad_erode_dilate_ellipse(radius):
    x = acts()
    for name, largest in (("erode", False), ("dilate", True)):
        want = broad_mask(x, lambda img, lg=largest: cv_morph(img, radius, lg))
        assert np.abs(broad(name, [radius], x) - want).max() == 0, (name, radius)


def test_broad_pointwise_transforms():
    x = acts()
    cases = {
        "flip-h": ([], lambda img: img[:, ::-1]),
        "flip-v": ([], lambda img: img[::-1, :]),
        "invert": ([], lambda img: np.ones_like(img) - img),
        "binary-thresh": ([0.5], lambda img: (img > 0.5).astype(img.dtype) * 1),
        "scalar-multiply": ([-0.5], lambda img: img * -0.5),
        "ablate": ([], lambda img: img * 0),
    }
    for name, (params, fn) in cases.items():
        assert np.abs(broad(name, params, x) - broad_mask(x, fn)).max() < TOL_EXACT, name


def test_broad_resize_is_refused_in_one_line():
    bends, warnings = import_broad_yaml({"transforms": [{"layer": 3, "transform": "resize",
                                                         "params": [0.5, 0.5]}]})
    assert bends == [] and len(warnings) == 1 and "grows the map" in warnings[0]


# ----------------------------------------------------------------------------------------
# The two example files, bend by bend.

# The template printed in the seed's README.md ("An example operation template").
SEED_README_TEMPLATE = [
    {"resolution": 4, "install_after": "Conv0_up",
     "layers": [{"operation": "none", "name": "002", "clusters": []}]},
    {"resolution": 4, "install_after": "Conv1",
     "layers": [{"operation": "none", "name": "002", "clusters": []}]},
    {"resolution": 8, "install_after": "Conv0_up",
     "layers": [{"operation": "none", "name": "002", "clusters": []}]},
    {"resolution": 8, "install_after": "Conv1",
     "layers": [{"operation": "none", "name": "002", "clusters": []}]},
    {"resolution": 16, "install_after": "Conv0_up",
     "layers": [{"operation": "scale", "name": "001", "scale": -3, "clusters": [0, 7]},
                {"operation": "mean_filter", "name": "002", "kernel_size": 3,
                 "clusters": [1, 5, 6]}]},
    {"resolution": 16, "install_after": "Conv1",
     "layers": [{"operation": "sharpen", "name": "003", "sharpen_factor": 5,
                 "with_norm": True, "clusters": []}]},
    {"resolution": 32, "install_after": "Conv0_up", "layers": []},
    {"resolution": 32, "install_after": "Conv1", "layers": []},
]

SEED_README_TEXT = "operations = " + repr(SEED_README_TEMPLATE).replace(", ", ",\n  ")


def test_seed_readme_template_imports_with_no_parameter_lost():
    G = make_tiny_generator()
    bends, warnings = import_notebook_template(SEED_README_TEMPLATE, G)
    assert [(b.layer, b.op) for b in bends] == [
        ("b16.conv0", "resize_pad"), ("b16.conv0", "mean_filter"),
        ("b16.conv1", "sharpness"), ("b16.conv1", "instance_norm")]
    scale, mean, sharp, norm = bends
    assert scale.params == {"pixels": -3}                      # 16 -> 13 px, padded to 16
    assert scale.channels == ChannelSelection("clusters", ids=[0, 7], k=SEED_CLUSTER_K)
    assert mean.params == {"kernel": 3, "border": "reflect"}
    assert mean.channels == ChannelSelection("clusters", ids=[1, 5, 6], k=SEED_CLUSTER_K)
    assert sharp.params == {"factor": 5.0, "uint8_clip": True}
    assert sharp.channels == ChannelSelection()                # clusters [] = every channel
    assert norm.params == {} and norm.channels == ChannelSelection()
    # One line per entry that needs one, plus two lines about the whole template.
    assert len(warnings) == 2 + 2
    assert warnings[0].startswith("template[0]: the seed's 4 x 4 Conv0_up")
    assert warnings[1].startswith("template[5].layers[0]: tfa's sharpness rounds")
    assert warnings[2].startswith("clusters:") and warnings[3].startswith("architecture:")


def test_seed_readme_text_loads_from_a_file(tmp_path):
    path = tmp_path / "template.py"
    path.write_text(SEED_README_TEXT)
    recipe, warnings = load_recipe_file(path)
    want, _ = import_notebook_template(SEED_README_TEMPLATE)
    assert recipe.bends == want and len(warnings) == 4


# Broad's configs/example_transform_config.yaml, as the repository has it.
BROAD_EXAMPLE_YAML = """\
transforms:
- layer: 4
  transform: "translate"
  params: [0.25, 0.0]
  features: "all"
  feature-param:
- layer: 5
  transform: "ablate"
  params: []
  features: "cluster"
  feature-param: 2
- layer: 12
  transform: "binary-thresh"
  params: [0.5]
  features: "random"
  feature-param: 0.5



all-transforms:
- layer: 1
  transform: "erode"
  params: [2]
  features: "all"
  feature-param:
- layer: 1
  transform: "dilate"
  params: [2]
  features: "all"
  feature-param:
- layer: 1
  transform: "translate"
  params: [0.5, -.2]
  features: "all"
  feature-param:
- layer: 1
  transform: "scale"
  params: [1.2]
  features: "all"
  feature-param:
- layer: 1
  transform: "rotate"
  params: [45]
  features: "all"
  feature-param:
- layer: 1
  transform: "flip-h"
  params: []
  features: "all"
  feature-param:
- layer: 1
  transform: "flip-v"
  params: []
  features: "all"
  feature-param:
- layer: 1
  transform: "invert"
  params: []
  features: "all"
  feature-param:
- layer: 1
  transform: "binary-tresh"
  params: []
  features: "all"
  feature-param:
- layer: 1
  transform: "scalar-multiply"
  params: [-0.5]
  features: "all"
  feature-param:
- layer: 1
  transform: "ablate"
  params: []
  features: "all"
  feature-param:
"""

# example_cluster_dict.yaml's shape: layers 1-16 of a 1024 px model (512 channels up to layer
# 8, then 256, 128, 64, 32 per pair), 5 clusters per layer up to 8, 4 up to 12, then 3; the
# assignments here are drawn, the file's own are k-means labels.
BROAD_CLUSTER_SHAPE = {layer: (512 if layer <= 8 else 2 ** (16 - (layer - 1) // 2),
                               5 if layer <= 8 else 4 if layer <= 12 else 3)
                       for layer in range(1, 17)}


def broad_cluster_dict_yaml() -> tuple[str, dict[int, np.ndarray]]:
    rng = np.random.default_rng(5)
    labels = {layer: rng.integers(0, k, size=c) for layer, (c, k) in
              BROAD_CLUSTER_SHAPE.items()}
    text = "".join(f"{layer}:\n" + "".join(f"- {{cluster_index: {int(lab)}, feature_index: "
                                           f"{i}}}\n" for i, lab in enumerate(labs))
                   for layer, labs in labels.items())
    return text, labels


@pytest.fixture(scope="module")
def broad_clusters() -> tuple[dict, dict[int, np.ndarray]]:
    """The cluster dict parsed once (PyYAML takes seconds over its 5,000 lines)."""
    import yaml

    text, labels = broad_cluster_dict_yaml()
    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)), labels


def test_broad_example_config_with_cluster_dict_bend_by_bend(broad_clusters):
    parsed, labels = broad_clusters
    cluster2 = np.nonzero(labels[5] == 2)[0].tolist()
    bends, warnings = import_broad_yaml(BROAD_EXAMPLE_YAML, cluster_dict=parsed)
    assert [(b.layer, b.op, b.enabled) for b in bends] == [
        ("b16.conv1", "translate", True), ("b32.conv0", "ablate", True),
        ("b256.conv1", "threshold", True),
        *[("b8.conv0", op, False) for op in ("erode", "dilate", "translate", "zoom", "rotate",
                                             "flip_h", "flip_v", "invert", "threshold",
                                             "multiply", "ablate")]]
    b = {i: bend for i, bend in enumerate(bends)}
    assert b[0].params == {"x_shift": 0.25, "y_shift": 0.0, "fill": "zero",
                           "interpolation": "bilinear", "sampling": "opencv"}
    assert b[0].channels == ChannelSelection()
    assert b[1].params == {} and b[1].channels == ChannelSelection("indices", indices=cluster2)
    assert b[2].params == {"threshold": 0.5, "high": 1.0}
    assert b[2].channels == ChannelSelection("random", fraction=0.5, seed=0)
    assert b[3].params == {"kernel": 5, "shape": "ellipse"}
    assert b[4].params == {"kernel": 5, "shape": "ellipse"}
    assert b[5].params == {"x_shift": 0.5, "y_shift": -0.2, "fill": "zero",
                           "interpolation": "bilinear", "sampling": "opencv"}
    assert b[6].params == {"scale": 1.2, "fill": "zero", "pivot": "half_pixel",
                           "sampling": "opencv"}
    assert b[7].params == {"angle": 45.0, "fill": "zero", "interpolation": "bilinear",
                           "pivot": "half_pixel", "sampling": "opencv"}
    assert b[8].params == b[9].params == {}
    assert b[10].params == {"offset": 1.0}
    assert b[11].params == {"threshold": 0.5, "high": 1.0}          # 'binary-tresh', no value
    assert b[12].params == {"factor": -0.5}
    assert b[13].params == {}
    assert all(bend.channels == ChannelSelection() for bend in bends[3:])
    assert warnings == [
        "transforms[2]: Broad draws int(channels x 0.5) channels afresh on every run; here "
        "one fixed draw (seed 0)",
        "all-transforms[2]: '-.2' is a string to YAML 1.1 (Broad's loader fails on it too); "
        "read as -0.2",
        "all-transforms[8]: 'binary-tresh' is not a name Broad's code knows (it would fail); "
        "read as binary-thresh; no threshold given; using 0.5",
        "all-transforms: 11 of 11 entries imported as disabled bends (Broad's generate.py "
        "reads only 'transforms'); enable one to try it"]


def test_broad_example_on_a_small_model_warns_once_per_transform(broad_clusters):
    # The case: 512-channel clusters on a layer with 32 channels gave 58 lines.
    G = make_tiny_generator()
    parsed, labels = broad_clusters
    bends, warnings = import_broad_yaml(BROAD_EXAMPLE_YAML, G, cluster_dict=parsed)
    cluster2 = np.nonzero(labels[5] == 2)[0]
    inside = cluster2[cluster2 < 32].tolist()
    assert [(b.layer, b.op) for b in bends if b.enabled] == [("b16.conv1", "translate"),
                                                              ("b32.conv0", "ablate")]
    assert bends[1].channels.indices == inside
    where = [w.split(":")[0] for w in warnings]
    assert len(where) == len(set(where)) == 5
    assert warnings[0] == (f"transforms[1]: {len(cluster2) - len(inside)} of cluster 2's "
                           f"{len(cluster2)} channels lie beyond this layer's 32; using the "
                           f"other {len(inside)}")
    assert warnings[1] == ("transforms[2]: skipped (layer 12 is b256.conv1, which this model "
                           "does not have)")


def test_broad_layer_ids_past_any_generator_are_skipped_at_once():
    """Layer 1e308 made 2**(id // 2) a number of 10**307 bits: minutes and gigabytes, then a
    bare ValueError when the warning printed it. Now it is one warning line, at once."""
    import time

    yaml_text = ("transforms:\n- {layer: 2000000000, transform: ablate}\n"
                 "- {layer: 1.0e+308, transform: ablate}\n- {layer: 3, transform: ablate}\n")
    start = time.perf_counter()
    bends, warnings = import_broad_yaml(yaml_text, make_tiny_generator())
    assert time.perf_counter() - start < 1.0
    assert [b.layer for b in bends] == ["b16.conv0"]
    assert warnings[0] == ("transforms[0]: skipped (layer 2000000000 is past the last layer "
                           "of any generator; ids stop at 16 for 1024 px)")
    assert warnings[1].startswith("transforms[1]: skipped (layer 1e+308 is past the last")


def test_load_recipe_file_reads_every_format(tmp_path):
    from engine.recipes.recipe import Recipe

    cfg, clusters = tmp_path / "config.yaml", tmp_path / "clusters.yaml"
    cfg.write_text(BROAD_EXAMPLE_YAML)
    text, _ = broad_cluster_dict_yaml()
    clusters.write_text(text)
    recipe, warnings = load_recipe_file(cfg, cluster_dict=clusters)
    assert len(recipe.bends) == 14 and len(warnings) == 4
    assert recipe.bends[1].channels.mode == "indices"
    # Without the cluster dict: this studio's clustering, said in the transform's line.
    recipe, warnings = load_recipe_file(cfg)
    assert recipe.bends[1].channels.mode == "clusters"
    assert any(w.startswith("transforms[1]: no cluster file") for w in warnings)
    # A recipe JSON round-trips; the seed template as JSON too.
    saved = Recipe(bends=[Bend("b8.conv1", "rotate", {"angle": 30.0})])
    saved.save(tmp_path / "r.json")
    assert load_recipe_file(tmp_path / "r.json") == (saved, [])
    # Saved by a Windows editor: the byte-order mark is not part of the first key.
    (tmp_path / "bom.json").write_bytes(b"\xef\xbb\xbf" + (tmp_path / "r.json").read_bytes())
    assert load_recipe_file(tmp_path / "bom.json") == (saved, [])
    (tmp_path / "t.json").write_text(__import__("json").dumps(SEED_README_TEMPLATE))
    assert len(load_recipe_file(tmp_path / "t.json")[0].bends) == 4


def test_yaml_depth_is_counted_outside_quotes_and_comments():
    from engine.base.safe_yaml import MAX_YAML_DEPTH
    from engine.base.safe_yaml import flow_depth as _flow_depth
    from engine.base.safe_yaml import load_yaml as _load_yaml

    many = "\n" + "p: []\n" * (MAX_YAML_DEPTH + 1)  # past the fast path: > 100 brackets
    assert _flow_depth("a: [[1, 2], {b: [3]}]" + many) == 3
    assert _flow_depth("a: '[[[[' # [[[[\nb: \"\\\"[[\"" + many) == 1
    assert _flow_depth("it's: [[1]]" + many) == 2  # an apostrophe inside a word is no quote
    # Brackets in strings and comments do not count: 150 of each still loads.
    text = "a: '" + "[" * 150 + "'\nb: \"" + "{" * 150 + "\"  # " + "[" * 150 + "\n"
    assert _load_yaml(text, "file") == {"a": "[" * 150, "b": "{" * 150}
    assert _flow_depth("x: " + "[" * 150 + "]" * 150) == 150


def test_load_recipe_file_refuses_other_files_in_one_sentence(tmp_path):
    for name, body, match in [
        ("a.yaml", "just: words\n", "not a recipe, a network-bending YAML"),
        ("b.txt", "import os; os.system('true')", "cannot read this file"),
        ("c.yaml", "transform: ablate\nparams: []\n", "sample-strip config"),
        ("d.json", "{nope", "not valid JSON"),
        ("e.yaml", "[" * 100_000, "nested too deeply"),
        ("f.json", '{"latent": {"seed": ' + "9" * 5000 + "}}", "number too long"),
        ("g.yaml", "latent: {seed: " + "9" * 5000 + "}\n", "cannot read this file"),
        ("h.json", '{"model": "default", "\udcff": 1}', "is not UTF-8 text"),
        # Not JSON, so YAML: libyaml's loader overflowed the C stack (signal 11) at ~25000;
        # PyYAML 6.0.4's scanner refuses it in its own words. Ours are counted before either.
        ("i.yaml", "x: " + "[" * 100_000, "nested too deeply to read \\(more than 100 levels\\)"),
        ("k.yaml", "x: " + "{a: " * 101 + "1" + "}" * 101, "more than 100 levels"),
        # 28 KB whose aliases expand to 4096 x 4096 values: 22 s of checks before.
        ("j.yaml", "a: &r [" + "0.5," * 4095 + "0.5]\nlatent: {w: [" + "*r," * 4095 + "*r]}\n",
         "uses YAML aliases"),
    ]:
        (tmp_path / name).write_bytes(body.encode("utf-8", "surrogateescape"))
        with pytest.raises(StudioError, match=match):
            load_recipe_file(tmp_path / name)
    # The cluster file of a network-bending YAML goes through the same guard.
    (tmp_path / "cfg.yaml").write_text("transforms:\n- {layer: 3, transform: ablate}\n")
    (tmp_path / "deep.yaml").write_text("[" * 100_000)
    with pytest.raises(StudioError, match="cluster file is nested too deeply"):
        load_recipe_file(tmp_path / "cfg.yaml", cluster_dict=tmp_path / "deep.yaml")
    many = tmp_path / "many.yaml"
    many.write_text("transforms:\n" + "- {layer: 1, transform: ablate}\n" * 65)
    with pytest.raises(StudioError, match="65 operations, and a recipe holds at most 64"):
        load_recipe_file(many)
    big = tmp_path / "big.yaml"
    big.write_bytes(b"#" * (9 * 2**20))
    with pytest.raises(StudioError, match="more than the limit"):
        load_recipe_file(big)
    with pytest.raises(StudioError, match="not a regular file"):
        load_recipe_file("/dev/zero")
    with pytest.raises(StudioError, match="not found"):
        load_recipe_file(tmp_path / "missing.yaml")
