"""Procedural cartoon faces: the training data of the embedded default model.

They exist so that the studio can train its own small StyleGAN2 without downloading
anything. Every face is a deterministic function of its seed and is built from clearly
separate parts (background, hair, skin, eyes, brows, nose, mouth, glasses, shirt) so that a
trained network's feature maps have something to cluster.

Faces are drawn flat-coloured with PIL at ``SUPERSAMPLE`` times the target resolution
and downsampled with Lanczos, which antialiases the edges for free.
"""

from __future__ import annotations

import colorsys
import warnings
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from engine.base.files import atomic_save_npy

__all__ = [
    "VERSION",
    "default_cache_dir",
    "face_pool",
    "face_traits",
    "render_face",
    "render_faces",
]

# Bump whenever the drawing changes, so cached pools of older faces are not reused.
VERSION = 2
SUPERSAMPLE = 4

Color = tuple[int, int, int]

# Light to dark skin, sampled piecewise-linearly so every tone in between occurs.
_SKIN_RAMP = np.array(
    [
        (255, 228, 206),
        (241, 200, 170),
        (224, 172, 135),
        (198, 138, 100),
        (160, 104, 70),
        (122, 76, 50),
        (88, 56, 38),
    ],
    dtype=np.float64,
)
_FANTASY_SKIN: list[Color] = [(140, 200, 120), (120, 170, 230), (180, 150, 220), (170, 175, 180)]

_HAIR_COLORS: list[tuple[float, Color]] = [
    (0.22, (28, 24, 24)),  # black
    (0.18, (70, 45, 30)),  # dark brown
    (0.14, (120, 80, 45)),  # brown
    (0.13, (225, 190, 110)),  # blonde
    (0.09, (180, 80, 35)),  # red / ginger
    (0.08, (165, 165, 165)),  # grey
    (0.04, (232, 229, 220)),  # white
    (0.025, (235, 90, 160)),  # dyed pink
    (0.025, (60, 110, 220)),  # dyed blue
    (0.02, (60, 170, 100)),  # dyed green
    (0.025, (130, 70, 190)),  # dyed purple
]
_HAIR_STYLES: list[tuple[float, str]] = [
    (0.17, "short"),
    (0.16, "long"),
    (0.13, "bob"),
    (0.10, "curly"),
    (0.08, "spiky"),
    (0.10, "bun"),
    (0.08, "bald"),
    (0.18, "fringe"),
]
_IRIS_COLORS: list[Color] = [
    (90, 55, 30),
    (60, 35, 20),
    (60, 110, 170),
    (70, 130, 80),
    (95, 95, 105),
]
_GLASSES_COLORS: list[Color] = [
    (20, 20, 20),
    (110, 60, 30),
    (200, 160, 60),
    (190, 30, 40),
    (40, 70, 160),
]
_MOUTHS: list[tuple[float, str]] = [
    (0.30, "smile"),
    (0.20, "neutral"),
    (0.12, "frown"),
    (0.13, "open"),
    (0.25, "grin"),
]
_INK: Color = (45, 30, 30)
_EYE_WHITE: Color = (250, 250, 244)

# One closed outline with enough points to look round at 4x supersampling.
_ANGLES = np.linspace(0.0, 2.0 * np.pi, 72, endpoint=False)
_COS = np.cos(_ANGLES)
_SIN = np.sin(_ANGLES)
_ABS_COS, _SIGN_COS = np.abs(_COS), np.sign(_COS)
_ABS_SIN, _SIGN_SIN = np.abs(_SIN), np.sign(_SIN)
_RAMP = np.arange(256) / 255.0


# ----------------------------------------------------------------------------- helpers


def _choice(rng: np.random.Generator, table: list[tuple[float, object]]) -> object:
    """Pick from a (weight, value) table."""
    # One uniform draw and a bisect: much cheaper than rng.choice(p=...) per call.
    total = sum(w for w, _ in table)
    u = rng.uniform() * total
    acc = 0.0
    for weight, value in table:
        acc += weight
        if u < acc:
            return value
    return table[-1][1]


def _scale(color: Sequence[float], factor: float) -> Color:
    return tuple(int(min(255.0, max(0.0, c * factor))) for c in color)  # type: ignore[return-value]


def _mix(a: Sequence[float], b: Sequence[float], t: float) -> Color:
    return tuple(int(round(x + (y - x) * t)) for x, y in zip(a, b))  # type: ignore[return-value]


def _jitter(rng: np.random.Generator, color: Sequence[float], amount: float) -> Color:
    """Multiply brightness and nudge each channel, so palette entries become families."""
    base = np.asarray(color, dtype=np.float64) * rng.uniform(1 - amount, 1 + amount)
    base += rng.uniform(-12, 12, size=3)
    return tuple(int(v) for v in np.clip(base, 0, 255))  # type: ignore[return-value]


def _hsv(h: float, s: float, v: float) -> Color:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, s, v)
    return (int(r * 255), int(g * 255), int(b * 255))


def _ellipse(cx: float, cy: float, rx: float, ry: float) -> tuple[float, float, float, float]:
    return (cx - rx, cy - ry, cx + rx, cy + ry)


def _outline(
    cx: float, cy: float, hw: float, hh: float, squareness: float = 2.0, jaw: float = 1.0
) -> np.ndarray:
    """Superellipse head outline; ``jaw`` < 1 narrows the lower half towards the chin."""
    p = 2.0 / squareness
    x = _SIGN_COS * _ABS_COS**p
    y = _SIGN_SIN * _ABS_SIN**p
    if jaw != 1.0:
        lower = np.maximum(y, 0.0)
        x *= 1.0 - (1.0 - jaw) * lower * lower
    out = np.empty((len(x), 2))
    out[:, 0] = cx + hw * x
    out[:, 1] = cy + hh * y
    return out


def _clip(points: np.ndarray, y: float, keep_above: bool = True) -> np.ndarray:
    """Cut a closed polygon with a horizontal line (one Sutherland-Hodgman pass)."""
    # Vectorised: for each edge i -> i+1 emit point i if it is kept, then the crossing
    # point if the edge crosses the line; interleaving keeps the outline order.
    # (np.roll is avoided on purpose: it is slow for such small arrays.)
    n = len(points)
    nxt = np.concatenate((points[1:], points[:1]))
    ys = points[:, 1]
    inside = ys <= y if keep_above else ys >= y
    crosses = inside != np.concatenate((inside[1:], inside[:1]))
    dy = nxt[:, 1] - ys
    dy[~crosses] = 1.0
    t = (y - ys) / dy
    both = np.empty((2 * n, 2))
    both[0::2] = points
    both[1::2] = points + t[:, None] * (nxt - points)
    keep = np.empty(2 * n, dtype=bool)
    keep[0::2] = inside
    keep[1::2] = crosses
    return both[keep]


def _poly(draw: ImageDraw.ImageDraw, points: np.ndarray, fill: Color) -> None:
    if len(points) >= 3:
        draw.polygon(points.ravel().tolist(), fill=fill)


@lru_cache(maxsize=8)
def _gradients(size: int) -> tuple[Image.Image, Image.Image]:
    """Vertical ramp (size x size) and radial ramp (2size x 2size) masks, 0 = lit.

    Stored as RGB (all bands equal) so one ``point`` call with a 768-entry table colours
    all three bands at once, which is several times cheaper than ``Image.composite``.
    """
    vertical = Image.linear_gradient("L").resize((size, size), Image.Resampling.BILINEAR)
    radial = Image.radial_gradient("L").resize((2 * size, 2 * size), Image.Resampling.BILINEAR)
    return vertical.convert("RGB"), radial.convert("RGB")


# ----------------------------------------------------------------------------- drawing


def _background(rng: np.random.Generator, size: int, light_side: int) -> Image.Image:
    """Flat two-colour background with a vertical or radial lighting gradient."""
    hue = rng.uniform()
    lit = _hsv(hue, rng.uniform(0.12, 0.65), rng.uniform(0.6, 0.97))
    dark = _hsv(hue + rng.uniform(-0.06, 0.06), rng.uniform(0.2, 0.75), rng.uniform(0.25, 0.6))
    vertical, radial = _gradients(size)
    if rng.uniform() < 0.5:
        mask = vertical
        if rng.uniform() < 0.3:  # lit from below: same ramp with the colours swapped
            lit, dark = dark, lit
    else:
        # The radial light sits off-centre on the same side as the face's lit side.
        lx = int(size * (0.5 + light_side * rng.uniform(0.0, 0.3)))
        ly = int(size * rng.uniform(0.2, 0.5))
        mask = radial.crop((size - lx, size - ly, 2 * size - lx, 2 * size - ly))
    lut = np.concatenate([a + (b - a) * _RAMP for a, b in zip(lit, dark)])
    return mask.point(lut.astype(np.int64).tolist())


def _shirt(
    draw: ImageDraw.ImageDraw,
    rng: np.random.Generator,
    s: float,
    cx: float,
    neck_w: float,
    neck_top: float,
    skin_dark: Color,
) -> None:
    """Neck and shoulders; drawn on the background so the head can rotate above them."""
    shirt = _hsv(rng.uniform(), rng.uniform(0.1, 0.8), rng.uniform(0.25, 0.95))
    top = s * rng.uniform(0.80, 0.86)
    draw.rectangle((cx - neck_w, neck_top, cx + neck_w, top + s * 0.05), fill=skin_dark)
    draw.ellipse(_ellipse(cx, top + s * 0.32, s * rng.uniform(0.36, 0.48), s * 0.32), fill=shirt)
    collar = int(rng.integers(3))
    if collar == 0:  # crew neck: a darker band round the neck
        band = _scale(shirt, 0.7)
        draw.chord(_ellipse(cx, top, neck_w * 1.35, s * 0.05), 0, 180, fill=band)
        draw.chord(_ellipse(cx, top - s * 0.012, neck_w, s * 0.035), 0, 180, fill=skin_dark)
    elif collar == 1:  # v-neck
        depth = s * rng.uniform(0.06, 0.11)
        draw.polygon(
            [(cx - neck_w, top - 2), (cx + neck_w, top - 2), (cx, top + depth)], fill=skin_dark
        )
    else:  # shirt collar: two light triangles
        col = (245, 245, 240) if rng.uniform() < 0.6 else _scale(shirt, 1.35)
        w = neck_w * 1.5
        d = s * rng.uniform(0.05, 0.08)
        draw.polygon([(cx - w, top), (cx, top + d * 0.4), (cx - w * 0.35, top + d)], fill=col)
        draw.polygon([(cx + w, top), (cx, top + d * 0.4), (cx + w * 0.35, top + d)], fill=col)


def _draw_hair_back(
    draw: ImageDraw.ImageDraw, rng: np.random.Generator, style: str, head: dict, hair: Color
) -> None:
    """The hair mass behind the head: volume at the top and the sides, long hair below."""
    cx, cy, hw, hh, sq = head["cx"], head["cy"], head["hw"], head["hh"], head["sq"]
    back = _scale(hair, 0.78)  # back hair sits in shadow; also separates it from the front
    vol = hh * rng.uniform(0.04, 0.16)
    big = _outline(cx, cy - vol * 0.5, hw * rng.uniform(1.05, 1.12), hh + vol * 0.5, sq)
    if style == "bald":
        if rng.uniform() < 0.5:  # a fringe of hair round the sides only
            side = _clip(_clip(big, cy + hh * 0.05), cy - hh * 0.45, keep_above=False)
            _poly(draw, side, back)
        return
    if style == "long":
        return  # drawn behind the neck by _draw_long_hair
    if style == "bob":
        wide = _outline(cx, cy - vol * 0.5, hw * rng.uniform(1.15, 1.3), hh + vol * 0.5, 2.4)
        _poly(draw, _clip(wide, cy + hh * rng.uniform(0.25, 0.6)), back)
        return
    if style == "curly":
        r = hh * rng.uniform(0.16, 0.24)
        for a in np.linspace(np.pi * 0.95, np.pi * 2.05, 11):
            x = cx + np.cos(a) * hw * 1.02
            y = cy - vol + np.sin(a) * hh * 1.0
            draw.ellipse(_ellipse(x, y, r, r), fill=back)
        _poly(draw, _clip(big, cy + hh * 0.2), back)
        return
    if style == "spiky":
        pts = _clip(big, cy + hh * 0.1)
        n = len(pts)
        centre = np.array([cx, cy])
        # Push every other outline point outwards to make a saw-tooth crown.
        push = 1.0 + rng.uniform(0.12, 0.25) * (np.arange(n) % 3 == 0)
        spikes = centre + (pts - centre) * push[:, None]
        _poly(draw, spikes, back)
        return
    if style == "bun":
        _poly(draw, _clip(big, cy - hh * 0.05), back)
        r = hh * rng.uniform(0.22, 0.32)
        if rng.uniform() < 0.7:
            draw.ellipse(_ellipse(cx, cy - hh - r * 0.6, r, r), fill=hair)
        else:  # two buns
            for side in (-1, 1):
                bx = cx + side * hw * 0.75
                draw.ellipse(_ellipse(bx, cy - hh * 0.85 - r * 0.4, r, r), fill=hair)
        return
    # short and fringe
    _poly(draw, _clip(big, cy + hh * rng.uniform(-0.05, 0.25)), back)


def _draw_hair_front(
    draw: ImageDraw.ImageDraw,
    rng: np.random.Generator,
    style: str,
    head: dict,
    hair: Color,
    brow_y: float,
) -> None:
    """The hair that covers the forehead: hairline, fringe, side locks."""
    if style == "bald":
        return
    cx, cy, hw, hh, sq, jaw = (head[k] for k in ("cx", "cy", "hw", "hh", "sq", "jaw"))
    cap = _outline(cx, cy - hh * 0.02, hw * 1.03, hh * 1.03, sq, jaw)
    if style == "fringe":
        y_f = brow_y - hh * rng.uniform(0.06, 0.14)
        part = _clip(cap, y_f)
        _poly(draw, part, hair)
        if len(part) and rng.uniform() < 0.6:  # jagged bangs
            xl, xr = part[:, 0].min(), part[:, 0].max()
            teeth = int(rng.integers(4, 8))
            xs = np.linspace(xl + hw * 0.1, xr - hw * 0.1, 2 * teeth + 1)
            d = hh * rng.uniform(0.06, 0.12)
            zig = [(x, y_f + (d if i % 2 else -1)) for i, x in enumerate(xs)]
            draw.polygon(zig, fill=hair)
        return
    if style == "bob":
        y_h = brow_y - hh * rng.uniform(0.08, 0.25)
        _poly(draw, _clip(cap, y_h), hair)
        bottom = cy + hh * rng.uniform(0.2, 0.45)
        for side in (-1, 1):
            # Panels end at the head edge so they blend into the back mass, not stick out.
            x_in, x_out = cx + side * hw * 0.82, cx + side * hw * 1.03
            draw.polygon([(x_out, y_h), (x_in, y_h), (x_in, bottom), (x_out, bottom)], fill=hair)
        return
    y_h = cy - hh * rng.uniform(0.35, 0.6)
    if style == "bun":
        y_h = cy - hh * rng.uniform(0.5, 0.7)
    if style == "spiky":
        part = _clip(cap, y_h)
        _poly(draw, part, hair)
        if len(part):
            xs = np.linspace(part[:, 0].min() + hw * 0.05, part[:, 0].max() - hw * 0.05, 9)
            zig = [(x, y_h + (hh * 0.13 if i % 2 else -1)) for i, x in enumerate(xs)]
            draw.polygon(zig, fill=hair)
        return
    if style == "curly":
        _poly(draw, _clip(cap, y_h), hair)
        r = hh * 0.1
        for x in np.linspace(cx - hw * 0.75, cx + hw * 0.75, 6):
            draw.ellipse(_ellipse(x, y_h, r, r), fill=hair)
        return
    part = _clip(cap, y_h)
    _poly(draw, part, hair)
    if len(part) and rng.uniform() < 0.45:  # side-swept fringe
        side = 1 if rng.uniform() < 0.5 else -1
        xl, xr = part[:, 0].min(), part[:, 0].max()
        tip = (cx + side * hw * 0.9, y_h + hh * rng.uniform(0.15, 0.3))
        draw.polygon([(xl, y_h - 2), (xr, y_h - 2), tip], fill=hair)
    if style == "long":
        bottom = cy + hh * rng.uniform(0.4, 0.9)
        for side in (-1, 1):
            x_in, x_out = cx + side * hw * 0.84, cx + side * hw * 1.04
            draw.polygon(
                [
                    (x_out, y_h),
                    (x_in, y_h),
                    (x_in + side * hw * 0.05, bottom),
                    (x_out + side * hw * 0.04, bottom + hh * 0.1),
                ],
                fill=hair,
            )


def _rotate(points: np.ndarray, angle: float, pivot: tuple[float, float]) -> np.ndarray:
    """Rotate points the way Image.rotate(angle, center=pivot) turns the pixels."""
    a = np.deg2rad(angle)
    c, sn = np.cos(a), np.sin(a)
    d = points - np.asarray(pivot)
    x = d[:, 0] * c + d[:, 1] * sn
    y = -d[:, 0] * sn + d[:, 1] * c
    return np.stack([x, y], axis=1) + np.asarray(pivot)


def _draw_long_hair(
    draw: ImageDraw.ImageDraw,
    rng: np.random.Generator,
    head: dict,
    hair: Color,
    angle: float,
    pivot: tuple[float, float],
) -> None:
    """Long hair behind the head *and* the neck, so it is drawn on the background layer;
    it is rotated by hand to match the head layer."""
    cx, cy, hw, hh = head["cx"], head["cy"], head["hw"], head["hh"]
    top = cy - hh * rng.uniform(1.04, 1.16)
    bottom = cy + hh * rng.uniform(0.9, 1.6)
    w = hw * rng.uniform(1.15, 1.35)
    mass = _outline(cx, (top + bottom) * 0.5, w, (bottom - top) * 0.5, rng.uniform(3.0, 4.5))
    _poly(draw, _rotate(mass, angle, pivot), _scale(hair, 0.78))


def _draw_face(
    layer: Image.Image,
    rng: np.random.Generator,
    s: float,
    head: dict,
    skin: Color,
    light_side: int,
    hair: Color,
    style: str,
) -> dict[str, object]:
    """Everything that turns with the head, drawn onto a transparent layer.

    Returns the discrete choices made (mouth, nose, glasses, ...) for ``face_traits``.
    Each part draws its own random numbers from rng, in this order (the faces of a seed
    depend on it).
    """
    draw = ImageDraw.Draw(layer)
    traits: dict[str, object] = {"glasses": None}  # first key, as face_traits lists them
    cy, hw, hh = head["cy"], head["hw"], head["hh"]

    shadow = _scale(skin, rng.uniform(0.76, 0.88))
    line_w = max(1, int(s * rng.uniform(0.010, 0.016)))

    _draw_hair_back(draw, rng, style, head, hair)
    _draw_ears(draw, rng, style, head, skin, shadow, light_side)
    _draw_head(draw, rng, head, skin, shadow, light_side)

    # Feature layout.
    eye_y = cy + hh * rng.uniform(-0.14, 0.04)
    eye_dx = hw * rng.uniform(0.36, 0.52)
    rx = s * rng.uniform(0.034, 0.058)
    ry = rx * rng.uniform(0.85, 1.3)
    mouth_y = cy + hh * rng.uniform(0.45, 0.62)
    mouth_w = hw * rng.uniform(0.25, 0.5)

    traits["blush"] = _draw_blush(draw, rng, head, skin, eye_y + ry, mouth_y)
    traits["nose"] = _draw_nose(draw, rng, s, head, skin, light_side, line_w, eye_y, mouth_y)
    traits["mouth"] = _draw_mouth(draw, rng, s, head, skin, mouth_y, mouth_w)
    traits["lids"] = _draw_eyes(draw, rng, head, skin, line_w, eye_y, eye_dx, rx, ry)

    brow_y = eye_y - ry - s * rng.uniform(0.02, 0.04)
    _draw_hair_front(draw, rng, style, head, hair, brow_y)
    _draw_brows(draw, rng, s, head, skin, hair, style, eye_dx, rx, brow_y)
    traits["glasses"] = _draw_glasses(draw, rng, s, head, eye_y, eye_dx, max(rx, ry))
    return traits


def _draw_ears(draw: ImageDraw.ImageDraw, rng: np.random.Generator, style: str, head: dict,
               skin: Color, shadow: Color, light_side: int) -> None:
    """Ears: the one on the shadow side is darker, like the rest of that side."""
    cx, cy, hw, hh = head["cx"], head["cy"], head["hw"], head["hh"]
    ew, eh = hw * rng.uniform(0.13, 0.22), hh * rng.uniform(0.15, 0.24)
    ey = cy + hh * rng.uniform(-0.05, 0.12)
    ears = (-1, 1) if style not in ("long", "bob") else ()  # hidden under the hair
    for side in ears:
        col = skin if side == light_side else shadow
        ex = cx + side * hw * 0.96
        draw.ellipse(_ellipse(ex, ey, ew, eh), fill=col)
        draw.ellipse(_ellipse(ex + side * ew * 0.15, ey, ew * 0.5, eh * 0.6), fill=_scale(col, 0.8))


def _draw_head(draw: ImageDraw.ImageDraw, rng: np.random.Generator, head: dict, skin: Color,
               shadow: Color, light_side: int) -> None:
    """Head: a shadow silhouette with a lit copy shifted towards the light on top, which
    leaves a flat crescent of shade on the far side."""
    cx, cy, hw, hh, sq, jaw = (head[k] for k in ("cx", "cy", "hw", "hh", "sq", "jaw"))
    outline = _outline(cx, cy, hw, hh, sq, jaw)
    _poly(draw, outline, shadow)
    shift = hw * rng.uniform(0.05, 0.1)
    lit = _outline(cx + light_side * shift, cy - hh * 0.02, hw - shift, hh * 0.975, sq, jaw)
    _poly(draw, lit, skin)


def _draw_blush(draw: ImageDraw.ImageDraw, rng: np.random.Generator, head: dict, skin: Color,
                eye_bottom: float, mouth_y: float) -> bool:
    """Blushed cheeks on some faces, between the eyes' bottom and the mouth; True if drawn."""
    cx, hw, hh = head["cx"], head["hw"], head["hh"]
    if not rng.uniform() < 0.3:
        return False
    blush = _mix(skin, (240, 100, 115), rng.uniform(0.3, 0.55))
    by = (eye_bottom + mouth_y) * 0.5
    for side in (-1, 1):
        draw.ellipse(_ellipse(cx + side * hw * 0.6, by, hw * 0.16, hh * 0.075), fill=blush)
    return True


def _draw_nose(draw: ImageDraw.ImageDraw, rng: np.random.Generator, s: float, head: dict,
               skin: Color, light_side: int, line_w: int, eye_y: float, mouth_y: float) -> str:
    """One of four noses between the eyes and the mouth; returns its kind."""
    cx, hh = head["cx"], head["hh"]
    nose_y = (eye_y + mouth_y) * 0.5 + hh * rng.uniform(-0.04, 0.06)
    nose_r = s * rng.uniform(0.018, 0.03)
    nose_col = _scale(skin, 0.72)
    nose = int(rng.integers(4))
    if nose == 0:  # dot
        draw.ellipse(_ellipse(cx, nose_y, nose_r * 1.2, nose_r * 0.8), fill=nose_col)
    elif nose == 1:  # hook line on the shadow side
        x0 = cx - light_side * nose_r * 0.4
        draw.line(
            [
                (x0, nose_y - nose_r * 3),
                (x0 - light_side * nose_r, nose_y + nose_r),
                (x0 + light_side * nose_r * 0.4, nose_y + nose_r),
            ],
            fill=nose_col,
            width=line_w,
            joint="curve",
        )
    elif nose == 2:  # button nose with nostrils
        draw.ellipse(_ellipse(cx, nose_y, nose_r * 1.5, nose_r * 1.1), fill=_scale(skin, 0.9))
        for side in (-1, 1):
            nx = cx + side * nose_r * 0.6
            draw.ellipse(
                _ellipse(nx, nose_y + nose_r * 0.4, nose_r * 0.3, nose_r * 0.25), fill=nose_col
            )
    else:  # triangle of shade
        x0 = cx - light_side * nose_r * 1.2
        draw.polygon(
            [(cx, nose_y - nose_r * 2.5), (x0, nose_y + nose_r), (cx, nose_y + nose_r)],
            fill=nose_col,
        )
    return ("dot", "hook", "button", "triangle")[nose]


def _draw_mouth(draw: ImageDraw.ImageDraw, rng: np.random.Generator, s: float, head: dict,
                skin: Color, mouth_y: float, mouth_w: float) -> str:
    """One of the _MOUTHS at mouth_y, mouth_w wide; returns its kind."""
    cx, hw = head["cx"], head["hw"]
    lips = _mix(_scale(skin, 0.55), (160, 40, 50), 0.5)
    inside = (85, 25, 35)
    kind = str(_choice(rng, _MOUTHS))  # type: ignore[arg-type]
    mw = mouth_w
    mh = mw * rng.uniform(0.3, 0.6)
    lw = max(2, int(s * rng.uniform(0.012, 0.02)))
    mx = cx + hw * rng.uniform(-0.05, 0.05)
    if kind == "smile":
        draw.arc(_ellipse(mx, mouth_y - mh * 0.7, mw, mh), 15, 165, fill=lips, width=lw)
    elif kind == "frown":
        draw.arc(
            _ellipse(mx, mouth_y + mh * 0.9, mw * 0.8, mh * 0.8), 200, 340, fill=lips, width=lw
        )
    elif kind == "neutral":
        tilt = mh * rng.uniform(-0.15, 0.15)
        draw.line(
            [(mx - mw * 0.75, mouth_y - tilt), (mx + mw * 0.75, mouth_y + tilt)],
            fill=lips,
            width=lw,
        )
    elif kind == "open":
        ow = mw * rng.uniform(0.35, 0.55)
        draw.ellipse(
            _ellipse(mx, mouth_y, ow, ow * rng.uniform(1.0, 1.4)),
            fill=inside,
            outline=lips,
            width=lw,
        )
    else:  # grin with teeth
        box = _ellipse(mx, mouth_y - mh * 0.3, mw, mh * 1.3)
        draw.chord(box, 0, 180, fill=inside)
        teeth_box = _ellipse(mx, mouth_y - mh * 0.3, mw * 0.93, mh * 0.7)
        draw.chord(teeth_box, 0, 180, fill=(250, 250, 245))
        draw.chord(box, 0, 180, outline=lips, width=lw)
    return kind


def _draw_eyes(draw: ImageDraw.ImageDraw, rng: np.random.Generator, head: dict, skin: Color,
               line_w: int, eye_y: float, eye_dx: float, rx: float, ry: float) -> bool:
    """Eyes: whites, iris, pupil, highlight; the gaze is shared by both eyes. Returns whether
    they have heavy upper lids."""
    cx = head["cx"]
    iris_col = _jitter(rng, _IRIS_COLORS[int(rng.integers(len(_IRIS_COLORS)))], 0.1)
    ir = min(rx, ry) * rng.uniform(0.5, 0.72)
    gx = rng.uniform(-1, 1) * (rx - ir) * 0.8
    gy = rng.uniform(-1, 1) * (ry - ir) * 0.6
    lid = bool(rng.uniform() < 0.35)
    lid_cut = rng.uniform(0, 35)
    lid_col = _scale(skin, 0.9)
    for side in (-1, 1):
        ex = cx + side * eye_dx
        box = _ellipse(ex, eye_y, rx, ry)
        draw.ellipse(box, fill=_EYE_WHITE, outline=_INK, width=line_w)
        draw.ellipse(_ellipse(ex + gx, eye_y + gy, ir, ir), fill=iris_col)
        draw.ellipse(_ellipse(ex + gx, eye_y + gy, ir * 0.5, ir * 0.5), fill=(15, 12, 12))
        hl = ir * 0.28
        draw.ellipse(
            _ellipse(ex + gx - ir * 0.35, eye_y + gy - ir * 0.35, hl, hl), fill=(255, 255, 255)
        )
        if lid:  # heavy upper lid, cut along a chord of the eye
            draw.chord(box, 180 + lid_cut, 360 - lid_cut, fill=lid_col, outline=_INK, width=line_w)
    return lid


def _draw_brows(draw: ImageDraw.ImageDraw, rng: np.random.Generator, s: float, head: dict,
                skin: Color, hair: Color, style: str, eye_dx: float, rx: float,
                brow_y: float) -> None:
    """Brows follow the hair colour; bald faces get a dark brown."""
    cx = head["cx"]
    brow_col = _scale(hair, 0.8) if style != "bald" else _scale(_mix(skin, (60, 40, 30), 0.7), 1.0)
    brow_len = rx * rng.uniform(0.9, 1.3)
    brow_w = max(2, int(s * rng.uniform(0.012, 0.03)))
    angle = np.deg2rad(rng.uniform(-18, 18))  # > 0 raises the inner ends (worried look)
    for side in (-1, 1):
        bx = cx + side * (eye_dx + rx * 0.1)
        dx = np.cos(angle) * brow_len
        dy = np.sin(angle) * brow_len
        inner = (bx - side * dx, brow_y - dy)
        outer = (bx + side * dx, brow_y + dy)
        draw.line([inner, outer], fill=brow_col, width=brow_w)


def _draw_glasses(draw: ImageDraw.ImageDraw, rng: np.random.Generator, s: float, head: dict,
                  eye_y: float, eye_dx: float, eye_r: float) -> str | None:
    """Glasses on a quarter of the faces; returns "square", "round" or None (none drawn)."""
    cx, hw, hh = head["cx"], head["hw"], head["hh"]
    if not rng.uniform() < 0.25:
        return None
    frame = _jitter(rng, _GLASSES_COLORS[int(rng.integers(len(_GLASSES_COLORS)))], 0.1)
    fw = max(2, int(s * rng.uniform(0.009, 0.016)))
    lr = eye_r * rng.uniform(1.35, 1.7)
    square = rng.uniform() < 0.5
    for side in (-1, 1):
        ex = cx + side * eye_dx
        box = _ellipse(ex, eye_y, lr, lr * (0.8 if square else 1.0))
        if square:
            draw.rounded_rectangle(box, radius=lr * 0.25, outline=frame, width=fw)
        else:
            draw.ellipse(box, outline=frame, width=fw)
        draw.line(
            [(ex + side * lr, eye_y), (cx + side * hw * 0.98, eye_y - hh * 0.03)],
            fill=frame,
            width=fw,
        )
    draw.line([(cx - eye_dx + lr, eye_y), (cx + eye_dx - lr, eye_y)], fill=frame, width=fw)
    return "square" if square else "round"


def _luma(c: Sequence[float]) -> float:
    return 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]


def _contrast(hair: Color, skin: Color, min_gap: float = 55.0) -> Color:
    """Keep hair and skin apart in brightness, so the hair stays a separable part."""
    gap = _luma(hair) - _luma(skin)
    if abs(gap) >= min_gap:
        return hair
    # Go darker unless the skin is already so dark that lighter is the shorter way.
    target = _luma(skin) - min_gap if _luma(skin) - min_gap >= 20 else _luma(skin) + min_gap
    return _scale(hair, target / max(_luma(hair), 1.0))


def _skin_tone(rng: np.random.Generator) -> Color:
    if rng.uniform() < 0.03:  # rare fantasy tones
        return _jitter(rng, _FANTASY_SKIN[int(rng.integers(len(_FANTASY_SKIN)))], 0.08)
    t = rng.uniform(0, len(_SKIN_RAMP) - 1)
    i = min(int(t), len(_SKIN_RAMP) - 2)
    base = _SKIN_RAMP[i] + (_SKIN_RAMP[i + 1] - _SKIN_RAMP[i]) * (t - i)
    return _jitter(rng, base, 0.04)


def _render(seed: int, resolution: int) -> tuple[np.ndarray, dict[str, object]]:
    """Draw one face; returns the pixels and the choices that made it."""
    if resolution < 4:
        raise ValueError(f"resolution must be at least 4 pixels; got {resolution}.")
    rng = np.random.default_rng(seed)
    size = resolution * SUPERSAMPLE
    s = float(size)
    light_side = 1 if rng.uniform() < 0.5 else -1

    img = _background(rng, size, light_side)
    skin = _skin_tone(rng)

    head = {
        "cx": s * (0.5 + rng.uniform(-0.04, 0.04)),
        "cy": s * (0.47 + rng.uniform(-0.03, 0.03)),
        "hw": s * rng.uniform(0.21, 0.28),
        "hh": s * rng.uniform(0.27, 0.32),
        "sq": rng.uniform(2.0, 3.0),
        "jaw": rng.uniform(0.55, 1.0),
    }
    hair = _contrast(_jitter(rng, _choice(rng, _HAIR_COLORS), 0.12), skin)  # type: ignore[arg-type]
    style = str(_choice(rng, _HAIR_STYLES))  # type: ignore[arg-type]
    angle = float(rng.uniform(-8.0, 8.0))
    # Turn about the neck so the chin stays roughly over the shoulders.
    pivot = (head["cx"], head["cy"] + head["hh"] * 0.7)

    draw = ImageDraw.Draw(img)
    if style == "long":
        _draw_long_hair(draw, rng, head, hair, angle, pivot)
    neck_w = head["hw"] * rng.uniform(0.38, 0.55)
    _shirt(draw, rng, s, head["cx"], neck_w, head["cy"], _scale(skin, 0.72))

    layer = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    traits = _draw_face(layer, rng, s, head, skin, light_side, hair, style)
    layer = layer.rotate(angle, resample=Image.Resampling.NEAREST, center=pivot)
    img.paste(layer, (0, 0), layer)

    # reducing_gap: box-reduce 2x first, then Lanczos; visually identical, twice as fast.
    out = img.resize((resolution, resolution), Image.Resampling.LANCZOS, reducing_gap=2.0)
    traits.update(
        hair_style=style,
        hair_color=hair,
        skin=skin,
        angle=angle,
        light_side="right" if light_side > 0 else "left",
        head_center=(head["cx"] / s, head["cy"] / s),
    )
    return np.asarray(out, dtype=np.uint8), traits


def render_face(seed: int, resolution: int = 64) -> np.ndarray:
    """Render one cartoon face as a uint8 [resolution, resolution, 3] array.

    The same seed always gives the same pixels (for a given ``VERSION``).
    """
    return _render(seed, resolution)[0]


def face_traits(seed: int) -> dict[str, object]:
    """The discrete and continuous choices behind ``render_face(seed)``.

    Keys: hair_style, hair_color, skin, glasses (None/"round"/"square"), mouth, nose,
    blush, lids, angle (degrees), light_side, head_center (fractions of the frame).
    Useful to check feature clusters against ground truth. Resolution does not matter.
    """
    return _render(seed, 16)[1]


def render_faces(seeds: Sequence[int], resolution: int = 64) -> np.ndarray:
    """Render several faces into one uint8 [N, H, W, 3] array."""
    out = np.empty((len(seeds), resolution, resolution, 3), dtype=np.uint8)
    for i, seed in enumerate(seeds):
        out[i] = render_face(int(seed), resolution)
    return out


# ----------------------------------------------------------------------------- pools


def default_cache_dir() -> Path:
    """Where face pools are cached unless told otherwise."""
    return Path.home() / ".cache" / "activation-studio" / "datasets"


def face_pool(
    count: int,
    resolution: int = 64,
    first_seed: int = 0,
    cache_dir: str | Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Faces for seeds ``first_seed .. first_seed + count - 1`` as uint8 [N, H, W, 3].

    The array is cached as a .npy file so that later runs skip rendering; ``progress``
    (if given) is called as ``progress(done, total)`` while rendering.
    """
    if count <= 0:
        raise ValueError(f"count must be a positive number of faces; got {count}.")
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = folder / f"faces-{resolution}-{first_seed}-{count}-v{VERSION}.npy"
    shape = (count, resolution, resolution, 3)
    if path.is_file():
        try:
            cached = np.load(path)
            if cached.shape == shape and cached.dtype == np.uint8:
                if progress is not None:
                    progress(count, count)
                return cached
        except (OSError, ValueError):
            pass  # a damaged cache file is simply rendered again
    out = np.empty(shape, dtype=np.uint8)
    step = max(1, min(1000, count // 100))
    for i in range(count):
        out[i] = render_face(first_seed + i, resolution)
        if progress is not None and ((i + 1) % step == 0 or i + 1 == count):
            progress(i + 1, count)
    try:
        atomic_save_npy(path, out)
    except OSError as exc:  # an unwritable cache costs time later, not this run
        warnings.warn(f"could not cache the face pool at {path}: {exc}", stacklevel=2)
    return out
