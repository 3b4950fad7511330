"""Bending operations: each operation's defining property, channel selection, taps."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from conftest import make_tiny_generator

from engine.tools.bending import (
    OPERATIONS,
    WEIGHT_OPERATIONS,
    Bend,
    BendError,
    ChannelSelection,
    ParamSpec,
    WeightEdit,
    apply_operation,
    make_taps,
    resolve_channels,
    resolve_params,
    undone_by_demodulation,
    validate_bend,
    validate_weight_edit,
)

torch.manual_seed(0)
X = torch.randn(2, 6, 8, 8)          # [N, C, H, W], square maps
XR = torch.randn(2, 4, 6, 10)        # non-square maps


def run(name: str, x: torch.Tensor = X, selected: torch.Tensor | None = None,
        **params) -> torch.Tensor:
    op = OPERATIONS[name]
    return apply_operation(op, x, resolve_params(op, params), selected)


# ----------------------------------------------------------------------------------------
# The registry and its specs.


def test_registry_covers_the_issue_list():
    wanted = {"identity", "ablate", "multiply", "add", "invert", "threshold", "translate",
              "rotate", "zoom", "flip_h", "flip_v", "mirror_lr", "mirror_tb", "shuffle",
              "vanish", "mean_filter", "sharpen", "erode", "dilate", "sobel", "sinusoidal",
              "jitter", "gaussian_noise"}
    assert wanted <= set(OPERATIONS)
    assert {"zero", "negate", "scale", "transpose", "rotate90", "rotate180", "centre_only",
            "noise"} <= set(WEIGHT_OPERATIONS)


@pytest.mark.parametrize("name", sorted(OPERATIONS))
def test_every_operation_keeps_shape_and_unselected_channels(name):
    for x in (X, XR):
        sel = torch.tensor([1, 3])
        y = run(name, x, sel)
        assert y.shape == x.shape and y.dtype == x.dtype
        keep = [c for c in range(x.shape[1]) if c not in (1, 3)]
        assert torch.equal(y[:, keep], x[:, keep]), name
        assert torch.isfinite(y).all()
        # Defaults are valid parameters and specs are well formed.
        for p in OPERATIONS[name].params:
            assert p.type in ("float", "int", "bool", "choice")
            assert p.check(p.default) is None, (name, p.name)


def test_identity_and_ablate():
    assert torch.equal(run("identity"), X)
    y = run("ablate", selected=torch.tensor([0, 2]))
    assert (y[:, [0, 2]] == 0).all()
    assert torch.equal(y[:, [1, 3, 4, 5]], X[:, [1, 3, 4, 5]])


def test_multiply_add_invert():
    assert torch.allclose(run("multiply", factor=-0.5), X * -0.5)
    assert torch.allclose(run("add", amount=1.5), X + 1.5)
    assert torch.equal(run("invert"), -X)
    assert torch.equal(run("invert", x=run("invert")), X)          # an involution
    assert torch.allclose(run("invert", offset=1.0), 1 - X)         # Broad's form


def test_threshold_is_binary():
    y = run("threshold", threshold=0.2, high=1.0)
    assert set(torch.unique(y).tolist()) <= {0.0, 1.0}
    assert torch.equal(y.bool(), X > 0.2)


def test_flips_twice_are_identity():
    for x in (X, XR):
        assert torch.equal(run("flip_h", run("flip_h", x)), x)
        assert torch.equal(run("flip_v", run("flip_v", x)), x)
        assert torch.equal(run("flip_h", x), x.flip(-1))


def test_mirrors_are_symmetric_and_keep_the_source_half():
    for x in (X, XR, torch.randn(1, 2, 7, 7)):
        lr = run("mirror_lr", x)
        assert torch.equal(lr, lr.flip(-1))
        w = x.shape[-1]
        assert torch.equal(lr[..., : w // 2], x[..., : w // 2])
        tb = run("mirror_tb", x)
        assert torch.equal(tb, tb.flip(-2))
        assert torch.equal(tb[..., : x.shape[-2] // 2, :], x[..., : x.shape[-2] // 2, :])


def test_rotate_90_four_times_is_identity_and_matches_the_general_path():
    y = X
    for _ in range(4):
        y = run("rotate", y, angle=90.0)
    assert torch.equal(y, X)
    # The exact right-angle path and the affine_grid path agree.
    assert torch.allclose(run("rotate", angle=90.0), run("rotate", angle=90.0001), atol=1e-3)
    assert torch.allclose(run("rotate", angle=-90.0), run("rotate", angle=270.0))
    # Anticlockwise on screen: the top-right pixel goes to the top-left.
    img = torch.zeros(1, 1, 5, 5)
    img[0, 0, 0, 4] = 1
    assert run("rotate", img, angle=90.0)[0, 0, 0, 0] == 1
    assert torch.allclose(run("rotate", angle=0.0), X)
    assert torch.allclose(run("rotate", XR, angle=360.0), XR, atol=1e-5)


def test_rotate_180_twice_non_square():
    y = run("rotate", run("rotate", XR, angle=180.0), angle=180.0)
    assert torch.allclose(y, XR, atol=1e-5)


def test_translate_whole_pixels_and_fill():
    img = torch.arange(64.0).reshape(1, 1, 8, 8)
    y = run("translate", img, x_shift=0.25, y_shift=0.0, fill="zero")   # 2 pixels right
    assert torch.allclose(y[..., 2:], img[..., :-2], atol=1e-5)
    assert (y[..., :2] == 0).all()
    y = run("translate", img, x_shift=0.0, y_shift=-0.125, fill="zero")  # 1 pixel up
    assert torch.allclose(y[..., :-1, :], img[..., 1:, :], atol=1e-5)
    y = run("translate", img + 1, x_shift=0.25, fill="reflect")
    assert (y[..., :2] != 0).all()          # reflect fills the border from the map
    assert torch.allclose(y[..., :2], (img + 1)[..., [1, 0]], atol=1e-5)
    assert torch.allclose(run("translate", X, x_shift=0.0, y_shift=0.0), X, atol=1e-6)


def test_zoom_about_the_centre():
    assert torch.allclose(run("zoom", scale=1.0), X, atol=1e-6)
    img = torch.zeros(1, 1, 8, 8)
    img[..., 3:5, 3:5] = 1.0                # a centred blob grows when zoomed in
    y = run("zoom", img, scale=2.0)
    assert y.sum() > img.sum() * 3
    assert torch.allclose(y, y.flip(-1), atol=1e-5) and torch.allclose(y, y.flip(-2), atol=1e-5)


def test_shuffle_is_a_seeded_permutation():
    y = run("shuffle", seed=3)
    xs = {tuple(X[:, c].flatten().tolist()) for c in range(X.shape[1])}
    ys = {tuple(y[:, c].flatten().tolist()) for c in range(X.shape[1])}
    assert xs == ys
    assert torch.equal(y, run("shuffle", seed=3))
    assert not torch.equal(run("shuffle", seed=3), run("shuffle", seed=4))
    # Each sample gets the same permutation.
    assert torch.equal(run("shuffle", X[:1], seed=3), y[:1])


def test_vanish_copies_unselected_channels():
    sel = torch.tensor([0, 1])
    y = run("vanish", selected=sel, seed=1)
    for c in (0, 1):
        assert any(torch.equal(y[:, c], X[:, d]) for d in range(2, 6))
    assert torch.equal(y[:, 2:], X[:, 2:])
    assert (run("vanish") == 0).all()        # nothing unselected: the channels vanish


def test_erode_le_x_le_dilate():
    for k in (2, 3, 5):
        e, d = run("erode", kernel=k), run("dilate", kernel=k)
        assert (e <= X).all() and (X <= d).all()
        assert torch.equal(run("erode", x=-X, kernel=k), -d)   # duality
    assert torch.equal(run("erode", kernel=1), X)
    const = torch.full((1, 2, 6, 6), 0.7)
    assert torch.allclose(run("dilate", const, kernel=5), const)


def test_mean_filter_keeps_constants_and_the_mean_roughly():
    const = torch.full((1, 2, 6, 6), -1.3)
    assert torch.allclose(run("mean_filter", const, kernel=4), const)
    y = run("mean_filter", kernel=3)
    assert y.var() < X.var()                  # smoothing lowers the variance
    assert torch.equal(run("mean_filter", kernel=1), X)


def test_sharpen_keeps_constants_and_raises_contrast():
    const = torch.full((1, 2, 6, 6), 2.0)
    assert torch.allclose(run("sharpen", const, factor=3.0), const)
    assert torch.equal(run("sharpen", factor=0.0), X)
    assert run("sharpen", factor=2.0).var() > X.var()


def test_sobel_is_zero_on_constants_and_finds_an_edge():
    const = torch.full((1, 1, 6, 6), 5.0)
    assert torch.allclose(run("sobel", const), torch.zeros_like(const), atol=1e-5)
    step = torch.zeros(1, 1, 6, 6)
    step[..., 3:] = 1.0
    y = run("sobel", step)
    assert y[0, 0, :, 2:4].min() > 0.1 and y[0, 0, :, 0].max() < 1e-5
    assert (run("sobel") >= 0).all()


def test_sinusoidal():
    assert torch.allclose(run("sinusoidal", amplitude=0.0), X)
    y = run("sinusoidal", freq_x=1.0, freq_y=0.0, amplitude=1.0, phase=0.0)
    wave = 1 + torch.sin(2 * torch.pi * (torch.arange(8) + 0.5) / 8)
    assert torch.allclose(y, X * wave, atol=1e-5)
    assert torch.allclose(run("sinusoidal", mode="warp", amplitude=0.0), X, atol=1e-5)
    assert not torch.allclose(run("sinusoidal", mode="warp", amplitude=0.1), X)


def test_jitter_is_seeded_and_zero_amount_is_identity():
    assert torch.allclose(run("jitter", amount=0.0), X, atol=1e-5)
    a, b = run("jitter", amount=2.0, seed=1), run("jitter", amount=2.0, seed=1)
    assert torch.equal(a, b)
    assert not torch.equal(a, run("jitter", amount=2.0, seed=2))
    # Bilinear resampling never leaves the range of the values it mixes.
    assert a.min() >= X.min() - 1e-5 and a.max() <= X.max() + 1e-5


def test_gaussian_noise_is_seeded_and_scaled():
    a = run("gaussian_noise", std=0.5, seed=7)
    assert torch.equal(a, run("gaussian_noise", std=0.5, seed=7))
    assert torch.equal(run("gaussian_noise", std=0.0), X)
    big = torch.zeros(1, 8, 32, 32)
    assert abs(run("gaussian_noise", big, std=2.0).std().item() - 2.0) < 0.1
    assert torch.allclose(a[0] - X[0], a[1] - X[1], atol=1e-6)  # same noise per sample


# ----------------------------------------------------------------------------------------
# Parameter specs and validation.


def test_param_spec_checks():
    p = ParamSpec("k", "int", 3, 1, 9)
    assert p.check(3) is None and p.check(3.0) is None
    assert "whole number" in p.check(2.5)
    assert "above the maximum 9" in p.check(10)
    assert "not a number" in p.check("3")
    assert "not a number" in p.check(True)
    assert "finite" in ParamSpec("a").check(float("nan"))
    c = ParamSpec("fill", "choice", "zero", choices=("zero", "reflect"))
    assert c.check("reflect") is None and "not one of" in c.check("wrap")
    assert ParamSpec("b", "bool", False).check(1) is not None


def test_validate_bend_reports_every_field():
    G = make_tiny_generator()
    bad = Bend("b8.conv9", "rotate", {"angle": 400, "spin": 1},
               ChannelSelection("indices", indices=[0, 99]))
    problems = validate_bend(bad, G)
    text = "\n".join(problems)
    assert "layer: unknown layer 'b8.conv9'" in text
    assert "params.angle: 400 is above the maximum 360" in text
    assert "params.spin: unknown parameter" in text
    # Channel range is only known once the layer is; here it is not.
    problems = validate_bend(Bend("b8.conv0", "nope"), G)
    assert problems == [problems[0]] and problems[0].startswith("op: unknown operation")
    problems = validate_bend(Bend("b8.conv0", "ablate", channels=ChannelSelection(
        "indices", indices=[0, 32])), G)
    assert problems == ["channels.indices[1]: channel 32 is out of range (0..31)"]
    problems = validate_bend(Bend("b8.conv0", "ablate", channels=ChannelSelection(
        "clusters", k=4, ids=[1, 4])), G)
    assert problems == ["channels.ids[1]: cluster 4 is out of range (0..3 for k=4)"]
    assert validate_bend(Bend("b8.conv0", "ablate", channels=ChannelSelection(
        "random", fraction=0.0)))[0].startswith("channels.fraction")
    assert validate_bend(Bend("b8.conv0", "ablate", channels=ChannelSelection("some"))
                         )[0].startswith("channels.mode")
    assert validate_bend(Bend("b8.conv0", "rotate", {"angle": 45.0}), G) == []
    assert validate_weight_edit(WeightEdit("b8.conv0", "scale", {"factor": 0.5, "axis": "in"},
                                           ChannelSelection("indices", indices=[0])), G) == []
    assert validate_weight_edit(WeightEdit("b8.conv0", "melt"), G)[0].startswith("op:")


def test_resolve_channels():
    G = make_tiny_generator()
    assert resolve_channels(ChannelSelection(), G, "b8.conv0", 32) is None
    idx = resolve_channels(ChannelSelection("indices", indices=[5, 1, 5]), G, "b8.conv0", 32)
    assert idx.tolist() == [1, 5]
    r = resolve_channels(ChannelSelection("random", fraction=0.25, seed=2), G, "b8.conv0", 32)
    assert len(r) == 8 and r.tolist() == sorted(set(r.tolist()))
    r2 = resolve_channels(ChannelSelection("random", fraction=0.25, seed=2), G, "b8.conv0", 32)
    assert torch.equal(r, r2)
    assert resolve_channels(ChannelSelection("random", fraction=1.0), G, "b8.conv0", 32) is None


# ----------------------------------------------------------------------------------------
# Taps through the generator.


@pytest.fixture(scope="module")
def G():
    return make_tiny_generator()


def _ws(G, n=2):
    return G.mapping(torch.randn(n, G.cfg.z_dim, generator=torch.Generator().manual_seed(1)))


def test_taps_change_only_what_they_should(G):
    ws = _ws(G)
    base, cap = G.synthesis(ws, capture=["b8.conv0"])
    taps, wtaps = make_taps(G, [Bend("b8.conv0", "ablate", channels=ChannelSelection(
        "indices", indices=[0, 3]))])
    assert wtaps == {}
    img, cap2 = G.synthesis(ws, taps=taps, capture=["b8.conv0"])
    a, b = cap["b8.conv0"], cap2["b8.conv0"]
    assert (b[:, [0, 3]] == 0).all()
    keep = [c for c in range(a.shape[1]) if c not in (0, 3)]
    assert torch.equal(a[:, keep], b[:, keep])
    assert not torch.equal(img, base)
    # The model is untouched: rendering without taps gives the original image again.
    assert torch.equal(G.synthesis(ws), base)


def test_bends_on_one_layer_compose_in_order(G):
    ws = _ws(G)
    bends = [Bend("b16.conv1", "add", {"amount": 1.0}),
             Bend("b16.conv1", "multiply", {"factor": 3.0})]
    taps, _ = make_taps(G, bends)
    _, cap = G.synthesis(ws, taps=taps, capture=["b16.conv1"])
    _, ref = G.synthesis(ws, capture=["b16.conv1"])
    assert torch.allclose(cap["b16.conv1"], (ref["b16.conv1"] + 1) * 3, atol=1e-5)
    # Disabled and identity bends leave no tap at all.
    taps, _ = make_taps(G, [Bend("b16.conv1", "ablate", enabled=False),
                            Bend("b8.conv1", "identity")])
    assert taps == {}


def test_batch_equals_single_renders(G):
    ws = _ws(G, 3)
    bends = [Bend("b8.conv1", "rotate", {"angle": 33.0}),
             Bend("b8.conv1", "jitter", {"amount": 1.5, "seed": 2}),
             Bend("b16.conv0", "gaussian_noise", {"std": 0.3}, ChannelSelection(
                 "random", fraction=0.5))]
    taps, _ = make_taps(G, bends)
    batch = G.synthesis(ws, taps=taps)
    one = torch.cat([G.synthesis(ws[i:i + 1], taps=taps) for i in range(3)])
    assert torch.allclose(batch, one, atol=1e-5)


def test_weight_edits(G):
    ws = _ws(G)
    base = G.synthesis(ws)
    before = {k: v.clone() for k, v in G.state_dict().items()}
    _, wtaps = make_taps(G, weight_edits=[WeightEdit("b8.conv0", "zero", channels=
                                                     ChannelSelection("indices",
                                                                      indices=[2]))])
    _, cap = G.synthesis(ws, weight_taps=wtaps, capture=["b8.conv0"])
    # A zeroed output channel is left with noise + bias only: constant over the batch.
    ch = cap["b8.conv0"][:, 2]
    assert torch.allclose(ch[0], ch[1])
    w = G.synthesis.b8.conv0.weight
    for name in WEIGHT_OPERATIONS:
        _, wt = make_taps(G, weight_edits=[WeightEdit("b8.conv0", name)])
        assert wt["b8.conv0"](w).shape == w.shape
    _, wt = make_taps(G, weight_edits=[WeightEdit("b8.conv0", "rotate90")])
    w4 = w
    for _ in range(4):
        w4 = wt["b8.conv0"](w4)
    assert torch.equal(w4, w)
    _, wt = make_taps(G, weight_edits=[WeightEdit("b8.conv0", "centre_only")])
    assert (wt["b8.conv0"](w)[..., 0, :] == 0).all()
    _, wt = make_taps(G, weight_edits=[WeightEdit("b8.conv0", "negate", {"axis": "in"},
                                                  ChannelSelection("indices", indices=[1]))])
    out = wt["b8.conv0"](w)
    assert torch.equal(out[:, 1], -w[:, 1]) and torch.equal(out[:, 0], w[:, 0])
    _, wt = make_taps(G, weight_edits=[WeightEdit("b8.conv0", "transpose")])
    assert torch.equal(wt["b8.conv0"](w), w.transpose(-1, -2))
    # Nothing was mutated.
    after = G.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert torch.equal(G.synthesis(ws), base)


def test_scale_that_demodulation_undoes_is_refused(G):
    """Scaling whole output channels (or every input channel) of a demodulated conv gives
    the same image; undone_by_demodulation says so (the studio refuses to add it)."""
    ws = _ws(G)
    base = G.synthesis(ws)
    half = ChannelSelection("random", fraction=0.5, seed=1)
    for axis, sel in (("out", ChannelSelection("all")), ("out", half),
                      ("in", ChannelSelection("all"))):
        edit = WeightEdit("b8.conv0", "scale", {"factor": 3.0, "axis": axis}, sel)
        _, wt = make_taps(G, weight_edits=[edit])
        assert torch.allclose(G.synthesis(ws, weight_taps=wt), base, atol=1e-5)
        assert undone_by_demodulation(edit)
    for edit in (WeightEdit("b8.conv0", "scale", {"factor": 3.0, "axis": "in"}, half),
                 WeightEdit("b8.torgb", "scale", {"factor": 3.0, "axis": "out"}),
                 WeightEdit("b8.conv0", "scale", {"factor": -1.0, "axis": "out"}, half)):
        assert not undone_by_demodulation(edit)
        _, wt = make_taps(G, weight_edits=[edit])
        assert not torch.allclose(G.synthesis(ws, weight_taps=wt), base, atol=1e-3)


def test_make_taps_refuses_invalid_bends(G):
    with pytest.raises(BendError, match=r"bends\[0\]\.params\.angle"):
        make_taps(G, [Bend("b8.conv0", "rotate", {"angle": 1000})])
    with pytest.raises(BendError, match=r"weight_edits\[0\]\.layer"):
        make_taps(G, weight_edits=[WeightEdit("b99.conv0", "zero")])


def test_cluster_selection_uses_engine_clusters(G, monkeypatch):
    from engine.tools import clusters

    labels = np.array([i % 4 for i in range(32)])
    calls = []

    def fake(G_, key, layer, k, samples, seed):
        calls.append((key, layer, k, samples, seed))
        return labels

    monkeypatch.setattr(clusters, "cluster_labels", fake)
    sel = ChannelSelection("clusters", k=4, ids=[1, 3], samples=16, cluster_seed=2)
    idx = resolve_channels(sel, G, "b8.conv1", 32, model_key="abc")
    assert idx.tolist() == [i for i in range(32) if i % 4 in (1, 3)]
    assert calls == [("abc", "b8.conv1", 4, 16, 2)]


def test_two_threads_bend_one_model_independently(G):
    ws = _ws(G, 1)
    bends = {"a": [Bend("b8.conv0", "rotate", {"angle": 45.0})],
             "b": [Bend("b16.conv1", "ablate")]}
    ref = {k: G.synthesis(ws, taps=make_taps(G, v)[0]) for k, v in bends.items()}
    results, errors = {}, []

    def work(key):
        try:
            for _ in range(5):
                out = G.synthesis(ws, taps=make_taps(G, bends[key])[0])
                assert torch.equal(out, ref[key])
            results[key] = True
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in bends]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and results == {"a": True, "b": True}


def _every_choice() -> list[tuple[str, dict]]:
    """(op, params) for the defaults and for each value of each choice / bool parameter."""
    out = []
    for name, op in OPERATIONS.items():
        out.append((name, {}))
        for p in op.params:
            values = p.choices if p.type == "choice" else (True, False) if p.type == "bool" \
                else ()
            out += [(name, {p.name: v}) for v in values if v != p.default]
    return out


@pytest.mark.parametrize("name,params", _every_choice())
def test_every_choice_keeps_shape_and_unselected_channels(name, params):
    for x in (X, XR):
        y = run(name, x, torch.tensor([1, 3]), **params)
        keep = [c for c in range(x.shape[1]) if c not in (1, 3)]
        assert y.shape == x.shape and torch.equal(y[:, keep], x[:, keep])
        assert torch.isfinite(y).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_operations_on_cuda_match_cpu():
    xc = X.cuda()
    for name, given in _every_choice():
        op = OPERATIONS[name]
        params = resolve_params(op, given)
        sel = torch.tensor([1, 3])
        cpu = apply_operation(op, X, params, sel)
        gpu = apply_operation(op, xc, params, sel)
        assert gpu.device.type == "cuda"
        assert torch.allclose(cpu, gpu.cpu(), atol=1e-4), (name, given)


def test_shuffle_of_a_selection_moves_only_selected_channels_among_themselves():
    """source 'selected': the selected maps trade places (all of them kept, not all in
    place); source 'all': each selected channel takes some channel of the whole layer."""
    sel = torch.tensor([0, 2, 3, 5])
    for seed in range(3):
        y = run("shuffle", selected=sel, seed=seed)
        assert torch.equal(y[:, [1, 4]], X[:, [1, 4]])
        taken = [next(j for j in sel.tolist() if torch.equal(y[:, i], X[:, j]))
                 for i in sel.tolist()]
        assert sorted(taken) == sel.tolist()
    moved = [run("shuffle", selected=sel, seed=s) for s in range(3)]
    assert any(not torch.equal(m[:, sel], X[:, sel]) for m in moved)
    from_all = [run("shuffle", selected=sel, seed=s, source="all") for s in range(6)]
    for y in from_all:
        assert torch.equal(y[:, [1, 4]], X[:, [1, 4]])
        assert all(any(torch.equal(y[:, i], X[:, j]) for j in range(6)) for i in sel.tolist())
    assert any(any(torch.equal(y[:, i], X[:, j]) for i in sel.tolist() for j in (1, 4))
               for y in from_all)  # the whole layer is the source
