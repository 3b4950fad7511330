"""engine.recipes.incremental and the synthesis network's `stop`: tail renders equal full renders,
previews are the running image of a block, chosen by measured cost, in bounded memory."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.recipes import incremental as I
from engine.recipes import recipe as R
from engine.tools.bending import Bend, ChannelSelection, WeightEdit, make_taps
from engine.tools.latents import LatentSpec, compute_ws
from tests.conftest import make_tiny_generator


def _gen(**overrides):
    return make_tiny_generator(0, **{"resolution": 64, **overrides})


def _recipe(*bends: Bend, weight_edits=(), **latent) -> R.Recipe:
    return R.Recipe(model="tiny", latent=LatentSpec(**{"seed": 3, "psi": 0.7, **latent}),
                    bends=list(bends), weight_edits=list(weight_edits))


def _rotate(layer: str, angle: float) -> Bend:
    return Bend(layer=layer, op="rotate", params={"angle": angle}, channels=ChannelSelection())


def test_stop_returns_the_running_image_of_that_block() -> None:
    G = _gen()
    ws = G.mapping(torch.randn(2, G.z_dim), None)
    with torch.no_grad():
        full, cap = G.synthesis(ws, capture={"b16.img"})
        seconds: dict[int, float] = {}
        early = G.synthesis(ws, stop="b16", block_seconds=seconds)
        assert torch.equal(early, cap["b16.img"]) and early.shape == (2, 3, 16, 16)
        assert sorted(seconds) == [4, 8, 16] and all(s > 0 for s in seconds.values())
        assert torch.equal(G.synthesis(ws, stop="b64"), full)
        with pytest.raises(KeyError, match="stop must name a block"):
            G.synthesis(ws, stop="b12")
    orig = _gen(architecture="orig")
    with pytest.raises(ValueError, match="skip architecture"):
        orig.synthesis(orig.mapping(torch.randn(1, orig.z_dim), None), stop="b16")


def test_tail_renders_equal_full_renders_through_a_session_of_edits() -> None:
    """A drag of a bend on b16.conv1 keeps that layer's output before its bends on its
    second frame, and from the third applies the bend to it and runs on from b16.torgb; a
    weight edit added on b32.conv0 starts there too (still valid) and keeps b32.conv0's
    input (the tapped start itself); a seed change makes everything kept stale. Every frame
    is the full render bit for bit."""
    G = _gen()
    cache = I.TailCache()
    rec = _recipe(_rotate("b16.conv1", 5.0))
    starts = []
    steps = [("angle", 10.0), ("angle", 20.0), ("angle", 30.0), ("weight", 1.5),
             ("weight", 2.0), ("angle", 40.0), ("seed", 4.0), ("weight", 2.5)]
    for what, value in steps:
        if what == "angle":
            rec.bends[0].params["angle"] = value
        elif what == "seed":
            rec.latent.seed = value
        elif not rec.weight_edits:
            rec.weight_edits.append(WeightEdit(layer="b32.conv0", op="scale",
                                               params={"factor": value},
                                               channels=ChannelSelection()))
        else:
            rec.weight_edits[0].params["factor"] = value
        starts.append(cache.plan(rec, G)[0])
        seconds: dict[int, float] = {}
        tail = cache.render(rec, G, block_seconds=seconds)
        assert torch.equal(tail, R.render_tensor(rec, G)), (what, value)
        if starts[-1] is not None:   # only the start's block and those above it ran
            assert min(seconds) == I.block_of(I.entry_point(starts[-1])[0])
    # (b32.conv0's input is b16.conv1's output: a render from it runs b16.torgb on.)
    assert starts == [None, None, "b16.torgb", "b16.torgb", "b16.torgb", "b16.torgb", None,
                      None]
    assert sorted(cache.layers()) == ["b16.conv1.raw", "b32.conv0"]


def test_a_preview_frame_is_the_running_image_and_keeps_the_input_of_the_edit() -> None:
    G = _gen()
    cache = I.TailCache()
    rec = _recipe(_rotate("b16.conv1", 10.0))
    cache.render(rec, G)
    rec.bends[0].params["angle"] = 25.0
    preview = cache.render(rec, G, stop="b32")
    with torch.no_grad():
        ws = torch.cat([compute_ws(G, rec.latent)])
        taps, wtaps = make_taps(G, rec.bends)
        _, cap = G.synthesis(ws, taps=taps, weight_taps=wtaps, capture={"b32.img"})
    assert torch.equal(preview, cap["b32.img"])
    assert cache.layers() == ["b16.conv1.raw"]     # kept from the preview, used by the rest
    assert cache.plan(rec, G) == ("b16.torgb", None)
    assert torch.equal(cache.render(rec, G), R.render_tensor(rec, G))
    pic = np.asarray(I.to_picture(G, preview, rec))
    assert pic.shape == (64, 64, 3) and pic.dtype == np.uint8


def test_recipes_that_cannot_start_late_render_whole_and_equal() -> None:
    G = _gen()
    cache = I.TailCache()
    for noise in ("random", "random"):
        rec = _recipe(_rotate("b16.conv1", 10.0), noise_mode=noise, noise_seed=5)
        assert torch.equal(cache.render(rec, G), R.render_tensor(rec, G))
    assert cache.layers() == []
    resnet = _gen(architecture="resnet")
    rec = _recipe(_rotate("b16.conv1", 10.0))
    cache.render(rec, resnet)
    rec.bends[0].params["angle"] = 20.0
    assert torch.equal(cache.render(rec, resnet), R.render_tensor(rec, resnet))
    assert cache.layers() == []
    with pytest.raises(ValueError, match="stops early"):
        cache.render(rec, resnet, stop="b32")


def test_kept_activations_stay_under_the_byte_cap_and_go_when_idle() -> None:
    G = _gen()
    x32 = 32 * 32 * 32 * 4 + 3 * 16 * 16 * 4    # b32.conv1's output + the b16 image
    cache = I.TailCache(max_bytes=x32 + 100, idle_s=60)   # with b16.conv1's, too much
    rec = _recipe(_rotate("b16.conv1", 10.0), _rotate("b32.conv1", 10.0))
    cache.render(rec, G)
    for layer_bend in (0, 1, 0, 1):
        rec.bends[layer_bend].params["angle"] += 5
        cache.render(rec, G)
        assert cache.nbytes <= cache.max_bytes
        assert torch.equal(cache.render(rec, G), R.render_tensor(rec, G))
        assert len(cache.layers()) == 1       # the other one was dropped to make room
    assert cache.layers() == ["b32.conv1.raw"]
    small = I.TailCache(max_bytes=1000)             # no entry fits: every frame renders whole
    small.render(rec, G)
    rec.bends[1].params["angle"] += 5
    small.render(rec, G)
    assert small.layers() == [] and small.nbytes == 0
    I.sweep_idle(now=cache.used + 30)
    assert cache.nbytes > 0                          # not idle yet
    I.sweep_idle(now=cache.used + 61)
    assert cache.nbytes == 0 and cache.layers() == []


def test_the_preview_block_follows_the_budget_and_never_hides_the_edit() -> None:
    G = _gen(resolution=256)
    costs = I.BlockCosts(G)
    # Nothing measured: the cheapest preview (its render is the first measurement).
    assert I.preview_block(G, costs, 0.15, None, "b32.conv1") == "b32"
    assert I.preview_block(G, costs, 0.15, None, "b8.conv1") == "b32"    # MIN_PREVIEW_RES
    costs.observe({4: 0.001, 8: 0.002, 16: 0.004, 32: 0.01, 64: 0.03, 128: 0.09, 256: 0.4},
                  frame_seconds=0.545)
    assert costs.overhead == pytest.approx(0.004)
    assert I.preview_block(G, costs, 0.15, None, "b32.conv1") == "b128"   # 0.141 s
    assert I.preview_block(G, costs, 0.10, None, "b32.conv1") == "b64"    # 0.051 s
    assert I.preview_block(G, costs, 0.01, None, "b32.conv1") == "b32"    # none fits
    assert I.preview_block(G, costs, 0.01, None, "b64.conv0") == "b64"    # shows the edit
    assert I.preview_block(G, costs, 1.00, None, "b32.conv1") is None     # all of it fits
    # Started at the kept input of b256.conv1: the tail alone fits.
    assert I.preview_block(G, costs, 0.5, "b256.conv1", "b256.conv1") is None
    # An edit on b256 is not shown by any earlier block: the full picture, whatever it costs.
    assert I.preview_block(G, costs, 0.01, None, "b256.conv0") is None
    assert I.preview_block(G, costs, 0.01, None, None) is None            # the rested frame
    # Unmeasured blocks are scaled from the nearest measured one by their work.
    fresh = I.BlockCosts(G)
    fresh.observe({64: 0.03})
    assert fresh.block(128) == pytest.approx(0.03 * fresh.work[128] / fresh.work[64])


def test_a_bend_kept_before_its_taps_is_not_reused_once_its_layers_weights_change() -> None:
    """A raw entry (b16.conv1's output before its bends) holds that layer's weight edit:
    dragging the bend reuses it, changing the weight edit must not."""
    G = _gen()
    ws = G.mapping(torch.randn(1, G.z_dim), None)
    taps = {"b16.conv1": lambda x: x.flip(-1)}
    with torch.no_grad():
        _, cap = G.synthesis(ws, taps=taps, capture={"b16.conv1", "b16.conv1.raw"})
    assert torch.equal(cap["b16.conv1.raw"].flip(-1), cap["b16.conv1"])
    cache = I.TailCache()
    rec = _recipe(_rotate("b16.conv1", 10.0), weight_edits=[WeightEdit(
        layer="b16.conv1", op="scale", params={"factor": 1.5}, channels=ChannelSelection())])
    for angle in (20.0, 30.0, 40.0):
        rec.bends[0].params["angle"] = angle
        assert torch.equal(cache.render(rec, G), R.render_tensor(rec, G))
    assert cache.layers() == ["b16.conv1.raw"] and cache.plan(rec, G)[0] == "b16.torgb"
    rec.weight_edits[0].params["factor"] = 0.5
    assert cache.plan(rec, G)[0] is None
    assert torch.equal(cache.render(rec, G), R.render_tensor(rec, G))
