"""Adaptive discriminator augmentation (ADA, Karras et al. 2020, "Training Generative
Adversarial Networks with Limited Data"), written for this project's trainer.

Every image the discriminator sees, real or generated, passes through the same random
augmentation, each transform applied with probability p. Because D only ever judges augmented
images of both kinds, it cannot memorise a small dataset as easily, and because each transform
is applied with p < 1 (and is invertible in distribution), the generator still learns the
un-augmented images: the augmentations do not "leak" into the samples.

The pipeline is the paper's 'bgc' set, in its order:

- pixel blitting: x-flip, rotation by a multiple of 90 degrees, integer translation;
- general geometry: isotropic scaling, rotation, anisotropic scaling, fractional translation;
- colour: brightness, contrast, luma flip, hue rotation, saturation.

All geometric transforms of one image are folded into one inverse 3x3 matrix (output pixel ->
input pixel, centred pixel units) and executed by one bilinear `grid_sample` with mirrored
borders, so a batch costs one resampling whatever is drawn. Bilinear sampling is a convex
combination of input pixels, so geometry never leaves the input's range; the blitting
transforms land exactly on pixel centres and so move pixels without blurring them. (NVlabs
resamples through a 2x-upsampled image with a wavelet filter, which aliases less when zooming
out but overshoots; at the sizes trained here the difference is below what D notices.)
All colour transforms are folded into one 4x4 homogeneous matrix per image acting on RGB in
[-1, 1] (0 = mid-grey); the result is clamped to [-1, 1], as a camera clips, so D never sees
values a real picture cannot have.

`AdaController` adjusts p: every `interval` steps, p moves by a fixed amount towards more
augmentation when more than `target` (0.6) of D's outputs on reals are positive (D is
confident about the training images: overfitting) and towards less otherwise; the step size
is such that p could go from 0 to 1 in `speed_kimg` thousand images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

__all__ = ["AUGMENTS", "AdaController", "AugmentParams", "AugmentRanges", "augment",
           "apply_params", "color_matrix", "geometric_matrix", "sample_params"]

# The transforms, in the order they are applied; each is drawn with probability p.
AUGMENTS = ("xflip", "rotate90", "xint", "scale", "rotate", "aniso", "xfrac",
            "brightness", "contrast", "lumaflip", "hue", "saturation")

# The luma axis: the direction of grey in RGB, unit length. Hue rotates about it, saturation
# scales away from it, luma flip mirrors along it.
_LUMA = torch.tensor([1.0, 1.0, 1.0]) / math.sqrt(3.0)


@dataclass(frozen=True)
class AugmentRanges:
    """How strong each transform is when it fires (the paper's values)."""
    xint_max: float = 0.125        # integer translation: uniform, up to this fraction of the size
    scale_std: float = 0.2         # isotropic scaling: 2 ** N(0, scale_std)
    rotate_max: float = 1.0        # rotation: uniform in +-rotate_max * 180 degrees
    aniso_std: float = 0.2         # anisotropic scaling: 2 ** N(0, aniso_std) in x, inverse in y
    xfrac_std: float = 0.125       # fractional translation: N(0, xfrac_std) of the size
    brightness_std: float = 0.2    # brightness: + N(0, brightness_std) on the [-1, 1] scale
    contrast_std: float = 0.5      # contrast: times 2 ** N(0, contrast_std) about mid-grey
    hue_max: float = 1.0           # hue rotation: uniform in +-hue_max * 180 degrees
    saturation_std: float = 1.0    # saturation: chroma times 2 ** N(0, saturation_std)


@dataclass
class AugmentParams:
    """One draw of the pipeline: a value per image for every transform, identity where it
    did not fire. Tests build these by hand to check each transform alone."""
    xflip: torch.Tensor        # [N] 0 or 1
    rotate90: torch.Tensor     # [N] 0..3 quarter turns (counter-clockwise on screen)
    xint: torch.Tensor         # [N, 2] whole pixels (x right, y down)
    scale: torch.Tensor        # [N] > 0; > 1 enlarges the content
    rotate: torch.Tensor       # [N] radians, applied before anisotropic scaling
    aniso: torch.Tensor        # [N] > 0; content stretched by aniso in x and 1/aniso in y
    rotate_post: torch.Tensor  # [N] radians, applied after it (the paper's two rotations)
    xfrac: torch.Tensor        # [N, 2] fraction of the image size (x right, y down)
    brightness: torch.Tensor   # [N] added to every channel
    contrast: torch.Tensor     # [N] > 0, multiplies every channel about 0 (mid-grey)
    lumaflip: torch.Tensor     # [N] 0 or 1
    hue: torch.Tensor          # [N] radians about the luma axis
    saturation: torch.Tensor   # [N] >= 0, multiplies the chroma

    @classmethod
    def identity(cls, n: int, device: torch.device | str = "cpu") -> AugmentParams:
        zeros, ones = torch.zeros(n, device=device), torch.ones(n, device=device)
        return cls(xflip=zeros, rotate90=zeros, xint=torch.zeros(n, 2, device=device),
                   scale=ones, rotate=zeros, aniso=ones, rotate_post=zeros,
                   xfrac=torch.zeros(n, 2, device=device), brightness=zeros, contrast=ones,
                   lumaflip=zeros, hue=zeros, saturation=ones)

    def replace(self, **changes: torch.Tensor) -> AugmentParams:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return AugmentParams(**{**values, **changes})


# ----------------------------------------------------------------------------------------
# Drawing parameters.


def sample_params(n: int, p: float, generator: torch.Generator | None = None,
                  ranges: AugmentRanges = AugmentRanges(),
                  enabled: tuple[str, ...] = AUGMENTS, device: torch.device | str = "cpu"
                  ) -> AugmentParams:
    """Draw the transforms for n images: each enabled one fires with probability p.

    Draws come from `generator` in a fixed order whatever p is, so a resumed run that
    replays a step's generator replays its augmentation exactly.
    """
    unknown = set(enabled) - set(AUGMENTS)
    if unknown:
        raise ValueError(f"unknown augmentations {sorted(unknown)}; choose from {AUGMENTS}")
    dev = generator.device if generator is not None else torch.device(device)
    out = AugmentParams.identity(n, dev)

    def fires(name: str, prob: float, shape: tuple[int, ...] = ()) -> torch.Tensor:
        mask = torch.rand(n, *shape, generator=generator, device=dev) < prob
        return mask & (name in enabled)

    def uniform(*shape: int) -> torch.Tensor:
        return torch.rand(n, *shape, generator=generator, device=dev)

    def normal(*shape: int) -> torch.Tensor:
        return torch.randn(n, *shape, generator=generator, device=dev)

    r = ranges
    out.xflip = torch.where(fires("xflip", p), torch.floor(uniform() * 2), out.xflip)
    out.rotate90 = torch.where(fires("rotate90", p), torch.floor(uniform() * 4), out.rotate90)
    out.xint = torch.where(fires("xint", p, (1,)), (uniform(2) * 2 - 1) * r.xint_max, out.xint)
    out.scale = torch.where(fires("scale", p), torch.exp2(normal() * r.scale_std), out.scale)
    # Two rotations, each with probability 1 - sqrt(1 - p): at least one fires with p.
    p_rot = 1 - math.sqrt(max(0.0, 1 - p))
    angle = (uniform() * 2 - 1) * math.pi * r.rotate_max
    out.rotate = torch.where(fires("rotate", p_rot), angle, out.rotate)
    out.aniso = torch.where(fires("aniso", p), torch.exp2(normal() * r.aniso_std), out.aniso)
    angle = (uniform() * 2 - 1) * math.pi * r.rotate_max
    out.rotate_post = torch.where(fires("rotate", p_rot), angle, out.rotate_post)
    out.xfrac = torch.where(fires("xfrac", p, (1,)), normal(2) * r.xfrac_std, out.xfrac)
    out.brightness = torch.where(fires("brightness", p), normal() * r.brightness_std,
                                 out.brightness)
    out.contrast = torch.where(fires("contrast", p), torch.exp2(normal() * r.contrast_std),
                               out.contrast)
    out.lumaflip = torch.where(fires("lumaflip", p), torch.floor(uniform() * 2), out.lumaflip)
    out.hue = torch.where(fires("hue", p), (uniform() * 2 - 1) * math.pi * r.hue_max, out.hue)
    out.saturation = torch.where(fires("saturation", p),
                                 torch.exp2(normal() * r.saturation_std), out.saturation)
    return out


# ----------------------------------------------------------------------------------------
# Matrices. Geometry uses inverse matrices (where does each output pixel come from), in
# pixel units with the origin at the image centre, x right and y down.


def _mat3(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor,
          d: torch.Tensor, e: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """[N, 3, 3] from per-image rows (a b c; d e f; 0 0 1)."""
    zero, one = torch.zeros_like(a), torch.ones_like(a)
    return torch.stack([a, b, c, d, e, f, zero, zero, one], -1).reshape(-1, 3, 3)


def _scale_inv(sx: torch.Tensor, sy: torch.Tensor) -> torch.Tensor:
    zero = torch.zeros_like(sx)
    return _mat3(1 / sx, zero, zero, zero, 1 / sy, zero)


def _rotate_inv(theta: torch.Tensor) -> torch.Tensor:
    """Inverse of a rotation by theta, counter-clockwise as seen on screen (y points down)."""
    c, s = torch.cos(theta), torch.sin(theta)
    zero = torch.zeros_like(theta)
    # On screen, counter-clockwise by theta is (x, y) -> (x c + y s, -x s + y c); its
    # inverse is the transpose.
    return _mat3(c, -s, zero, s, c, zero)


def _translate_inv(tx: torch.Tensor, ty: torch.Tensor) -> torch.Tensor:
    one, zero = torch.ones_like(tx), torch.zeros_like(tx)
    return _mat3(one, zero, -tx, zero, one, -ty)


def geometric_matrix(params: AugmentParams, height: int, width: int) -> torch.Tensor:
    """[N, 3, 3] inverse transform, output pixel -> input pixel (centred pixel units).

    Transforms compose in the pipeline's order: the first listed acts first on the image, so
    its inverse is the leftmost factor.
    """
    q = params
    m = _scale_inv(1 - 2 * q.xflip, torch.ones_like(q.xflip))
    m = m @ _rotate_inv(q.rotate90 * (math.pi / 2))
    m = m @ _translate_inv(torch.round(q.xint[:, 0] * width), torch.round(q.xint[:, 1] * height))
    m = m @ _scale_inv(q.scale, q.scale)
    m = m @ _rotate_inv(q.rotate)
    m = m @ _scale_inv(q.aniso, 1 / q.aniso)
    m = m @ _rotate_inv(q.rotate_post)
    m = m @ _translate_inv(q.xfrac[:, 0] * width, q.xfrac[:, 1] * height)
    return m


def color_matrix(params: AugmentParams) -> torch.Tensor:
    """[N, 4, 4] homogeneous colour transform acting on (r, g, b, 1) in [-1, 1]."""
    q = params
    n, dev = q.brightness.shape[0], q.brightness.device
    eye = torch.eye(4, device=dev).expand(n, 4, 4)
    v = torch.cat([_LUMA.to(dev), torch.zeros(1, device=dev)])
    vv = torch.outer(v, v)  # projection onto the luma axis

    c = eye.clone()
    c[:, :3, 3] = q.brightness[:, None]                          # translate along grey
    m = c
    m = (eye * torch.cat([q.contrast[:, None].expand(n, 3), torch.ones(n, 1, device=dev)],
                         1)[:, None, :]) @ m                        # scale about mid-grey
    m = (eye - 2 * vv * q.lumaflip[:, None, None]) @ m             # Householder: luma -> -luma
    m = _rotate_about_luma(q.hue) @ m                              # hue: rotate chroma
    m = (vv + (eye - vv) * q.saturation[:, None, None]) @ m        # saturation: scale chroma
    return m


def _rotate_about_luma(theta: torch.Tensor) -> torch.Tensor:
    """[N, 4, 4] rotation by theta about the luma axis (Rodrigues' formula)."""
    n, dev = theta.shape[0], theta.device
    x, y, z = _LUMA.tolist()
    k = torch.tensor([[0, -z, y], [z, 0, -x], [-y, x, 0]], device=dev)  # cross-product matrix
    s, c = torch.sin(theta)[:, None, None], torch.cos(theta)[:, None, None]
    r3 = torch.eye(3, device=dev) + s * k + (1 - c) * (k @ k)
    out = torch.eye(4, device=dev).repeat(n, 1, 1)
    out[:, :3, :3] = r3
    return out


# ----------------------------------------------------------------------------------------
# Applying.


def apply_params(images: torch.Tensor, params: AugmentParams) -> torch.Tensor:
    """Augment NCHW images in [-1, 1] with drawn parameters; differentiable in the images."""
    assert images.ndim == 4 and images.shape[1] in (1, 3), "images must be [N, 1 or 3, H, W]"
    n, channels, h, w = images.shape
    assert params.scale.shape[0] == n, "one set of parameters per image"
    dev = images.device

    m = geometric_matrix(params, h, w).to(dev)
    moved = (m - torch.eye(3, device=dev)).abs().amax((1, 2)) > 1e-6
    if moved.any():
        # affine_grid (align_corners=False) works in [-1, 1] per axis: pixel = norm * size/2.
        to_pix = torch.diag(torch.tensor([w / 2, h / 2, 1.0], device=dev))
        to_norm = torch.diag(torch.tensor([2 / w, 2 / h, 1.0], device=dev))
        theta = (to_norm @ m[moved] @ to_pix)[:, :2, :]
        grid = F.affine_grid(theta, [int(moved.sum()), channels, h, w], align_corners=False)
        warped = F.grid_sample(images[moved], grid, mode="bilinear", padding_mode="reflection",
                               align_corners=False)
        images = images.clone()
        images[moved] = warped

    c = color_matrix(params).to(dev)
    coloured = (c - torch.eye(4, device=dev)).abs().amax((1, 2)) > 1e-6
    if coloured.any():
        flat = images.reshape(n, channels, h * w)
        if channels == 3:
            out = c[:, :3, :3] @ flat + c[:, :3, 3:]
        else:  # grey images: the colour transform's effect on grey
            grey = c[:, :3, :].mean(1, keepdim=True)
            out = flat * grey[:, :, :3].sum(2, keepdim=True) + grey[:, :, 3:]
        images = torch.where(coloured[:, None, None], out.clamp(-1, 1), flat).reshape(
            n, channels, h, w)
    return images


def augment(images: torch.Tensor, p: float, generator: torch.Generator | None = None,
            ranges: AugmentRanges = AugmentRanges(), enabled: tuple[str, ...] = AUGMENTS
            ) -> torch.Tensor:
    """Augment NCHW images in [-1, 1], each transform with probability p (p = 0: the input)."""
    if p <= 0:
        return images
    params = sample_params(images.shape[0], p, generator, ranges, enabled, images.device)
    return apply_params(images, params)


# ----------------------------------------------------------------------------------------
# Adapting p.


class AdaController:
    """The ADA heuristic: r_t = E[sign(D(real))] pushed towards `target` by moving p.

    Call `observe(logits_real)` after every D evaluation of reals and `end_step(batch)` after
    every step; p changes every `interval` steps by batch * interval / (speed_kimg * 1000),
    up when r_t > target, down otherwise, and stays in [0, 1]. The state (p and the signs
    gathered since the last change) goes into checkpoints so a resumed run adapts exactly as
    an uninterrupted one. `reduce` averages (sum, count) over processes when training on
    several.
    """

    def __init__(self, p: float = 0.0, target: float = 0.6, interval: int = 4,
                 speed_kimg: float = 100.0, adaptive: bool = True):
        self.p = float(p)
        self.target = float(target)         # r_t to hold
        self.interval = int(interval)       # steps between adjustments
        self.speed_kimg = float(speed_kimg)  # kimg for p to travel 0 -> 1
        self.adaptive = bool(adaptive)      # False: p stays fixed
        self.sign_sum = 0.0                 # signs of D(real) since the last adjustment
        self.sign_count = 0
        self.steps = 0
        self.last_rt: float | None = None   # r_t used at the last adjustment

    def observe(self, logits_real: torch.Tensor) -> None:
        if self.adaptive:
            self.sign_sum += float(torch.sign(logits_real.detach()).sum())
            self.sign_count += int(logits_real.numel())

    def end_step(self, batch: int, reduce: object = None) -> None:
        """After a step of `batch` images (all processes); `reduce(tensor)` sums over them."""
        self.steps += 1
        if not self.adaptive or self.steps % self.interval != 0:
            return
        totals = torch.tensor([self.sign_sum, float(self.sign_count)], dtype=torch.float64)
        if callable(reduce):
            totals = reduce(totals)
        self.sign_sum, self.sign_count = 0.0, 0
        if totals[1] <= 0:
            return
        self.last_rt = float(totals[0] / totals[1])
        step = batch * self.interval / (self.speed_kimg * 1000)
        direction = math.copysign(1.0, self.last_rt - self.target) if (
            self.last_rt != self.target) else 0.0
        self.p = min(1.0, max(0.0, self.p + direction * step))

    def state_dict(self) -> dict[str, float | int | None]:
        return {"p": self.p, "sign_sum": self.sign_sum, "sign_count": self.sign_count,
                "steps": self.steps, "last_rt": self.last_rt}

    def load_state_dict(self, state: dict) -> None:
        self.p = float(state["p"])
        self.sign_sum = float(state["sign_sum"])
        self.sign_count = int(state["sign_count"])
        self.steps = int(state["steps"])
        rt = state.get("last_rt")
        self.last_rt = None if rt is None else float(rt)
