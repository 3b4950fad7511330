"""Checkpoints laid out the way their authors' code saves them, built from our generators:
NVlabs pickles (persistence records carrying `module_src`, read through fake `torch_utils` and
`dnnlib` modules) and rosinality state dicts; and `assert_one_sentence` for their refusals."""

from __future__ import annotations

import math
import pickle
import sys
import types
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.gan.stylegan2 import Discriminator, Generator, make_resample_filter


def assert_one_sentence(err: Exception) -> None:
    msg = str(err)
    assert msg and "\n" not in msg and "Traceback" not in msg, msg
    assert msg.endswith("."), msg


# ----------------------------------------------------------------------------------------
# Fake NVlabs modules, so pickles reference the same globals real NVlabs pickles do.


class Evil:
    """Pickles as a call to `fn(*args)`: what a malicious checkpoint does."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def install_nvlabs_modules(monkeypatch, reconstruct) -> types.SimpleNamespace:
    """Install fake `torch_utils.persistence` (whose `_reconstruct_persistent_obj` is
    `reconstruct`), `dnnlib.util` and `dnnlib.tflib.network`, so objects pickle under
    NVlabs' names: (persistence, EasyDict, Network)."""
    persistence = types.ModuleType("torch_utils.persistence")
    reconstruct.__module__ = "torch_utils.persistence"
    reconstruct.__qualname__ = "_reconstruct_persistent_obj"
    persistence._reconstruct_persistent_obj = reconstruct
    torch_utils = types.ModuleType("torch_utils")
    torch_utils.persistence = persistence

    util = types.ModuleType("dnnlib.util")
    easy = type("EasyDict", (dict,), {"__module__": "dnnlib.util"})
    util.EasyDict = easy

    network = types.ModuleType("dnnlib.tflib.network")

    class Network:
        def __init__(self, **state):
            self.state = state

        def __getstate__(self):
            return self.state

    Network.__module__, Network.__qualname__ = "dnnlib.tflib.network", "Network"
    network.Network = Network
    tflib = types.ModuleType("dnnlib.tflib")
    tflib.network = network
    dnnlib = types.ModuleType("dnnlib")
    dnnlib.util, dnnlib.tflib = util, tflib
    for name, mod in [("torch_utils", torch_utils), ("torch_utils.persistence", persistence),
                      ("dnnlib", dnnlib), ("dnnlib.util", util), ("dnnlib.tflib", tflib),
                      ("dnnlib.tflib.network", network)]:
        monkeypatch.setitem(sys.modules, name, mod)
    return types.SimpleNamespace(persistence=persistence, EasyDict=easy, Network=Network)


@pytest.fixture
def nvlabs_modules(monkeypatch, tmp_path):
    """Install fake `torch_utils.persistence`, `dnnlib.util` and `dnnlib.tflib.network`.

    The fake `_reconstruct_persistent_obj` behaves like NVlabs' (it executes `module_src`),
    so a control test can show the payload is live under an unrestricted unpickler.
    """
    def _reconstruct_persistent_obj(meta):
        exec(meta["module_src"], {})  # what NVlabs does; only the control test gets here
        return meta["state"]

    fakes = install_nvlabs_modules(monkeypatch, _reconstruct_persistent_obj)
    marker = tmp_path / "module_src_ran"
    return types.SimpleNamespace(**vars(fakes), marker=marker, module_src=payload_src(marker))


def payload_src(marker: Path) -> str:
    return (f"import pathlib\npathlib.Path({str(marker)!r}).write_text('pwned')\n"
            f"class Generator:\n    pass\n")


class Persistent:
    """Pickles exactly like an NVlabs `@persistent_class` object."""

    def __init__(self, class_name: str, state: dict, module_src: str):
        self.class_name, self.state, self.module_src = class_name, state, module_src

    def __reduce__(self):
        meta = dict(type="class", version=6, module_src=self.module_src,
                    class_name=self.class_name, state=self.state)
        return sys.modules["torch_utils.persistence"]._reconstruct_persistent_obj, (meta,)


NVLABS_CLASS = {"Generator": "Generator", "MappingNetwork": "MappingNetwork",
                "SynthesisNetwork": "SynthesisNetwork", "SynthesisBlock": "SynthesisBlock",
                "SynthesisLayer": "SynthesisLayer", "ToRGBLayer": "ToRGBLayer",
                "FullyConnectedLayer": "FullyConnectedLayer", "Conv2dLayer": "Conv2dLayer",
                "Discriminator": "Discriminator", "DiscriminatorBlock": "DiscriminatorBlock",
                "DiscriminatorEpilogue": "DiscriminatorEpilogue",
                "MinibatchStdLayer": "MinibatchStdLayer"}


def nvlabs_tree(m: torch.nn.Module, mods, extra_filters: bool = True) -> Persistent:
    """Our module as NVlabs would pickle it: its __dict__ as state, attributes like theirs.

    NVlabs registers the resample filter in every synthesis layer, block and Conv2dLayer,
    more places than we do; the extras are added so the reader must cope with them.
    """
    kind = type(m).__name__
    buffers = OrderedDict(m._buffers)
    if extra_filters and kind in ("SynthesisLayer", "SynthesisBlock", "Conv2dLayer",
                                  "DiscriminatorBlock") and "resample_filter" not in buffers:
        buffers["resample_filter"] = make_resample_filter()
    state = {"training": False, "_parameters": OrderedDict(m._parameters), "_buffers": buffers,
             "_non_persistent_buffers_set": set(), "_backward_hooks": OrderedDict(),
             "_forward_hooks": OrderedDict(), "_init_args": (), "_init_kwargs": mods.EasyDict(),
             "_modules": OrderedDict((k, nvlabs_tree(v, mods, extra_filters))
                                     for k, v in m._modules.items())}
    for k, v in vars(m).items():  # plain attributes; NVlabs keeps gains as numpy float64
        if not k.startswith("_") and isinstance(v, bool | int | float | str | type(None)):
            state[k] = np.float64(v) if isinstance(v, float) and k.endswith("gain") else v
    if kind in ("SynthesisLayer", "FullyConnectedLayer", "Conv2dLayer"):
        state["activation"] = "lrelu" if getattr(m, "lrelu", True) else "linear"
    if kind == "FullyConnectedLayer":
        state["bias_gain"] = float(m.bias_gain)
    if kind == "SynthesisLayer":
        state["up"] = 2 if m.up else 1
    if kind == "Generator":
        cfg = m.cfg
        state["_init_kwargs"] = mods.EasyDict(
            z_dim=cfg.z_dim, c_dim=cfg.c_dim, w_dim=cfg.w_dim, img_resolution=cfg.resolution,
            img_channels=cfg.img_channels,
            mapping_kwargs=mods.EasyDict(num_layers=cfg.mapping_layers),
            synthesis_kwargs=mods.EasyDict(channel_base=cfg.channel_base,
                                           channel_max=cfg.channel_max, num_fp16_res=0,
                                           conv_clamp=cfg.conv_clamp,
                                           architecture=cfg.architecture))
    return Persistent(f"training.networks.{NVLABS_CLASS.get(kind, kind)}", state,
                      mods.module_src)


def write_nvlabs_pickle(path: Path, G: Generator, mods, D: Discriminator | None = None,
                        protocol: int = 3) -> bytes:
    """`{'G', 'D', 'G_ema', 'augment_pipe', 'training_set_kwargs'}` as NVlabs saves it
    (Python 3.7's default protocol 3)."""
    data = {"G": nvlabs_tree(G, mods), "D": nvlabs_tree(D, mods) if D is not None else None,
            "G_ema": nvlabs_tree(G, mods), "augment_pipe": None,
            "training_set_kwargs": mods.EasyDict(path="data.zip", resolution=32)}
    raw = pickle.dumps(data, protocol=protocol)
    path.write_bytes(raw)
    return raw


def to_rosinality(G: Generator) -> dict[str, torch.Tensor]:
    """rosinality names; its modulated convs multiply by 1/sqrt(fan_in) at run time."""
    sd = {k: v.detach().clone() for k, v in G.state_dict().items()}
    out: dict[str, torch.Tensor] = {}
    for i in range(G.cfg.mapping_layers):
        out[f"style.{i + 1}.weight"] = sd[f"mapping.fc{i}.weight"]
        out[f"style.{i + 1}.bias"] = sd[f"mapping.fc{i}.bias"]
    out["input.input"] = sd["synthesis.b4.const"][None]
    kernel = make_resample_filter() * 4

    def styled(src: str, dst: str, noise: int, up: bool):
        w = sd[f"{src}.weight"]
        out[f"{dst}.conv.weight"] = (w * math.sqrt(w[0].numel()))[None]
        out[f"{dst}.conv.modulation.weight"] = sd[f"{src}.affine.weight"]
        out[f"{dst}.conv.modulation.bias"] = sd[f"{src}.affine.bias"]
        out[f"{dst}.noise.weight"] = sd[f"{src}.noise_strength"].reshape(1)
        out[f"{dst}.activate.bias"] = sd[f"{src}.bias"]
        out[f"noises.noise_{noise}"] = sd[f"{src}.noise_const"][None, None]
        if up:
            out[f"{dst}.conv.blur.kernel"] = kernel

    def to_rgb(src: str, dst: str, up: bool):
        out[f"{dst}.conv.weight"] = sd[f"{src}.weight"][None]
        out[f"{dst}.conv.modulation.weight"] = sd[f"{src}.affine.weight"]
        out[f"{dst}.conv.modulation.bias"] = sd[f"{src}.affine.bias"]
        out[f"{dst}.bias"] = sd[f"{src}.bias"].reshape(1, -1, 1, 1)
        if up:
            out[f"{dst}.upsample.kernel"] = kernel

    styled("synthesis.b4.conv1", "conv1", 0, False)
    to_rgb("synthesis.b4.torgb", "to_rgb1", False)
    for k, r in enumerate(G.cfg.block_resolutions[1:]):
        styled(f"synthesis.b{r}.conv0", f"convs.{2 * k}", 2 * k + 1, True)
        styled(f"synthesis.b{r}.conv1", f"convs.{2 * k + 1}", 2 * k + 2, False)
        to_rgb(f"synthesis.b{r}.torgb", f"to_rgbs.{k}", True)
    return out


def d_to_rosinality(D: Discriminator) -> dict[str, torch.Tensor]:
    sd = {k: v.detach().clone() for k, v in D.state_dict().items()}
    res = D.cfg.resolution
    out = {"convs.0.0.weight": sd[f"b{res}.fromrgb.weight"],
           "convs.0.1.bias": sd[f"b{res}.fromrgb.bias"]}
    for i, r in enumerate(D.res_list, start=1):
        out[f"convs.{i}.conv1.0.weight"] = sd[f"b{r}.conv0.weight"]
        out[f"convs.{i}.conv1.1.bias"] = sd[f"b{r}.conv0.bias"]
        out[f"convs.{i}.conv2.0.kernel"] = make_resample_filter()
        out[f"convs.{i}.conv2.1.weight"] = sd[f"b{r}.conv1.weight"]
        out[f"convs.{i}.conv2.2.bias"] = sd[f"b{r}.conv1.bias"]
        out[f"convs.{i}.skip.0.kernel"] = make_resample_filter()
        out[f"convs.{i}.skip.1.weight"] = sd[f"b{r}.skip.weight"]
    for s, d in [("final_conv.0.weight", "b4.conv.weight"), ("final_conv.1.bias", "b4.conv.bias"),
                 ("final_linear.0.weight", "b4.fc.weight"), ("final_linear.0.bias", "b4.fc.bias"),
                 ("final_linear.1.weight", "b4.out.weight"),
                 ("final_linear.1.bias", "b4.out.bias")]:
        out[s] = sd[d]
    return out
