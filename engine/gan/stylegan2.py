"""StyleGAN2 generator and discriminator with NVlabs parameter names and per-call taps.

The maths follows NVlabs stylegan2-ada-pytorch (fp32): the parameter and buffer names equal
its `state_dict()` keys, so its weights load with no renaming. Nothing in a forward pass
mutates the module: bends arrive per call as `taps` / `weight_taps`, activations leave per
call through `capture`, and `start` begins synthesis part-way down. Two threads can render
different bends through one shared model at once.

A layer is addressed as `b{res}.conv0` (the upsampling conv), `b{res}.conv1`, `b{res}.torgb`;
`b4` has only `conv1`. `b{res}.img` names the running RGB image after block `res` (skip
architecture), which `capture` can return and `start` can take back.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from engine.gan.ops import (
    DerivedTensors,
    conv_layout,
    demod_coefficients,
    downsample2x,
    fir_filter,
    kernel_square_sums,
    modulated_conv2d,
    modulated_epilogue,
    upsample2x,
    weight_is_smaller,
)

LRELU_SLOPE = 0.2
LRELU_GAIN = math.sqrt(2.0)
DEMOD_EPS = 1e-8
RESAMPLE_KERNEL = (1.0, 3.0, 3.0, 1.0)
NOISE_MODES = ("const", "random", "none")
ARCHITECTURES = ("skip", "orig", "resnet")
# CPU batches render a block one sample at a time once a sample's activation has this many
# elements (1 MiB in fp32): smaller ones fit in cache anyway and would only add Python calls.
PER_SAMPLE_MIN_ELEMENTS = 1 << 18

Tap = Callable[[torch.Tensor], torch.Tensor]
RAW = ".raw"  # capture f"{layer}.raw": the layer's output before its taps


@dataclass
class GeneratorConfig:
    z_dim: int = 512                # input latent size (0 for none)
    w_dim: int = 512                # intermediate latent size
    c_dim: int = 0                  # conditioning label size (0 = unconditional)
    resolution: int = 256           # output image resolution, a power of two >= 4
    img_channels: int = 3           # output colour channels
    mapping_layers: int = 8         # number of FC layers in the mapping network
    mapping_lr_mul: float = 0.01    # learning-rate multiplier of the mapping network
    channel_base: int = 32768       # overall width: channels at res r = channel_base // r ...
    channel_max: int = 512          # ... capped at this
    conv_clamp: float | None = None  # clamp conv outputs to +-this (None = no clamp)
    architecture: str = "skip"      # 'skip', 'orig' or 'resnet' (the RGB output path)
    embed_features: int | None = None  # label embedding size (None = w_dim)
    layer_features: int | None = None  # mapping hidden size (None = w_dim)

    def __post_init__(self) -> None:
        log2 = math.log2(self.resolution) if self.resolution > 0 else -1
        if self.resolution < 4 or log2 != int(log2):
            raise ValueError(f"resolution must be a power of two >= 4, got {self.resolution}")
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {ARCHITECTURES}, "
                             f"got {self.architecture!r}")

    @property
    def block_resolutions(self) -> list[int]:
        return [2 ** i for i in range(2, int(math.log2(self.resolution)) + 1)]

    @property
    def num_ws(self) -> int:
        return 2 * int(math.log2(self.resolution)) - 2

    def channels(self, res: int) -> int:
        return min(self.channel_base // res, self.channel_max)

    def approx_parameters(self) -> int:
        """The generator's parameter count from the config alone, rounded up (by at most
        about 10 %): lets a reader refuse an absurd config before allocating it."""
        embed = (self.embed_features or self.w_dim) if self.c_dim else 0
        hidden = self.layer_features or self.w_dim
        widths = [self.z_dim + embed] + [hidden] * (self.mapping_layers - 1) + [self.w_dim]
        n = sum(a * b for a, b in zip(widths[:-1], widths[1:])) + self.c_dim * embed
        for res in self.block_resolutions:
            c_in, c_out = (self.channels(res // 2) if res > 4 else 0), self.channels(res)
            n += c_out * res * res if res == 4 else (9 * c_in + self.w_dim) * c_in
            n += (9 * c_out + self.w_dim) * c_out + (self.img_channels + self.w_dim) * c_out
        return n

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> GeneratorConfig:
        names = cls.__dataclass_fields__.keys()
        return cls(**{k: v for k, v in d.items() if k in names})


def layer_names(cfg: GeneratorConfig) -> list[str]:
    """Every tappable synthesis layer, in forward order."""
    names = []
    for res in cfg.block_resolutions:
        names += [f"b{res}.conv1"] if res == 4 else [f"b{res}.conv0", f"b{res}.conv1"]
        if cfg.architecture != "orig" or res == cfg.resolution:
            names.append(f"b{res}.torgb")
    return names


def layer_shapes(cfg: GeneratorConfig) -> dict[str, tuple[int, int, int]]:
    """Per-sample activation shape [C, H, W] of every tappable layer."""
    shapes = {}
    for name in layer_names(cfg):
        res = int(name.split(".")[0][1:])
        ch = cfg.img_channels if name.endswith("torgb") else cfg.channels(res)
        shapes[name] = (ch, res, res)
    return shapes


# ----------------------------------------------------------------------------------------
# Primitive operations.


def make_resample_filter() -> torch.Tensor:
    """The [1,3,3,1] outer product normalised to sum 1: a 4x4 low-pass filter."""
    f = torch.tensor(RESAMPLE_KERNEL)
    f = torch.outer(f, f)
    return f / f.sum()


def fir_same(x: torch.Tensor, f: torch.Tensor, gain: float, pad: tuple[int, int, int, int]
             ) -> torch.Tensor:
    """Depthwise FIR filter (true convolution) after zero padding (x0, x1, y0, y1)."""
    return fir_filter(x, f, gain, pad)


def upsample2d(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """2x upsampling: zero insertion then the 4x4 filter with gain 4 (NVlabs upfirdn2d)."""
    return upsample2x(x, f)


def downsample2d(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """2x downsampling: the 4x4 filter with pad 1 then keep every second pixel."""
    return downsample2x(x, f)


def bias_act(x: torch.Tensor, b: torch.Tensor | None, lrelu: bool, gain: float,
             clamp: float | None) -> torch.Tensor:
    """Add bias, leaky ReLU (slope 0.2) if asked, scale by gain, clamp to +-clamp."""
    if b is not None:
        x = x + b.reshape(1, -1, 1, 1)
    if lrelu:
        x = F.leaky_relu(x, LRELU_SLOPE)
    if gain != 1:
        x = x * gain
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    return x


class FullyConnectedLayer(nn.Module):
    """Equalised-lr linear layer: weights stored / lr_mul, scaled at run time."""

    def __init__(self, in_features: int,   # input size
                 out_features: int,        # output size
                 lrelu: bool = False,      # leaky ReLU with gain sqrt(2) after the bias
                 lr_mul: float = 1.0,      # learning-rate multiplier
                 bias_init: float = 0.0):  # initial bias value
        super().__init__()
        self.lrelu = lrelu
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_mul)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init)))
        self.weight_gain = lr_mul / math.sqrt(in_features)
        self.bias_gain = lr_mul

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The gains ride in addmm's scalars, so no scaled copy of the weight is made per call.
        x = torch.addmm(self.bias.unsqueeze(0), x, self.weight.t(), beta=self.bias_gain,
                        alpha=self.weight_gain)
        if not self.lrelu:
            return x
        return F.leaky_relu(x, LRELU_SLOPE) * LRELU_GAIN


def normalize_2nd_moment(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    return x * (x.square().mean(dim=1, keepdim=True) + eps).rsqrt()


# ----------------------------------------------------------------------------------------
# Mapping network.


class MappingNetwork(nn.Module):
    """z (and label c) -> w, broadcast to num_ws copies; truncation towards w_avg."""

    def __init__(self, cfg: GeneratorConfig, num_ws: int):
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim, self.num_ws = cfg.z_dim, cfg.c_dim, cfg.w_dim, num_ws
        self.num_layers = cfg.mapping_layers
        embed = cfg.embed_features if cfg.embed_features is not None else cfg.w_dim
        hidden = cfg.layer_features if cfg.layer_features is not None else cfg.w_dim
        if cfg.c_dim == 0:
            embed = 0
        if cfg.z_dim == 0:
            raise ValueError("z_dim must be positive")
        features = [cfg.z_dim + embed] + [hidden] * (cfg.mapping_layers - 1) + [cfg.w_dim]
        if cfg.c_dim > 0:
            self.embed = FullyConnectedLayer(cfg.c_dim, embed)
        for i in range(cfg.mapping_layers):
            layer = FullyConnectedLayer(features[i], features[i + 1], lrelu=True,
                                        lr_mul=cfg.mapping_lr_mul)
            setattr(self, f"fc{i}", layer)
        self.register_buffer("w_avg", torch.zeros([cfg.w_dim]))

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None, psi: float = 1.0,
                cutoff: int | None = None) -> torch.Tensor:
        assert z.ndim == 2 and z.shape[1] == self.z_dim, f"z must be [N, {self.z_dim}]"
        x = normalize_2nd_moment(z.to(torch.float32))
        if self.c_dim > 0:
            if c is None:
                raise ValueError(f"this model is conditional: give a class label "
                                 f"(c_dim={self.c_dim})")
            assert c.shape == (z.shape[0], self.c_dim), f"c must be [N, {self.c_dim}]"
            y = normalize_2nd_moment(self.embed(c.to(torch.float32)))
            x = torch.cat([x, y], dim=1)
        for i in range(self.num_layers):
            x = getattr(self, f"fc{i}")(x)
        ws = x.unsqueeze(1).repeat(1, self.num_ws, 1)
        return truncate(ws, self.w_avg, psi, cutoff)


def truncate(ws: torch.Tensor, w_avg: torch.Tensor, psi: float, cutoff: int | None
             ) -> torch.Tensor:
    """Lerp the first `cutoff` ws (all when None) towards w_avg by psi."""
    if psi == 1:
        return ws
    ws = ws.clone()
    n = ws.shape[1] if cutoff is None else cutoff
    ws[:, :n] = w_avg.lerp(ws[:, :n], psi)
    return ws


# ----------------------------------------------------------------------------------------
# Synthesis network.


def preferred_memory_format(device: torch.device, dtype: torch.dtype = torch.float32
                            ) -> torch.memory_format:
    """channels_last on CPUs, where oneDNN runs convs and depthwise filters on NHWC without
    reordering (NCHW costs a layout copy around every conv), and for fp16 on GPUs (tensor
    cores want NHWC); NCHW for fp32 on GPUs, as NVlabs."""
    if torch.device(device).type == "cpu" or dtype == torch.float16:
        return torch.channels_last
    return torch.contiguous_format


def fp16_resolution(resolution: int, num_fp16_res: int) -> int:
    """The lowest block resolution that runs in fp16 when the top `num_fp16_res` do (NVlabs:
    never below 8); above `resolution` when none does."""
    if num_fp16_res <= 0:
        return resolution * 2
    return max(2 ** (int(math.log2(resolution)) + 1 - num_fp16_res), 8)


class SynthesisLayer(nn.Module):
    """Modulated 3x3 conv + noise + bias + lrelu (gain sqrt 2) + optional clamp."""

    def __init__(self, in_channels: int,   # input feature maps
                 out_channels: int,        # output feature maps
                 w_dim: int,               # latent size
                 resolution: int,          # output resolution
                 up: bool = False,         # 2x upsampling (conv0 of a block)
                 conv_clamp: float | None = None,  # clamp of the output
                 use_noise: bool = True):  # per-pixel noise input
        super().__init__()
        self.resolution, self.up = resolution, up
        self.conv_clamp, self.use_noise = conv_clamp, use_noise
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 3, 3))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        if up:
            self.register_buffer("resample_filter", make_resample_filter())
        if use_noise:
            self.register_buffer("noise_const", torch.randn(resolution, resolution))
            self.noise_strength = nn.Parameter(torch.zeros([]))
        self.derived = DerivedTensors()

    def _apply(self, fn: Callable, recurse: bool = True) -> nn.Module:
        self.derived.clear()  # .to(), .half(), ...: tensors made for the old place go
        return super()._apply(fn, recurse)

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str = "const",
                weight_tap: Tap | None = None, fused: bool | None = None, gain: float = 1.0,
                noise_generator: torch.Generator | None = None,
                noise_map: torch.Tensor | None = None) -> torch.Tensor:
        styles = self.affine(w)
        weight = self.weight if weight_tap is None else weight_tap(self.weight)
        # lrelu(a x) = a lrelu(x) for a > 0: the gain goes into the demodulation, bias and
        # noise, and the output needs no extra pass.
        act_gain = LRELU_GAIN * gain
        untapped = weight_tap is None
        wsq = self.derived.get("square_sums", weight, kernel_square_sums) if untapped else None
        scale = demod_coefficients(weight, styles, wsq) * act_gain
        bias = self.bias * act_gain
        noise = self._noise(x.shape[0], x.device, noise_mode, noise_generator, noise_map)
        if noise is not None:
            noise = noise * (self.noise_strength * act_gain)
        if x.dtype == torch.float16:
            fused = True  # per-sample weights are demodulated before the conv: no overflow
        laid_out = self.derived.get(f"layout {x.dtype}", weight, lambda w: conv_layout(
            w, self.up).to(x.dtype)) if untapped else None
        y, scale, bias = modulated_conv2d(x, weight, styles, scale, bias, up=self.up,
                                          fused=fused, laid_out=laid_out)
        if self.up:
            if scale is None:  # the bias rides in the filter's second pass
                y, bias = fir_filter(y, self.resample_filter, 4.0, (1, 1, 1, 1), bias), None
            else:
                y = fir_filter(y, self.resample_filter, 4.0, (1, 1, 1, 1))
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return modulated_epilogue(y, scale, bias, noise, lrelu=True, clamp=clamp)

    def _noise(self, n: int, device: torch.device, noise_mode: str,
               generator: torch.Generator | None, noise_map: torch.Tensor | None
               ) -> torch.Tensor | None:
        """This call's noise input, unscaled: [N or 1, 1, res, res], or None."""
        if not self.use_noise:
            return None
        if noise_map is not None:  # this call's own map, e.g. a fitted one
            return noise_map
        if noise_mode == "random":
            # Drawn where the generator lives (the CPU for recipes: engine.base.devices), so a
            # seed gives the same noise on every device.
            where = generator.device if generator is not None else device
            return torch.randn(n, 1, self.resolution, self.resolution, generator=generator,
                               device=where).to(device)
        if noise_mode == "const":
            return self.noise_const.reshape(1, 1, self.resolution, self.resolution)
        return None


class ToRGBLayer(nn.Module):
    """Modulated 1x1 conv to RGB, no demodulation, styles scaled by 1/sqrt(C)."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int,
                 conv_clamp: float | None = None):
        super().__init__()
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.weight_gain = 1 / math.sqrt(in_channels)
        self.derived = DerivedTensors()

    def _apply(self, fn: Callable, recurse: bool = True) -> nn.Module:
        self.derived.clear()
        return super()._apply(fn, recurse)

    def forward(self, x: torch.Tensor, w: torch.Tensor, weight_tap: Tap | None = None,
                fused: bool | None = None) -> torch.Tensor:
        styles = self.affine(w) * self.weight_gain
        weight = self.weight if weight_tap is None else weight_tap(self.weight)
        if x.dtype == torch.float16:
            fused = True
        laid_out = self.derived.get(f"layout {x.dtype}", weight, lambda w: conv_layout(
            w, False).to(x.dtype)) if weight_tap is None else None
        y, scale, bias = modulated_conv2d(x, weight, styles, None, self.bias, fused=fused,
                                          laid_out=laid_out)
        return modulated_epilogue(y, scale, bias, None, lrelu=False, clamp=self.conv_clamp)


class Conv2dLayer(nn.Module):
    """Equalised-lr conv with optional bias, lrelu and 2x down/upsampling (D and resnet skips)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int,
                 bias: bool = True, lrelu: bool = True, up: bool = False, down: bool = False,
                 conv_clamp: float | None = None):
        super().__init__()
        self.lrelu, self.up, self.down, self.conv_clamp = lrelu, up, down, conv_clamp
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size,
                                               kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        if up or down:
            self.register_buffer("resample_filter", make_resample_filter())
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size ** 2)

    def forward(self, x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
        w = (self.weight * self.weight_gain).to(x.dtype)
        k = w.shape[-1]
        if self.up:                      # only 1x1 (resnet skip): conv, then upsample
            x = upsample2d(F.conv2d(x, w), self.resample_filter)
        elif self.down and k == 1:       # downsample, then 1x1 conv
            x = F.conv2d(downsample2d(x, self.resample_filter), w)
        elif self.down:                  # blur with pad 2, then stride-2 conv
            x = fir_same(x, self.resample_filter, 1.0, (2, 2, 2, 2))
            x = F.conv2d(x, w, stride=2)
        else:
            x = F.conv2d(x, w, padding=k // 2)
        act_gain = (LRELU_GAIN if self.lrelu else 1.0) * gain
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return bias_act(x, bias, self.lrelu, act_gain, clamp)


class SynthesisBlock(nn.Module):
    """One resolution: (const | conv0 up) + conv1, and the RGB output of its architecture."""

    def __init__(self, cfg: GeneratorConfig, in_channels: int, out_channels: int, res: int):
        super().__init__()
        self.res, self.in_channels, self.architecture = res, in_channels, cfg.architecture
        is_last = res == cfg.resolution
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn(out_channels, res, res))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, cfg.w_dim, res, up=True,
                                        conv_clamp=cfg.conv_clamp)
        self.conv1 = SynthesisLayer(out_channels, out_channels, cfg.w_dim, res,
                                    conv_clamp=cfg.conv_clamp)
        self.has_torgb = is_last or cfg.architecture == "skip"
        if self.has_torgb:
            self.torgb = ToRGBLayer(out_channels, cfg.img_channels, cfg.w_dim,
                                    conv_clamp=cfg.conv_clamp)
        if in_channels != 0 and cfg.architecture == "resnet":
            self.skip = Conv2dLayer(in_channels, out_channels, 1, bias=False, lrelu=False,
                                    up=True)
        if in_channels != 0 and cfg.architecture == "skip":
            self.register_buffer("resample_filter", make_resample_filter())
        self.num_conv = 1 if in_channels == 0 else 2
        self.num_torgb = 1 if self.has_torgb else 0

    def layer_names(self) -> list[str]:
        names = ["conv1"] if self.in_channels == 0 else ["conv0", "conv1"]
        return names + (["torgb"] if self.has_torgb else [])


@dataclass
class SynthesisCall:
    """The per-call options of one synthesis forward pass (never stored on the model)."""
    noise_mode: str = "const"
    taps: Mapping[str, Tap] = field(default_factory=dict)
    weight_taps: Mapping[str, Tap] = field(default_factory=dict)
    capture: set[str] = field(default_factory=set)
    fused: bool | None = None
    noise_generator: torch.Generator | None = None
    noise: Mapping[str, torch.Tensor] = field(default_factory=dict)
    device: torch.device = torch.device("cpu")
    fp16_from: int = 1 << 30      # blocks at or above this resolution run in fp16

    def dtype_at(self, res: int) -> torch.dtype:
        return torch.float16 if res >= self.fp16_from else torch.float32


class SynthesisNetwork(nn.Module):
    """ws [N, num_ws, w_dim] -> image [N, 3, res, res] in about [-1, 1]."""

    def __init__(self, cfg: GeneratorConfig):
        super().__init__()
        self.cfg = cfg
        self.resolution, self.num_ws = cfg.resolution, 0
        self.block_resolutions = cfg.block_resolutions
        self.w_index: dict[int, int] = {}  # block res -> index of its first w
        for res in self.block_resolutions:
            in_ch = cfg.channels(res // 2) if res > 4 else 0
            block = SynthesisBlock(cfg, in_ch, cfg.channels(res), res)
            setattr(self, f"b{res}", block)
            self.w_index[res] = self.num_ws
            self.num_ws += block.num_conv
            if res == cfg.resolution:
                self.num_ws += block.num_torgb
        self.layers = layer_names(cfg)
        # Deployment setting, not a weight: NVlabs' num_fp16_res, used when a call passes
        # none. fp32 (0) by default; GPU deployments may set it (see use_fp16).
        self.num_fp16_res = 0

    def w_index_of(self, layer: str) -> int:
        """Index into ws of the w that a layer reads."""
        block, part = layer.split(".")
        res = int(block[1:])
        first = self.w_index[res]
        conv_count = 1 if res == 4 else 2
        return first + {"conv0": 0, "conv1": conv_count - 1, "torgb": conv_count}[part]

    def forward(self, ws: torch.Tensor | None, noise_mode: str = "const",
                taps: Mapping[str, Tap] | None = None,
                weight_taps: Mapping[str, Tap] | None = None,
                capture: Iterable[str] | None = None,
                start: tuple | None = None, fused: bool | None = None,
                noise_generator: torch.Generator | None = None,
                noise: Mapping[str, torch.Tensor] | None = None,
                num_fp16_res: int | None = None, stop: str | None = None,
                block_seconds: dict[int, float] | None = None
                ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Render ws; returns the image, or (image, captured) when `capture` is given.

        taps:        {layer: fn(activation) -> activation} replaces a layer's output.
        weight_taps: {layer: fn(weight) -> weight} edits a conv weight before modulation.
        capture:     layers (and `b{res}.img`) whose outputs to return, after taps;
                     `{layer}.raw` returns a layer's output before its taps.
        start:       (layer, activation[, skip_image]) skips every layer up to and including
                     `layer` and continues from `activation`; skip_image is the running RGB
                     image after the previous block (`b{res/2}.img`), zeros if left out.
        noise:       {layer: map [N or 1, 1, res, res]} noise inputs for this call only (the
                     projector fits them); they replace noise_mode at those layers.
        num_fp16_res: run the top this many block resolutions in fp16, as NVlabs (taps and
                     captures there see fp16; the RGB image stays fp32). None: the model's
                     `num_fp16_res` attribute (0 unless set, e.g. for a GPU deployment).
        stop:        `b{res}`: end after that block and return its running RGB image
                     (`b{res}.img`, [N, 3, res, res]; skip architecture): the same model's
                     picture without the detail the later blocks add, for previews.
        block_seconds: filled with {res: seconds} spent in each block this call ran (the
                     start block included, partly run); the device is synchronised per
                     block, so only pass it when the figures are wanted.
        """
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
        if num_fp16_res is None:
            num_fp16_res = self.num_fp16_res
        call = SynthesisCall(noise_mode, taps or {}, weight_taps or {},
                             set(capture) if capture is not None else set(), fused,
                             noise_generator, noise or {},
                             ws.device if ws is not None else start[1].device,
                             fp16_resolution(self.resolution, num_fp16_res))
        self._check_layer_names(call)
        if ws is not None:
            assert ws.ndim == 3 and ws.shape[1] == self.num_ws, \
                f"ws must be [N, {self.num_ws}, w_dim], got {list(ws.shape)}"
        captured: dict[str, torch.Tensor] = {}
        start_layer, x, img, start_res = self._unpack_start(start)
        blocks = [res for res in self.block_resolutions
                  if start_res <= res <= self._stop_resolution(stop, start_res)]
        n = ws.shape[0] if ws is not None else x.shape[0]
        split = self._per_sample_from(call, n, ws if ws is not None else x)
        for res in blocks:
            if res >= split:
                break
            with _timed(block_seconds, res, call.device):
                x, img = self._block(getattr(self, f"b{res}"), x, img, ws, call, captured,
                                     start_layer if res == start_res else None)
        rest = [res for res in blocks if res >= split]
        if rest:
            img = self._run_blocks_per_sample(rest, n, x, img, ws, call, captured,
                                              start_layer, start_res, block_seconds)
        img = img.contiguous()
        return (img, captured) if capture is not None else img

    def _check_layer_names(self, call: SynthesisCall) -> None:
        """KeyError naming every tap, capture or noise key that is not a layer of this model."""
        unknown = (set(call.taps) | set(call.weight_taps) | call.capture
                   | set(call.noise)) - set(self.layers) - {
            f"b{r}.img" for r in self.block_resolutions} - {
            name + RAW for name in self.layers}
        if unknown:
            raise KeyError(f"unknown layer(s) {sorted(unknown)}; layers are {self.layers}")

    def _unpack_start(self, start: tuple | None
                      ) -> tuple[str | None, torch.Tensor | None, torch.Tensor | None, int]:
        """forward's `start` as (layer, activation, skip image, its block's resolution)."""
        if start is None:
            return None, None, None, 0
        start_layer, x = start[0], start[1]
        img = start[2] if len(start) > 2 else None
        if start_layer not in self.layers or start_layer.endswith("torgb"):
            raise KeyError(f"start layer must be a conv layer, got {start_layer!r}")
        return start_layer, x, img, int(start_layer.split(".")[0][1:])

    def _run_blocks_per_sample(self, rest: list[int], n: int, x: torch.Tensor | None,
                               img: torch.Tensor | None, ws: torch.Tensor | None,
                               call: SynthesisCall, captured: dict[str, torch.Tensor],
                               start_layer: str | None, start_res: int,
                               block_seconds: dict[int, float] | None) -> torch.Tensor:
        """Run the blocks `rest` one sample at a time; returns the batch's running image.

        Each sample's activations stay in cache and its convs take per-sample weights without
        a batch concatenation. The samples' captures are concatenated into `captured`.
        """
        images, parts = [], []
        for i in range(n):
            one = slice(i, i + 1)
            xi = None if x is None else x[one]
            imgi = None if img is None else img[one]
            wsi = None if ws is None else ws[one]
            sub = replace(call, noise={k: (v[one] if v.shape[0] == n else v)
                                       for k, v in call.noise.items()})
            cap: dict[str, torch.Tensor] = {}
            for res in rest:
                with _timed(block_seconds, res, call.device):
                    xi, imgi = self._block(getattr(self, f"b{res}"), xi, imgi, wsi, sub,
                                           cap, start_layer if res == start_res else None)
            images.append(imgi)
            parts.append(cap)
        for key in parts[0]:
            captured[key] = torch.cat([p[key] for p in parts])
        return torch.cat(images)

    def _stop_resolution(self, stop: str | None, start_res: int) -> int:
        """The last block a call with `stop` runs (the output block when None)."""
        if stop is None:
            return self.resolution
        res = int(stop[1:]) if stop[:1] == "b" and stop[1:].isdigit() else 0
        if res not in self.block_resolutions or res < start_res:
            raise KeyError(f"stop must name a block from the start on ("
                           f"{', '.join(f'b{r}' for r in self.block_resolutions)}), "
                           f"got {stop!r}")
        if res != self.resolution and self.cfg.architecture != "skip":
            raise ValueError("stopping early needs the skip architecture, whose blocks each "
                             "add to a running image")
        return res

    def _per_sample_from(self, call: SynthesisCall, n: int, ref: torch.Tensor) -> int:
        """The first block resolution to render one sample at a time (past the last block
        when none). Only on CPU, for batches, where no tap can mix samples and the noise
        draws do not depend on the batch layout; from the first block whose conv weight is
        smaller than its activations (where ops.modulated_conv2d would scale the weight) and
        whose activations outgrow the cache (PER_SAMPLE_MIN_ELEMENTS)."""
        never = self.resolution * 2
        if (n < 2 or ref.device.type != "cpu" or call.taps or call.fused is not None
                or call.noise_mode == "random"):
            return never
        for res in self.block_resolutions:
            if res == 4:
                continue
            block: SynthesisBlock = getattr(self, f"b{res}")
            big = block.conv1.weight.shape[0] * res * res >= PER_SAMPLE_MIN_ELEMENTS
            if big and weight_is_smaller(block.conv1.weight, res * res, res * res):
                return res
        return never

    def _layer(self, name: str, fn: Callable[[], torch.Tensor], call: SynthesisCall,
               captured: dict[str, torch.Tensor]) -> torch.Tensor:
        y = fn()
        if name + RAW in call.capture:
            captured[name + RAW] = y
        if name in call.taps:
            shape, dtype = y.shape, y.dtype
            y = call.taps[name](y)
            if y.shape != shape:
                raise ValueError(f"a tap on {name} changed its shape {list(shape)} "
                                 f"to {list(y.shape)}")
            y = y.to(dtype)  # an fp32 mask in an fp16 block must not promote the rest
        if name in call.capture:
            captured[name] = y
        return y

    def _block(self, block: SynthesisBlock, x: torch.Tensor | None, img: torch.Tensor | None,
               ws: torch.Tensor | None, call: SynthesisCall,
               captured: dict[str, torch.Tensor], start_layer: str | None):
        res = block.res
        prefix = f"b{res}."

        def w_at(i: int) -> torch.Tensor:
            return ws[:, self.w_index[res] + i]

        skip_conv0 = start_layer is not None  # start is inside this block: conv0 or conv1
        dtype = call.dtype_at(res)
        fmt = preferred_memory_format(call.device, dtype)
        if x is not None:
            x = x.to(dtype=dtype, memory_format=fmt)
        skip_conv1 = start_layer == prefix + "conv1"
        n_conv = block.num_conv
        if block.in_channels == 0:
            if not skip_conv1:
                n = ws.shape[0]
                x0 = block.const.to(dtype).unsqueeze(0).expand(n, -1, -1, -1).contiguous(
                    memory_format=fmt)
                x = self._layer(prefix + "conv1", lambda: block.conv1(
                    x0, w_at(0), call.noise_mode, call.weight_taps.get(prefix + "conv1"),
                    call.fused, noise_generator=call.noise_generator,
                    noise_map=call.noise.get(prefix + "conv1")), call, captured)
        else:
            y = None
            if block.architecture == "resnet":
                if skip_conv0:
                    raise ValueError("start is not supported for the resnet architecture")
                y = block.skip(x, gain=math.sqrt(0.5))
            gain = math.sqrt(0.5) if block.architecture == "resnet" else 1.0
            if not skip_conv0:
                x_in = x
                x = self._layer(prefix + "conv0", lambda: block.conv0(
                    x_in, w_at(0), call.noise_mode, call.weight_taps.get(prefix + "conv0"),
                    call.fused, noise_generator=call.noise_generator,
                    noise_map=call.noise.get(prefix + "conv0")), call, captured)
            if not skip_conv1:
                x_in = x
                x = self._layer(prefix + "conv1", lambda: block.conv1(
                    x_in, w_at(1), call.noise_mode, call.weight_taps.get(prefix + "conv1"),
                    call.fused, gain=gain, noise_generator=call.noise_generator,
                    noise_map=call.noise.get(prefix + "conv1")), call, captured)
            if y is not None:
                x = y + x
        if img is not None and block.architecture == "skip" and block.in_channels != 0:
            img = upsample2d(img, block.resample_filter)
        if block.has_torgb:
            x_in = x
            rgb = self._layer(prefix + "torgb", lambda: block.torgb(
                x_in, w_at(n_conv), call.weight_taps.get(prefix + "torgb"), call.fused),
                call, captured)
            rgb32 = rgb.float()  # the running image is fp32, as NVlabs
            img = rgb32 if img is None else img + rgb32
        if prefix + "img" in call.capture:
            captured[prefix + "img"] = img
        return x, img


@contextmanager
def _timed(seconds: dict[int, float] | None, res: int, device: torch.device) -> Iterator[None]:
    """Add the time spent inside to seconds[res] (nothing when seconds is None)."""
    if seconds is None:
        yield
        return
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    yield
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds[res] = seconds.get(res, 0.0) + time.perf_counter() - t0


# ----------------------------------------------------------------------------------------
# Generator.


class GeneratorCalls:
    """What both generator families (this file's and engine/gan/stylegan3.py's) answer alike:
    z -> ws -> image, the seed convention and their sizes. Each sets cfg, mapping, synthesis
    and a `device` property."""

    cfg: Any
    mapping: nn.Module
    synthesis: nn.Module
    device: torch.device

    @property
    def z_dim(self) -> int:
        return self.cfg.z_dim

    @property
    def resolution(self) -> int:
        return self.cfg.resolution

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None, psi: float = 1.0,
                cutoff: int | None = None, **synthesis_kwargs: Any) -> torch.Tensor:
        ws = self.mapping(z, c, psi=psi, cutoff=cutoff)
        return self.synthesis(ws, **synthesis_kwargs)

    def seed_to_z(self, seed: int) -> torch.Tensor:
        """NVlabs generate.py convention: z = RandomState(seed).randn(1, z_dim)."""
        z = np.random.RandomState(seed).randn(1, self.cfg.z_dim)
        return torch.from_numpy(z).to(torch.float32).to(self.device)


class Generator(GeneratorCalls, nn.Module):
    """Mapping + synthesis. `Generator(cfg).state_dict()` keys equal NVlabs' G_ema keys."""

    def __init__(self, cfg: GeneratorConfig):
        super().__init__()
        self.cfg = cfg
        self.synthesis = SynthesisNetwork(cfg)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(cfg, self.num_ws)

    @property
    def device(self) -> torch.device:
        return self.synthesis.b4.const.device

    def layer_shapes(self) -> dict[str, tuple[int, int, int]]:
        return layer_shapes(self.cfg)


def prepare_for_device(G: nn.Module) -> nn.Module:
    """Process-wide settings that make rendering on G's device fast; returns G.

    CUDA: the engine's precision and cuDNN policy (engine.base.devices.apply_precision_policy:
    IEEE fp32, one deterministic algorithm per shape in every process, so a replay equals
    itself; STUDIO_CUDNN_BENCHMARK=1 autotunes); fp16 stays opt-in (`num_fp16_res` per call,
    or G.synthesis.num_fp16_res for a deployment).
    """
    device = next(G.parameters()).device
    if device.type == "cuda":
        from engine.base import devices
        devices.apply_precision_policy()
    return G


# ----------------------------------------------------------------------------------------
# Discriminator (resnet, as NVlabs; names match so an NVlabs D loads).


class MinibatchStdLayer(nn.Module):
    def __init__(self, group_size: int = 4, num_channels: int = 1):
        super().__init__()
        self.group_size, self.num_channels = group_size, num_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        g = min(self.group_size, n)
        while n % g:   # NVlabs requires divisibility; fall back to a dividing group size
            g -= 1
        f = self.num_channels
        y = x.reshape(g, -1, f, c // f, h, w)
        y = (y - y.mean(dim=0)).square().mean(dim=0)
        y = (y + 1e-8).sqrt().mean(dim=[2, 3, 4])
        y = y.reshape(-1, f, 1, 1).repeat(g, 1, h, w)
        return torch.cat([x, y], dim=1)


class DiscriminatorBlock(nn.Module):
    def __init__(self, in_channels: int, tmp_channels: int, out_channels: int, res: int,
                 img_channels: int, conv_clamp: float | None):
        super().__init__()
        self.in_channels = in_channels
        if in_channels == 0:
            self.fromrgb = Conv2dLayer(img_channels, tmp_channels, 1, conv_clamp=conv_clamp)
        self.conv0 = Conv2dLayer(tmp_channels, tmp_channels, 3, conv_clamp=conv_clamp)
        self.conv1 = Conv2dLayer(tmp_channels, out_channels, 3, down=True,
                                 conv_clamp=conv_clamp)
        self.skip = Conv2dLayer(tmp_channels, out_channels, 1, bias=False, lrelu=False,
                                down=True)

    def forward(self, x: torch.Tensor | None, img: torch.Tensor) -> torch.Tensor:
        if self.in_channels == 0:
            x = self.fromrgb(img)
        y = self.skip(x, gain=math.sqrt(0.5))
        x = self.conv0(x)
        x = self.conv1(x, gain=math.sqrt(0.5))
        return y + x


class DiscriminatorEpilogue(nn.Module):
    def __init__(self, in_channels: int, c_dim: int, cmap_dim: int, conv_clamp: float | None,
                 mbstd_group_size: int = 4):
        super().__init__()
        self.cmap_dim = cmap_dim
        self.mbstd = MinibatchStdLayer(mbstd_group_size, 1)
        self.conv = Conv2dLayer(in_channels + 1, in_channels, 3, conv_clamp=conv_clamp)
        self.fc = FullyConnectedLayer(in_channels * 16, in_channels, lrelu=True)
        self.out = FullyConnectedLayer(in_channels, 1 if cmap_dim == 0 else cmap_dim)

    def forward(self, x: torch.Tensor, cmap: torch.Tensor | None) -> torch.Tensor:
        x = self.conv(self.mbstd(x))
        x = self.out(self.fc(x.flatten(1)))
        if cmap is not None:
            x = (x * cmap).sum(dim=1, keepdim=True) / math.sqrt(self.cmap_dim)
        return x


class Discriminator(nn.Module):
    """Residual discriminator: image [N, 3, R, R] -> logits [N, 1]."""

    def __init__(self, cfg: GeneratorConfig, mbstd_group_size: int = 4):
        super().__init__()
        self.cfg = cfg
        res_list = cfg.block_resolutions[::-1][:-1]  # R, R/2, ..., 8
        for res in res_list:
            in_ch = cfg.channels(res) if res < cfg.resolution else 0
            block = DiscriminatorBlock(in_ch, cfg.channels(res), cfg.channels(res // 2), res,
                                       cfg.img_channels, cfg.conv_clamp)
            setattr(self, f"b{res}", block)
        self.res_list = res_list
        if cfg.c_dim > 0:
            raise NotImplementedError("conditional discriminators are not supported")
        self.b4 = DiscriminatorEpilogue(cfg.channels(4), 0, 0, cfg.conv_clamp,
                                        mbstd_group_size)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        x = None
        for res in self.res_list:
            x = getattr(self, f"b{res}")(x, img)
        return self.b4(x, None)
