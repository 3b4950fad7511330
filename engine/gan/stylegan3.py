"""StyleGAN3 (alias-free) generator, -t and -r, with NVlabs names and per-call taps.

The maths follows NVlabs stylegan3 `training/networks_stylegan3.py` in fp32, and parameter
and buffer names equal its `state_dict()` keys (`synthesis.input.freqs`,
`synthesis.L0_36_512.weight`, `...magnitude_ema`, `...up_filter`), so its weights load with
no renaming. The per-call interface is the StyleGAN2 generator's: `taps`, `weight_taps`,
`capture` and `start` arrive with each call and nothing in a forward pass mutates the module.

Layers are addressed by their NVlabs names, `L{index}_{size}_{channels}`; the size includes
the margin of `margin_size` pixels each side that the network carries until its last two
(critically sampled) layers, so a tap sees and bends the whole grid, margin included. The
last layer (`L{num_layers}_{res}_{img_channels}`) is the ToRGB layer.

The user transform of the input Fourier features (NVlabs stores it in the buffer
`synthesis.input.transform`, which gen_images.py overwrites) is a per-call argument here:
`transform=input_transform(translate=(0.1, -0.05), rotate=15)`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from engine.gan.stylegan2 import NOISE_MODES, FullyConnectedLayer, GeneratorCalls, MappingNetwork

KIND = "stylegan3"
LRELU_SLOPE = 0.2
LRELU_GAIN = math.sqrt(2.0)
DEMOD_EPS = 1e-8
CONFIGS = ("stylegan3-t", "stylegan3-r")

Tap = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class StyleGAN3Config:
    """Architecture of an alias-free generator; field names follow NVlabs' init kwargs."""
    z_dim: int = 512                # input latent size
    w_dim: int = 512                # intermediate latent size
    c_dim: int = 0                  # conditioning label size (0 = unconditional)
    resolution: int = 256           # output image resolution
    img_channels: int = 3           # output colour channels
    mapping_layers: int = 2         # FC layers in the mapping network (NVlabs: 2 for SG3)
    mapping_lr_mul: float = 0.01    # learning-rate multiplier of the mapping network
    channel_base: int = 32768       # overall width: channels = channel_base / 2 / cutoff ...
    channel_max: int = 512          # ... capped at this (-r doubles both)
    num_layers: int = 14            # synthesis layers, excluding the input and ToRGB
    num_critical: int = 2           # critically sampled layers at the end
    first_cutoff: float = 2.0       # cutoff frequency of the first layer
    first_stopband: float = 2 ** 2.1    # minimum stopband of the first layer
    last_stopband_rel: float = 2 ** 0.3  # minimum stopband of the last layer / its cutoff
    margin_size: int = 10           # pixels carried outside the image on each side
    output_scale: float = 0.25      # scale of the ToRGB output
    conv_kernel: int = 3            # conv kernel size: 3 for -t, 1 for -r
    filter_size: int = 6            # low-pass taps per unit of the lower sampling rate
    lrelu_upsampling: int = 2       # oversampling of the leaky ReLU
    use_radial_filters: bool = False  # radially symmetric downsampling filters (-r)
    conv_clamp: float | None = 256.0  # clamp layer outputs to +-this (None = no clamp)
    kind: str = KIND                # marks the sidecar config as a StyleGAN3 one

    # The StyleGAN2 MappingNetwork reads these; StyleGAN3 fixes both to w_dim.
    embed_features = None
    layer_features = None

    def __post_init__(self) -> None:
        if self.kind != KIND:
            raise ValueError(f"kind must be {KIND!r}, got {self.kind!r}")
        if self.resolution < 4 or self.resolution > 4096:
            raise ValueError(f"resolution must be between 4 and 4096, got {self.resolution}")
        if not 1 <= self.num_critical < self.num_layers <= 64:
            raise ValueError("need 1 <= num_critical < num_layers <= 64")
        if self.conv_kernel not in (1, 3, 5) or self.filter_size < 1 or self.margin_size < 0:
            raise ValueError("conv_kernel must be 1, 3 or 5; filter_size >= 1; margin >= 0")
        if self.lrelu_upsampling < 1 or self.first_cutoff <= 0:
            raise ValueError("lrelu_upsampling must be >= 1 and first_cutoff > 0")

    @property
    def num_ws(self) -> int:
        return self.num_layers + 2   # the input, each layer, ToRGB

    @property
    def architecture(self) -> str:
        return "stylegan3-r" if self.use_radial_filters else "stylegan3-t"

    def layer_specs(self) -> list[LayerSpec]:
        return layer_specs(self)

    def approx_parameters(self) -> int:
        """Parameter count from the config alone, without building the network."""
        n = (self.z_dim + (self.w_dim if self.c_dim else 0)) * self.w_dim
        n += (self.mapping_layers - 1) * self.w_dim * self.w_dim + self.c_dim * self.w_dim
        specs = self.layer_specs()
        n += self.mapping_layers * self.w_dim + (self.w_dim if self.c_dim else 0)  # biases
        n += specs[0].in_channels ** 2 + 5 * self.w_dim + 4
        for s in specs:
            n += s.out_channels * (s.in_channels * s.kernel ** 2 + 1)
            n += (self.w_dim + 1) * s.in_channels
        return n

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> StyleGAN3Config:
        names = cls.__dataclass_fields__.keys()
        return cls(**{k: v for k, v in d.items() if k in names})

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> StyleGAN3Config:
        """NVlabs train.py's 'stylegan3-t' or 'stylegan3-r' defaults (-r: 1x1 convs, radial
        filters, twice the channels), changed by `overrides`."""
        if name not in CONFIGS:
            raise ValueError(f"preset must be one of {CONFIGS}, got {name!r}")
        base = {"channel_base": 32768, "channel_max": 512}
        if name == "stylegan3-r":
            base = {"channel_base": 65536, "channel_max": 1024, "conv_kernel": 1,
                    "use_radial_filters": True}
        scale = 2 if name == "stylegan3-r" else 1
        if "channel_base" in overrides:
            overrides["channel_base"] *= scale
        if "channel_max" in overrides:
            overrides["channel_max"] *= scale
        return cls(**{**base, **overrides})


@dataclass(frozen=True)
class LayerSpec:
    """Sampling geometry of one synthesis layer, derived from the config (NVlabs' schedule)."""
    name: str                   # 'L{idx}_{size}_{channels}'
    index: int                  # 0 .. num_layers (the last is ToRGB)
    in_channels: int
    out_channels: int
    in_size: int                # input grid size, margin included
    out_size: int               # output grid size, margin included
    in_rate: int                # input sampling rate
    out_rate: int               # output sampling rate
    in_cutoff: float            # cutoff of the input signal
    out_cutoff: float           # cutoff after this layer
    in_half_width: float        # transition half-widths of the two filters
    out_half_width: float
    is_torgb: bool
    is_critical: bool           # critically sampled (no radial filter, tight band)
    kernel: int                 # conv kernel size (1 for ToRGB)
    up: int                     # upsampling factor before the nonlinearity
    down: int                   # downsampling factor after it
    up_taps: int                # 1 = no filter
    down_taps: int
    down_radial: bool
    padding: tuple[int, int, int, int]  # (x0, x1, y0, y1) around the upsampled signal


def layer_specs(cfg: StyleGAN3Config) -> list[LayerSpec]:
    """Cutoffs and stopbands grow geometrically from the first layer to the last critical
    one; sampling rates are the next power of two above twice the stopband; float64 numpy
    as NVlabs, so the layer names and filters come out identical."""
    n, res = cfg.num_layers, cfg.resolution
    last_cutoff = res / 2
    last_stopband = last_cutoff * cfg.last_stopband_rel
    exponents = np.minimum(np.arange(n + 1) / (n - cfg.num_critical), 1)
    cutoffs = cfg.first_cutoff * (last_cutoff / cfg.first_cutoff) ** exponents
    stopbands = cfg.first_stopband * (last_stopband / cfg.first_stopband) ** exponents
    rates = np.exp2(np.ceil(np.log2(np.minimum(stopbands * 2, res))))
    half_widths = np.maximum(stopbands, rates / 2) - cutoffs
    sizes = rates + cfg.margin_size * 2
    sizes[-2:] = res
    channels = np.rint(np.minimum((cfg.channel_base / 2) / cutoffs, cfg.channel_max))
    channels[-1] = cfg.img_channels
    specs = []
    for i in range(n + 1):
        p = max(i - 1, 0)
        is_torgb = i == n
        in_rate, out_rate = int(rates[p]), int(rates[i])
        tmp_rate = max(in_rate, out_rate) * (1 if is_torgb else cfg.lrelu_upsampling)
        up, down = tmp_rate // in_rate, tmp_rate // out_rate
        up_taps = cfg.filter_size * up if up > 1 and not is_torgb else 1
        down_taps = cfg.filter_size * down if down > 1 and not is_torgb else 1
        kernel = 1 if is_torgb else cfg.conv_kernel
        in_size, out_size = int(sizes[p]), int(sizes[i])
        # Pad so that the output grid is centred on the input grid (NVlabs appendix C.3).
        total = (out_size - 1) * down + 1 - (in_size + kernel - 1) * up + up_taps + down_taps - 2
        lo = (total + up) // 2
        is_critical = i >= n - cfg.num_critical
        specs.append(LayerSpec(
            name=f"L{i}_{out_size}_{int(channels[i])}", index=i,
            in_channels=int(channels[p]), out_channels=int(channels[i]),
            in_size=in_size, out_size=out_size, in_rate=in_rate, out_rate=out_rate,
            in_cutoff=float(cutoffs[p]), out_cutoff=float(cutoffs[i]),
            in_half_width=float(half_widths[p]), out_half_width=float(half_widths[i]),
            is_torgb=is_torgb, is_critical=is_critical, kernel=kernel, up=up, down=down,
            up_taps=up_taps, down_taps=down_taps,
            down_radial=cfg.use_radial_filters and not is_critical,
            padding=(lo, total - lo, lo, total - lo)))
    return specs


def layer_names(cfg: StyleGAN3Config) -> list[str]:
    """Every tappable synthesis layer, in forward order (the last one is ToRGB)."""
    return [s.name for s in layer_specs(cfg)]


def layer_shapes(cfg: StyleGAN3Config) -> dict[str, tuple[int, int, int]]:
    """Per-sample activation shape [C, H, W] of every layer, margin included."""
    return {s.name: (s.out_channels, s.out_size, s.out_size) for s in layer_specs(cfg)}


# ----------------------------------------------------------------------------------------
# Filters and the filtered leaky ReLU.


def design_lowpass(taps: int, cutoff: float, width: float, rate: float, radial: bool = False
                   ) -> torch.Tensor | None:
    """Kaiser-windowed low-pass filter: 1-D separable (sinc), or 2-D radially symmetric
    (jinc) when `radial`. None for a single tap (the identity). Only used for fresh networks:
    a checkpoint brings its filters as buffers."""
    if taps == 1:
        return None
    # scipy.signal costs a second or two to import; only fresh networks need it.
    import scipy.signal
    import scipy.special

    if not radial:
        return torch.as_tensor(scipy.signal.firwin(taps, cutoff, width=width, fs=rate),
                               dtype=torch.float32)
    t = (np.arange(taps) - (taps - 1) / 2) / rate
    r = np.hypot(*np.meshgrid(t, t))
    with np.errstate(invalid="ignore", divide="ignore"):  # taps is even: r is never 0
        f = scipy.special.j1(2 * np.pi * cutoff * r) / (np.pi * r)
    beta = scipy.signal.kaiser_beta(scipy.signal.kaiser_atten(taps, width / (rate / 2)))
    window = np.kaiser(taps, beta)
    f = f * np.outer(window, window)
    return torch.as_tensor(f / f.sum(), dtype=torch.float32)


# The reference implementation (_filtered_lrelu_reference; the engine's before the depthwise
# path below). Each 1-D pass (upsample-filter or filter-downsample along one axis) is a
# banded linear map.
# It runs as one matrix product over tiles: the input is cut into overlapping windows (a
# strided view), and one small [window, TILE] matrix, the same for every tile because the
# operation is shift-invariant, maps each window to TILE outputs.
TILE_UP = 16      # outputs per tile of an upsampling pass
TILE_DOWN = 8     # outputs per tile of a downsampling pass


def _tiled_matmul(x: torch.Tensor, band: torch.Tensor, first: int, step: int, tiles: int,
                  out_len: int, dim: int) -> torch.Tensor:
    """Windows of x along `dim` (-1 or -2) starting at first + q*step (zero outside x), each
    mapped by band [width, tile] to `tile` outputs."""
    if dim == -2:
        return _tiled_matmul(x.transpose(-1, -2), band, first, step, tiles, out_len,
                             -1).transpose(-1, -2)
    width, tile = band.shape
    right = first + (tiles - 1) * step + width - x.shape[-1]
    x = F.pad(x, (-first, right))                          # negative pads crop
    # One copy of the overlapping windows makes this a single large matrix product (a
    # batched product over the strided view would run one small product per window).
    windows = x.unfold(-1, width, step).reshape(-1, width)  # [rows * tiles, width]
    y = (windows @ band).reshape(*x.shape[:-1], tiles * tile)
    return y[..., :out_len]


def _gather_taps(g: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """g[idx] where 0 <= idx < len(g), else 0: a filter laid out as a band matrix."""
    inside = (idx >= 0) & (idx < g.numel())
    return torch.where(inside, g[idx.clamp(0, g.numel() - 1)], torch.zeros_like(g[:1]))


def fir_up_1d(x: torch.Tensor, f: torch.Tensor, up: int, pad: tuple[int, int], dim: int = -1,
              gain: float = 1.0) -> torch.Tensor:
    """Along `dim` (-1 columns, -2 rows): insert up-1 zeros after each sample, zero-pad
    (pad0, pad1), convolve with f * up * gain, keep the valid part (NVlabs upfirdn2d along
    one axis)."""
    k, n = f.numel(), x.shape[dim]
    out_len = n * up + pad[0] + pad[1] - k + 1
    # Output t is the full convolution at t + shift: sum_i x[i] g[t + shift - i*up].
    shift = k - 1 - pad[0]
    tile = TILE_UP * up
    first = -((k - 1 - shift) // up)                 # ceil((shift - k + 1) / up)
    last = (tile - 1 + shift) // up
    width = last - first + 1
    j = torch.arange(width, device=x.device).unsqueeze(1)
    r = torch.arange(tile, device=x.device).unsqueeze(0)
    idx = r + shift - (first + j) * up
    g = (f * (up * gain)).to(x.dtype)
    band = _gather_taps(g, idx)
    tiles = -(-out_len // tile)
    return _tiled_matmul(x, band, first, tile // up, tiles, out_len, dim)


def fir_down_1d(x: torch.Tensor, f: torch.Tensor, down: int, dim: int = -1, gain: float = 1.0
                ) -> torch.Tensor:
    """Along `dim`: valid convolution with f * gain, keeping every `down`-th sample."""
    k, n = f.numel(), x.shape[dim]
    out_len = (n - k) // down + 1
    tile = TILE_DOWN
    width = (tile - 1) * down + k
    j = torch.arange(width, device=x.device).unsqueeze(1)
    r = torch.arange(tile, device=x.device).unsqueeze(0)
    idx = k - 1 - (j - r * down)          # out[t] = sum_j x[t*down + j] f[k-1-j]
    g = (f * gain).to(x.dtype)
    band = _gather_taps(g, idx)
    tiles = -(-out_len // tile)
    return _tiled_matmul(x, band, 0, tile * down, tiles, out_len, dim)


# Channels run in groups whose upsampled signal fits in about this many floats (1 MiB): the
# passes over it then stay in a core's cache instead of streaming through memory, which on
# CPU halves the time of the large layers.
CHUNK_FLOATS = 1 << 18
MIN_CHUNKED_PLANE = 1 << 16   # planes smaller than this (256 x 256) are not grouped


def _filtered_lrelu_reference(x: torch.Tensor, fu: torch.Tensor | None,
                              fd: torch.Tensor | None, b: torch.Tensor | None, up: int = 1,
                              down: int = 1,
                              padding: tuple[int, int, int, int] = (0, 0, 0, 0),
                              gain: float = LRELU_GAIN, slope: float = LRELU_SLOPE,
                              clamp: float | None = None) -> torch.Tensor:
    """filtered_lrelu as the engine computed it before the depthwise path (kept as the
    reference the tests hold the fast path to; the same arguments and result).

    The filters are shared by every channel, so channels fold into one batch of planes,
    processed a cache-sized group at a time. Separable (1-D) filters run one axis at a time
    as tiled matrix products (fir_up_1d, fir_down_1d); 2-D (radial) ones as single-channel
    convolutions, which on CPU ran at a small fraction of the machine's speed.
    """
    n, c, h, w = x.shape
    if b is not None:
        x = x + b.reshape(1, -1, 1, 1)
    if fu is None and up > 1:
        raise ValueError("upsampling needs a filter")
    planes = x.reshape(n * c, h, w)
    ku = fu.shape[-1] if fu is not None else 1
    tmp = (h * up + padding[2] + padding[3] - ku + 1) * (w * up + padding[0] + padding[1] - ku + 1)
    group = max(1, CHUNK_FLOATS // max(tmp, 1))
    # Small planes run whole: many tiny calls would cost more in dispatch and thread wake-ups
    # than the cache saves.
    if x.device.type != "cpu" or group >= n * c or tmp < MIN_CHUNKED_PLANE:
        out = _filtered_lrelu_planes(planes, fu, fd, up, down, padding, gain, slope, clamp)
    else:
        parts = [_filtered_lrelu_planes(planes[i:i + group], fu, fd, up, down, padding, gain,
                                        slope, clamp) for i in range(0, n * c, group)]
        out = torch.cat(parts)
    return out.reshape(n, c, out.shape[-2], out.shape[-1])


def _filtered_lrelu_planes(x: torch.Tensor, fu: torch.Tensor | None, fd: torch.Tensor | None,
                           up: int, down: int, padding: tuple[int, int, int, int], gain: float,
                           slope: float, clamp: float | None) -> torch.Tensor:
    """filtered_lrelu after the bias, on planes [P, H, W]."""
    p, h, w = x.shape
    px0, px1, py0, py1 = padding
    # With a filter, x below is this function's own tensor: safe to change in place, unless
    # autograd needs the values in place ops would overwrite.
    fresh = fu is not None and not (torch.is_grad_enabled() and x.requires_grad)
    if fu is None:
        x = F.pad(x, (px0, px1, py0, py1))
    elif fu.ndim == 1:
        x = fir_up_1d(x, fu, up, (px0, px1), dim=-1)
        x = fir_up_1d(x, fu, up, (py0, py1), dim=-2)
    else:
        # A 2-D filter: stuff zeros on both axes at once, then one convolution.
        k = fu.shape[-1]
        full = F.conv_transpose2d(x.unsqueeze(1), (fu * up * up)[None, None], stride=up)
        out_w = w * up + px0 + px1 - k + 1
        out_h = h * up + py0 + py1 - k + 1
        sx, sy = k - 1 - px0, k - 1 - py0
        x = F.pad(full, (-sx, out_w - (full.shape[3] - sx), -sy, out_h - (full.shape[2] - sy)))
        x = x.squeeze(1)
    # lrelu(x) * gain clamped to +-clamp is gain * (lrelu(x) clamped to +-clamp/gain): the gain
    # rides on the (linear) downsampling filter, saving a pass over the largest tensor.
    if slope != 1:
        x = F.leaky_relu(x, slope, inplace=fresh)
    if clamp is not None:
        x = x.clamp_(-clamp / gain, clamp / gain) if fresh else x.clamp(-clamp / gain,
                                                                         clamp / gain)
    if fd is None:
        x = x[:, ::down, ::down] if down > 1 else x
        return x * gain if gain != 1 else x
    if fd.ndim == 1:
        x = fir_down_1d(x, fd, down, dim=-1, gain=gain)
        return fir_down_1d(x, fd, down, dim=-2)
    y = F.conv2d(x.unsqueeze(1), (fd * gain).flip([0, 1])[None, None], stride=down)
    return y.squeeze(1)


# The filtered leaky ReLU as depthwise convolutions on channels_last tensors. There oneDNN
# vectorises each filter tap across channels and reads every input once per tap, which
# measured 5-8x faster than the tiled matrix products above on the 2-core CPU (1024 channels
# at 84 px: the radial 12x12 downsampling 531 -> 104 ms, the separable one 397 -> 51 ms) and
# ~50-170x faster than single-channel convolutions at 148-276 px. Strided convolutions
# compute only the kept outputs of a downsampling; the transposed ones of an upsampling
# skip the stuffed zeros. The filters are rebuilt per call: [C, 1, k, k] is a few hundred
# kB, and a cache would have to follow the buffers' devices and in-place loads.


def _depthwise(f: torch.Tensor, channels: int, gain: float, like: torch.Tensor,
               shape: tuple[int, int], flip: bool) -> torch.Tensor:
    """The filter f * gain as a depthwise kernel [C, 1, kh, kw] (shape (kh, kw)) in x's
    dtype, channels_last; flipped for F.conv2d (a correlation) to act as a convolution."""
    k = f.to(like.dtype) * gain
    k = k.flip(list(range(k.ndim))) if flip else k
    k = k.reshape(1, 1, *shape).expand(channels, 1, *shape)
    return k.contiguous(memory_format=torch.channels_last)


def _crop(x: torch.Tensor, start: int, length: int, dim: int) -> torch.Tensor:
    """x[start:start + length] along dim (-1 or -2), with zeros where that leaves x."""
    right = length - (x.shape[dim] - start)
    if start >= 0 and right <= 0:
        # Inside x: a view. On channels_last a crop of rows (N == 1) stays contiguous, so the
        # largest tensor of a layer is not copied (F.pad copies even when it only crops).
        return x.narrow(dim, start, length)
    pads = (-start, right, 0, 0) if dim == -1 else (0, 0, -start, right)
    if pads == (0, 0, 0, 0):
        return x
    return F.pad(x, pads)


def _upsample_depthwise(x: torch.Tensor, f: torch.Tensor, up: int,
                        padding: tuple[int, int, int, int]) -> torch.Tensor:
    """Zero stuffing, padding (x0, x1, y0, y1) and the filter f * up per axis, as transposed
    depthwise convolutions (one per axis for a 1-D filter, one 2-D otherwise), cropped to
    the output NVlabs keeps: its sample t is the full convolution's t + k - 1 - pad0."""
    c, k = x.shape[1], f.shape[-1]
    px0, px1, py0, py1 = padding
    out_w = x.shape[3] * up + px0 + px1 - k + 1
    out_h = x.shape[2] * up + py0 + py1 - k + 1
    if f.ndim == 1:
        x = F.conv_transpose2d(x, _depthwise(f, c, up, x, (1, k), False), stride=(1, up),
                               groups=c)
        x = _crop(x, k - 1 - px0, out_w, -1)
        x = F.conv_transpose2d(x, _depthwise(f, c, up, x, (k, 1), False), stride=(up, 1),
                               groups=c)
        return _crop(x, k - 1 - py0, out_h, -2)
    x = F.conv_transpose2d(x, _depthwise(f, c, up * up, x, (k, k), False), stride=up,
                           groups=c)
    return _crop(_crop(x, k - 1 - px0, out_w, -1), k - 1 - py0, out_h, -2)


def _downsample_depthwise(x: torch.Tensor, f: torch.Tensor, down: int, gain: float
                          ) -> torch.Tensor:
    """Valid convolution with f * gain keeping every `down`-th sample, as strided depthwise
    convolutions (per axis for a 1-D filter, the radial 2-D filter in one)."""
    c, k = x.shape[1], f.shape[-1]
    if f.ndim == 1:
        x = F.conv2d(x, _depthwise(f, c, gain, x, (1, k), True), stride=(1, down), groups=c)
        return F.conv2d(x, _depthwise(f, c, 1.0, x, (k, 1), True), stride=(down, 1),
                        groups=c)
    return F.conv2d(x, _depthwise(f, c, gain, x, (k, k), True), stride=down, groups=c)


def filtered_lrelu(x: torch.Tensor, fu: torch.Tensor | None, fd: torch.Tensor | None,
                   b: torch.Tensor | None, up: int = 1, down: int = 1,
                   padding: tuple[int, int, int, int] = (0, 0, 0, 0), gain: float = LRELU_GAIN,
                   slope: float = LRELU_SLOPE, clamp: float | None = None) -> torch.Tensor:
    """Bias, upsample (zero stuffing, pad, filter fu), leaky ReLU * gain, clamp, then filter
    fd and downsample: NVlabs `filtered_lrelu` on the CPU (or any device).

    fu and fd are 1-D (separable) or 2-D filters, or None (the identity); `padding` is
    (x0, x1, y0, y1). Runs as depthwise convolutions on channels_last (see above); the
    result is channels_last. Matches _filtered_lrelu_reference to float rounding.
    """
    if fu is None and up > 1:
        raise ValueError("upsampling needs a filter")
    x = x.contiguous(memory_format=torch.channels_last)
    if b is not None:
        x = x + b.to(x.dtype).reshape(1, -1, 1, 1)
    # After a filter x is this function's own tensor: safe to change in place, unless
    # autograd needs the values in place ops would overwrite.
    fresh = fu is not None and not (torch.is_grad_enabled() and x.requires_grad)
    limit = None if clamp is None else clamp / gain
    if limit is not None and fu is not None and abs(slope) <= 1 and \
            _upsampled_bound(x, fu, up) <= limit:
        limit = None   # it cannot bind: a pass over the largest tensor saved, same values
    x = F.pad(x, padding) if fu is None else _upsample_depthwise(x, fu, up, padding)
    # lrelu(x) * gain clamped to +-clamp is gain * (lrelu(x) clamped to +-clamp/gain): the gain
    # rides on the (linear) downsampling filter, saving a pass over the largest tensor.
    if slope != 1:
        x = F.leaky_relu(x, slope, inplace=fresh)
    if limit is not None:
        x = x.clamp_(-limit, limit) if fresh else x.clamp(-limit, limit)
    if fd is None:
        x = x[:, :, ::down, ::down] if down > 1 else x
        return x * gain if gain != 1 else x
    return _downsample_depthwise(x, fd, down, gain)


def _upsampled_bound(x: torch.Tensor, f: torch.Tensor, up: int) -> float:
    """An upper bound of |values| after _upsample_depthwise(x, f, up): max |x| times, per
    axis, the largest sum of |taps| that meets one output (one phase of f * up; a 2-D filter:
    the sum of all its |taps| * up^2). The leaky ReLU (|slope| <= 1) never raises it, so a
    clamp at or above it changes nothing. inf off the CPU, where reading the maximum back
    would wait for the device."""
    if x.device.type != "cpu":
        return math.inf
    g = f.detach().abs().double()
    if g.ndim == 2 or g.numel() % up:
        per_output = float(g.sum()) * up * up
    else:
        per_output = float(g.reshape(-1, up).sum(0).max() * up) ** 2
    return float(x.detach().abs().amax()) * per_output


# ----------------------------------------------------------------------------------------
# Input: Fourier features.


def input_transform(translate: tuple[float, float] = (0.0, 0.0), rotate: float = 0.0
                    ) -> torch.Tensor:
    """The 3x3 matrix for `transform=`: the inverse of NVlabs gen_images.py's
    make_transform(translate, angle in degrees), which is what it writes into the buffer."""
    a = math.radians(rotate)
    m = np.array([[math.cos(a), math.sin(a), translate[0]],
                  [-math.sin(a), math.cos(a), translate[1]],
                  [0.0, 0.0, 1.0]])
    return torch.from_numpy(np.linalg.inv(m)).to(torch.float32)


class SynthesisInput(nn.Module):
    """Fourier features on a grid, rotated and translated per w (its affine) and by the user
    transform, then mixed by a learned channels x channels matrix."""

    def __init__(self, w_dim: int,          # intermediate latent size
                 channels: int,             # number of features
                 size: int,                 # output grid size, margin included
                 sampling_rate: float,      # samples per unit of the image
                 bandwidth: float):         # highest frequency (the first cutoff)
        super().__init__()
        self.w_dim, self.channels, self.size = w_dim, channels, size
        self.sampling_rate, self.bandwidth = sampling_rate, bandwidth
        # Frequencies uniform in a disc of radius `bandwidth` (NVlabs' draw); random phases.
        freqs = torch.randn(channels, 2)
        radii = freqs.square().sum(dim=1, keepdim=True).sqrt()
        freqs = freqs / (radii * radii.square().exp().pow(0.25)) * bandwidth
        self.weight = nn.Parameter(torch.randn(channels, channels))
        # Weight 0 and bias (1, 0, 0, 0): the identity rotation and no shift at start.
        self.affine = FullyConnectedLayer(w_dim, 4, bias_init=0.0)
        with torch.no_grad():
            self.affine.weight.zero_()
            self.affine.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0]))
        self.register_buffer("transform", torch.eye(3))
        self.register_buffer("freqs", freqs)
        self.register_buffer("phases", torch.rand(channels) - 0.5)

    def forward(self, w: torch.Tensor, transform: torch.Tensor | None = None) -> torch.Tensor:
        n = w.shape[0]
        user = self.transform if transform is None else transform.to(w.device, torch.float32)
        user = user.expand(n, 3, 3) if user.ndim == 2 else user
        assert user.shape == (n, 3, 3), f"transform must be [3, 3] or [N, 3, 3], not {user.shape}"
        # (cos, sin, tx, ty) from w; the rotation part normalised to unit length.
        t = self.affine(w)
        t = t / t[:, :2].norm(dim=1, keepdim=True)
        cos, sin, tx, ty = t.unbind(1)
        zero, one = torch.zeros_like(cos), torch.ones_like(cos)
        rot = torch.stack([cos, -sin, zero, sin, cos, zero, zero, zero, one], 1).reshape(n, 3, 3)
        shift = torch.stack([one, zero, -tx, zero, one, -ty, zero, zero, one], 1).reshape(n, 3, 3)
        m = rot @ shift @ user          # inverse transforms of the image, composed
        phases = self.phases.unsqueeze(0) + (self.freqs.unsqueeze(0) @ m[:, :2, 2:]).squeeze(2)
        freqs = self.freqs.unsqueeze(0) @ m[:, :2, :2]                     # [N, C, 2]
        # A user zoom or rotation can push frequencies past the band: fade them out.
        amplitudes = (1 - (freqs.norm(dim=2) - self.bandwidth)
                      / (self.sampling_rate / 2 - self.bandwidth)).clamp(0, 1)
        # Pixel centres in image units (the image spans [-0.5, 0.5] at size == rate).
        half = 0.5 * self.size / self.sampling_rate
        coords = (torch.arange(self.size, device=w.device, dtype=torch.float32) * 2 + 1
                  ) / self.size - 1
        coords = coords * half
        gy, gx = torch.meshgrid(coords, coords, indexing="ij")
        grid = torch.stack([gx, gy], -1).reshape(1, -1, 2)                # [1, HW, 2]
        x = grid @ freqs.transpose(1, 2) + phases.unsqueeze(1)              # [N, HW, C]
        x = torch.sin(x * (2 * math.pi)) * amplitudes.unsqueeze(1)
        x = x @ (self.weight / math.sqrt(self.channels)).t()
        return x.transpose(1, 2).reshape(n, self.channels, self.size, self.size)


# ----------------------------------------------------------------------------------------
# Synthesis layers.


def modulated_conv(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor,
                   dcoefs: torch.Tensor, bias: torch.Tensor, padding: int) -> torch.Tensor:
    """conv(x * styles, weight) * dcoefs + bias per sample, with the scales folded into a
    per-sample weight [O, I, k, k] and the bias into the conv: one pass over the activations
    instead of four (x [N, I, H, W], styles [N, I], dcoefs [N, O], bias [O]). One conv per
    sample, so a sample renders the same alone or in a batch; channels_last, where oneDNN
    takes the activations without reordering them."""
    x = x.contiguous(memory_format=torch.channels_last)
    b = bias.to(x.dtype)
    ys = []
    for i in range(x.shape[0]):
        wi = weight * styles[i].reshape(1, -1, 1, 1) * dcoefs[i].reshape(-1, 1, 1, 1)
        wi = wi.to(x.dtype).contiguous(memory_format=torch.channels_last)
        ys.append(F.conv2d(x[i:i + 1], wi, b, padding=padding))
    return ys[0] if len(ys) == 1 else torch.cat(ys)


class SynthesisLayer(nn.Module):
    """Modulated conv (demodulated except ToRGB), then bias + filtered leaky ReLU, which
    upsamples, applies the nonlinearity at a higher rate and filters back down."""

    def __init__(self, spec: LayerSpec,       # sampling geometry (layer_specs)
                 w_dim: int,                  # intermediate latent size
                 conv_clamp: float | None,    # clamp of the output (None = none)
                 lrelu_upsampling: int = 2):  # oversampling of the nonlinearity
        super().__init__()
        self.spec, self.conv_clamp = spec, conv_clamp
        self.is_torgb = spec.is_torgb
        self.affine = FullyConnectedLayer(w_dim, spec.in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn(spec.out_channels, spec.in_channels,
                                               spec.kernel, spec.kernel))
        self.bias = nn.Parameter(torch.zeros(spec.out_channels))
        # Mean square of the input seen in training; inputs are scaled by its rsqrt.
        self.register_buffer("magnitude_ema", torch.ones([]))
        tmp_rate = spec.in_rate * spec.up
        self.register_buffer("up_filter", design_lowpass(
            spec.up_taps, spec.in_cutoff, spec.in_half_width * 2, tmp_rate))
        self.register_buffer("down_filter", design_lowpass(
            spec.down_taps, spec.out_cutoff, spec.out_half_width * 2, tmp_rate,
            radial=spec.down_radial))

    def forward(self, x: torch.Tensor, w: torch.Tensor, weight_tap: Tap | None = None
                ) -> torch.Tensor:
        s = self.spec
        assert x.shape[1:] == (s.in_channels, s.in_size, s.in_size), \
            f"{s.name} expects [N, {s.in_channels}, {s.in_size}, {s.in_size}], got {list(x.shape)}"
        weight = self.weight if weight_tap is None else weight_tap(self.weight)
        styles = self.affine(w)
        input_gain = self.magnitude_ema.rsqrt()
        if self.is_torgb:
            styles = styles / math.sqrt(s.in_channels * s.kernel ** 2)
            x = F.conv2d(x * (styles * input_gain).unsqueeze(-1).unsqueeze(-1), weight,
                         padding=s.kernel - 1)
        else:
            # NVlabs normalises weight rows and styles before demodulating; both scales cancel
            # in the demodulation and only keep the numbers in range. Styles are normalised
            # per sample here (NVlabs: over the batch), so a sample never depends on others.
            weight = weight * weight.square().mean(dim=[1, 2, 3], keepdim=True).rsqrt()
            styles = styles * styles.square().mean(dim=1, keepdim=True).rsqrt()
            wsq = weight.square().sum(dim=[2, 3])                        # [O, I]
            dcoefs = (styles.square() @ wsq.t() + DEMOD_EPS).rsqrt()      # [N, O]
            x = modulated_conv(x, weight, styles * input_gain, dcoefs, self.bias, s.kernel - 1)
            return filtered_lrelu(x, self.up_filter, self.down_filter, None, s.up, s.down,
                                  s.padding, LRELU_GAIN, LRELU_SLOPE, self.conv_clamp)
        return filtered_lrelu(x, self.up_filter, self.down_filter, self.bias, s.up, s.down,
                              s.padding, 1.0, 1.0, self.conv_clamp)


class SynthesisNetwork(nn.Module):
    """ws [N, num_ws, w_dim] -> image [N, img_channels, res, res] in about [-1, 1]."""

    def __init__(self, cfg: StyleGAN3Config):
        super().__init__()
        self.cfg = cfg
        self.resolution, self.num_ws = cfg.resolution, cfg.num_ws
        specs = layer_specs(cfg)
        first = specs[0]
        self.input = SynthesisInput(cfg.w_dim, first.in_channels, first.in_size,
                                    first.in_rate, first.in_cutoff)
        self.layer_names = [s.name for s in specs]   # NVlabs' attribute, kept for readers
        for s in specs:
            setattr(self, s.name, SynthesisLayer(s, cfg.w_dim, cfg.conv_clamp,
                                                 cfg.lrelu_upsampling))
        self.layers = list(self.layer_names)
        self.num_fp16_res = 0   # the StyleGAN2 deployment attribute; always fp32 here

    def w_index_of(self, layer: str) -> int:
        """Index into ws of the w a layer reads (ws[0] drives the input features)."""
        return self.layers.index(layer) + 1

    def forward(self, ws: torch.Tensor | None, noise_mode: str = "const",
                taps: Mapping[str, Tap] | None = None,
                weight_taps: Mapping[str, Tap] | None = None,
                capture: Iterable[str] | None = None,
                start: tuple | None = None, fused: bool = False,
                noise_generator: torch.Generator | None = None,
                noise: Mapping[str, torch.Tensor] | None = None,
                transform: torch.Tensor | None = None, num_fp16_res: int | None = None
                ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Render ws; returns the image, or (image, captured) when `capture` is given.

        taps, weight_taps, capture and start as in the StyleGAN2 synthesis network (start's
        optional third item, a skip image, does not apply and is ignored). StyleGAN3 has no
        noise inputs, so noise_mode, noise_generator and `fused` change nothing; `noise` must
        be empty. num_fp16_res is accepted for the StyleGAN2 interface; StyleGAN3 renders in
        fp32 only. transform: a [3, 3] (or [N, 3, 3]) inverse user transform of the input
        features, see input_transform; None uses the model's buffer (the identity unless a
        checkpoint stored another).
        """
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
        if noise:
            raise KeyError(f"StyleGAN3 layers take no noise input, got {sorted(noise)}")
        taps, weight_taps = taps or {}, weight_taps or {}
        capture = set(capture) if capture is not None else None
        unknown = (set(taps) | set(weight_taps) | (capture or set())) - set(self.layers)
        if unknown:
            raise KeyError(f"unknown layer(s) {sorted(unknown)}; layers are {self.layers}")
        captured: dict[str, torch.Tensor] = {}
        first = 0
        if start is not None:
            if start[0] not in self.layers or start[0] == self.layers[-1]:
                raise KeyError(f"start layer must be a layer before ToRGB, got {start[0]!r}")
            first = self.layers.index(start[0]) + 1
            x = start[1]
        else:
            assert ws is not None and ws.ndim == 3 and ws.shape[1] == self.num_ws, \
                f"ws must be [N, {self.num_ws}, w_dim]"
            x = self.input(ws[:, 0].to(torch.float32), transform)
        for i in range(first, len(self.layers)):
            name = self.layers[i]
            layer: SynthesisLayer = getattr(self, name)
            y = layer(x, ws[:, i + 1].to(torch.float32), weight_taps.get(name))
            if name in taps:
                shape = y.shape
                y = taps[name](y)
                if y.shape != shape:
                    raise ValueError(f"a tap on {name} changed its shape {list(shape)} "
                                     f"to {list(y.shape)}")
            if capture is not None and name in capture:
                captured[name] = y
            x = y
        img = x * self.cfg.output_scale if self.cfg.output_scale != 1 else x
        return (img, captured) if capture is not None else img


# ----------------------------------------------------------------------------------------
# Generator.


class Generator(GeneratorCalls, nn.Module):
    """Mapping + alias-free synthesis; state_dict keys equal NVlabs stylegan3 G_ema's."""

    def __init__(self, cfg: StyleGAN3Config):
        super().__init__()
        self.cfg = cfg
        self.synthesis = SynthesisNetwork(cfg)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(cfg, self.num_ws)  # type: ignore[arg-type]

    @property
    def device(self) -> torch.device:
        return self.synthesis.input.weight.device

    def layer_shapes(self) -> dict[str, tuple[int, int, int]]:
        return layer_shapes(self.cfg)
