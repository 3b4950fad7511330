"""What the rest of the engine asks of a generator, whichever family it is.

StyleGAN2 (`engine.gan.stylegan2`) and StyleGAN3 (`engine.gan.stylegan3`) generators share the
per-call interface (taps, weight_taps, capture, start, layer_shapes, seed_to_z); they differ
in layer names. Code that needs to know which layers hold feature maps (clusters, bends,
translator encoders) or take noise (the projector) asks here rather than parsing names.
"""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from engine.gan import stylegan3
from engine.gan.stylegan2 import Generator as StyleGAN2Generator
from engine.gan.stylegan2 import GeneratorConfig
from engine.gan.stylegan3 import StyleGAN3Config

AnyConfig = GeneratorConfig | StyleGAN3Config
AnyGenerator = StyleGAN2Generator | stylegan3.Generator


def config_from_dict(d: Mapping[str, Any]) -> AnyConfig:
    """A sidecar's config dict back to its config class (`kind` marks StyleGAN3)."""
    if d.get("kind") == stylegan3.KIND:
        return StyleGAN3Config.from_dict(d)
    if "kind" in d:
        raise ValueError(f"unknown generator kind {d['kind']!r}")
    return GeneratorConfig.from_dict(d)


class _UninitialisedRandom(TorchFunctionMode):
    """torch.randn / torch.rand return uninitialised memory of the same shape: for a module
    whose every tensor is overwritten next, drawing its ~30 M normals only costs time (about
    0.4 s per 256 px generator on one core, paid twice per checkpoint load)."""

    def __torch_function__(self, func: Any, types: Any, args: tuple = (),
                           kwargs: dict | None = None) -> Any:
        kwargs = dict(kwargs or {})
        if func is torch.randn or func is torch.rand:
            kwargs.pop("generator", None)
            return torch.empty(*args, **kwargs)
        return func(*args, **kwargs)


def build(cfg: AnyConfig, initialise: bool = True) -> AnyGenerator:
    """A generator of the config's family: freshly initialised, or with `initialise=False`
    holding uninitialised weights, for a caller that loads every tensor next (a strict
    load_state_dict) or only reads shapes."""
    cls = stylegan3.Generator if isinstance(cfg, StyleGAN3Config) else StyleGAN2Generator
    if initialise:
        return cls(cfg)
    with _UninitialisedRandom():
        return cls(cfg)


def is_stylegan3(G: nn.Module | AnyConfig) -> bool:
    cfg = getattr(G, "cfg", G)
    return isinstance(cfg, StyleGAN3Config)


def is_rgb_layer(G: nn.Module, layer: str) -> bool:
    """True for a layer whose output is RGB (StyleGAN2 `b{res}.torgb`, StyleGAN3's last)."""
    if is_stylegan3(G):
        return layer == G.synthesis.layers[-1]
    return layer.endswith("torgb")


def conv_layers(G: nn.Module) -> list[str]:
    """Layers whose outputs are feature maps (every layer but the RGB ones), forward order."""
    return [n for n in G.synthesis.layers if not is_rgb_layer(G, n)]


def noise_layers(G: nn.Module) -> list[str]:
    """Synthesis layers that take a noise input, in forward order (none in StyleGAN3)."""
    if is_stylegan3(G):
        return []
    names = []
    for name in conv_layers(G):
        block, part = name.split(".")
        if getattr(getattr(getattr(G.synthesis, block), part), "use_noise", False):
            names.append(name)
    return names


def layer_module(G: nn.Module, layer: str) -> nn.Module:
    """The module of a synthesis layer (`b16.conv1` in StyleGAN2, `L3_52_512` in StyleGAN3)."""
    if layer not in G.synthesis.layers:
        raise KeyError(layer)
    if is_stylegan3(G):
        return getattr(G.synthesis, layer)
    block, part = layer.split(".")
    return getattr(getattr(G.synthesis, block), part)


def layer_scale(G: nn.Module, layer: str) -> int:
    """Image pixels per activation pixel of a layer (StyleGAN3: per sample of its grid, whose
    margin lies outside the image)."""
    if is_stylegan3(G):
        return max(G.cfg.resolution // getattr(G.synthesis, layer).spec.out_rate, 1)
    return max(G.cfg.resolution // G.layer_shapes()[layer][1], 1)


# ----------------------------------------------------------------------------------------
# Model identity: encoders, anchor banks and cluster caches only fit the weights they were
# made from.

_weights_sha: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def weights_stamp(G: nn.Module) -> tuple:
    """What changes whenever G's tensors do: each one's name, place, dtype, storage and
    version counter (bumped by every in-place write: load_state_dict, optimizer steps)."""
    return tuple((name, t.device, t.dtype, t.data_ptr(), t._version)
                 for name, t in (*G.named_parameters(), *G.named_buffers()))


def weights_sha256(G: nn.Module) -> str:
    """sha256 over G's parameters and buffers (names, shapes, float32 bytes); cached per G
    until its weights change (weights_stamp).

    Only a model held on the CPU is cached: its bytes are what they read. A device model
    is hashed from copies each time (ZeroGPU's stand-in tensors read as empty memory outside
    GPU calls, so a hash of them must never be remembered, nor inherited by its workers)."""
    hit = _weights_sha.get(G)
    if hit is not None and hit[0] == weights_stamp(G):
        return hit[1]
    h = hashlib.sha256()
    on_cpu = True
    for name, t in sorted(G.state_dict().items()):
        on_cpu = on_cpu and t.device.type == "cpu"
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    digest = h.hexdigest()
    if on_cpu:
        _weights_sha[G] = (weights_stamp(G), digest)
    return digest
