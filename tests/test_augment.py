"""The ADA pipeline: p = 0 is the identity, every transform at p = 1 does what it says and
keeps images in range, gradients reach the images, and the p heuristic moves as specified."""

from __future__ import annotations

import math

import pytest
import torch

from engine.training.augment import (
    AUGMENTS,
    AdaController,
    AugmentParams,
    AugmentRanges,
    apply_params,
    augment,
    sample_params,
)

N, RES = 4, 32


def random_images(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(N, 3, RES, RES, generator=g) * 2 - 1


def disk(radius: float, cx: float = 0.0, cy: float = 0.0) -> torch.Tensor:
    """White disk on black, centre (cx, cy) in pixels from the image centre."""
    coords = torch.arange(RES) + 0.5 - RES / 2
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    inside = ((x - cx) ** 2 + (y - cy) ** 2) <= radius ** 2
    return torch.where(inside, 1.0, -1.0).expand(N, 3, RES, RES).clone()


def moments(img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per image: area (pixels), centroid (x, y) and the 2x2 second-moment matrix of the
    bright region, from channel 0 mapped to [0, 1]."""
    w = (img[:, 0] + 1) / 2
    coords = torch.arange(RES) + 0.5 - RES / 2
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    area = w.sum((1, 2))
    cx, cy = (w * x).sum((1, 2)) / area, (w * y).sum((1, 2)) / area
    dx, dy = x - cx[:, None, None], y - cy[:, None, None]
    cov = torch.stack([(w * dx * dx).sum((1, 2)), (w * dx * dy).sum((1, 2)),
                       (w * dx * dy).sum((1, 2)), (w * dy * dy).sum((1, 2))], 1) / area[:, None]
    return area, torch.stack([cx, cy], 1), cov.reshape(-1, 2, 2)


def identity(**changes: torch.Tensor) -> AugmentParams:
    return AugmentParams.identity(N).replace(**changes)


def full(value: float) -> torch.Tensor:
    return torch.full((N,), float(value))


def luma_chroma(img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    luma = img.mean(1, keepdim=True)
    return luma, img - luma


# ----------------------------------------------------------------------------------------


def test_p_zero_is_the_identity():
    x = random_images()
    assert augment(x, 0.0, torch.Generator().manual_seed(1)) is x
    params = sample_params(N, 0.0, torch.Generator().manual_seed(1))
    assert torch.equal(apply_params(x, params), x)


@pytest.mark.parametrize("name", AUGMENTS)
def test_each_transform_at_p_one_changes_images_and_stays_in_range(name):
    x = random_images(1) * 0.9
    params = sample_params(N, 1.0, torch.Generator().manual_seed(2), enabled=(name,))
    y = apply_params(x, params)
    assert y.shape == x.shape and y.min() >= -1 and y.max() <= 1
    changed = (y - x).abs().flatten(1).amax(1) > 1e-3
    # x-flip, rot90 and luma flip pick "no change" as one of their outcomes; the rest always
    # move something at p = 1.
    assert changed.any() if name in ("xflip", "rotate90", "lumaflip") else changed.all()
    others = set(AUGMENTS) - {name} | ({"rotate_post"} if name != "rotate" else set())
    untouched = AugmentParams.identity(N)
    for other in others:  # only the chosen transform was drawn
        assert torch.equal(getattr(params, other), getattr(untouched, other)), other


def test_sampled_values_follow_the_ranges():
    r = AugmentRanges()
    q = sample_params(4000, 1.0, torch.Generator().manual_seed(3))
    assert set(q.xflip.unique().tolist()) == {0.0, 1.0}
    assert set(q.rotate90.unique().tolist()) == {0.0, 1.0, 2.0, 3.0}
    assert q.xint.abs().max() <= r.xint_max
    assert abs(float(torch.log2(q.scale).std()) - r.scale_std) < 0.02
    assert q.rotate.abs().max() <= math.pi and (q.rotate != 0).all()
    assert abs(float(q.xfrac.std()) - r.xfrac_std) < 0.01
    assert abs(float(q.brightness.std()) - r.brightness_std) < 0.02
    assert abs(float(torch.log2(q.saturation).std()) - r.saturation_std) < 0.05
    # At p = 0.5 each transform fires for about half the images.
    half = sample_params(4000, 0.5, torch.Generator().manual_seed(4))
    assert abs(float((half.scale != 1).float().mean()) - 0.5) < 0.04
    either = ((half.rotate != 0) | (half.rotate_post != 0)).float().mean()
    assert abs(float(either) - 0.5) < 0.04  # two rotations, at least one fires with p


def test_pixel_blitting_moves_pixels_exactly():
    x = random_images(5)
    y = apply_params(x, identity(xflip=full(1)))
    assert torch.allclose(y, x.flip(3), atol=1e-5)
    for k in range(4):
        y = apply_params(x, identity(rotate90=full(k)))
        assert torch.allclose(y, torch.rot90(x, k, dims=(2, 3)), atol=1e-5)
    shift = torch.tensor([[3 / RES, -2 / RES]]).expand(N, 2)  # 3 px right, 2 px up
    y = apply_params(x, identity(xint=shift))
    assert torch.allclose(y[:, :, :-2, 3:], x[:, :, 2:, :-3], atol=1e-5)


def test_scaling_rotation_and_translation_move_a_shape_as_specified():
    base = disk(6.0)
    area0, _, _ = moments(base)
    area, _, _ = moments(apply_params(base, identity(scale=full(1.5))))
    assert torch.allclose(area / area0, torch.full((N,), 1.5 ** 2), rtol=0.06)

    _, _, cov = moments(apply_params(base, identity(aniso=full(1.4))))
    assert torch.allclose(cov[:, 0, 0] / cov[:, 1, 1], torch.full((N,), 1.4 ** 4), rtol=0.1)

    # A wide ellipse turned by 30 degrees counter-clockwise on screen (y points down).
    ellipse = apply_params(base, identity(aniso=full(1.6)))
    _, _, cov = moments(apply_params(ellipse, identity(rotate=full(math.radians(30)))))
    angle = 0.5 * torch.atan2(-2 * cov[:, 0, 1], cov[:, 0, 0] - cov[:, 1, 1])
    assert torch.allclose(angle, torch.full((N,), math.radians(30)), atol=math.radians(2))

    _, c0, _ = moments(base)
    t = torch.tensor([[0.1, -0.05]]).expand(N, 2)
    _, c1, _ = moments(apply_params(base, identity(xfrac=t)))
    assert torch.allclose(c1 - c0, t * RES, atol=0.15)


def test_colour_transforms_do_what_they_say():
    g = torch.Generator().manual_seed(6)
    x = (torch.rand(N, 3, RES, RES, generator=g) * 2 - 1) * 0.3  # room before clipping
    luma, chroma = luma_chroma(x)

    y = apply_params(x, identity(brightness=full(0.2)))
    assert torch.allclose(y, x + 0.2, atol=1e-6)
    y = apply_params(x, identity(contrast=full(1.5)))
    assert torch.allclose(y, x * 1.5, atol=1e-6)
    y_luma, y_chroma = luma_chroma(apply_params(x, identity(lumaflip=full(1))))
    assert torch.allclose(y_luma, -luma, atol=1e-6) and torch.allclose(y_chroma, chroma,
                                                                       atol=1e-6)
    y_luma, y_chroma = luma_chroma(apply_params(x, identity(saturation=full(0.4))))
    assert torch.allclose(y_luma, luma, atol=1e-6)
    assert torch.allclose(y_chroma, 0.4 * chroma, atol=1e-6)
    y_luma, y_chroma = luma_chroma(apply_params(x, identity(hue=full(2.0))))
    assert torch.allclose(y_luma, luma, atol=1e-6)
    assert torch.allclose(y_chroma.norm(dim=1), chroma.norm(dim=1), atol=1e-5)
    cos = (y_chroma * chroma).sum(1) / (chroma.norm(dim=1) * y_chroma.norm(dim=1) + 1e-12)
    assert torch.allclose(cos, torch.full_like(cos, math.cos(2.0)), atol=1e-4)
    # Out-of-range results are clipped, as a camera would.
    y = apply_params(x, identity(brightness=full(3.0)))
    assert torch.equal(y, torch.ones_like(y))


def test_gradients_reach_the_images_through_every_transform():
    x = random_images(7).mul(0.5).requires_grad_(True)
    y = augment(x, 1.0, torch.Generator().manual_seed(8))
    (grad,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
    assert grad.abs().sum() > 0
    grad.square().sum().backward()  # R1 differentiates through the augmentation twice
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_same_generator_state_gives_the_same_augmentation():
    x = random_images(9)
    a = augment(x, 0.7, torch.Generator().manual_seed(10))
    b = augment(x, 0.7, torch.Generator().manual_seed(10))
    assert torch.equal(a, b)


def test_ada_controller_moves_p_towards_the_target():
    ada = AdaController(p=0.0, target=0.6, interval=4, speed_kimg=1.0)
    confident = torch.ones(16, 1)  # every D(real) > 0: r_t = 1 > 0.6
    for _ in range(8):
        ada.observe(confident)
        ada.end_step(16)
    step = 16 * 4 / 1000
    assert ada.p == pytest.approx(2 * step) and ada.last_rt == 1.0
    state = ada.state_dict()
    unsure = torch.tensor([[1.0], [-1.0], [-1.0], [1.0]])  # r_t = 0 < 0.6
    for _ in range(12):
        ada.observe(unsure)
        ada.end_step(16)
    assert ada.p == 0.0  # three steps down from 2 steps up, clamped at 0
    again = AdaController(target=0.6, interval=4, speed_kimg=1.0)
    again.load_state_dict(state)
    assert again.p == pytest.approx(2 * step)
    fixed = AdaController(p=0.3, adaptive=False)
    for _ in range(8):
        fixed.observe(confident)
        fixed.end_step(16)
    assert fixed.p == 0.3
