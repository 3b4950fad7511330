"""Latents: seeds, truncation, mixing, edits, directions, interpolation, loops, W files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.base.errors import StudioError
from engine.tools.latents import (
    DirectionEdit,
    LatentSpec,
    LayerEdit,
    apply_direction,
    circle_walk_ws,
    compute_ws,
    ganspace_directions,
    interpolate_ws,
    lerp,
    load_boundary,
    load_w,
    mix_grid,
    noise_generator,
    psi_grid,
    render_frames,
    render_ws,
    save_w,
    seed_to_ws,
    seed_to_z,
    sefa_directions,
    slerp,
    validate_latent,
    write_walk,
)


@pytest.fixture(scope="module")
def G():
    from tests.conftest import make_tiny_generator
    return make_tiny_generator(0)


def test_seed_to_z_nvlabs_convention_and_fractional_seeds(G):
    z = seed_to_z(7, 32)
    assert z.shape == (1, 32) and z.dtype == torch.float32
    assert torch.equal(z, torch.from_numpy(np.random.RandomState(7).randn(1, 32)).float())
    assert torch.equal(z, G.seed_to_z(7))
    assert torch.equal(seed_to_z(7.0, 32), z)
    # A fractional seed lies on the arc between its neighbours, near both for small steps.
    a, b = seed_to_z(7, 32), seed_to_z(8, 32)
    mid = seed_to_z(7.5, 32)
    assert torch.allclose(mid.norm(), (a.norm() + b.norm()) / 2, atol=1e-4)
    assert (seed_to_z(7.001, 32) - a).norm() < 0.05
    assert (seed_to_z(7.999, 32) - b).norm() < 0.05
    with pytest.raises(StudioError):
        seed_to_z(-1, 32)


@pytest.mark.parametrize("fn", [slerp, lerp])
def test_interpolation_endpoints_exact(fn):
    a, b = torch.randn(3, 16), torch.randn(3, 16)
    assert torch.equal(fn(a, b, 0.0), a) and torch.equal(fn(a, b, 1.0), b)
    an, bn = a.numpy(), b.numpy()
    assert np.array_equal(fn(an, bn, 0.0), an) and np.array_equal(fn(an, bn, 1.0), bn)
    mid = fn(a, b, 0.5)
    assert not torch.equal(mid, a) and not torch.equal(mid, b)


def test_slerp_keeps_norm_on_the_sphere():
    a, b = torch.randn(1, 64), torch.randn(1, 64)
    b = b / b.norm() * a.norm()
    for t in (0.1, 0.5, 0.9):
        assert torch.allclose(slerp(a, b, t).norm(), a.norm(), rtol=1e-5)


@pytest.mark.parametrize("space", ["w", "z"])
def test_interpolation_hits_keyframes_exactly(G, space):
    frames = list(interpolate_ws(G, [1, 5, 9], 9, space=space))
    assert len(frames) == 9
    assert torch.equal(frames[0], seed_to_ws(G, 1))
    assert torch.equal(frames[4], seed_to_ws(G, 5))
    assert torch.equal(frames[-1], seed_to_ws(G, 9))


def test_keyframe_loop_returns_to_start(G):
    frames = list(interpolate_ws(G, [1, 5], 8, space="w", loop=True))
    assert torch.equal(frames[0], seed_to_ws(G, 1))
    assert torch.equal(frames[4], seed_to_ws(G, 5))
    # The last frame is one step before the first: same step size as everywhere else.
    step = (frames[1] - frames[0]).norm()
    assert torch.allclose((frames[0] - frames[-1]).norm(), step, rtol=1e-4)


def test_circle_walk_is_a_perfect_loop(G):
    ws = list(circle_walk_ws(G, 3, 12, radius=0.4, closed=True))
    assert len(ws) == 13
    assert torch.equal(ws[0], ws[-1])
    images = list(render_frames(G, iter(ws), batch=5))
    assert len(images) == 13 and images[0].dtype == np.uint8
    assert np.array_equal(images[0], images[-1])    # the frame after the last is the first
    assert not np.array_equal(images[0], images[6])


def test_compute_ws_truncation_mixing_and_edits(G):
    base = compute_ws(G, LatentSpec(seed=3))
    assert base.shape == (1, G.num_ws, 32)
    w_avg = G.mapping.w_avg
    flat = compute_ws(G, LatentSpec(seed=3, psi=0.0))
    assert torch.allclose(flat, w_avg.expand_as(flat))
    cut = compute_ws(G, LatentSpec(seed=3, psi=0.0, cutoff=2))
    assert torch.allclose(cut[:, :2], w_avg.expand(1, 2, -1))
    assert torch.equal(cut[:, 2:], base[:, 2:])
    other = compute_ws(G, LatentSpec(seed=11))
    mixed = compute_ws(G, LatentSpec(seed=3, mix_seed=11, mix_start=2, mix_end=5))
    assert torch.equal(mixed[:, 2:5], other[:, 2:5])
    assert torch.equal(mixed[:, :2], base[:, :2]) and torch.equal(mixed[:, 5:], base[:, 5:])
    edited = compute_ws(G, LatentSpec(seed=3, layer_edits=[
        LayerEdit("swap", 1, 11), LayerEdit("negate", 2), LayerEdit("random", 3, 4)]))
    assert torch.equal(edited[:, 1], other[:, 1])
    assert torch.allclose(edited[:, 2], 2 * w_avg - base[:, 2])  # reflected about w_avg
    assert not torch.allclose(edited[:, 3], base[:, 3])
    again = compute_ws(G, LatentSpec(seed=3, layer_edits=[LayerEdit("random", 3, 4)]))
    assert torch.equal(again[:, 3], edited[:, 3])      # 'random' is seeded
    # Saved W+ overrides the seed and is used as is.
    saved = compute_ws(G, LatentSpec(seed=99, w=other[0].tolist()))
    assert torch.allclose(saved, other)


def test_conditional_model_needs_a_class(tiny_generator):
    Gc = tiny_generator(0, c_dim=4)
    with pytest.raises(StudioError, match="conditional"):
        compute_ws(Gc, LatentSpec(seed=1))
    a = compute_ws(Gc, LatentSpec(seed=1, class_index=0))
    b = compute_ws(Gc, LatentSpec(seed=1, class_index=3))
    assert a.shape == (1, Gc.num_ws, 32) and not torch.allclose(a, b)
    assert any("latent.class_index" in p for p in validate_latent(LatentSpec(seed=1), Gc))


def test_sefa_directions_orthonormal(G):
    d = sefa_directions(G, top=10)
    assert d.shape == (10, 32)
    assert np.allclose(d @ d.T, np.eye(10), atol=1e-5)
    sub = sefa_directions(G, layers=["b4.conv1", "b8.conv0"], top=5)
    assert np.allclose(sub @ sub.T, np.eye(5), atol=1e-5)
    assert not np.allclose(np.abs(sub[0] @ d[0]), 1.0)  # other layers, other directions


def _official_sefa(weights: list[np.ndarray]) -> np.ndarray:
    """SeFa as the paper's authors compute it, re-derived here in numpy.

    Stack the affine weights' transposes side by side into [w_dim, channels], scale every
    column (one style channel) to unit length, and take the eigenvectors of W W^T by
    decreasing eigenvalue; rows of the result are the directions.
    """
    stacked = np.concatenate([w.T for w in weights], axis=1)
    stacked = stacked / np.linalg.norm(stacked, axis=0, keepdims=True)
    values, vectors = np.linalg.eig(stacked @ stacked.T)
    return vectors.real[:, np.argsort(-values.real)].T


def _affine_weight(G, layer: str) -> np.ndarray:
    block, part = layer.split(".")
    return getattr(getattr(G.synthesis, block), part).affine.weight.detach().double().numpy()


@pytest.mark.parametrize("layers", [None, ["b8.conv1", "b16.conv0", "b32.torgb"]])
def test_sefa_equals_official_formula(G, layers):
    # The official 'all' for StyleGAN2: every conv and the final ToRGB (not the other ToRGBs).
    names = layers or ["b4.conv1", "b8.conv0", "b8.conv1", "b16.conv0", "b16.conv1",
                       "b32.conv0", "b32.conv1", "b32.torgb"]
    official = _official_sefa([_affine_weight(G, n) for n in names])
    ours = sefa_directions(G, layers, top=5).astype(np.float64)
    for k in (1, 3, 5):  # eigenvector signs are arbitrary: compare the spanned subspaces
        p_ours, p_official = ours[:k].T @ ours[:k], official[:k].T @ official[:k]
        assert np.abs(p_ours - p_official).max() < 1e-5, k
    # A layer with a larger gain must not outweigh the others: scaling one layer's affine
    # weights leaves the directions unchanged, because each style channel is normalised.
    scaled = make_scaled_copy(G, names[-1], 10.0)
    assert np.allclose(np.abs(sefa_directions(scaled, layers, top=5) * ours).sum(1), 1.0,
                       atol=1e-5)


def make_scaled_copy(G, layer: str, factor: float):
    import copy
    H = copy.deepcopy(G)
    block, part = layer.split(".")
    with torch.no_grad():
        getattr(getattr(H.synthesis, block), part).affine.weight.mul_(factor)
    return H


def test_ganspace_directions_and_cache(G):
    d = ganspace_directions(G, samples=500, top=4)
    assert d.shape == (4, 32)
    assert np.allclose(d @ d.T, np.eye(4), atol=1e-4)
    assert np.array_equal(ganspace_directions(G, samples=500, top=4), d)


def test_ganspace_reports_each_stage_and_sampled_batch_once_computed(tiny_generator):
    """Issue #33 item 13: GANSpace's progress moves through loading, every 1000 w sampled
    and its PCA (the page sat at 10% for 10 s), and reporting changes no direction."""
    H = tiny_generator(5)  # a model of its own: directions are cached per model
    said: list[tuple[float, str]] = []
    d = ganspace_directions(H, samples=2500, top=3,
                            progress=lambda f, m: said.append((f, m)))
    assert [m for _, m in said] == [
        "GANSpace: loading scikit-learn", "GANSpace: 1,000 of 2,500 w sampled",
        "GANSpace: 2,000 of 2,500 w sampled", "GANSpace: 2,500 of 2,500 w sampled",
        "GANSpace: principal axes of the 2,500 w (PCA)"]
    fractions = [f for f, _ in said]
    assert fractions == sorted(fractions) and fractions[0] == 0.0 and fractions[-1] < 1.0
    assert np.array_equal(ganspace_directions(tiny_generator(5), samples=2500, top=3), d)
    said.clear()  # cached: nothing to report
    ganspace_directions(H, samples=2500, top=3, progress=lambda f, m: said.append((f, m)))
    assert said == []


def test_direction_edit_moves_only_its_layers(G):
    base = compute_ws(G, LatentSpec(seed=2))
    spec = LatentSpec(seed=2, directions=[DirectionEdit("sefa", 1, 3.0, 2, 6)])
    moved = compute_ws(G, spec)
    unit = torch.from_numpy(sefa_directions(G, top=2)[1])
    assert torch.allclose(moved[:, 2:6] - base[:, 2:6], 3.0 * unit.expand(1, 4, -1), atol=1e-5)
    assert torch.equal(moved[:, :2], base[:, :2]) and torch.equal(moved[:, 6:], base[:, 6:])
    two = compute_ws(G, LatentSpec(seed=2, directions=[
        DirectionEdit("sefa", 1, 3.0, 2, 6), DirectionEdit("ganspace", 0, -1.0)]))
    assert not torch.allclose(two, moved)


def test_boundary_files(G, tmp_path):
    one = tmp_path / "smile.npy"
    np.save(one, np.full((1, 32), 2.0, np.float32))
    b = load_boundary(one, G)
    assert b.shape == (1, 32) and np.allclose(np.linalg.norm(b), 1.0)
    plus = tmp_path / "plus.npy"
    np.save(plus, np.random.RandomState(0).randn(G.num_ws, 32))
    assert load_boundary(plus, G).shape == (G.num_ws, 32)
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((1, 512), np.float32))
    with pytest.raises(StudioError, match=r"\[1, 32\]"):
        load_boundary(bad, G)
    base = compute_ws(G, LatentSpec(seed=2))
    moved = compute_ws(G, LatentSpec(seed=2, directions=[
        DirectionEdit("file", amount=1.5, path=str(plus))]))
    # Expected values from the file's numbers alone: each w moves 1.5 along its own row,
    # scaled to unit length.
    rows = np.load(plus)
    unit_rows = torch.from_numpy(rows / np.linalg.norm(rows, axis=1, keepdims=True)).float()
    assert torch.allclose(moved, base + 1.5 * unit_rows[None], atol=1e-6)
    ranged = compute_ws(G, LatentSpec(seed=2, directions=[
        DirectionEdit("file", amount=-2.0, layer_start=2, layer_end=5, path=str(plus))]))
    assert torch.allclose(ranged[:, 2:5], base[:, 2:5] - 2.0 * unit_rows[None, 2:5], atol=1e-6)
    assert torch.equal(ranged[:, :2], base[:, :2]) and torch.equal(ranged[:, 5:], base[:, 5:])
    single = compute_ws(G, LatentSpec(seed=2, directions=[
        DirectionEdit("file", amount=1.5, path=str(one))]))
    assert torch.allclose(single, base + 1.5 / np.sqrt(32), atol=1e-6)  # [2]*32, unit length
    problems = validate_latent(LatentSpec(directions=[DirectionEdit("file", path=str(bad))]), G)
    assert problems and problems[0].startswith("latent.directions[0].path")


def test_validate_latent_names_fields(G):
    spec = LatentSpec(seed=-3, psi=float("nan"), cutoff=99, noise_mode="loud", mix_seed=1,
                      mix_start=4, mix_end=2, layer_edits=[LayerEdit("melt", 40)],
                      directions=[DirectionEdit("magic")])
    problems = validate_latent(spec, G)
    for name in ("latent.seed", "latent.psi", "latent.cutoff", "latent.noise_mode",
                 "latent.mix_end", "latent.layer_edits[0].op", "latent.layer_edits[0].w_index",
                 "latent.directions[0].method"):
        assert any(p.startswith(name + ":") for p in problems), name
    assert validate_latent(LatentSpec(seed=4.5, psi=0.7), G) == []
    with pytest.raises(StudioError, match="latent.seed"):
        compute_ws(G, LatentSpec(seed=-3))


def test_noise_generator_is_seeded(G):
    assert noise_generator(LatentSpec(noise_mode="const")) is None
    g1 = noise_generator(LatentSpec(noise_mode="random", noise_seed=5))
    g2 = noise_generator(LatentSpec(noise_mode="random", noise_seed=5))
    assert torch.equal(torch.randn(4, generator=g1), torch.randn(4, generator=g2))
    ws = seed_to_ws(G, 1)
    a = render_ws(G, ws, "random", noise_seed=5)
    assert np.array_equal(a, render_ws(G, ws, "random", noise_seed=5))
    assert not np.array_equal(a, render_ws(G, ws, "random", noise_seed=6))


def test_grids(G):
    assert psi_grid(G, [1, 2], [0.5, 0.7, 1.0]).shape == (2 * 32 + 2, 3 * 32 + 4, 3)
    grid = mix_grid(G, [1, 2], 9)
    assert grid.dtype == np.uint8 and grid.shape[0] == 2 * 32 + 2


def test_w_files_round_trip(G, tmp_path):
    ws = seed_to_ws(G, 4)
    save_w(tmp_path / "wplus.npy", ws)
    assert np.array_equal(load_w(tmp_path / "wplus.npy", G), ws.numpy())
    save_w(tmp_path / "w.npy", ws[:, 0])                     # W: [1, w_dim]
    assert load_w(tmp_path / "w.npy").shape == (1, 1, 32)
    assert np.array_equal(load_w(tmp_path / "w.npy", G), ws.numpy())
    np.save(tmp_path / "wrong.npy", np.zeros((3, 7)))
    with pytest.raises(StudioError):
        load_w(tmp_path / "wrong.npy", G)


def test_walk_video(G, tmp_path):
    from engine.base.video import read_video_frames
    path = write_walk(G, [1, 5], 6, tmp_path / "walk.mp4", fps=10, loop=True)
    assert len(list(read_video_frames(path))) == 6


def test_walk_video_frames_can_be_resized(G, tmp_path):
    """Issue #24 item 8: a small model's walk can be written at a watchable size."""
    from engine.base.video import read_video_frames
    from engine.tools.latents import write_walk

    out = write_walk(G, [0, 1], 3, tmp_path / "walk.mp4", fps=10, size=96)
    frames = list(read_video_frames(out))
    assert len(frames) == 3 and all(f.shape[:2] == (96, 96) for f in frames)


def test_apply_direction_moves_along_the_unit_direction():
    """A direction of any length moves each w by amount x the unit vector: a [w_dim] vector
    for every w in the range, a [num_ws, w_dim] array row by row (plain arithmetic below)."""
    ws = torch.from_numpy(np.random.RandomState(1).randn(2, 5, 4)).float()
    vec = np.array([3.0, 0.0, 4.0, 0.0])  # length 5
    moved = apply_direction(ws, vec, 2.0, 1, 3)
    step = torch.tensor([0.6, 0.0, 0.8, 0.0]) * 2.0
    assert torch.allclose(moved[:, 1:3], ws[:, 1:3] + step, atol=1e-6)
    assert torch.equal(moved[:, :1], ws[:, :1]) and torch.equal(moved[:, 3:], ws[:, 3:])
    rows = np.random.RandomState(2).randn(5, 4) * 7.0
    unit = torch.from_numpy(rows / np.linalg.norm(rows, axis=1, keepdims=True)).float()
    assert torch.allclose(apply_direction(ws, rows, -1.5), ws - 1.5 * unit, atol=1e-6)
