"""StyleGAN3 (alias-free) generator: names, primitives, per-call interface, checkpoints."""

from __future__ import annotations

import math
import pickle
from collections import OrderedDict
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine.base.errors import CheckpointError
from engine.gan import networks, stylegan3
from engine.gan.checkpoints import build_generator, read_checkpoint, save_generator
from engine.gan.stylegan3 import (
    StyleGAN3Config,
    _filtered_lrelu_reference,
    design_lowpass,
    filtered_lrelu,
    input_transform,
    layer_specs,
)
from tests.conftest import make_tiny_stylegan3
from tests.helpers.nvlabs_pickles import Persistent, assert_one_sentence

PRESETS = ("stylegan3-t", "stylegan3-r")


@pytest.fixture(scope="module", params=PRESETS)
def G(request):
    return make_tiny_stylegan3(request.param, seed=1)


def render(G, seeds=(0, 1), psi=0.7, **kwargs) -> torch.Tensor:
    z = torch.cat([G.seed_to_z(s) for s in seeds])
    with torch.no_grad():
        return G(z, psi=psi, **kwargs)


# ----------------------------------------------------------------------------------------
# Architecture and names.


def test_names_follow_nvlabs_schedule():
    # NVlabs' stylegan3-t at 1024 px: 36 px first layers (16 + 2 x 10 margin), 512 channels,
    # the last two critically sampled at the image size, ToRGB last.
    cfg = StyleGAN3Config.preset("stylegan3-t", resolution=1024)
    names = [s.name for s in layer_specs(cfg)]
    assert names[0] == "L0_36_512" and len(names) == 15
    assert names[-1] == "L14_1024_3" and names[-2].startswith("L13_1024_")
    r = [s.name for s in layer_specs(StyleGAN3Config.preset("stylegan3-r", resolution=1024))]
    assert r[0] == "L0_36_1024" and r[-1] == "L14_1024_3" and cfg.num_ws == 16
    # -r: radial down filters everywhere except the critically sampled layers, 1x1 convs.
    specs = layer_specs(StyleGAN3Config.preset("stylegan3-r", resolution=1024))
    assert [s.down_radial for s in specs] == [True] * 12 + [False] * 3
    assert {s.kernel for s in specs} == {1}


def test_state_dict_keys_are_nvlabs(G):
    keys = set(G.state_dict())
    first, last = G.synthesis.layers[0], G.synthesis.layers[-1]
    for key in ("mapping.fc0.weight", "mapping.w_avg", "synthesis.input.weight",
                "synthesis.input.affine.weight", "synthesis.input.transform",
                "synthesis.input.freqs", "synthesis.input.phases",
                f"synthesis.{first}.weight", f"synthesis.{first}.magnitude_ema",
                f"synthesis.{first}.up_filter", f"synthesis.{first}.down_filter",
                f"synthesis.{last}.affine.bias"):
        assert key in keys
    # The ToRGB layer neither up- nor downsamples: no filters (NVlabs registers None).
    assert f"synthesis.{last}.up_filter" not in keys
    assert G.num_ws == len(G.synthesis.layers) + 1
    count = sum(p.numel() for p in G.parameters())
    assert count <= G.cfg.approx_parameters() <= count * 1.1
    assert networks.is_rgb_layer(G, last) and not networks.is_rgb_layer(G, first)
    assert networks.conv_layers(G) == G.synthesis.layers[:-1]
    assert networks.noise_layers(G) == []


def test_designed_filters_are_lowpass():
    f = design_lowpass(12, 10.0, 10.0, 64.0)
    assert f.shape == (12,) and math.isclose(float(f.sum()), 1.0, rel_tol=1e-5)
    assert torch.allclose(f, f.flip(0))
    r = design_lowpass(12, 10.0, 10.0, 64.0, radial=True)
    assert r.shape == (12, 12) and math.isclose(float(r.sum()), 1.0, rel_tol=1e-5)
    assert torch.allclose(r, r.t()) and torch.allclose(r, r.flip(0))
    # Response at DC is 1 and far beyond the stopband nearly 0.
    spectrum = np.abs(np.fft.rfft(f.numpy(), 256))
    assert spectrum[0] == pytest.approx(1.0, abs=1e-5) and spectrum[-1] < 0.02


# ----------------------------------------------------------------------------------------
# Filtered leaky ReLU against a direct reading of its definition.


def naive_upfirdn(x, f, up, down, pad, gain):
    """Zero stuffing by index assignment, zero padding, a true 2-D convolution (the
    separable filter as an outer product), then every `down`-th pixel."""
    n, c, h, w = x.shape
    y = torch.zeros(n, c, h * up, w * up, dtype=x.dtype)
    y[:, :, ::up, ::up] = x
    y = F.pad(y, pad)
    k = torch.outer(f, f) if f.ndim == 1 else f
    k = (k * gain).flip([0, 1])[None, None].repeat(c, 1, 1, 1)
    return F.conv2d(y, k.to(x.dtype), groups=c)[:, :, ::down, ::down]


@pytest.mark.parametrize("up,down,pad,radial,clamp", [
    (2, 2, (11, 10, 11, 10), False, None), (4, 2, (23, 21, 23, 21), False, 1.5),
    (2, 2, (5, 6, 7, 4), True, None), (2, 1, (0, 0, 3, 3), False, None),
    (1, 2, (3, 3, 3, 3), True, 0.8)])
def test_filtered_lrelu_matches_definition(up, down, pad, radial, clamp):
    g = torch.Generator().manual_seed(up * 10 + down)
    x = torch.randn(2, 3, 13, 11, generator=g, dtype=torch.float64)
    b = torch.randn(3, generator=g, dtype=torch.float64)
    fu = design_lowpass(6 * up, 3.0, 2.0, 8.0 * up).double() if up > 1 else None
    fd = design_lowpass(6 * down, 3.0, 2.0, 8.0 * up, radial=radial).double() \
        if down > 1 else None
    gain, slope = math.sqrt(2), 0.2
    ours = filtered_lrelu(x, fu, fd, b, up, down, pad, gain, slope, clamp)
    y = x + b.reshape(1, -1, 1, 1)
    y = naive_upfirdn(y, fu, up, 1, pad, up * up) if fu is not None else F.pad(y, pad)
    y = F.leaky_relu(y, slope) * gain
    y = y.clamp(-clamp, clamp) if clamp is not None else y
    y = naive_upfirdn(y, fd, 1, down, (0, 0, 0, 0), 1) if fd is not None else y[..., ::down,
                                                                                  ::down]
    assert ours.shape == y.shape
    assert torch.allclose(ours, y, atol=1e-12, rtol=0)


# (up, down, padding, radial down filter, clamp, slope, size): layers of -t (separable) and
# -r (radial), their 4x upsampling layers, critically sampled ones (negative padding),
# up or down alone, ToRGB (no filters, slope 1), odd and non-square sizes.
FAST_PATH_CASES = [
    (2, 2, (9, 8, 9, 8), False, 256.0, 0.2, (13, 13)),
    (2, 2, (11, 10, 11, 10), True, 256.0, 0.2, (13, 11)),
    (4, 2, (-6, -9, -6, -9), False, 256.0, 0.2, (15, 15)),
    (4, 2, (-2, -5, -2, -5), True, None, 0.2, (11, 14)),
    (2, 2, (-11, -12, -11, -12), False, 1.5, 0.2, (27, 27)),
    (2, 2, (-9, -10, -9, -10), True, None, 0.2, (25, 23)),
    (2, 1, (0, 0, 3, 3), False, None, 0.2, (7, 9)),
    (1, 2, (3, 3, 3, 3), True, 0.8, 0.2, (11, 11)),
    (1, 2, (0, 1, 2, 0), False, None, 0.2, (15, 13)),
    (1, 1, (0, 0, 0, 0), False, 256.0, 1.0, (8, 8)),
]


@pytest.mark.parametrize("up,down,pad,radial,clamp,slope,size", FAST_PATH_CASES)
@pytest.mark.parametrize("designed", [True, False])
def test_filtered_lrelu_matches_reference(up, down, pad, radial, clamp, slope, size,
                                          designed):
    """The depthwise channels_last path against the engine's previous implementation, in
    fp32, with NVlabs-designed (symmetric) filters and with random asymmetric ones (which
    catch a flipped or transposed kernel); the input is left untouched."""
    g = torch.Generator().manual_seed(up * 100 + down * 10 + size[1])
    x = torch.randn(2, 5, *size, generator=g) * 4
    b = torch.randn(5, generator=g)
    ku, kd = 6 * up, 6 * down
    if designed:
        fu = design_lowpass(ku, 3.0, 2.0, 8.0 * up) if up > 1 else None
        fd = design_lowpass(kd, 3.0, 2.0, 8.0 * up, radial=radial) if down > 1 else None
    else:
        # Unit DC gain like a low-pass filter, so the values keep a real layer's range.
        fu = torch.rand(ku, generator=g) if up > 1 else None
        fd = torch.rand(*((kd, kd) if radial else (kd,)), generator=g) if down > 1 else None
        fu = fu / fu.sum() if fu is not None else None
        fd = fd / fd.sum() if fd is not None else None
    gain = 1.0 if slope == 1 else math.sqrt(2)
    before = x.clone()
    ours = filtered_lrelu(x, fu, fd, b, up, down, pad, gain, slope, clamp)
    ref = _filtered_lrelu_reference(x, fu, fd, b, up, down, pad, gain, slope, clamp)
    assert torch.equal(x, before)
    assert ours.shape == ref.shape and ours.dtype == torch.float32
    assert (ours - ref).abs().max().item() <= 1e-5


@pytest.mark.parametrize("up,radial", [(2, False), (4, False), (2, True)])
def test_clamp_that_cannot_bind_is_skipped_and_the_values_stay(up, radial):
    """The clamp after the leaky ReLU is a pass over a layer's largest tensor; it is skipped
    when a bound from the small input (max |x| times the filter's largest per-output sum of
    |taps|) shows it cannot bind, and the result is the reference's either way. The bound
    holds for adversarial inputs (signs matching the taps)."""
    from torch.profiler import profile

    g = torch.Generator().manual_seed(up)
    fu = design_lowpass(6 * up, 3.0, 2.0, 8.0 * up)
    if radial:
        fu = torch.outer(fu, fu)
    fd = design_lowpass(12, 3.0, 2.0, 16.0)
    pad = (9, 8, 9, 8) if up == 2 else (-6, -9, -6, -9)
    x = torch.randn(1, 4, 15, 15, generator=g)
    worst = torch.sign(fu.flip(-1)[::up]).repeat(8)[:15] if not radial else torch.ones(15)
    x[0, 0] = torch.outer(worst, worst)                   # a channel that meets the bound
    bound = stylegan3._upsampled_bound(x, fu, up)
    up_only = stylegan3._upsample_depthwise(x.contiguous(memory_format=torch.channels_last),
                                            fu, up, pad)
    assert up_only.abs().max().item() <= bound * (1 + 1e-6)
    gain = math.sqrt(2)
    for clamp, clamped in ((bound * gain * 1.01, False), (bound * gain * 0.3, True)):
        with profile() as prof:
            ours = filtered_lrelu(x, fu, fd, None, up, 2, pad, gain, 0.2, clamp)
        assert any(e.name == "aten::clamp_" for e in prof.events()) == clamped
        ref = _filtered_lrelu_reference(x, fu, fd, None, up, 2, pad, gain, 0.2, clamp)
        assert (ours - ref).abs().max().item() <= 1e-5


def test_upsampling_crop_of_rows_is_a_view_not_a_copy():
    """The upsampled signal, a layer's largest tensor, is cropped to NVlabs' extent without a
    copy: a crop of rows of a channels_last batch of one is a view of the filter's output
    (F.pad copied it: about a fifth of a large layer's filtered leaky ReLU), with the values
    a padding crop gives; a crop that reaches outside still pads with zeros."""
    x = torch.randn(1, 8, 20, 12).contiguous(memory_format=torch.channels_last)
    rows = stylegan3._crop(x, 3, 14, -2)
    assert rows.data_ptr() == x[:, :, 3:].data_ptr() and rows.is_contiguous(
        memory_format=torch.channels_last)
    assert torch.equal(rows, torch.nn.functional.pad(x, (0, 0, -3, -3)))
    cols = stylegan3._crop(x, 2, 9, -1)
    assert cols.data_ptr() == x[..., 2:].data_ptr()
    assert torch.equal(cols, x[..., 2:11])
    wider = stylegan3._crop(x, -1, 14, -1)
    assert torch.equal(wider, torch.nn.functional.pad(x, (1, 1)))


@pytest.mark.parametrize("preset", PRESETS)
def test_images_match_reference_filtered_lrelu(preset):
    """Whole renders (-t and -r, every layer kind of the schedule, batch 2) equal those made
    with the reference filtered leaky ReLU within 1e-5."""
    G = make_tiny_stylegan3(preset, seed=3)
    ours = render(G, seeds=(4, 5))
    with mock.patch.object(stylegan3, "filtered_lrelu", _filtered_lrelu_reference):
        ref = render(G, seeds=(4, 5))
    assert (ours - ref).abs().max().item() <= 1e-5


GOLDEN = Path(__file__).parent / "data" / "stylegan3_golden.npz"


@pytest.mark.parametrize("preset", PRESETS)
def test_images_match_golden_from_before_the_depthwise_path(preset):
    """Renders equal, within 1e-5, the images the engine made before its filtered leaky ReLU
    became depthwise convolutions and its modulation was folded into the conv weights
    (tests/data/stylegan3_golden.npz: commit 44b87d6, tiny generator seed 3, seeds 4 and
    5, psi 0.7; 7e-8 and 9e-8 measured)."""
    ours = render(make_tiny_stylegan3(preset, seed=3), seeds=(4, 5)).numpy()
    golden = np.load(GOLDEN)[preset.replace("-", "_")]
    assert ours.shape == golden.shape
    assert np.abs(ours - golden).max() <= 1e-5


# ----------------------------------------------------------------------------------------
# Per-call interface, as for StyleGAN2.


def test_deterministic_seed_and_truncation(G):
    a, b = render(G), render(G)
    assert a.shape == (2, 3, 16, 16) and torch.equal(a, b)
    assert torch.allclose(render(G, seeds=(1,)), a[1:], atol=1e-6)  # batch-independent
    with torch.no_grad():
        avg = G.synthesis(G.mapping.w_avg.reshape(1, 1, -1).repeat(1, G.num_ws, 1))
    assert torch.allclose(render(G, seeds=(0,), psi=0.0), avg, atol=1e-6)


def test_identity_taps_and_weight_taps_are_bit_exact(G):
    base = render(G)
    layers = G.synthesis.layers
    same = render(G, taps={n: (lambda t: t) for n in layers},
                  weight_taps={n: (lambda t: t) for n in layers})
    assert torch.equal(base, same)


def test_capture_shapes_and_start_reproduces_image(G):
    z = torch.cat([G.seed_to_z(s) for s in (0, 1)])
    with torch.no_grad():
        ws = G.mapping(z, psi=0.7)
        img, acts = G.synthesis(ws, capture=G.synthesis.layers)
        for name, shape in G.layer_shapes().items():
            assert tuple(acts[name].shape) == (2, *shape)
        # The margin is part of the grid: early layers are larger than the image.
        assert acts[G.synthesis.layers[0]].shape[-1] > G.resolution
        for name in networks.conv_layers(G):
            again = G.synthesis(ws, start=(name, acts[name]))
            assert torch.allclose(again, img, atol=1e-6), name
        with pytest.raises(KeyError):
            G.synthesis(ws, start=(G.synthesis.layers[-1], img))


def test_tap_changes_only_later_layers(G):
    z = G.seed_to_z(3)
    mid = G.synthesis.layers[2]
    with torch.no_grad():
        ws = G.mapping(z)
        _, a = G.synthesis(ws, capture=G.synthesis.layers)
        _, b = G.synthesis(ws, capture=G.synthesis.layers, taps={mid: lambda t: t * 0.5})
    i = G.synthesis.layers.index(mid)
    for k, name in enumerate(G.synthesis.layers):
        if k < i:
            assert torch.equal(a[name], b[name])
        else:
            assert not torch.allclose(a[name], b[name])
    with pytest.raises(ValueError, match="changed its shape"):
        render(G, taps={mid: lambda t: t[:, :1]})
    with pytest.raises(KeyError, match="unknown layer"):
        render(G, taps={"b16.conv1": lambda t: t})
    with pytest.raises(KeyError, match="no noise"):
        render(G, noise={mid: torch.zeros(1)})


def test_model_is_not_mutated(G):
    before = {k: v.clone() for k, v in G.state_dict().items()}
    render(G, taps={G.synthesis.layers[1]: lambda t: -t},
           weight_taps={G.synthesis.layers[0]: lambda w: w * 2},
           transform=input_transform((0.2, 0.1), 30))
    after = G.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_transform_per_call_equals_nvlabs_buffer(G):
    m = input_transform((0.1, -0.05), 15)
    # gen_images.py: make_transform then its inverse written into the buffer.
    a = math.radians(15)
    forward = np.array([[math.cos(a), math.sin(a), 0.1], [-math.sin(a), math.cos(a), -0.05],
                        [0, 0, 1]])
    assert np.allclose(m.double().numpy() @ forward, np.eye(3), atol=1e-6)
    assert torch.equal(input_transform(), torch.eye(3))
    per_call = render(G, transform=m)
    G2 = make_tiny_stylegan3(G.cfg.architecture, seed=1)
    G2.synthesis.input.transform.copy_(m)
    assert torch.equal(render(G2), per_call)
    assert not torch.allclose(per_call, render(G))
    # One transform per sample in a batch.
    both = render(G, transform=torch.stack([torch.eye(3), m]))
    assert torch.allclose(both[0], render(G, seeds=(0,))[0], atol=1e-6)
    assert torch.allclose(both[1], render(G, seeds=(1,), transform=m)[0], atol=1e-6)


def test_translation_moves_the_input_features(G):
    """A translate of one output pixel shifts the Fourier features by one pixel."""
    res = G.resolution
    with torch.no_grad():
        ws = G.mapping(G.seed_to_z(0))
        a = G.synthesis.input(ws[:, 0])
        b = G.synthesis.input(ws[:, 0], input_transform((1.0 / res, 0.0), 0))
    assert torch.allclose(b[..., 1:], a[..., :-1], atol=1e-4)


def test_backward_reaches_ws(G):
    ws = G.mapping(G.seed_to_z(0)).detach().requires_grad_(True)
    G.synthesis(ws).square().mean().backward()
    assert ws.grad is not None and ws.grad.abs().sum() > 0


# ----------------------------------------------------------------------------------------
# NVlabs pickles and our format.


def sg3_tree(m: torch.nn.Module, mods, kwargs: dict | None = None) -> Persistent:
    """Our StyleGAN3 module as NVlabs' stylegan3 repo pickles it (class names, flat init
    kwargs, per-layer sampling attributes, None buffers for the ToRGB filters)."""
    kind = type(m).__name__
    state = {"training": False, "_parameters": OrderedDict(m._parameters),
             "_buffers": OrderedDict(m._buffers), "_non_persistent_buffers_set": set(),
             "_init_args": (), "_init_kwargs": mods.EasyDict(),
             "_modules": OrderedDict((k, sg3_tree(v, mods)) for k, v in m._modules.items())}
    if kind == "SynthesisLayer":
        s = m.spec
        state["_buffers"].setdefault("up_filter", None)
        state["_buffers"].setdefault("down_filter", None)
        state.update(up_factor=s.up, down_factor=s.down, padding=list(s.padding),
                     conv_clamp=m.conv_clamp, is_torgb=s.is_torgb,
                     in_sampling_rate=s.in_rate, out_cutoff=np.float64(s.out_cutoff))
    if kind == "Generator":
        cfg = m.cfg
        state["_init_kwargs"] = mods.EasyDict(
            z_dim=cfg.z_dim, c_dim=cfg.c_dim, w_dim=cfg.w_dim, img_resolution=cfg.resolution,
            img_channels=cfg.img_channels,
            mapping_kwargs=mods.EasyDict(num_layers=cfg.mapping_layers),
            channel_base=cfg.channel_base, channel_max=cfg.channel_max,
            num_layers=cfg.num_layers, num_critical=cfg.num_critical,
            margin_size=cfg.margin_size, conv_kernel=cfg.conv_kernel,
            use_radial_filters=cfg.use_radial_filters, num_fp16_res=4,
            magnitude_ema_beta=0.99, **(kwargs or {}))
    name = {"FullyConnectedLayer": "FullyConnectedLayer", "MappingNetwork": "MappingNetwork"}
    module = "training.networks_stylegan3"
    return Persistent(f"{module}.{name.get(kind, kind)}", state, mods.module_src)


@pytest.mark.parametrize("preset", PRESETS)
def test_nvlabs_stylegan3_pickle_reads_back_identical(preset, tmp_path,
                                                     nvlabs_modules):
    G = make_tiny_stylegan3(preset, seed=5)
    data = {"G": sg3_tree(G, nvlabs_modules), "D": None, "G_ema": sg3_tree(G, nvlabs_modules),
            "augment_pipe": None, "training_set_kwargs": None}
    raw = pickle.dumps(data, protocol=3)
    assert nvlabs_modules.module_src.encode() in raw
    (tmp_path / "sg3.pkl").write_bytes(raw)
    loaded = read_checkpoint(tmp_path / "sg3.pkl")
    assert loaded.config == G.cfg and loaded.source_format == "nvlabs-pickle"
    assert any("fp16" in n for n in loaded.notes)
    G2 = build_generator(loaded)
    assert type(G2) is type(G)
    assert torch.equal(render(G2), render(G))
    assert not nvlabs_modules.marker.exists()
    # Into safetensors + sidecar and back.
    save_generator(G2, tmp_path / "sg3.safetensors", source={"test": preset})
    G3 = build_generator(read_checkpoint(tmp_path / "sg3.safetensors"))
    assert G3.cfg == G.cfg
    assert torch.equal(render(G3, transform=input_transform((0.1, 0), 10)),
                       render(G, transform=input_transform((0.1, 0), 10)))


def test_nvlabs_stylegan3_pickle_with_inconsistent_config_is_refused(
        tmp_path, nvlabs_modules):
    G = make_tiny_stylegan3("stylegan3-t", seed=6)
    for bad in ({"margin_size": 7}, {"z_dim": "big"}, {"filter_size": 4}):
        tree = sg3_tree(G, nvlabs_modules)
        tree.state["_init_kwargs"].update(bad)
        (tmp_path / "bad.pkl").write_bytes(pickle.dumps({"G_ema": tree}, protocol=3))
        with pytest.raises(CheckpointError) as err:
            read_checkpoint(tmp_path / "bad.pkl")
        assert_one_sentence(err.value)
    tree = sg3_tree(G, nvlabs_modules)
    (tmp_path / "d.pkl").write_bytes(pickle.dumps({"G_ema": tree, "D": tree}, protocol=3))
    with pytest.raises(CheckpointError, match="without its discriminator"):
        read_checkpoint(tmp_path / "d.pkl", want_d=True)


# ----------------------------------------------------------------------------------------
# The rest of the engine on StyleGAN3 models.


@pytest.fixture(scope="module")
def sg3_file(tmp_path_factory):
    """A tiny stylegan3-t in our format, as the zoo and the CLI load it."""
    G = make_tiny_stylegan3("stylegan3-t", seed=7)
    path = tmp_path_factory.mktemp("sg3") / "tiny-sg3.safetensors"
    save_generator(G, path, source={"test": "tiny stylegan3-t"})
    return G, path


def test_recipe_translate_rotate_bends_and_weight_edits(sg3_file):
    from engine.recipes.recipe import Recipe, RecipeError, render_tensor
    from engine.tools.bending import Bend, ChannelSelection, WeightEdit
    from engine.tools.latents import LatentSpec

    G, path = sg3_file
    layer = G.synthesis.layers[2]
    plain = Recipe(model=str(path), latent=LatentSpec(seed=3, psi=0.7))
    moved = Recipe.from_json(Recipe(model=str(path), latent=LatentSpec(
        seed=3, psi=0.7, translate=[0.1, -0.05], rotate=15)).to_json())
    a, b = render_tensor(plain, G), render_tensor(moved, G)
    assert torch.equal(b, render(G, seeds=(3,), transform=input_transform((0.1, -0.05), 15)))
    assert not torch.allclose(a, b)
    # A bend acts on the layer's whole grid, margin included; a weight edit on its weight.
    seen = []
    bent = Recipe(model=str(path), latent=plain.latent, bends=[
        Bend(layer, "rotate", {"angle": 90.0}, ChannelSelection("random", fraction=0.5))])
    out = render_tensor(bent, G)
    assert out.shape == a.shape and not torch.allclose(out, a)
    G.synthesis(G.mapping(G.seed_to_z(3)), taps={layer: lambda t: seen.append(t.shape) or t})
    assert seen[0][-1] == G.layer_shapes()[layer][-1] > G.resolution
    # The bend turns exactly the chosen channels' whole grid: torch.rot90 of them in a tap.
    chosen = [0, 2, 5]
    turned = render_tensor(Recipe(model=str(path), latent=plain.latent, bends=[
        Bend(layer, "rotate", {"angle": 90.0}, ChannelSelection("indices", indices=chosen))]),
        G)

    def rot90_chosen(t):
        t = t.clone()
        t[:, chosen] = torch.rot90(t[:, chosen], 1, dims=(-2, -1))
        return t

    with torch.no_grad():
        want = G.synthesis(G.mapping(G.seed_to_z(3), psi=0.7), noise_mode="const",
                           taps={layer: rot90_chosen})
    assert torch.allclose(turned, want, atol=1e-5)
    edited = Recipe(model=str(path), latent=plain.latent,
                    weight_edits=[WeightEdit(layer, "zero", channels=ChannelSelection(
                        "indices", indices=[0, 1]))])
    assert not torch.allclose(render_tensor(edited, G), a)
    with pytest.raises(RecipeError, match="translate"):
        render_tensor(Recipe(latent=LatentSpec(translate=[float("nan"), 0])), G)


def test_translate_is_refused_on_stylegan2(tiny_generator):
    from engine.tools.latents import LatentSpec, validate_latent

    problems = validate_latent(LatentSpec(rotate=10), tiny_generator())
    assert problems and "StyleGAN3" in problems[0]


def test_cli_generate_translate_rotate(sg3_file, tmp_path):
    from PIL import Image

    from engine.__main__ import main
    from engine.tools.latents import to_uint8

    G, path = sg3_file
    out = tmp_path / "out"
    assert main(["generate", "--model", str(path), "--seeds", "0-1", "--psi", "0.7",
                 "--translate", "0.1,-0.05", "--rotate", "15", "--out", str(out)]) == 0
    want = to_uint8(render(G, transform=input_transform((0.1, -0.05), 15)))
    for i in range(2):
        assert np.array_equal(np.asarray(Image.open(out / f"seed{i:04d}.png")), want[i])
    assert main(["generate", "--model", str(path), "--translate", "a,b", "--out",
                 str(out)]) == 2


def test_clusters_directions_and_projection(sg3_file, tmp_path):
    from engine.tools import clusters as cl
    from engine.tools.latents import ganspace_directions, sefa_directions, sefa_layer_names
    from engine.tools.projector import project

    G, _ = sg3_file
    layer = G.synthesis.layers[1]
    r = cl.compute_clusters(G, layer, 3, samples=6, model_key="tiny-sg3", cache_dir=tmp_path)
    assert len(r.labels) == G.layer_shapes()[layer][0] and set(r.labels) <= {0, 1, 2}
    with pytest.raises(Exception, match="cannot be clustered"):
        cl.compute_clusters(G, G.synthesis.layers[-1], 3, samples=4, cache_dir=tmp_path)
    assert sefa_layer_names(G) == G.synthesis.layers
    d = sefa_directions(G, top=3)
    assert d.shape == (3, G.cfg.w_dim) and np.allclose(np.linalg.norm(d, axis=1), 1, atol=1e-5)
    assert ganspace_directions(G, samples=200, top=2).shape == (2, G.cfg.w_dim)
    target = (render(G, seeds=(5,))[0].permute(1, 2, 0).numpy() * 127.5 + 128).clip(0, 255)
    res = project(G, target.astype(np.uint8), steps=3, loss="pixel")
    assert res.w.shape == (1, G.num_ws, G.cfg.w_dim) and res.image.shape == (16, 16, 3)


def test_translator_encoder_for_a_stylegan3_layer(sg3_file):
    from engine.tools import translator as T

    G, _ = sg3_file
    layer = G.synthesis.layers[3]
    assert T.conv_layers(G) == G.synthesis.layers[:-1]
    enc = T.make_encoder(G, layer)
    c, h, _ = G.layer_shapes()[layer]
    assert (enc.config.out_channels, enc.config.out_size) == (c, h)
    assert enc.config.input_size % h == 0
    x = torch.zeros(2, 3, enc.config.input_size, enc.config.input_size)
    act = enc(x)
    assert act.shape == (2, c, h, h)
    with torch.no_grad():
        img = G.synthesis(G.mapping(torch.randn(2, G.z_dim)), start=(layer, act))
    assert img.shape == (2, 3, G.resolution, G.resolution)
    with pytest.raises(Exception, match="not a conv layer"):
        T.make_encoder(G, G.synthesis.layers[-1])


def test_rotation_sweep_makes_a_video(sg3_file, tmp_path):
    from engine.base.video import write_video
    from engine.recipes.recipe import Recipe, sweep_frames
    from engine.tools.latents import LatentSpec

    G, path = sg3_file
    recipe = Recipe(model=str(path), latent=LatentSpec(seed=2, translate=[0.0, 0.0]))
    frames = list(sweep_frames(recipe, "latent.rotate", 0, 90, 4, model=G))
    assert len(frames) == 4 and not np.array_equal(frames[0], frames[-1])
    moved = list(sweep_frames(recipe, "latent.translate[0]", 0, 0.25, 2, model=G))
    assert not np.array_equal(moved[0], moved[1])
    out = write_video(frames, tmp_path / "spin.gif", fps=8)
    assert out.exists() and out.stat().st_size > 0
