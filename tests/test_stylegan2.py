"""The generator: shapes, seeds, noise modes, truncation and the per-call taps."""

import math
import threading

import numpy as np
import pytest
import torch

from engine.gan.stylegan2 import (
    Discriminator,
    Generator,
    GeneratorConfig,
    layer_names,
    layer_shapes,
    make_resample_filter,
    upsample2d,
)

TINY = GeneratorConfig(z_dim=32, w_dim=32, resolution=32, channel_base=1024, channel_max=32,
                       mapping_layers=2)


def tiny(arch: str = "skip", seed: int = 0, **kw) -> Generator:
    torch.manual_seed(seed)
    cfg = GeneratorConfig(**{**TINY.to_dict(), "architecture": arch, **kw})
    G = Generator(cfg).eval()
    with torch.no_grad():  # non-zero noise strengths so noise modes differ
        for name, p in G.named_parameters():
            if name.endswith("noise_strength"):
                p.fill_(0.3)
            if name.endswith(".bias") and "synthesis" in name:
                p.normal_(0, 0.1)
        G.mapping.w_avg.normal_()
    return G


@pytest.fixture(scope="module")
def G() -> Generator:
    return tiny()


def test_num_ws_and_names(G):
    assert G.num_ws == 2 * 5 - 2
    assert layer_names(G.cfg) == ["b4.conv1", "b4.torgb", "b8.conv0", "b8.conv1", "b8.torgb",
                                  "b16.conv0", "b16.conv1", "b16.torgb", "b32.conv0",
                                  "b32.conv1", "b32.torgb"]
    keys = set(G.state_dict())
    for k in ["mapping.fc0.weight", "mapping.w_avg", "synthesis.b4.const",
              "synthesis.b16.conv1.affine.weight", "synthesis.b16.conv0.noise_const",
              "synthesis.b32.torgb.affine.bias", "synthesis.b8.resample_filter"]:
        assert k in keys


def test_seed_follows_nvlabs_generate(G):
    z = G.seed_to_z(42)
    assert torch.equal(z, torch.from_numpy(np.random.RandomState(42).randn(1, 32)).float())


@torch.no_grad()
def test_deterministic_and_noise_modes(G):
    z = G.seed_to_z(1)
    a, b = G(z), G(z)
    assert torch.equal(a, b)
    none = G(z, noise_mode="none")
    assert not torch.allclose(a, none)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    r1 = G(z, noise_mode="random", noise_generator=g1)
    r2 = G(z, noise_mode="random", noise_generator=g2)
    assert torch.equal(r1, r2) and not torch.allclose(r1, a)
    with pytest.raises(ValueError):
        G(z, noise_mode="loud")


@torch.no_grad()
def test_truncation_and_cutoff(G):
    z = G.seed_to_z(3)
    ws = G.mapping(z)
    w0 = G.mapping(z, psi=0.0)
    assert torch.allclose(w0, G.mapping.w_avg.expand_as(w0))
    wc = G.mapping(z, psi=0.5, cutoff=2)
    assert torch.allclose(wc[:, :2], G.mapping.w_avg.lerp(ws[:, :2], 0.5))
    assert torch.equal(wc[:, 2:], ws[:, 2:])


@torch.no_grad()
def test_identity_taps_are_bit_exact(G):
    z = G.seed_to_z(7)
    ref = G(z)
    taps = {name: (lambda x: x) for name in layer_names(G.cfg)}
    assert torch.equal(G(z, taps=taps), ref)
    wtaps = {name: (lambda w: w) for name in layer_names(G.cfg)}
    assert torch.equal(G(z, weight_taps=wtaps), ref)


@torch.no_grad()
def test_capture_shapes(G):
    z = torch.cat([G.seed_to_z(s) for s in range(3)])
    img, acts = G(z, capture=layer_names(G.cfg))
    assert img.shape == (3, 3, 32, 32)
    for name, shape in layer_shapes(G.cfg).items():
        assert acts[name].shape == (3, *shape), name


@torch.no_grad()
@pytest.mark.parametrize("layer", ["b4.conv1", "b8.conv0", "b16.conv1", "b32.conv0"])
def test_start_reproduces_image(G, layer):
    z = torch.cat([G.seed_to_z(s) for s in range(2)])
    ws = G.mapping(z)
    res = int(layer.split(".")[0][1:])
    prev_img = [f"b{res // 2}.img"] if res > 4 else []
    ref, acts = G.synthesis(ws, capture=[layer, *prev_img])
    start = (layer, acts[layer], *(acts[k] for k in prev_img))
    out = G.synthesis(ws, start=start)
    assert torch.allclose(out, ref, atol=1e-6)


@torch.no_grad()
def test_tap_changes_only_later_layers(G):
    z = G.seed_to_z(2)
    _, ref = G(z, capture=["b8.conv1", "b16.conv0"])
    _, out = G(z, taps={"b8.conv1": lambda x: x * 0}, capture=["b8.conv1", "b16.conv0"])
    assert torch.count_nonzero(out["b8.conv1"]) == 0
    assert not torch.allclose(out["b16.conv0"], ref["b16.conv0"])
    with pytest.raises(ValueError, match="changed its shape"):
        G(z, taps={"b8.conv1": lambda x: x[:, :1]})
    with pytest.raises(KeyError, match="unknown layer"):
        G(z, taps={"b9.conv1": lambda x: x})


@torch.no_grad()
def test_fused_matches_non_fused(G):
    z = torch.cat([G.seed_to_z(s) for s in range(3)])
    assert torch.allclose(G(z, fused=True), G(z, fused=False), atol=1e-4)


@torch.no_grad()
def test_model_is_not_mutated_and_threads_are_isolated(G):
    before = {k: v.clone() for k, v in G.state_dict().items()}
    z = torch.cat([G.seed_to_z(s) for s in range(2)])
    bends = {
        "a": {"b8.conv1": lambda x: x.flip(3)},
        "b": {"b16.conv1": lambda x: x * -1},
        "c": {},
    }
    solo = {k: G(z, taps=t) for k, t in bends.items()}
    results: dict[str, list[torch.Tensor]] = {k: [] for k in bends}
    errors = []

    def worker(key):
        try:
            for _ in range(10):
                results[key].append(G(z, taps=bends[key]))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in bends for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for key, outs in results.items():
        assert len(outs) == 20
        for out in outs:
            assert torch.equal(out, solo[key])
    assert not torch.equal(solo["a"], solo["c"]) and not torch.equal(solo["b"], solo["c"])
    for k, v in G.state_dict().items():
        assert torch.equal(v, before[k]), k


@torch.no_grad()
@pytest.mark.parametrize("arch", ["orig", "resnet"])
def test_other_architectures(arch):
    """NVlabs' synthesis blocks: 'orig' and 'resnet' have a toRGB in the last block only (the
    picture is that layer's output, nothing summed from earlier blocks); 'resnet' adds a 1x1
    skip conv and each block outputs (skip(x) + conv1(...)) * sqrt(1/2)."""
    G = tiny(arch)
    z = G.seed_to_z(0)
    img, acts = G(z, capture=["b16.conv1"])
    assert img.shape == (1, 3, 32, 32) and acts["b16.conv1"].shape == (1, 32, 16, 16)
    keys = G.state_dict()
    assert "synthesis.b16.torgb.weight" not in keys and "synthesis.b32.torgb.weight" in keys
    assert ("synthesis.b16.skip.weight" in keys) == (arch == "resnet")
    ws = G.mapping(z)
    if arch == "orig":  # with the last toRGB's weight zero, the picture is its bias alone
        G.synthesis.b32.torgb.weight.zero_()
        flat = G.synthesis(ws, noise_mode="const")
        bias = G.synthesis.b32.torgb.bias.view(1, 3, 1, 1).expand_as(flat)
        assert torch.allclose(flat, bias, atol=1e-6)
        return
    # resnet with the skip convs zeroed is 'orig' with each block's output scaled by sqrt(1/2)
    orig = tiny("orig")
    orig.load_state_dict({k: v for k, v in keys.items() if ".skip." not in k})
    with_skip = G.synthesis(ws, noise_mode="const")
    for name, p in G.named_parameters():
        if name.endswith("skip.weight"):
            p.zero_()
    without = G.synthesis(ws, noise_mode="const")
    assert not torch.allclose(with_skip, without, atol=1e-3)  # the skip path counts
    halve = {f"b{r}.conv1": lambda t: t * math.sqrt(0.5) for r in G.cfg.block_resolutions[1:]}
    assert torch.allclose(without, orig.synthesis(ws, noise_mode="const", taps=halve),
                          atol=1e-5)


def test_conditional_needs_label():
    G = tiny(c_dim=4)
    z = G.seed_to_z(0)
    with pytest.raises(ValueError, match="conditional"):
        G(z)
    c = torch.zeros(1, 4)
    c[0, 2] = 1
    assert G(z, c=c).shape == (1, 3, 32, 32)
    assert "mapping.embed.weight" in G.state_dict()


def test_upsample_matches_zero_insertion_reference():
    x = torch.randn(2, 3, 5, 5)
    f = make_resample_filter()
    # Reference: insert zeros, pad (2, 1), convolve with the filter times gain 4.
    up = torch.zeros(2, 3, 10, 10)
    up[:, :, ::2, ::2] = x
    up = torch.nn.functional.pad(up, (2, 1, 2, 1))
    k = (f * 4).flip([0, 1])[None, None].repeat(3, 1, 1, 1)
    ref = torch.nn.functional.conv2d(up, k, groups=3)
    assert torch.allclose(upsample2d(x, f), ref, atol=1e-6)


def test_discriminator_shapes_and_gradients():
    torch.manual_seed(0)
    D = Discriminator(TINY)
    img = torch.randn(4, 3, 32, 32, requires_grad=True)
    out = D(img)
    assert out.shape == (4, 1)
    out.sum().backward()
    assert img.grad is not None and torch.isfinite(img.grad).all()
