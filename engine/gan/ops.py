"""Fast primitives the generators share: cached FIR resampling, modulated convs that pick
where the styles go, and a one-pass bias + noise + leaky ReLU epilogue.

Measured on a 2-core CPU (benchmarks/bench_generator.py), the plain formulation of StyleGAN2
spent more time around its convolutions than in them: grouped 4x4 depthwise convs on NCHW
tensors, weights re-created per call and five elementwise passes per layer. These functions
keep NVlabs' maths (fp32 images within 1e-4 of the plain form, 3e-5 measured at 256 px)
with less memory traffic:

- activations are channels_last, where oneDNN runs the convs and the 4x4 depthwise filters
  without reordering (on NCHW a depthwise 4x4 measured 3-10x slower);
- per-channel depthwise kernels are cached per (filter, channels, gain, device, dtype), and
  each layer keeps its weight in the conv's layout and its squared kernel sums
  (DerivedTensors) until the weight changes;
- a modulated conv scales the weight by styles and demodulation when the weight is smaller
  than the activations it would otherwise scale (high resolutions), else the activations;
- the leaky ReLU gain is folded into weights, bias and noise (lrelu(a x) = a lrelu(x) for
  a > 0), the bias rides in the conv, and the rest runs in place when autograd is off.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F

LRELU_SLOPE = 0.2
DEMOD_EPS = 1e-8
_KERNEL_CACHE_SIZE = 256


# ----------------------------------------------------------------------------------------
# Cached depthwise kernels.


@contextmanager
def _plain_tensors() -> Iterator[None]:
    """Cached tensors must be ordinary ones: a tensor made under torch.inference_mode could
    not later be saved for backward (a projector fitting ws through a frozen model)."""
    with torch.inference_mode(False), torch.no_grad():
        yield


class _KernelCache:
    """LRU of depthwise kernels derived from a filter. The key holds the filter tensor itself
    (so its data_ptr cannot be reused while the entry lives) and its version counter (so an
    in-place load into the buffer invalidates the entry)."""

    def __init__(self, size: int):
        self.size = size
        self.lock = threading.Lock()
        self.entries: OrderedDict[tuple, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()

    def get(self, f: torch.Tensor, channels: int, gain: float, dtype: torch.dtype,
            device: torch.device) -> torch.Tensor:
        key = (f.data_ptr(), f._version, tuple(f.shape), channels, float(gain), dtype,
               str(device))
        with self.lock:
            hit = self.entries.get(key)
            if hit is not None:
                self.entries.move_to_end(key)
                return hit[1]
        # A true convolution (NVlabs upfirdn2d flips the filter); F.conv2d correlates.
        with _plain_tensors():
            k = (f.detach().to(device=device, dtype=torch.float32).flip([0, 1]) * gain).to(dtype)
            k = k[None, None].repeat(channels, 1, 1, 1).contiguous(
                memory_format=torch.channels_last)
        with self.lock:
            self.entries[key] = (f, k)
            while len(self.entries) > self.size:
                self.entries.popitem(last=False)
        return k


_kernels = _KernelCache(_KERNEL_CACHE_SIZE)


def _after_fork_in_child() -> None:
    _kernels.lock = threading.Lock()  # another thread may have held it at fork time


os.register_at_fork(after_in_child=_after_fork_in_child)


def depthwise_kernel(f: torch.Tensor, channels: int, gain: float, dtype: torch.dtype,
                     device: torch.device) -> torch.Tensor:
    """The cached depthwise kernel [C, 1, kh, kw] of the 2D filter f * gain, flipped."""
    return _kernels.get(f, channels, gain, dtype, device)


# ----------------------------------------------------------------------------------------
# Resampling. One depthwise pass each: the filters are memory-bound, so a separable pair of
# passes (8 taps instead of 16) measured no faster than one 4x4 pass on channels_last.


def fir_filter(x: torch.Tensor, f: torch.Tensor, gain: float = 1.0,
               pad: tuple[int, int, int, int] = (0, 0, 0, 0),
               bias: torch.Tensor | None = None) -> torch.Tensor:
    """Depthwise FIR (true convolution) of x [N,C,H,W] by the 2D filter f after zero padding
    (x0, x1, y0, y1); `bias` [C] is added in the same pass."""
    c = x.shape[1]
    k = depthwise_kernel(f, c, gain, x.dtype, x.device)
    b = None if bias is None else bias.to(x.dtype)
    x0, x1, y0, y1 = pad
    if x0 == x1 and y0 == y1:
        return F.conv2d(x, k, b, padding=(y0, x0), groups=c)
    return F.conv2d(F.pad(x, pad), k, b, groups=c)


def upsample2x(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """2x upsampling as NVlabs upfirdn2d(up=2, pad=(2,1), gain=4): zero insertion, then the
    filter. A transposed conv with stride 2 and padding 1 does exactly that."""
    c = x.shape[1]
    k = depthwise_kernel(f, c, 4.0, x.dtype, x.device)
    return F.conv_transpose2d(x, k, stride=2, padding=1, groups=c)


def downsample2x(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """2x downsampling: the filter with pad 1 on each side, then every second pixel."""
    c = x.shape[1]
    k = depthwise_kernel(f, c, 1.0, x.dtype, x.device)
    return F.conv2d(x, k, stride=2, padding=1, groups=c)


# ----------------------------------------------------------------------------------------
# 3x3 convolutions over few pixels. oneDNN's direct kernels are tuned for large images: with a
# 512-channel weight over an 8x8 map (batch 1) it ran at ~60 GFLOP/s and its transposed conv
# at ~50, where one matrix product over all pixels and taps runs at ~130 (measured on the
# 2-core AVX-512 CPU of this project, torch 2.13, one thread: 8x8 conv 4.6 -> 2.3 ms,
# transposed 5.7 -> 2.4 ms; batch 16 at 4x4: 12.2 -> 9.7 and 17.8 -> 11.2 ms). Past the
# bounds below oneDNN was as fast or faster.

GEMM_CONV_MAX_PIXELS = 256        # batch x pixels of a plain 3x3 conv done as one product ...
GEMM_CONV_MAX_IMAGE = 64          # ... when each image has at most this many pixels
GEMM_UPCONV_PIXELS = (64, 1024)   # batch x input pixels of a transposed conv done so


def gemm_conv_pays(x: torch.Tensor, kernel: int, up: bool) -> bool:
    """Whether a 3x3 (transposed) conv of x runs faster as one matrix product on this
    device (CPU, fp32) than through oneDNN, by the measured bounds above."""
    if kernel != 3 or x.device.type != "cpu" or x.dtype != torch.float32:
        return False
    n, _, h, w = x.shape
    if up:
        return GEMM_UPCONV_PIXELS[0] <= n * h * w <= GEMM_UPCONV_PIXELS[1]
    return h * w <= GEMM_CONV_MAX_IMAGE and n * h * w <= GEMM_CONV_MAX_PIXELS


def conv3x3_gemm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
                 ) -> torch.Tensor:
    """F.conv2d(x, weight, bias, padding=1) for weight [O, I, 3, 3], as one matrix product
    of the 9 shifted copies of x (im2col) with the weight; the result is channels_last."""
    n, c, h, w = x.shape
    out_ch = weight.shape[0]
    xp = F.pad(x, (1, 1, 1, 1)).permute(0, 2, 3, 1)                # [N, H+2, W+2, I]
    cols = torch.stack([xp[:, ky:ky + h, kx:kx + w] for ky in range(3) for kx in range(3)],
                       dim=3).reshape(n * h * w, 9 * c)           # rows: pixels; (tap, I)
    wm = weight.permute(0, 2, 3, 1).reshape(out_ch, 9 * c)          # a view when channels_last
    y = cols @ wm.t() if bias is None else torch.addmm(bias.to(x.dtype), cols, wm.t())
    return y.reshape(n, h, w, out_ch).permute(0, 3, 1, 2)


def conv_transpose3x3_gemm(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """F.conv_transpose2d(x, weight, stride=2) for weight [I, O, 3, 3]: every input pixel
    times every tap in one matrix product, then each tap's products added at its place
    in the (2H+1) x (2W+1) output (col2im); the result is channels_last."""
    n, in_ch, h, w = x.shape
    out_ch = weight.shape[1]
    xm = x.permute(0, 2, 3, 1).reshape(n * h * w, in_ch)
    wm = weight.permute(0, 2, 3, 1).reshape(in_ch, 9 * out_ch)      # a view when channels_last
    taps = (xm @ wm).reshape(n, h, w, 3, 3, out_ch)
    out = taps.new_zeros(n, 2 * h + 1, 2 * w + 1, out_ch)
    for ky in range(3):
        for kx in range(3):
            out[:, ky:ky + 2 * h:2, kx:kx + 2 * w:2] += taps[:, :, :, ky, kx]
    return out.permute(0, 3, 1, 2)


def conv3x3(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
            padding: int = 1) -> torch.Tensor:
    """F.conv2d with a [O, I, k, k] weight, as one matrix product where that pays."""
    if padding == 1 and gemm_conv_pays(x, weight.shape[-1], up=False):
        return conv3x3_gemm(x, weight, bias)
    return F.conv2d(x, weight, bias, padding=padding)


def conv_transpose3x3(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """F.conv_transpose2d(x, weight, stride=2) with a [I, O, k, k] weight, as one matrix
    product where that pays."""
    if gemm_conv_pays(x, weight.shape[-1], up=True):
        return conv_transpose3x3_gemm(x, weight)
    return F.conv_transpose2d(x, weight, stride=2)


# ----------------------------------------------------------------------------------------
# Modulated convolution.


class DerivedTensors:
    """Tensors derived from one module's parameters (a weight in the conv's preferred layout,
    its squared kernel sums), kept until the parameter changes.

    One entry per tag: the key is the parameter's storage address, version counter, device
    and dtype, which every in-place update (optimizer step, load_state_dict) and every move
    change, so a stale entry is never served. Nothing is cached while autograd records the
    parameter (training), because the derived tensor must then be part of the graph.

    The cache belongs to one module on one device: a deep copy or a pickle of the module
    starts empty (a copy moved to a GPU must not carry, or deep-copy, CPU tensors made for
    the original), and the owning module clears it when it moves (`clear`, from `_apply`),
    so no tensor lingers on the device the module left.
    """

    def __init__(self) -> None:
        self._entries: dict[str, tuple[tuple, torch.Tensor]] = {}

    def get(self, tag: str, source: torch.Tensor,
            derive: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        if torch.is_grad_enabled() and source.requires_grad:
            return derive(source)
        key = (source.data_ptr(), source._version, source.dtype, source.device,
               tuple(source.shape))
        hit = self._entries.get(tag)
        if hit is not None and hit[0] == key:
            return hit[1]
        with _plain_tensors():
            value = derive(source)
        self._entries[tag] = (key, value)
        return value

    def clear(self) -> None:
        self._entries = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __deepcopy__(self, memo: dict) -> DerivedTensors:
        return DerivedTensors()

    def __getstate__(self) -> dict:
        return {"_entries": {}}


def kernel_square_sums(weight: torch.Tensor) -> torch.Tensor:
    """sum_k W[o,i,k]^2 as [O, I]; a matrix-vector product, which CPUs run several times
    faster than a reduction over the 9 innermost elements."""
    out_ch, in_ch = weight.shape[:2]
    taps = weight.reshape(out_ch * in_ch, -1)
    return (taps.square() @ taps.new_ones(taps.shape[1])).reshape(out_ch, in_ch)


def demod_coefficients(weight: torch.Tensor, styles: torch.Tensor,
                       square_sums: torch.Tensor | None = None) -> torch.Tensor:
    """rsqrt(sum_{i,k} (W[o,i,k] s[n,i])^2 + eps) [N, O], without the [N,O,I,k,k] tensor.
    `square_sums` [O, I] may be given precomputed (kernel_square_sums)."""
    wsq = kernel_square_sums(weight) if square_sums is None else square_sums
    return (styles.square() @ wsq.t() + DEMOD_EPS).rsqrt()


def conv_layout(weight: torch.Tensor, up: bool,
                memory_format: torch.memory_format = torch.channels_last) -> torch.Tensor:
    """The weight [O,I,k,k] as the conv reads it: itself, or [I,O,k,k] for the transposed
    conv of an upsampling layer, in `memory_format` (oneDNN reorders any other layout on
    every call)."""
    w = weight.transpose(0, 1) if up else weight
    return w.contiguous(memory_format=memory_format)


def weight_is_smaller(weight: torch.Tensor, in_pixels: int, out_pixels: int) -> bool:
    """Whether scaling the weight per sample moves less memory than scaling the activations
    (input by styles, output by demodulation): true at high resolutions."""
    out_ch, in_ch, kh, kw = weight.shape
    return out_ch * in_ch * kh * kw <= in_ch * in_pixels + out_ch * out_pixels


def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor,
                     out_scale: torch.Tensor | None = None, bias: torch.Tensor | None = None,
                     up: bool = False, fused: bool | None = None,
                     laid_out: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """conv(x * styles, weight) * out_scale + bias, choosing where the scales go.

    x [N,I,H,W], weight [O,I,k,k], styles [N,I], out_scale [N,O] (demodulation times any
    gain) or None, bias [O] or None. `up` makes it a stride-2 transposed conv whose output
    is (2H+1) x (2W+1), for the caller to filter. fused=True folds the scales into
    per-sample weights, False scales the activations, None picks whichever moves less memory.
    `laid_out` is conv_layout(weight, up, x's layout), when the caller keeps it cached.

    Returns (y, scale, bias): what is still to be applied to y (None when done), so the
    caller can do it in one pass (modulated_epilogue) or inside a following filter.
    """
    n, in_ch, h, w = x.shape
    out_ch, _, kh, kw = weight.shape
    pad = kh // 2
    out_pixels = (2 * h + 1) * (2 * w + 1) if up else h * w
    if fused is None:
        # A CPU batch would need a per-sample loop and a concatenation for the weight path.
        fused = weight_is_smaller(weight, h * w, out_pixels) and (
            n == 1 or x.device.type != "cpu")
    if laid_out is None:
        fmt = (torch.channels_last if x.is_contiguous(memory_format=torch.channels_last)
               and not x.is_contiguous() else torch.contiguous_format)
        laid_out = conv_layout(weight, up, fmt)
    laid_out = laid_out.to(x.dtype)
    if not fused:
        x = x * styles.to(x.dtype).reshape(n, -1, 1, 1)
        if up:
            y = conv_transpose3x3(x, laid_out)
        else:
            y = conv3x3(x, laid_out, padding=pad)
        return y, out_scale, bias
    # One factor per (sample, input, output) channel, then a single pass over the weights.
    # In fp32 whatever x's dtype: demodulation keeps the product near 1, not its factors.
    factor = styles.float().unsqueeze(2)                            # [N, I, 1]
    if out_scale is not None:
        factor = factor * out_scale.float().unsqueeze(1)            # [N, I, O]
    else:
        factor = factor.expand(n, in_ch, out_ch)
    factor = factor.to(x.dtype)
    if kh == 1 and kw == 1 and not up:
        # A 1x1 conv is a batched matmul over pixels; on channels_last the input is already
        # [N, H*W, I] in memory and the [N, H*W, O] result is a channels_last [N, O, H, W].
        xm = x.permute(0, 2, 3, 1).reshape(n, h * w, in_ch)
        wm = factor * laid_out.reshape(out_ch, in_ch).t()           # [N, I, O]
        y = torch.bmm(xm, wm) if bias is None else torch.baddbmm(bias.to(x.dtype), xm, wm)
        return y.reshape(n, h, w, out_ch).permute(0, 3, 1, 2), None, None
    # Per-sample weights [N, O, I, k, k] ([N, I, O, k, k] for up) keep laid_out's layout.
    wn = laid_out.unsqueeze(0) * (factor if up else factor.transpose(1, 2))[..., None, None]
    b = None if bias is None or up else bias.to(x.dtype)
    if n == 1 or x.device.type == "cpu":
        # One conv per sample: oneDNN takes channels_last slices as they are, where a
        # grouped conv over [1, N*I, H, W] would first copy the batch into channel order.
        ys = []
        for i in range(n):
            xi = x[i:i + 1]
            if up:
                ys.append(conv_transpose3x3(xi, wn[i]))
            else:
                ys.append(conv3x3(xi, wn[i], b, padding=pad))
        y = ys[0] if n == 1 else torch.cat(ys)
    else:
        # GPUs: one grouped conv for the batch, as NVlabs' fused_modconv.
        xg = x.reshape(1, n * in_ch, h, w)
        if up:
            y = F.conv_transpose2d(xg, wn.reshape(n * in_ch, out_ch, kh, kw), stride=2,
                                   groups=n)
        else:
            y = F.conv2d(xg, wn.reshape(n * out_ch, in_ch, kh, kw),
                         None if b is None else b.repeat(n), padding=pad, groups=n)
        y = y.reshape(n, out_ch, *y.shape[2:])
    return y, None, (bias if b is None else None)


def autograd_off(*tensors: torch.Tensor) -> bool:
    """True when none of these tensors is part of an autograd graph, so in-place is safe."""
    return not torch.is_grad_enabled() or not any(t.requires_grad for t in tensors)


def modulated_epilogue(y: torch.Tensor, pending: torch.Tensor | None,
                       bias: torch.Tensor | None, noise: torch.Tensor | None,
                       lrelu: bool, clamp: float | None) -> torch.Tensor:
    """y * pending + bias + noise, then leaky ReLU (slope 0.2) and clamp, in as few passes as
    the arguments allow; in place on y (a fresh conv output) when autograd is off.

    pending [N,C] or None (already applied); bias [C] or None (already in y); noise
    broadcastable to y ([N or 1, 1, H, W]) or None. Gains must already be folded in.
    """
    inplace = autograd_off(y, *(t for t in (pending, bias, noise) if t is not None))
    n, c = y.shape[:2]
    b = None if bias is None else bias.to(y.dtype).reshape(1, c, 1, 1)
    # Bias and noise are added one at a time: adding them first would make a [N or 1, C, H, W]
    # tensor (and a layout copy) to save one pass over y. Both branches run the same kernels
    # in the same order, so they agree to the bit.
    if pending is not None:
        scale = pending.to(y.dtype).reshape(n, c, 1, 1)
        if b is not None:
            y = torch.addcmul(b, y, scale, out=y) if inplace else torch.addcmul(b, y, scale)
        else:
            y = y.mul_(scale) if inplace else y * scale
    elif b is not None:
        y = y.add_(b) if inplace else y + b
    if noise is not None:
        noise = noise.to(y.dtype)
        y = y.add_(noise) if inplace else y + noise
    if lrelu:
        y = F.leaky_relu_(y, LRELU_SLOPE) if inplace else F.leaky_relu(y, LRELU_SLOPE)
    if clamp is not None:
        y = y.clamp_(-clamp, clamp) if inplace else y.clamp(-clamp, clamp)
    return y
