"""The fast primitives of engine/gan/ops.py against the plain formulation they replace."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine.gan import ops, stylegan2
from engine.gan.stylegan2 import layer_names, make_resample_filter
from tests.conftest import make_tiny_generator
from tests.helpers.golden import CASES, GOLDEN, render_case

CL = torch.channels_last


@pytest.mark.parametrize("case", sorted(CASES))
def test_outputs_match_the_plain_generator(case):
    """Within 1e-4 of what the generator gave before the fast path (tests/data, commit
    8c07525)."""
    want = np.load(GOLDEN)[case]
    got = render_case(case)
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-4, np.abs(got - want).max()


def plain_fir(x, f, gain, pad):
    c = x.shape[1]
    k = (f * gain).flip([0, 1])[None, None].repeat(c, 1, 1, 1)
    return F.conv2d(F.pad(x, pad), k, groups=c)


@pytest.mark.parametrize("layout", [torch.contiguous_format, CL])
def test_resampling_matches_upfirdn_definitions(layout):
    torch.manual_seed(0)
    f = make_resample_filter()
    x = torch.randn(2, 5, 9, 9).contiguous(memory_format=layout)
    bias = torch.randn(5)
    want = plain_fir(x, f, 4.0, (1, 1, 1, 1)) + bias.reshape(1, -1, 1, 1)
    assert torch.allclose(ops.fir_filter(x, f, 4.0, (1, 1, 1, 1), bias), want, atol=1e-5)
    assert torch.allclose(ops.fir_filter(x, f, 1.0, (2, 1, 0, 3)),
                          plain_fir(x, f, 1.0, (2, 1, 0, 3)), atol=1e-5)
    # Upsampling: zero insertion, pad (2, 1), filter with gain 4.
    z = torch.zeros(2, 5, 18, 18)
    z[:, :, ::2, ::2] = x
    assert torch.allclose(ops.upsample2x(x, f), plain_fir(z, f, 4.0, (2, 1, 2, 1)), atol=1e-5)
    # Downsampling: filter with pad 1, keep every second pixel.
    assert torch.allclose(ops.downsample2x(x, f),
                          plain_fir(x, f, 1.0, (1, 1, 1, 1))[:, :, ::2, ::2], atol=1e-5)


def test_depthwise_kernels_are_cached_and_follow_the_filter():
    f = make_resample_filter()
    k1 = ops.depthwise_kernel(f, 7, 4.0, torch.float32, f.device)
    assert ops.depthwise_kernel(f, 7, 4.0, torch.float32, f.device) is k1
    with torch.no_grad():
        f.mul_(2)  # an in-place change bumps the version: a new kernel
    assert torch.allclose(ops.depthwise_kernel(f, 7, 4.0, torch.float32, f.device), k1 * 2)


@pytest.mark.parametrize("up, k", [(False, 1), (False, 3), (True, 3)])
@pytest.mark.parametrize("layout", [torch.contiguous_format, CL])
def test_modulated_conv_paths_agree_with_the_definition(up, layout, k):
    torch.manual_seed(1)
    n, i, o = 3, 6, 5
    x = torch.randn(n, i, 7, 7).contiguous(memory_format=layout)
    weight, styles = torch.randn(o, i, k, k), torch.randn(n, i)
    scale, bias = ops.demod_coefficients(weight, styles), torch.randn(o)
    # Definition: per-sample weight W * s, demodulated, one conv per sample.
    want = []
    for s in range(n):
        w = weight * styles[s].reshape(1, -1, 1, 1) * scale[s].reshape(-1, 1, 1, 1)
        if up:
            want.append(F.conv_transpose2d(x[s:s + 1], w.transpose(0, 1), stride=2))
        else:
            want.append(F.conv2d(x[s:s + 1], w, padding=k // 2))
    want = torch.cat(want) + bias.reshape(1, -1, 1, 1)
    for fused in (True, False, None):
        y, left_scale, left_bias = ops.modulated_conv2d(x, weight, styles, scale, bias, up=up,
                                                        fused=fused)
        y = ops.modulated_epilogue(y, left_scale, left_bias, None, lrelu=False, clamp=None)
        assert torch.allclose(y, want, atol=1e-4), (fused, (y - want).abs().max())


@pytest.mark.parametrize("n, size", [(1, 4), (1, 8), (2, 16), (16, 4)])
def test_small_convs_as_one_matrix_product_equal_onednn(n, size):
    """The im2col / col2im forms, on both layouts and with a bias, and the dispatch that
    picks them (gemm_conv_pays) on the sizes where the measured bounds send each way."""
    torch.manual_seed(7)
    for layout in (torch.contiguous_format, CL):
        x = torch.randn(n, 12, size, size).contiguous(memory_format=layout)
        w, w_up, b = torch.randn(10, 12, 3, 3), torch.randn(12, 10, 3, 3), torch.randn(10)
        want = F.conv2d(x, w, b, padding=1)
        for wl in (w, w.contiguous(memory_format=CL)):
            assert torch.allclose(ops.conv3x3_gemm(x, wl, b), want, atol=1e-5)
            assert torch.allclose(ops.conv3x3(x, wl, b), want, atol=1e-5)
        want = F.conv_transpose2d(x, w_up, stride=2)
        got = ops.conv_transpose3x3_gemm(x, w_up.contiguous(memory_format=CL))
        assert got.shape == want.shape and torch.allclose(got, want, atol=1e-5)
        assert torch.allclose(ops.conv_transpose3x3(x, w_up), want, atol=1e-5)
    pixels = n * size * size
    assert ops.gemm_conv_pays(x, 3, up=False) == (size * size <= ops.GEMM_CONV_MAX_IMAGE
                                                  and pixels <= ops.GEMM_CONV_MAX_PIXELS)
    low, high = ops.GEMM_UPCONV_PIXELS
    assert ops.gemm_conv_pays(x, 3, up=True) == (low <= pixels <= high)
    assert not ops.gemm_conv_pays(x.half(), 3, up=False) and not ops.gemm_conv_pays(x, 1, False)


def test_demodulation_equals_the_explicit_weight_norm():
    torch.manual_seed(2)
    weight, styles = torch.randn(4, 3, 3, 3), torch.randn(2, 3)
    w = weight[None] * styles[:, None, :, None, None]
    want = (w.square().sum(dim=[2, 3, 4]) + ops.DEMOD_EPS).rsqrt()
    assert torch.allclose(ops.demod_coefficients(weight, styles), want, rtol=1e-5)


def test_autograd_and_no_grad_give_the_same_bits_and_gradients_flow():
    G = make_tiny_generator(seed=3)
    z = torch.randn(2, G.z_dim)
    with torch.no_grad():
        ref, cap_ref = G(z, capture=layer_names(G.cfg))
    out, cap = G(z, capture=layer_names(G.cfg))
    assert torch.equal(out, ref)
    for name in cap_ref:
        assert torch.equal(cap[name], cap_ref[name]), name
    out.square().mean().backward()
    grads = {name: p.grad.clone() for name, p in G.named_parameters() if p.grad is not None}
    assert len(grads) == sum(1 for _ in G.parameters())
    G.zero_grad()
    G(z, fused=False).square().mean().backward()
    for name, p in G.named_parameters():
        assert torch.allclose(p.grad, grads[name], rtol=1e-3, atol=1e-6), name


def test_cached_weight_layouts_follow_in_place_updates():
    G = make_tiny_generator(seed=4).requires_grad_(False)
    z = torch.randn(1, G.z_dim)
    before = G(z)
    with torch.no_grad():
        G.synthesis.b32.conv1.weight.mul_(-1)   # what an optimizer step or a load does
        after = G(z)
        G.synthesis.b32.conv1.weight.mul_(-1)
        again = G(z)
    assert not torch.allclose(before, after)
    assert torch.equal(before, again)


@pytest.mark.parametrize("split_elements", [1, 1 << 30])
def test_batches_match_single_samples_and_keep_captures_in_order(monkeypatch, split_elements):
    monkeypatch.setattr(stylegan2, "PER_SAMPLE_MIN_ELEMENTS", split_elements)
    G = make_tiny_generator(seed=5).requires_grad_(False)
    z = torch.randn(4, G.z_dim)
    names = ["b8.conv1", "b16.conv0", "b32.torgb", "b16.img"]
    with torch.no_grad():
        img, cap = G(z, capture=names)
        for i in range(4):
            one, cap1 = G(z[i:i + 1], capture=names)
            assert torch.allclose(img[i:i + 1], one, atol=1e-5)
            for name in names:
                assert torch.allclose(cap[name][i:i + 1], cap1[name], atol=1e-5), name
    assert img.is_contiguous()


def test_caches_filled_in_inference_mode_serve_autograd_later():
    G = make_tiny_generator(seed=6).requires_grad_(False)
    ws = G.mapping(torch.randn(1, G.z_dim)).detach()
    with torch.inference_mode():
        G.synthesis(ws)
    ws.requires_grad_(True)   # the projector: a frozen model, gradients to ws
    G.synthesis(ws).square().mean().backward()
    assert ws.grad is not None and ws.grad.abs().sum() > 0


# fp16 (NVlabs num_fp16_res): images within FP16_MAX_ABS (max) and FP16_MEAN_ABS (mean) of
# fp32 on the [-1, 1] scale; 0.05 is about 6 of 255 levels.
FP16_MAX_ABS, FP16_MEAN_ABS = 0.05, 0.005


def check_fp16_against_fp32(device: str, arch: str) -> None:
    G = make_tiny_generator(seed=7, architecture=arch, conv_clamp=256)
    G = G.requires_grad_(False).to(device)
    z = torch.randn(3, G.z_dim, device=device)
    with torch.no_grad():
        ref = G(z)
        half, cap = G(z, num_fp16_res=2, capture=["b8.conv1", "b16.conv1", "b32.img"])
        G.synthesis.num_fp16_res = 2     # the model-level default does the same
        try:
            assert torch.equal(G(z), half)
            assert torch.equal(G(z, num_fp16_res=0), ref)   # fp32 stays available per call
        finally:
            G.synthesis.num_fp16_res = 0
    assert half.dtype == torch.float32 and cap["b32.img"].dtype == torch.float32
    assert cap["b16.conv1"].dtype == torch.float16 and cap["b8.conv1"].dtype == torch.float32
    diff = (half - ref).abs()
    assert diff.max() <= FP16_MAX_ABS and diff.mean() <= FP16_MEAN_ABS, (diff.max(), diff.mean())


@pytest.mark.parametrize("arch", ["skip", "resnet"])
def test_fp16_blocks_stay_close_to_fp32_on_cpu(arch):
    check_fp16_against_fp32("cpu", arch)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("arch", ["skip", "resnet"])
def test_fp16_blocks_stay_close_to_fp32_on_cuda(arch):
    check_fp16_against_fp32("cuda", arch)


def test_fp16_resolution_follows_nvlabs():
    assert stylegan2.fp16_resolution(256, 4) == 32
    assert stylegan2.fp16_resolution(32, 4) == 8      # never below 8
    assert stylegan2.fp16_resolution(256, 0) > 256
