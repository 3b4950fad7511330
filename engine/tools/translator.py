"""Rewriting activation maps: an encoder that writes one generator layer from a picture.

The generator renders an image and, in the same call, the activation of a chosen layer
(`b{res}.conv0` / `b{res}.conv1`). `ActivationEncoder` learns image -> activation. Deployed
in place of every layer up to and including that one (`G.synthesis(ws, start=(layer, act))`),
it turns any picture into the model's domain, while the later layers still read ws: seeds,
truncation, mixing and directions keep steering the output, and bends apply through taps.

Training makes its data on the fly from the frozen generator. Loss:

    act_weight   * MSE(encoder(img), act)            (in per-channel standardised units)
  + image_weight * L1-pyramid(G.synthesis(ws, start=(layer, encoder(img))), img)

The second term renders through the frozen rest of G; without the skip image of the
earlier blocks (there is none for a stranger's photo) the encoder must carry the colour
itself. Training runs under `accelerate` (CPU, one GPU, several processes), writes atomic
checkpoints and resumes to exactly the result of an uninterrupted run: every step's
randomness is drawn from (seed, step, process).

Files: a trained encoder is a folder with `encoder.safetensors` (weights), `encoder.json`
(base model sha256, layer, input size, architecture, training settings, metrics), a model
card `README.md` and `preview.png`; it pushes to and pulls from the Hugging Face Hub.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from engine.base.errors import StudioError, cancel_requested
from engine.base.files import atomic_write, atomic_write_text
from engine.base.images import to_uint8
from engine.base.seeding import build_seeded
from engine.gan import networks
from engine.gan.networks import weights_sha256
from engine.training.loop import (
    Checkpointer,
    LoopCancelled,
    MetricsCallback,
    StepLoop,
    describe_step,
)

DEFAULT_LAYER = "b16.conv1"      # the seed's choice: the 16x16 block's second conv
ENCODER_FILE = "encoder.safetensors"
SIDECAR_FILE = "encoder.json"
CARD_FILE = "README.md"
PREVIEW_FILE = "preview.png"
CHECKPOINT_FILE = "checkpoint.pt"
ENCODER_FORMAT = "activation-studio-encoder"
FORMAT_VERSION = 1
LRELU_SLOPE = 0.2
STAT_SAMPLES = 256               # generator samples for the per-channel activation stats
PREVIEW_COUNT = 4                # images in a preview grid
# A sidecar from a stranger names the architecture: anything bigger is refused before it is
# built (the studio's encoders have under 2 M; a 1024 px one with wide stages about 20 M).
MAX_ENCODER_PARAMETERS = 64_000_000
MAX_ENCODER_INPUT_SIZE = 4096
MAX_SIDECAR_BYTES = 1 << 20       # a sidecar is a page of JSON
MAX_ENCODER_FILE_BYTES = 4 * MAX_ENCODER_PARAMETERS + (1 << 20)  # float32 weights + header
LOG_EVERY = 10                   # steps between loss read-backs (and progress) off the CPU
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
VIDEO_SUFFIXES = (".mp4", ".gif", ".mov", ".avi", ".mkv", ".webm")

Progress = Callable[[float, str], Any]


class TrainingCancelled(LoopCancelled):
    """The user stopped encoder training; a checkpoint was kept, so running again resumes."""


# ----------------------------------------------------------------------------------------
# Layers and shapes.


def parse_layer(layer: str) -> tuple[int, str]:
    """'b16.conv1' -> (16, 'conv1'); raises StudioError for anything that is not a conv."""
    try:
        block, part = layer.split(".")
        res = int(block[1:])
        assert block[0] == "b" and part in ("conv0", "conv1")
    except (ValueError, AssertionError) as exc:
        raise StudioError(f"{layer!r} is not a conv layer: name one like 'b16.conv1' or "
                          f"'b32.conv0'") from exc
    return res, part


def conv_layers(G: nn.Module) -> list[str]:
    """Every layer an encoder can write, in synthesis order."""
    return networks.conv_layers(G)


def _layer_shape(G: nn.Module, layer: str) -> tuple[int, int, int]:
    shapes = G.layer_shapes() if callable(G.layer_shapes) else G.layer_shapes
    if isinstance(layer, str) and layer in shapes and networks.is_rgb_layer(G, layer):
        raise StudioError(f"{layer!r} is not a conv layer (it writes RGB); choose one of "
                          f"{', '.join(conv_layers(G))}")
    if not isinstance(layer, str) or layer not in shapes:
        raise StudioError(f"this model has no layer {layer!r}; choose one of "
                          f"{', '.join(conv_layers(G))}")
    return tuple(shapes[layer])


def _device_of(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


# ----------------------------------------------------------------------------------------
# The encoder.


@dataclass
class EncoderConfig:
    """Architecture of an ActivationEncoder (saved in the sidecar; enough to rebuild it)."""
    layer: str = DEFAULT_LAYER      # the generator layer it writes
    input_size: int = 64            # square input picture, pixels
    out_channels: int = 128         # channels of that layer
    out_size: int = 16              # spatial size of that layer
    width: int = 32                 # channels at the input resolution
    max_width: int = 128            # cap on channels (they double per halving)
    blocks: int = 1                 # residual blocks at the output resolution
    stage_blocks: int = 0           # residual blocks after each down/up-sampling stage
    groups: int = 8                 # GroupNorm groups (reduced to divide the channels)
    mean_filter: int = 0            # odd box filter on the output (0 or 1 = off)

    def __post_init__(self) -> None:
        for name in ("input_size", "out_channels", "out_size", "width", "max_width", "groups"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise StudioError(f"the encoder's {name} must be a positive whole number, got "
                                  f"{value!r}")
        for name in ("blocks", "stage_blocks", "mean_filter"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise StudioError(f"the encoder's {name} must be a whole number from 0, got "
                                  f"{value!r}")
        if self.input_size > MAX_ENCODER_INPUT_SIZE:
            raise StudioError(f"the encoder's input size {self.input_size} is above the "
                              f"limit of {MAX_ENCODER_INPUT_SIZE} pixels")
        ratio = self.input_size / self.out_size
        if self.input_size < 4 or ratio <= 0 or 2 ** round(math.log2(ratio)) != ratio:
            raise StudioError(f"input size {self.input_size} must be the layer's size "
                              f"{self.out_size} times a power of two (e.g. {self.out_size * 4})")
        if self.mean_filter > 1 and self.mean_filter % 2 == 0:
            raise StudioError(f"mean filter must be an odd kernel size, got {self.mean_filter}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EncoderConfig:
        names = cls.__dataclass_fields__.keys()
        return cls(**{k: v for k, v in d.items() if k in names})

    def width_at(self, res: int) -> int:
        """Channels at resolution `res`: doubling per halving from `width`, capped."""
        return min(self.width * max(self.input_size // res, 1), self.max_width)

    def parameter_count(self) -> int:
        """The ActivationEncoder's parameters and buffers, counted from the config alone
        (the same walk as its constructor), so a forged sidecar is refused unbuilt."""
        def conv_norm(cin: int, cout: int) -> int:
            return 9 * cin * cout + 2 * cout

        def res_blocks(ch: int, count: int) -> int:
            return count * 2 * conv_norm(ch, ch)

        res = self.input_size
        n = conv_norm(3, self.width_at(res))
        while res > self.out_size:
            cin, res = self.width_at(res), res // 2
            n += conv_norm(cin, self.width_at(res)) + res_blocks(self.width_at(res),
                                                                 self.stage_blocks)
        while res < self.out_size:
            cin, res = self.width_at(res), res * 2
            n += conv_norm(cin, self.width_at(res)) + res_blocks(self.width_at(res),
                                                                 self.stage_blocks)
        n += res_blocks(self.width_at(res), self.blocks)
        return n + (self.width_at(res) + 1) * self.out_channels + 2 * self.out_channels

    def check_size(self, weights_bytes: int | None = None) -> None:
        """Refuse an architecture over the parameter budget or larger than the weights file
        that should hold it (stored as float16 at the least)."""
        count = self.parameter_count()
        if count > MAX_ENCODER_PARAMETERS:
            raise StudioError(f"this encoder's sidecar describes {count / 1e6:.0f} M "
                              f"parameters, more than the limit of "
                              f"{MAX_ENCODER_PARAMETERS / 1e6:.0f} M, so it was not built")
        if weights_bytes is not None and 2 * count > weights_bytes + 65536:
            raise StudioError(f"this encoder's sidecar describes {count / 1e6:.1f} M "
                              f"parameters but its weights file holds fewer, so the sidecar "
                              f"is wrong and the encoder was not built")


def _norm(ch: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(groups, ch), ch)


class ConvNormAct(nn.Sequential):
    """3x3 conv (optionally strided) -> GroupNorm -> leaky ReLU."""

    def __init__(self, cin: int, cout: int, groups: int, stride: int = 1):
        super().__init__(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), _norm(cout, groups),
                         nn.LeakyReLU(LRELU_SLOPE))


class ResBlock(nn.Module):
    """x + norm(conv(act(norm(conv(x))))), then an activation: the residual unit."""

    def __init__(self, ch: int, groups: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(ch, ch, 3, 1, 1, bias=False), _norm(ch, groups), nn.LeakyReLU(LRELU_SLOPE),
            nn.Conv2d(ch, ch, 3, 1, 1, bias=False), _norm(ch, groups))
        self.act = nn.LeakyReLU(LRELU_SLOPE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.body(x))


class ActivationEncoder(nn.Module):
    """image [N, 3, S, S] in [-1, 1] -> activation [N, C, H, W] of one generator layer.

    Strided convs halve the resolution (nearest upsampling + conv doubles it, for an input
    smaller than the layer), each followed by GroupNorm and optional residual blocks; a
    plain 1x1 conv head predicts standardised activations, which `act_mean`/`act_std`
    (per-channel statistics of the layer, measured on the generator) turn back into the
    layer's units. A plain linear head can represent the lrelu*sqrt(2) range (mostly
    >= -0.2*sqrt(2)*|x|) without a clamp.
    """

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.config = c = config
        self.meta: dict[str, Any] = {}  # sidecar contents once saved or loaded

        c.check_size()
        width = c.width_at

        layers: list[nn.Module] = [ConvNormAct(3, width(c.input_size), c.groups)]
        res = c.input_size
        while res > c.out_size:      # downsample
            cin, res = width(res), res // 2
            layers.append(ConvNormAct(cin, width(res), c.groups, stride=2))
            layers += [ResBlock(width(res), c.groups) for _ in range(c.stage_blocks)]
        while res < c.out_size:      # upsample (input smaller than the layer)
            cin, res = width(res), res * 2
            layers += [nn.Upsample(scale_factor=2.0, mode="nearest"),
                       ConvNormAct(cin, width(res), c.groups)]
            layers += [ResBlock(width(res), c.groups) for _ in range(c.stage_blocks)]
        layers += [ResBlock(width(res), c.groups) for _ in range(c.blocks)]
        self.body = nn.Sequential(*layers)
        self.head = nn.Conv2d(width(res), c.out_channels, 1)
        self.register_buffer("act_mean", torch.zeros(c.out_channels))
        self.register_buffer("act_std", torch.ones(c.out_channels))

    @property
    def layer(self) -> str:
        return self.config.layer

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        c = self.config
        assert img.ndim == 4 and img.shape[1] == 3, f"expected [N, 3, S, S], got {img.shape}"
        y = self.head(self.body(img))
        y = y * self.act_std.view(1, -1, 1, 1) + self.act_mean.view(1, -1, 1, 1)
        if c.mean_filter > 1:
            y = F.avg_pool2d(y, c.mean_filter, 1, c.mean_filter // 2, count_include_pad=False)
        return y

    def reset_private_(self, generator: torch.Generator) -> None:
        """The statistics buffers' starting values (engine.base.seeding.build_seeded)."""
        self.act_mean.zero_()
        self.act_std.fill_(1.0)

    def standardise(self, act: torch.Tensor) -> torch.Tensor:
        """An activation in the per-channel standard units the activation loss uses."""
        return (act - self.act_mean.view(1, -1, 1, 1)) / self.act_std.view(1, -1, 1, 1)


def make_encoder(G: nn.Module, layer: str = DEFAULT_LAYER, input_size: int | None = None,
                 generator: torch.Generator | None = None, **arch: Any) -> ActivationEncoder:
    """An untrained encoder for `layer` of G, on G's device; `arch` sets EncoderConfig fields.
    With `generator` its initial weights come from it (engine.base.seeding.build_seeded), leaving
    the global generators alone; without, torch's global generator initialises it."""
    ch, h, w = _layer_shape(G, layer)
    if not input_size:  # the model's resolution, or (StyleGAN3 margins) the nearest that fits
        input_size = h * 2 ** max(round(math.log2(G.cfg.resolution / h)), 0)
    config = EncoderConfig(layer=layer, input_size=int(input_size),
                           out_channels=ch, out_size=h, **arch)
    if generator is None:
        return ActivationEncoder(config).to(_device_of(G))
    config.check_size()
    return build_seeded(lambda: ActivationEncoder(config), generator).to(_device_of(G))


# ----------------------------------------------------------------------------------------
# Model identity: an encoder only fits the generator it was trained on (its weights_sha256,
# engine.gan.networks).


def _model_matches(meta: dict[str, Any], sha: str) -> bool:
    return sha in (meta.get("base_model_sha256"), meta.get("base_model_weights_sha256"))


def _short(sha: str | None) -> str:
    return (sha or "unknown")[:12]


def _other_model(meta: dict[str, Any], loaded_sha: str) -> StudioError:
    return StudioError(
        f"this encoder was trained for another model "
        f"({meta.get('base_model_id') or 'unnamed'}, sha256 "
        f"{_short(meta.get('base_model_sha256') or meta.get('base_model_weights_sha256'))}…), "
        f"not the loaded one ({_short(loaded_sha)}…): load its model or train an encoder "
        f"for this one")


# ----------------------------------------------------------------------------------------
# Saving, loading, the Hub.




def _encoder_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """(weights, sidecar) for a folder or a .safetensors path."""
    p = Path(path)
    if p.suffix == ".safetensors":
        return p, p.with_suffix(".json")
    return p / ENCODER_FILE, p / SIDECAR_FILE


def sidecar_path(path: str | os.PathLike) -> Path:
    """The JSON sidecar that describes the encoder at `path` (folder or .safetensors)."""
    return _encoder_paths(path)[1]


MAX_SIDECAR_BYTES = 1 << 20


@dataclass
class EncoderListing:
    """What a list of encoders shows about one, read from its sidecar."""
    path: str                       # the weights file
    layer: str                      # the layer it writes
    steps: int | None               # training steps done
    saved_at: str | None            # ISO time it was saved
    model_shas: set[str]            # sha256 of its base model's file and of its weights


def list_encoder(path: str | os.PathLike) -> EncoderListing | None:
    """The listing of the encoder at `path`, or None when its sidecar is missing, too large
    or not an encoder's."""
    side = sidecar_path(path)
    try:
        if side.stat().st_size > MAX_SIDECAR_BYTES:
            return None
        meta = json.loads(side.read_text(encoding="utf-8"))
        steps = (meta.get("metrics") or {}).get("steps_done") or \
            (meta.get("training") or {}).get("steps")
        shas = {meta.get("base_model_sha256"), meta.get("base_model_weights_sha256")}
        return EncoderListing(path=str(path), layer=str(meta.get("layer", "?")),
                              steps=int(steps) if steps is not None else None,
                              saved_at=meta.get("saved_at"),
                              model_shas={x for x in shas if isinstance(x, str)})
    except (OSError, ValueError, AttributeError, TypeError):
        return None


def save_encoder(encoder: ActivationEncoder, path: str | os.PathLike,
                 meta: dict[str, Any] | None = None) -> Path:
    """Write the encoder (folder or .safetensors path) + JSON sidecar + model card; returns
    the weights path. `meta` adds to the sidecar (base model, training settings, metrics)."""
    from safetensors.torch import save_file

    weights, sidecar = _encoder_paths(path)
    state = {k: v.detach().to("cpu").contiguous() for k, v in encoder.state_dict().items()}
    atomic_write(weights,
                 lambda tmp: save_file(state, str(tmp), metadata={"format": ENCODER_FORMAT}))
    with open(weights, "rb") as f:
        file_sha = hashlib.file_digest(f, "sha256").hexdigest()
    record = {"format": ENCODER_FORMAT, "format_version": FORMAT_VERSION,
              **(meta or {}), "architecture": asdict(encoder.config),
              "layer": encoder.config.layer, "input_size": encoder.config.input_size,
              "sha256": file_sha,
              "saved_at": datetime.now(UTC).isoformat(timespec="seconds")}
    atomic_write_text(sidecar, json.dumps(record, indent=2) + "\n")
    encoder.meta = record
    if weights.name == ENCODER_FILE:
        atomic_write_text(weights.parent / CARD_FILE, model_card(record))
    return weights


def load_encoder(path: str | os.PathLike, expected_model_sha256: str | None = None,
                 device: str | torch.device | None = None) -> ActivationEncoder:
    """Load an encoder (folder, .safetensors path, or hf://owner/repo[/file]) in eval mode.

    With `expected_model_sha256` (the base model's file or weights sha256) an encoder made
    for another model is refused with a StudioError.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if str(path).startswith("hf://"):
        path = pull_encoder(str(path))
    weights, sidecar = _encoder_paths(path)
    if not weights.is_file():
        raise StudioError(f"no encoder at {path}: expected {weights.name} there (train one "
                          f"with `python -m engine train-encoder`)")
    if not sidecar.is_file():
        raise StudioError(f"the encoder {weights} has no {sidecar.name} beside it, so the "
                          f"model it belongs to is unknown")
    if sidecar.stat().st_size > MAX_SIDECAR_BYTES:
        raise StudioError(f"{sidecar} is too large to be an encoder sidecar")
    try:
        meta = json.loads(sidecar.read_text())
        config = EncoderConfig.from_dict(meta["architecture"])
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError, UnicodeError) as exc:
        raise StudioError(f"{sidecar} is not an encoder sidecar: it does not describe the "
                          f"encoder's architecture") from exc
    config.check_size(weights.stat().st_size)
    from engine.gan.checkpoints import check_safetensors_header

    check_safetensors_header(weights)
    if expected_model_sha256 is not None and not _model_matches(meta, expected_model_sha256):
        raise _other_model(meta, expected_model_sha256)
    encoder = ActivationEncoder(config)
    try:
        encoder.load_state_dict(load_file(str(weights)))
    except (SafetensorError, RuntimeError, OSError) as exc:
        raise StudioError(f"{weights} is damaged or does not match its sidecar's "
                          f"architecture, so the encoder cannot be loaded") from exc
    encoder.meta = meta
    return encoder.to(device or "cpu").eval().requires_grad_(False)


def model_card(meta: dict[str, Any]) -> str:
    """A Hub model card (README.md) for an encoder from its sidecar."""
    arch = meta.get("architecture", {})
    train = meta.get("training", {})
    metrics = meta.get("metrics", {})
    rows = "\n".join(f"| {k} | {v} |" for k, v in {**train, **metrics}.items())
    return f"""---
library_name: activation-studio
tags:
- stylegan2
- image-to-image
- activation-studio
---

# Activation encoder for `{meta.get("layer")}`

An image encoder that writes the `{meta.get("layer")}` activation maps
({arch.get("out_channels")} x {arch.get("out_size")} x {arch.get("out_size")}) of a StyleGAN2
generator from a {meta.get("input_size")} px picture ("rewriting activation maps"). Deployed in
place of the layers before it, it translates any picture into the model's domain while the
latent still steers the later layers.

- Base model: `{meta.get("base_model_id") or "unnamed"}`, sha256 `{meta.get("base_model_sha256")}`
- Weights sha256 of the base model: `{meta.get("base_model_weights_sha256")}`
- Made with Activation Studio (`python -m engine train-encoder`).

## Use

```python
from engine.models import zoo
from engine.tools.translator import Translator
G = zoo.load("{meta.get("base_model_id") or "default"}").G
tr = Translator.load("hf://OWNER/REPO", G)
out = tr.translate(picture, 1)   # latent: a seed, a LatentSpec or ws; uint8 HxWx3 out
```

## Training

| setting | value |
|---|---|
{rows}
"""


def push_encoder(path: str | os.PathLike, repo_id: str, token: str | None = None,
                 private: bool = False, api: Any = None, commit_message: str | None = None
                 ) -> str:
    """Upload an encoder folder (weights, sidecar, model card, preview) to a Hub model repo;
    returns the repo's URL. `api` is a huggingface_hub.HfApi (or a stand-in in tests)."""
    folder = Path(path)
    if folder.suffix == ".safetensors":
        folder = folder.parent
    weights, sidecar = _encoder_paths(folder)
    if not weights.is_file() or not sidecar.is_file():
        raise StudioError(f"{folder} is not an encoder folder: it needs {ENCODER_FILE} and "
                          f"{SIDECAR_FILE}")
    meta = json.loads(sidecar.read_text())
    if not (folder / CARD_FILE).is_file():
        (folder / CARD_FILE).write_text(model_card(meta))
    if api is None:
        from huggingface_hub import HfApi
        api = HfApi(token=token)
    try:
        repo = api.create_repo(repo_id, token=token, private=private, repo_type="model",
                               exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model",
                          token=token,
                          allow_patterns=[ENCODER_FILE, SIDECAR_FILE, CARD_FILE, PREVIEW_FILE],
                          commit_message=commit_message or
                          f"Upload activation encoder for {meta.get('layer')}")
    except StudioError:
        raise
    except Exception as exc:  # HTTP, auth and validation errors from the Hub client
        raise StudioError(f"could not push the encoder to {repo_id}: {_first_line(exc)} "
                          f"(check the repo id and that your token can write)") from exc
    return str(getattr(repo, "url", repo) or f"https://huggingface.co/{repo_id}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def pull_encoder(spec: str, token: str | None = None) -> Path:
    """Download `hf://owner/repo[/path/to/encoder.safetensors]` (+ its sidecar); returns
    the local weights path (in the Hugging Face cache)."""
    from huggingface_hub import hf_hub_download

    rest = spec.removeprefix("hf://").strip("/")
    parts = rest.split("/")
    if len(parts) < 2 or not all(parts[:2]):
        raise StudioError(f"{spec!r} is not a Hub encoder: write hf://owner/repo or "
                          f"hf://owner/repo/encoder.safetensors")
    repo_id, filename = "/".join(parts[:2]), "/".join(parts[2:]) or ENCODER_FILE
    if not filename.endswith(".safetensors"):
        filename = f"{filename}/{ENCODER_FILE}"
    sidecar = (filename[: -len(ENCODER_FILE)] + SIDECAR_FILE if filename.endswith(ENCODER_FILE)
               else filename.removesuffix(".safetensors") + ".json")
    try:
        if token is None:  # the zoo's guarded download: size, token and cache rules
            from engine.models import zoo

            # The small sidecar first: a refused one costs no weights download.
            zoo.hub_file(repo_id, sidecar, None, MAX_SIDECAR_BYTES,
                         limit_name="the sidecar size limit")
            local = zoo.hub_file(repo_id, filename, None, MAX_ENCODER_FILE_BYTES,
                                 limit_name="the encoder size limit")
        else:
            local = hf_hub_download(repo_id, filename, token=token)
            hf_hub_download(repo_id, sidecar, token=token)
    except StudioError:
        raise
    except Exception as exc:  # not found, gated, offline: say which and what to do
        raise StudioError(f"could not download {filename} from {repo_id}: "
                          f"{_first_line(exc)}") from exc
    return Path(local)


# ----------------------------------------------------------------------------------------
# Augmentations: generated pictures disturbed the way photos differ from them.
#
# The encoder only ever sees the generator's own images, so a photo's sensor noise, blur,
# compression, colour casts, framing and cluttered backgrounds are all new to it. Each
# training image is disturbed with probability `p`; the targets follow only the geometric
# part (crop/scale/flip moves the target image and activation with the input), so the
# encoder learns to map a photo-like picture back to the clean generated one.


@dataclass
class Augmentations:
    """Train-time disturbances of the encoder's input (all off with p = 0)."""
    p: float = 0.0             # probability that a training image is disturbed at all
    colour: float = 0.3        # brightness, contrast, saturation and per-channel gain, +-
    hue: float = 0.1           # hue rotation, +- this fraction of a full turn
    blur: float = 1.2          # largest Gaussian blur sigma, input pixels
    noise: float = 0.06        # largest std of added Gaussian noise (images in [-1, 1])
    jpeg: float = 0.3          # probability of a JPEG round trip at quality 15..85
    scale: float = 0.2         # zoom in [1/(1+scale), 1+scale] (crops and zoom-outs)
    shift: float = 0.08        # shift, +- this fraction of the picture
    flip: float = 0.5          # probability of a left-right flip
    background: float = 0.3    # probability of replacing the model's flat background

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if isinstance(value, bool) or not isinstance(value, int | float) \
                    or not math.isfinite(value) or value < 0:
                raise StudioError(f"augmentation {name} must be a number from 0, got {value!r}")
        for name in ("p", "jpeg", "flip", "background"):
            if getattr(self, name) > 1:
                raise StudioError(f"augmentation {name} is a probability: from 0 to 1")

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> Augmentations:
        d = d or {}
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise StudioError(f"unknown augmentation {sorted(unknown)[0]!r}; known: "
                              f"{', '.join(cls.__dataclass_fields__)}")
        return cls(**d)


PHOTO_AUGMENTATIONS = {"p": 0.6, "hue": 0.05}  # the shipped encoders' setting


def _uniform(gen: torch.Generator, n: int, lo: float, hi: float) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen)


def colour_jitter(x: torch.Tensor, gen: torch.Generator, amount: float, hue: float
                  ) -> torch.Tensor:
    """Random brightness, contrast, saturation, channel gains and hue of images in [-1, 1].

    On u = (x + 1) / 2: u * brightness * gain_c, then contrast about the image's mean grey,
    saturation about each pixel's grey, and a hue turn by angle a about the grey axis
    (Rodrigues' rotation of the RGB vector about (1, 1, 1) / sqrt(3)).
    """
    n = x.shape[0]

    def factors(count: int, lo: float, hi: float) -> torch.Tensor:
        # Drawn on the CPU (the same on every device), used where the images are.
        return _uniform(gen, count, lo, hi).to(x.device)
    u = (x + 1) / 2
    u = u * factors(n, 1 - amount, 1 + amount).view(n, 1, 1, 1)
    u = u * factors(3 * n, 1 - amount / 2, 1 + amount / 2).view(n, 3, 1, 1)
    grey = u.mean(1, keepdim=True)
    mean = grey.mean((2, 3), keepdim=True)
    u = mean + (u - mean) * factors(n, 1 - amount, 1 + amount).view(n, 1, 1, 1)
    grey = u.mean(1, keepdim=True)
    u = grey + (u - grey) * factors(n, 1 - amount, 1 + amount).view(n, 1, 1, 1)
    angle = _uniform(gen, n, -hue, hue) * 2 * math.pi  # the rotation is built on the CPU
    k = torch.ones(3) / math.sqrt(3)
    cross = torch.tensor([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    rot = (torch.cos(angle).view(n, 1, 1) * torch.eye(3)
           + torch.sin(angle).view(n, 1, 1) * cross
           + (1 - torch.cos(angle)).view(n, 1, 1) * torch.outer(k, k))
    u = torch.einsum("nij,njhw->nihw", rot.to(u), u)
    return (u.clamp(0, 1) * 2 - 1)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur (reflect padding) of NCHW images; sigma in pixels."""
    if sigma <= 0.05:
        return x
    radius = max(1, min(math.ceil(3 * sigma), x.shape[-1] // 2 - 1))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = (k / k.sum()).view(1, 1, 1, -1).repeat(x.shape[1], 1, 1, 1)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), k, groups=x.shape[1])
    return F.conv2d(F.pad(x, (0, 0, radius, radius), mode="reflect"), k.transpose(-1, -2),
                    groups=x.shape[1])


def jpeg_round_trip(x: torch.Tensor, quality: int) -> torch.Tensor:
    """One image [3, H, W] in [-1, 1] through a JPEG encode and decode at `quality`."""
    import io

    from PIL import Image

    arr = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).cpu()
    buf = io.BytesIO()
    Image.fromarray(arr.numpy()).save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    with Image.open(buf) as im:
        out = torch.from_numpy(np.asarray(im.convert("RGB")).copy())
    return (out.permute(2, 0, 1).float() / 127.5 - 1).to(x)


def random_affine(gen: torch.Generator, n: int, a: Augmentations) -> torch.Tensor:
    """[n, 2, 3] affine_grid matrices: zoom s (output shows 1/s of the picture), shift, flip."""
    log_s = _uniform(gen, n, -math.log1p(a.scale), math.log1p(a.scale))
    inv_zoom = torch.exp(-log_s)
    flip = torch.where(torch.rand(n, generator=gen) < a.flip, -1.0, 1.0)
    tx, ty = _uniform(gen, n, -2 * a.shift, 2 * a.shift), _uniform(gen, n, -2 * a.shift,
                                                                   2 * a.shift)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = inv_zoom * flip, inv_zoom
    theta[:, 0, 2], theta[:, 1, 2] = tx, ty
    return theta


def warp(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Resample NCHW maps through affine_grid matrices (reflection at the edges)."""
    grid = F.affine_grid(theta.to(x), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection",
                         align_corners=False)


def background_mask(img: torch.Tensor, softness: float = 0.08) -> torch.Tensor:
    """[N, 1, H, W] in [0, 1]: 1 where a pixel has the colour of the picture's top corners.

    The model's backgrounds are flat two-colour fields with a soft lighting ramp; the top
    corners are background in nearly every face, so pixels near their colours (within a
    tolerance that grows with the corners' own spread) are background.
    """
    h, w = img.shape[-2:]
    c = max(2, h // 10)
    corners = torch.stack([img[..., :c, :c], img[..., :c, -c:]], 1)   # [N, 2, 3, c, c]
    colours = corners.mean((-2, -1))                                     # [N, 2, 3]
    spread = (colours[:, 0] - colours[:, 1]).norm(dim=1).view(-1, 1, 1, 1)
    dist = torch.stack([(img - colours[:, i].view(-1, 3, 1, 1)).norm(dim=1, keepdim=True)
                        for i in range(2)]).amin(0)
    tol = 0.12 + spread / 2
    return torch.sigmoid((tol - dist) / softness)


def random_backgrounds(gen: torch.Generator, n: int, size: int,
                       photos: PhotoSet | None = None) -> torch.Tensor:
    """Clutter: a photo crop when photos are given (half the time), else a random smooth
    colour field with random-frequency texture, in [-1, 1]."""
    out = []
    for _ in range(n):
        if photos is not None and torch.rand(1, generator=gen).item() < 0.5:
            out.append(photos.crops(gen, 1, size)[0])
            continue
        coarse = torch.rand(1, 3, 3, 3, generator=gen) * 2 - 1
        field_ = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
        cells = int(torch.randint(4, size // 2 + 1, (1,), generator=gen))
        texture = torch.randn(1, 3, cells, cells, generator=gen) * 0.3
        texture = F.interpolate(texture, size=(size, size), mode="bilinear",
                                align_corners=False)
        out.append((field_ + texture).clamp(-1, 1)[0])
    return torch.stack(out)


def augment(x: torch.Tensor, gen: torch.Generator, a: Augmentations,
            photos: PhotoSet | None = None) -> torch.Tensor:
    """The photometric disturbances of a batch (geometry is done by the caller, so the
    targets can follow it): background swap, colour, blur, noise, JPEG, each image with
    probability a.p. Shapes and the [-1, 1] range are kept."""
    n = x.shape[0]
    chosen = torch.rand(n, generator=gen) < a.p
    y = x.clone()
    if a.background > 0:
        swap = chosen & (torch.rand(n, generator=gen) < a.background)
        if swap.any():
            idx = swap.nonzero().flatten()
            mask = background_mask(x[idx])
            clutter = random_backgrounds(gen, len(idx), x.shape[-1], photos).to(x)
            y[idx] = mask * clutter + (1 - mask) * x[idx]
    if a.colour > 0 or a.hue > 0:
        jittered = colour_jitter(y, gen, a.colour, a.hue)
        y = torch.where(chosen.view(n, 1, 1, 1).to(y.device), jittered, y)
    sigmas = _uniform(gen, n, 0, a.blur)
    noise_std = _uniform(gen, n, 0, a.noise)
    do_jpeg = torch.rand(n, generator=gen) < a.jpeg
    quality = torch.randint(15, 86, (n,), generator=gen)
    noise = torch.randn(y.shape, generator=gen).to(y)
    for i in chosen.nonzero().flatten().tolist():
        yi = gaussian_blur(y[i:i + 1], float(sigmas[i]))[0]
        yi = (yi + noise_std[i] * noise[i]).clamp(-1, 1)
        if do_jpeg[i]:
            yi = jpeg_round_trip(yi, int(quality[i]))
        y[i] = yi
    return y


# ----------------------------------------------------------------------------------------
# Unlabelled photos: no target activations, so only losses that need none.


class PhotoSet:
    """A folder of photos held in memory, small: each is shrunk so its short side is at
    most `max_side` pixels, at most `limit` files are read."""

    def __init__(self, folder: str | os.PathLike, max_side: int = 256, limit: int = 2000):
        from PIL import Image, UnidentifiedImageError

        root = Path(folder)
        if not root.is_dir():
            raise StudioError(f"no photo folder at {folder}")
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        self.images: list[torch.Tensor] = []
        for f in files[:limit]:
            try:
                with Image.open(f) as im:
                    im.draft("RGB", (max_side, max_side))
                    im = im.convert("RGB")
                    scale = max_side / min(im.size)
                    if scale < 1:
                        im = im.resize((max(1, round(im.width * scale)),
                                        max(1, round(im.height * scale))),
                                       Image.Resampling.LANCZOS)
                    arr = np.asarray(im)
            except (UnidentifiedImageError, OSError, Image.DecompressionBombError):
                continue  # an unreadable file in an unlabelled folder is skipped
            self.images.append(torch.from_numpy(arr.copy()).permute(2, 0, 1))
        if not self.images:
            raise StudioError(f"no readable photos ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
        self.folder = str(folder)

    def __len__(self) -> int:
        return len(self.images)

    def crops(self, gen: torch.Generator, n: int, size: int, min_fraction: float = 0.5
              ) -> torch.Tensor:
        """n random square crops (side a random fraction of the short side, random place,
        random flip) resized to size x size, float NCHW in [-1, 1]."""
        out = []
        for _ in range(n):
            img = self.images[int(torch.randint(len(self.images), (1,), generator=gen))]
            h, w = img.shape[-2:]
            side = max(1, round(min(h, w) * float(_uniform(gen, 1, min_fraction, 1.0))))
            top = int(torch.randint(h - side + 1, (1,), generator=gen))
            left = int(torch.randint(w - side + 1, (1,), generator=gen))
            crop = img[:, top:top + side, left:left + side].float()[None] / 127.5 - 1
            if torch.rand(1, generator=gen).item() < 0.5:
                crop = crop.flip(-1)
            out.append(resize_images(crop, size)[0])
        return torch.stack(out)


def activation_stats_loss(z: torch.Tensor) -> torch.Tensor:
    """How far standardised activations z [N, C, H, W] are from the layer's own statistics
    (per channel mean 0 and std 1 over the generator's images): mean_c mu_c^2 +
    mean_c (sigma_c - 1)^2, with mu_c, sigma_c over the batch and positions."""
    flat = z.transpose(0, 1).flatten(1)
    return flat.mean(1).pow(2).mean() + (flat.std(1) - 1).pow(2).mean()


def round_trip_loss(rendered: torch.Tensor, photo: torch.Tensor, coarsest: int = 8
                    ) -> torch.Tensor:
    """L1 between the render and the photo at coarse scales only (16 and 8 px on a 64 px
    model): the layout and colour masses must survive, the texture is the model's."""
    loss = torch.zeros((), device=rendered.device)
    size = rendered.shape[-1]
    photo = resize_images(photo.to(rendered), size)
    while size > 16:
        rendered, photo, size = F.avg_pool2d(rendered, 2), F.avg_pool2d(photo, 2), size // 2
    while size >= coarsest:
        loss = loss + (rendered - photo).abs().mean()
        if size // 2 < coarsest:
            break
        rendered, photo, size = F.avg_pool2d(rendered, 2), F.avg_pool2d(photo, 2), size // 2
    return loss


# ----------------------------------------------------------------------------------------
# Training.


@dataclass
class TrainSettings:
    """Everything that fixes a training run (saved in checkpoints and the sidecar)."""
    layer: str = DEFAULT_LAYER
    input_size: int | None = None   # None: the model's resolution
    steps: int = 1000
    batch: int = 8                  # per process
    lr: float = 2e-3
    warmup: int = 50                # linear lr warmup steps, then cosine decay to lr/20
    psi: float = 1.0                # truncation of the training latents
    cutoff: int | None = None
    act_weight: float = 1.0         # MSE on standardised activations (the seed's loss)
    image_weight: float = 1.0       # L1 pyramid through the frozen rest of G (0 = off)
    jitter: int = 0                 # train-time random circular shift, in layer pixels
    seed: int = 0
    noise_mode: str = "const"
    arch: dict[str, Any] = field(default_factory=dict)  # EncoderConfig overrides
    augment: dict[str, Any] = field(default_factory=dict)  # Augmentations fields ({}: off)
    photos: str | None = None       # folder of unlabelled photos (None: none)
    photo_batch: int = 4            # photo crops per step per process
    stats_weight: float = 0.0       # activation statistics of photos vs the layer's
    round_trip_weight: float = 0.0  # coarse L1 of photo vs its render through G
    init_from: str | None = None    # start from this encoder's weights (same layer/arch)


@dataclass
class TrainResult:
    path: Path | None               # the saved encoder's weights (None without out_dir)
    encoder: ActivationEncoder
    steps: int
    seconds: float
    images_per_s: float
    metrics: dict[str, float]


def _frozen_on(G: nn.Module, device: torch.device | str) -> nn.Module:
    """G itself when it is in eval mode on `device` with no parameter needing gradients;
    otherwise a frozen copy there. The caller's G is left exactly as it was."""
    device = torch.device(device)
    here = _device_of(G)
    if here.type == device.type and (device.index is None or here.index == device.index) \
            and not G.training and not any(p.requires_grad for p in G.parameters()):
        return G
    return copy.deepcopy(G).to(device).eval().requires_grad_(False)


def _rng(*key: int | str) -> torch.Generator:
    """A CPU generator seeded from a key: the same key gives the same draws, anywhere."""
    digest = hashlib.sha256(repr(key).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def _sample_ws(G: nn.Module, n: int, gen: torch.Generator, psi: float,
               cutoff: int | None) -> torch.Tensor:
    z = torch.randn(n, G.cfg.z_dim, generator=gen).to(_device_of(G))
    c = None
    if G.cfg.c_dim:
        labels = torch.randint(G.cfg.c_dim, (n,), generator=gen)
        c = F.one_hot(labels, G.cfg.c_dim).float().to(z.device)
    return G.mapping(z, c, psi=psi, cutoff=cutoff)


def _shared_noise(G: nn.Module, noise_mode: str, n: int, gen: torch.Generator,
                  device: torch.device) -> dict[str, torch.Tensor]:
    """Noise maps for a render and its re-render from a layer: drawn from the seeded CPU
    generator `gen` for noise_mode 'random' (never the device's global RNG), else none."""
    if noise_mode != "random" or networks.is_stylegan3(G):
        return {}
    return noise_maps(G, n, gen, device)


@torch.no_grad()
def _activation_stats(G: nn.Module, layer: str, s: TrainSettings, samples: int
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of the layer over `samples` generator draws."""
    acts = []
    for i in range(0, samples, 32):
        gen = _rng(s.seed, "stats", i)
        ws = _sample_ws(G, min(32, samples - i), gen, s.psi, s.cutoff)
        _, cap = G.synthesis(ws, noise_mode=s.noise_mode, capture=[layer], noise_generator=gen)
        acts.append(cap[layer].transpose(0, 1).flatten(1))
    a = torch.cat(acts, 1)
    return a.mean(1), a.std(1).clamp_min(1e-4)


def image_loss(pred: torch.Tensor, target: torch.Tensor, scales: int = 3) -> torch.Tensor:
    """L1 at full size plus L1 of 2x and 4x box-downsampled copies (colour and layout)."""
    loss = (pred - target).abs().mean()
    for _ in range(scales - 1):
        if pred.shape[-1] < 8:
            break
        pred, target = F.avg_pool2d(pred, 2), F.avg_pool2d(target, 2)
        loss = loss + (pred - target).abs().mean()
    return loss


def resize_images(img: torch.Tensor, size: int) -> torch.Tensor:
    """Resize NCHW images to size x size (antialiased when shrinking)."""
    if img.shape[-1] == size and img.shape[-2] == size:
        return img
    shrink = img.shape[-1] > size
    return F.interpolate(img, size=(size, size), mode="bilinear", align_corners=False,
                         antialias=shrink)


def _jitter(gen: torch.Generator, n: int, amount: int) -> list[tuple[int, int]]:
    if amount <= 0:
        return [(0, 0)] * n
    d = torch.randint(-amount, amount + 1, (n, 2), generator=gen)
    return [(int(a), int(b)) for a, b in d]


def _roll(x: torch.Tensor, shifts: list[tuple[int, int]], scale: int) -> torch.Tensor:
    if all(s == (0, 0) for s in shifts):
        return x
    return torch.stack([torch.roll(xi, (dy * scale, dx * scale), (-2, -1))
                        for xi, (dy, dx) in zip(x, shifts)])


def _lr_at(s: TrainSettings, step: int) -> float:
    if step < s.warmup:
        return s.lr * (step + 1) / s.warmup
    t = (step - s.warmup) / max(s.steps - s.warmup, 1)
    return s.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))


def _training_batch(G: nn.Module, enc_cfg: EncoderConfig, s: TrainSettings, step: int,
                    rank: int, photos: PhotoSet | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, dict]:
    """(ws, target image, encoder input, target activation, noise maps) for one step on one
    process. With noise_mode 'random' the maps are drawn from the step's seeded generator
    (the same on every device, whatever the global RNG), for the target and its re-render.

    With augmentations, the chosen images are first moved (zoom, shift, flip: the target
    image and activation move with them), then disturbed in the input only."""
    gen = _rng(s.seed, "step", step, rank)
    ws = _sample_ws(G, s.batch, gen, s.psi, s.cutoff)
    noise = _shared_noise(G, s.noise_mode, s.batch, gen, ws.device)
    with torch.no_grad():
        img, cap = G.synthesis(ws, noise_mode=s.noise_mode, capture=[enc_cfg.layer],
                               noise=noise)
    act = cap[enc_cfg.layer]
    shifts = _jitter(gen, s.batch, s.jitter)
    img = _roll(img, shifts, networks.layer_scale(G, enc_cfg.layer))
    act = _roll(act, shifts, 1)
    x = resize_images(img, enc_cfg.input_size)
    if s.augment:
        a = Augmentations.from_dict(s.augment)
        moved = torch.rand(s.batch, generator=gen) < a.p
        theta = random_affine(gen, s.batch, a)
        theta[~moved] = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
        if moved.any():
            img, act, x = warp(img, theta), warp(act, theta), warp(x, theta)
        with torch.no_grad():
            x = augment(x, gen, a, photos)
    return ws, img, x, act, noise


@torch.no_grad()
def _preview(G: nn.Module, encoder: ActivationEncoder, s: TrainSettings, path: Path) -> None:
    """A grid: generated input | its translation, PREVIEW_COUNT rows."""
    from PIL import Image

    from engine.tools.latents import image_grid

    was_training = encoder.training
    encoder.eval()
    gen = _rng(s.seed, "preview")
    ws = _sample_ws(G, PREVIEW_COUNT, gen, s.psi, s.cutoff)
    noise = _shared_noise(G, s.noise_mode, PREVIEW_COUNT, gen, ws.device)
    img = G.synthesis(ws, noise_mode=s.noise_mode, noise=noise)
    pred = encoder(resize_images(img, encoder.config.input_size))
    out = G.synthesis(ws, noise_mode=s.noise_mode, start=(encoder.config.layer, pred),
                      noise=noise)
    encoder.train(was_training)
    tiles = [t for pair in zip(to_uint8(img), to_uint8(out)) for t in pair]
    grid = image_grid(tiles, cols=2)
    atomic_write(path, lambda tmp: Image.fromarray(grid).save(tmp, format="PNG"))


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR (dB) of images in [-1, 1] (peak 1 on the [0, 1] scale)."""
    mse = ((a.clamp(-1, 1) - b.clamp(-1, 1)) / 2).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-10))


@torch.no_grad()
def fidelity_psnr(G: nn.Module, encoder: ActivationEncoder, seeds: Sequence[int] = range(64),
                  psi: float = 1.0, noise_mode: str = "const", batch: int = 16) -> float:
    """Mean PSNR (dB) of translating the generator's own images (held-out seeds, NVlabs
    seed convention) back through the encoder, vs those images."""
    from engine.tools.latents import seed_to_z

    encoder = encoder.eval()
    device = _device_of(G)
    values = []
    seeds = list(seeds)
    for i in range(0, len(seeds), batch):
        z = torch.cat([seed_to_z(int(sd), G.cfg.z_dim) for sd in seeds[i:i + batch]])
        ws = G.mapping(z.to(device), None, psi=psi)
        noise = _shared_noise(G, noise_mode, ws.shape[0], _rng("fidelity", i), device)
        img = G.synthesis(ws, noise_mode=noise_mode, noise=noise)
        pred = encoder(resize_images(img, encoder.config.input_size))
        out = G.synthesis(ws, noise_mode=noise_mode, start=(encoder.config.layer, pred),
                          noise=noise)
        values.append(psnr(out, img))
    return float(torch.cat(values).mean())


def train_encoder(G: nn.Module, layer: str = DEFAULT_LAYER, input_size: int | None = None,
                  steps: int = 1000, batch: int = 8, lr: float = 2e-3, psi: float = 1.0,
                  cutoff: int | None = None, act_weight: float = 1.0, image_weight: float = 1.0,
                  jitter: int = 0, seed: int = 0, out_dir: str | os.PathLike | None = None,
                  progress: Progress | None = None, cancel: Any = None,
                  preview_every: int = 100, checkpoint_every: int = 100, resume: bool = True,
                  keep_checkpoint: bool = False, model_sha256: str | None = None,
                  model_id: str | None = None, accelerator: Any = None, show_bar: bool = False,
                  stat_samples: int = STAT_SAMPLES, eval_seeds: Sequence[int] = range(16),
                  warmup: int = 50, noise_mode: str = "const", max_seconds: float | None = None,
                  augment: dict[str, Any] | None = None, photos: str | None = None,
                  photo_batch: int = 4, stats_weight: float = 0.0,
                  round_trip_weight: float = 0.0, init_from: str | None = None,
                  on_metrics: MetricsCallback | None = None, **arch: Any) -> TrainResult:
    """Train an ActivationEncoder for `layer` of the frozen generator G; see module doc.

    With out_dir: checkpoints (every `checkpoint_every` steps, at cancel) go to
    out_dir/checkpoint.pt and a run resumes from it; the preview grid (input | translation)
    is out_dir/preview.png; the final encoder is saved there (weights, sidecar, model card).
    progress(fraction, message) and on_metrics(step, {"loss", "act", "img", ..., "img_per_s"})
    hear each step (every LOG_EVERY steps on a GPU); `cancel` (callable / Event / bool) stops
    the run between steps with TrainingCancelled after writing a checkpoint. `arch` sets
    EncoderConfig fields (width, max_width, blocks, stage_blocks, groups, mean_filter).
    max_seconds ends training early (this session's time, all processes agreeing) and saves
    the encoder as it is; the lr schedule is the one for `steps`, so pick steps to fit.

    Towards photos: `augment` (Augmentations fields; {"p": 0.6} is the shipped setting)
    disturbs the generated inputs; `photos`, a folder of unlabelled pictures, adds
    `photo_batch` crops a step through two losses that need no target activation:
    stats_weight * activation_stats_loss(encoder(photo)) and round_trip_weight *
    round_trip_loss(G(ws, start=encoder(photo)), photo). `init_from` starts from a trained
    encoder's weights (fine-tuning; it must have this layer and architecture).
    """
    from accelerate import Accelerator

    if act_weight < 0 or image_weight < 0 or act_weight + image_weight <= 0:
        raise StudioError("loss weights must be >= 0 and not both 0")
    if steps < 1 or batch < 1:
        raise StudioError(f"steps and batch must be at least 1 (got {steps}, {batch})")
    if stats_weight < 0 or round_trip_weight < 0 or photo_batch < 1:
        raise StudioError("photo loss weights must be >= 0 and photo_batch at least 1")
    if (stats_weight or round_trip_weight) and not photos:
        raise StudioError("the photo losses need a folder of photos: give --photos")
    Augmentations.from_dict(augment)  # refuse bad settings before any work
    s = TrainSettings(layer=layer, input_size=input_size, steps=int(steps), batch=int(batch),
                      lr=float(lr), warmup=int(min(warmup, max(steps // 4, 1))), psi=float(psi),
                      cutoff=cutoff, act_weight=float(act_weight),
                      image_weight=float(image_weight), jitter=int(jitter), seed=int(seed),
                      noise_mode=noise_mode, arch=dict(arch), augment=dict(augment or {}),
                      photos=str(photos) if photos else None, photo_batch=int(photo_batch),
                      stats_weight=float(stats_weight),
                      round_trip_weight=float(round_trip_weight),
                      init_from=str(init_from) if init_from else None)
    photo_set = PhotoSet(photos) if photos else None
    # Train where G is (engine.base.devices: STUDIO_DEVICE), never move a CPU model to a GPU
    # behind the caller's back; cpu=True also lets a multi-process CPU launch (torchrun,
    # run_processes) form a gloo group.
    acc = accelerator or Accelerator(cpu=_device_of(G).type != "cuda")
    # G may be the studio's shared cached model: it is used as it is when it already is
    # frozen on this device, else through a private frozen copy, never changed in place.
    G = _frozen_on(G, acc.device)
    # Every draw comes from generators keyed by the seed (initial weights here, batches per
    # step), the same on every process; the process-wide generators are never reseeded.
    encoder = make_encoder(G, layer, input_size, generator=_rng(s.seed, "init"),
                           **arch).to(acc.device)
    opt = torch.optim.Adam(encoder.parameters(), lr=s.lr, betas=(0.9, 0.99))
    out = Path(out_dir) if out_dir is not None else None
    ckpt_path = out / CHECKPOINT_FILE if out is not None else None
    rank, world = acc.process_index, acc.num_processes
    t_run, images = time.perf_counter(), 0
    # Resume, cancel, time limit, progress and checkpoints: engine/training/loop.py. On a GPU the
    # losses stay on the device and are read back every LOG_EVERY steps (reading one is a
    # host/device round trip that stalls the GPU); the CPU has no round trip.
    loop = StepLoop(
        s.steps, checkpoint_every=checkpoint_every, accelerator=acc, history_key="loss",
        # More steps may be asked for on resuming (the warm-up follows the step count).
        checkpointer=Checkpointer(ckpt_path, asdict(s), may_change=["steps", "warmup"],
                                  defaults=asdict(TrainSettings())) if out else None,
        state=lambda: {"encoder": encoder.state_dict(), "optimizer": opt.state_dict(),
                       "config": asdict(encoder.config)},
        cancel=cancel, max_seconds=max_seconds, cancelled=lambda loop: TrainingCancelled(
            f"Encoder training stopped at step {loop.step} of {s.steps}; run it again to "
            f"resume."),
        progress=progress, on_metrics=on_metrics,
        describe=lambda loop, m: f"{describe_step(loop, m)} ({m['img_per_s']:.1f} img/s)",
        report_every=1 if acc.device.type == "cpu" else LOG_EVERY,
        bar=f"encoder {layer}" if show_bar else None,
        bar_keys=("loss", "act", "img", "stats", "trip", "img_per_s"))
    saved = loop.resume(acc.device) if resume else None
    if saved is not None:
        encoder.load_state_dict(saved["encoder"])
        opt.load_state_dict(saved["optimizer"])
    elif s.init_from:
        start_from = load_encoder(s.init_from, device=acc.device)
        if asdict(start_from.config) != asdict(encoder.config):
            raise StudioError(f"{s.init_from} has another layer or architecture than this "
                              f"run; fine-tune it with its own settings")
        encoder.load_state_dict(start_from.state_dict())
    else:
        mean, std = _activation_stats(G, layer, s, stat_samples)
        encoder.act_mean.copy_(mean)
        encoder.act_std.copy_(std)
    enc_cfg = encoder.config
    model, opt = acc.prepare(encoder, opt)
    model.train()

    for step in loop:
        ws, img, x, act, noise = _training_batch(G, enc_cfg, s, step, rank, photo_set)
        for g in opt.param_groups:
            g["lr"] = _lr_at(s, step)
        pred = model(x)
        loss = torch.zeros((), device=acc.device)
        parts = {}
        if s.act_weight > 0:
            parts["act"] = F.mse_loss(encoder.standardise(pred), encoder.standardise(act))
            loss = loss + s.act_weight * parts["act"]
        if s.image_weight > 0:
            rendered = G.synthesis(ws, noise_mode=s.noise_mode, start=(layer, pred),
                                   noise=noise)
            parts["img"] = image_loss(rendered, img)
            loss = loss + s.image_weight * parts["img"]
        if photo_set is not None and (s.stats_weight or s.round_trip_weight):
            gen = _rng(s.seed, "photos", step, rank)
            photo = photo_set.crops(gen, s.photo_batch, enc_cfg.input_size).to(acc.device)
            pred_photo = model(photo)
            if s.stats_weight:
                parts["stats"] = activation_stats_loss(encoder.standardise(pred_photo))
                loss = loss + s.stats_weight * parts["stats"]
            if s.round_trip_weight:
                ws_photo = _sample_ws(G, s.photo_batch, gen, s.psi, s.cutoff)
                rendered = G.synthesis(ws_photo, noise_mode=s.noise_mode,
                                       start=(layer, pred_photo), noise_generator=gen)
                parts["trip"] = round_trip_loss(rendered, photo)
                loss = loss + s.round_trip_weight * parts["trip"]
        opt.zero_grad(set_to_none=True)
        acc.backward(loss)
        opt.step()
        images += s.batch * world
        loop.end_step({"loss": loss.detach(), **{k: v.detach() for k, v in parts.items()},
                       "img_per_s": images / max(time.perf_counter() - t_run, 1e-9)})
        if out is not None and acc.is_main_process and preview_every and \
                (loop.step % preview_every == 0 or loop.step == s.steps):
            _preview(G, encoder, s, out / PREVIEW_FILE)

    stopped_early = loop.step if loop.stopped == "time" else None
    if stopped_early is not None and out is not None and preview_every and acc.is_main_process:
        _preview(G, encoder, s, out / PREVIEW_FILE)
    acc.wait_for_everyone()
    seconds = loop.elapsed()
    run_s = time.perf_counter() - t_run
    step, history = loop.step, loop.history
    encoder.eval()
    tail = history[-50:] or [float("nan")]
    metrics = {"final_loss": round(sum(tail) / len(tail), 6), "processes": world,
               "steps_done": step,
               "train_seconds": round(seconds, 1),
               "images_per_s": round(images / max(run_s, 1e-9), 2)}
    if eval_seeds:
        metrics["psnr_db_own_images"] = round(fidelity_psnr(
            G, encoder, [1_000_000 + int(x) for x in eval_seeds], s.psi, s.noise_mode), 3)
    path = None
    if out is not None and acc.is_main_process:
        meta = {"base_model_id": model_id, "base_model_sha256": model_sha256,
                "base_model_weights_sha256": weights_sha256(G),
                "base_model_config": G.cfg.to_dict(), "training": asdict(s),
                "metrics": metrics}
        path = save_encoder(encoder, out, meta)
        if not keep_checkpoint and ckpt_path.exists():
            ckpt_path.unlink()
    acc.wait_for_everyone()
    if stopped_early is not None:
        metrics["stopped_early_at_step"] = stopped_early
    return TrainResult(path, encoder, step, seconds, metrics["images_per_s"], metrics)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _process_main(rank: int, fn: Callable[..., Any], args: tuple, world: int, port: int
                  ) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), ACCELERATE_USE_CPU="true")
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)  # forked: forget the parent's
    # One intra-op thread per process, as torchrun sets: the processes already share the
    # cores, and a child forked from a parent whose OpenMP pool has started (any op with 2+
    # threads) hangs at its first parallel op unless it runs single-threaded.
    torch.set_num_threads(1)
    try:
        fn(*args)
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def run_processes(fn: Callable[..., Any], num_processes: int, args: tuple = ()) -> None:
    """Run fn(*args) in `num_processes` forked CPU processes that accelerate joins into one
    gloo group (what `torchrun --nproc_per_node N` does, without a launcher process)."""
    import torch.multiprocessing as mp

    if num_processes < 2:
        fn(*args)
        return
    mp.start_processes(_process_main, args=(fn, args, num_processes, _free_port()),
                       nprocs=num_processes, start_method="fork", join=True)


# ----------------------------------------------------------------------------------------
# Translation.


def _to_tensor(images: Any) -> tuple[torch.Tensor, bool]:
    """Pictures -> float NCHW in [-1, 1] (CPU) and whether a single picture was given.

    Accepts a PIL image, a uint8 HxWx3 (or HxW / HxWx4) array, a list of those, a uint8
    [N, H, W, 3] array, or a float NCHW tensor already in [-1, 1].
    """
    from PIL import Image

    if isinstance(images, torch.Tensor):
        if images.ndim == 3:
            return images.unsqueeze(0).float(), True
        if images.ndim != 4 or images.shape[1] not in (1, 3, 4):
            raise StudioError(f"an image tensor must be [N, 3, H, W], got {list(images.shape)}")
        t = images.float()
        return (t.repeat(1, 3, 1, 1) if t.shape[1] == 1 else t[:, :3]), False
    single = isinstance(images, Image.Image) or (
        isinstance(images, np.ndarray) and images.ndim in (2, 3))
    items = [images] if single else list(images)
    if not items:
        raise StudioError("no pictures to translate")
    out = []
    for i, item in enumerate(items):
        if isinstance(item, Image.Image):
            item = np.asarray(item.convert("RGB"))
        arr = np.asarray(item)
        if arr.ndim == 2:
            arr = np.stack([arr] * 3, -1)
        if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
            raise StudioError(f"picture {i} has shape {list(arr.shape)}; pictures must be "
                              f"H x W x 3 images")
        if arr.shape[2] == 1:
            arr = np.repeat(arr, 3, 2)
        if arr.dtype != np.uint8:
            arr = np.clip(arr, 0, 255).astype(np.uint8)
        t = torch.from_numpy(np.array(arr[:, :, :3])).permute(2, 0, 1)
        out.append(t.float() / 127.5 - 1)
    if len({t.shape for t in out}) > 1:
        out = [centre_crop_resize(t[None], max(min(t.shape[-2:]) for t in out))[0]
               for t in out]
    return torch.stack(out), single


def _is_single(images: Any) -> bool:
    """Whether `images` is one picture (as _to_tensor reads it), not a batch."""
    from PIL import Image

    if isinstance(images, torch.Tensor):
        return images.ndim == 3
    return isinstance(images, Image.Image) or (
        isinstance(images, np.ndarray) and images.ndim in (2, 3))


def centre_crop_resize(img: torch.Tensor, size: int) -> torch.Tensor:
    """Centre-crop NCHW images to a square, then resize to size x size."""
    h, w = img.shape[-2:]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return resize_images(img[..., top:top + side, left:left + side], size)


FRAMINGS = ("crop", "fit", "pad")   # how a picture becomes the encoder's square input
ANCHORS = ("latent", "match")       # what a strength below 1 blends towards (see render)


@dataclass(frozen=True)
class TranslateDefaults:
    """The one set of translation settings that the page, the CLI (`python -m engine
    translate`), recipes and this module's API all start from, so the same photo gives the
    same picture everywhere. Chosen on the tuning half of benchmarks/bench_translator.py's
    photos (the held-out half reports them)."""
    strength: float = 0.3           # domain strength: 1 the encoder alone, 0 the anchor's
    anchor: str = "match"           # below 1 blend towards the model's image like the picture
    framing: str = "crop"           # how a picture becomes the encoder's square (FRAMINGS)
    noise_mode: str = "const"       # per-layer noise: const, random or none
    seed: float = 0.0               # the latent when none is given
    psi: float = 0.7                # its truncation (the page starts at seed 0, psi 0.7)
    fit_steps: int = 20             # the match anchor's quick fit to the picture's colours
                                    # (engine/tools/translate_match.py; 0: the bank's alone)


DEFAULTS = TranslateDefaults()
DEFAULT_STRENGTH = DEFAULTS.strength
DEFAULT_ANCHOR = DEFAULTS.anchor
DEFAULT_FRAMING = DEFAULTS.framing


def _resize_hw(img: torch.Tensor, h: int, w: int) -> torch.Tensor:
    shrink = img.shape[-1] > w or img.shape[-2] > h
    return F.interpolate(img, size=(h, w), mode="bilinear", align_corners=False,
                         antialias=shrink)


def frame_pictures(img: torch.Tensor, size: int, framing: str = "crop") -> torch.Tensor:
    """NCHW pictures in [-1, 1] -> size x size squares, the way the encoder will see them.

    crop: the centre square, resized (loses the long side's ends);
    fit:  the whole picture squeezed into the square (proportions change);
    pad:  the whole picture, proportions kept, centred on its own border's mean colour.
    """
    if framing not in FRAMINGS:
        raise StudioError(f"framing must be one of {', '.join(FRAMINGS)}, not {framing!r}")
    h, w = img.shape[-2:]
    if framing == "crop" or h == w:
        return centre_crop_resize(img, size)
    if framing == "fit":
        return _resize_hw(img, size, size)
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    inner = _resize_hw(img, nh, nw)
    border = torch.cat([img[..., 0, :], img[..., -1, :], img[..., :, 0], img[..., :, -1]], -1)
    out = border.mean(-1)[..., None, None].expand(*img.shape[:-2], size, size).clone()
    top, left = (size - nh) // 2, (size - nw) // 2
    out[..., top:top + nh, left:left + nw] = inner
    return out


def can_stop_early(G: nn.Module) -> bool:
    """Whether G's synthesis can end after a block (`stop`): StyleGAN2's skip architecture,
    whose blocks each add to a running image."""
    from engine.gan.stylegan2 import SynthesisNetwork

    return isinstance(G.synthesis, SynthesisNetwork) and G.cfg.architecture == "skip"


def start_skip_name(layer: str) -> str | None:
    """The running RGB image a start at `layer` continues from (`b{res/2}.img`); None at
    the first block."""
    res, _ = parse_layer(layer)
    return f"b{res // 2}.img" if res > 4 else None


def noise_maps(G: nn.Module, n: int, generator: torch.Generator, device: torch.device
               ) -> dict[str, torch.Tensor]:
    """Per-layer noise maps drawn exactly as a noise_mode='random' render with `generator`
    draws them (synthesis order, [n, 1, res, res], on the generator's device), so two
    renders can share them."""
    maps = {}
    for name in conv_layers(G):
        res = int(name.split(".")[0][1:])
        maps[name] = torch.randn(n, 1, res, res, generator=generator,
                                 device=generator.device).to(device)
    return maps


def check_anchor(anchor: Any) -> str:
    """'latent' (blend towards the latent's own activation) or 'match' (towards the model's
    image laid out most like the picture, engine/tools/anchors.py), or a StudioError."""
    if anchor not in ANCHORS:
        raise StudioError(f"blend towards must be one of {', '.join(ANCHORS)}, not {anchor!r}")
    return str(anchor)


def check_strength(strength: Any) -> float:
    """The domain strength as a float in [0, 1], or a StudioError saying so."""
    try:
        value = float(strength)
    except (TypeError, ValueError) as exc:
        raise StudioError(f"domain strength must be a number from 0 to 1, not {strength!r}"
                          ) from exc
    if not 0.0 <= value <= 1.0:  # (also refuses nan)
        raise StudioError(f"domain strength must be from 0 to 1, got {strength!r}")
    return value


class Translator:
    """A generator plus an encoder for one of its layers: pictures in, translated out.

    translate(): the encoder writes the layer from each picture; the later layers read ws
    (a seed, a LatentSpec or ws), so the latent still steers the output; taps on layers
    after the start layer bend it (taps on earlier layers have nothing to act on).
    """

    def __init__(self, G: nn.Module, encoder: ActivationEncoder, layer: str | None = None,
                 check_model: bool = True):
        self.G = G
        self.layer = layer or encoder.config.layer
        if self.layer != encoder.config.layer:
            raise StudioError(f"this encoder writes {encoder.config.layer}, not {self.layer}")
        shape = _layer_shape(G, self.layer)
        cfg = encoder.config
        if (cfg.out_channels, cfg.out_size, cfg.out_size) != shape:
            raise StudioError(f"this encoder writes {self.layer} as "
                              f"{cfg.out_channels}x{cfg.out_size}x{cfg.out_size}, but this "
                              f"model's {self.layer} is {'x'.join(map(str, shape))}: it was "
                              f"trained for another model")
        if (check_model and encoder.meta.get("base_model_weights_sha256")
                and not _model_matches(encoder.meta, weights_sha256(G))):
            raise _other_model(encoder.meta, weights_sha256(G))
        self.encoder = encoder.to(_device_of(G)).eval().requires_grad_(False)
        self._ws: torch.Tensor | None = None
        self._frame_kwargs: dict[str, Any] = {}
        self._frame_strength = DEFAULTS.strength
        self._framing = DEFAULTS.framing
        self._frame_anchor = DEFAULTS.anchor
        self._noise_seed = 0
        self._kept_anchor: torch.Tensor | None = None   # translate_frame's last anchor

    @classmethod
    def load(cls, encoder: str | os.PathLike | ActivationEncoder, G: nn.Module,
             model_sha256: str | None = None) -> Translator:
        """A Translator from an encoder path / hf:// spec / object; refuses an encoder made
        for another model (G's file sha256 `model_sha256`, or its weights, must match)."""
        if not isinstance(encoder, ActivationEncoder):
            encoder = load_encoder(encoder, device=_device_of(G))
        meta = encoder.meta
        known = meta.get("base_model_sha256") or meta.get("base_model_weights_sha256")
        if known and not (model_sha256 and _model_matches(meta, model_sha256)) and not (
                _model_matches(meta, weights_sha256(G))):
            raise _other_model(meta, model_sha256 or weights_sha256(G))
        return cls(G, encoder)

    @property
    def input_size(self) -> int:
        return self.encoder.config.input_size

    @property
    def device(self) -> torch.device:
        """Where it computes: its generator's device (so a moved copy follows it)."""
        return _device_of(self.G)

    def to(self, device: torch.device | str) -> Translator:
        """Move the generator, the encoder and the webcam state to `device`, in place (as
        nn.Module.to does; give a deep copy to keep this one where it is)."""
        self.G.to(device)
        self.encoder.to(device)
        if self._ws is not None:
            self._ws = self._ws.to(device)
        if self._kept_anchor is not None:
            self._kept_anchor = self._kept_anchor.to(device)
        return self

    # --- latents ---------------------------------------------------------------------

    def ws_for(self, latent: Any = None, n: int = 1) -> torch.Tensor:
        """ws [n, num_ws, w_dim] from ws, a LatentSpec, a seed, or None (seed 0)."""
        from engine.tools.latents import LatentSpec, compute_ws

        if latent is None:
            latent = LatentSpec(seed=DEFAULTS.seed, psi=DEFAULTS.psi)
        if isinstance(latent, int | float | np.integer | np.floating):
            latent = LatentSpec(seed=float(latent))
        if isinstance(latent, LatentSpec):
            ws = compute_ws(self.G, latent)
        else:
            ws = torch.as_tensor(np.asarray(latent) if not isinstance(latent, torch.Tensor)
                                 else latent).float()
            if ws.ndim == 2:
                ws = ws.unsqueeze(0)
        if ws.ndim != 3 or ws.shape[1:] != (self.G.num_ws, self.G.cfg.w_dim):
            raise StudioError(f"ws must be [N, {self.G.num_ws}, {self.G.cfg.w_dim}], got "
                              f"{list(ws.shape)}")
        ws = ws.to(self.device)
        if ws.shape[0] == 1 and n > 1:
            ws = ws.expand(n, -1, -1)
        elif ws.shape[0] != n:
            raise StudioError(f"{ws.shape[0]} latents for {n} pictures: give one or one each")
        return ws

    # --- translation -----------------------------------------------------------------

    def frame(self, images: Any, framing: str = DEFAULT_FRAMING,
              input_size: int | None = None) -> torch.Tensor:
        """Pictures (anything translate takes) -> float NCHW [-1, 1] squares at the encoder's
        input size, framed by `framing` (FRAMINGS): exactly what the encoder reads."""
        size = int(input_size or self.input_size)
        if isinstance(images, torch.Tensor):
            x, _ = _to_tensor(images)
            return frame_pictures(x.to(self.device, torch.float32), size, framing)
        items = [images] if _is_single(images) else list(images)
        if not items:
            raise StudioError("no pictures to translate")
        return torch.cat([frame_pictures(_to_tensor(item)[0].to(self.device), size, framing)
                          for item in items])

    def encode(self, images: torch.Tensor, input_size: int | None = None,
               framing: str = DEFAULT_FRAMING) -> torch.Tensor:
        """Float NCHW pictures in [-1, 1] (any size) -> the layer's activation."""
        size = int(input_size or self.input_size)
        x = frame_pictures(images.to(self.device, torch.float32), size, framing)
        act = self.encoder(x)
        out = self.encoder.config.out_size
        if act.shape[-1] != out:  # another input size: fit the map to the layer
            act = F.interpolate(act, size=(out, out), mode="bilinear", align_corners=False,
                                antialias=act.shape[-1] > out)
        return act

    def render(self, act: torch.Tensor, ws: torch.Tensor, strength: float = 1.0,
               noise_mode: str = "const", taps: dict | None = None,
               weight_taps: dict | None = None,
               noise_generator: torch.Generator | None = None,
               anchor_ws: torch.Tensor | None = None, stop: str | None = None,
               block_seconds: dict[int, float] | None = None) -> torch.Tensor:
        """The layer's activation `act` (from the encoder) rendered through the rest of G.
        `stop` and `block_seconds` go to the synthesis that draws it (a preview ends after
        block `stop`: StyleGAN2 skip only; see its forward).

        Domain strength s blends the picture with a latent's own activation at the start
        layer, that of `anchor_ws` when given (engine/tools/anchors.py), else of ws:

            a    = s * act + (1 - s) * a_anchor   (its activation there)
            skip = (1 - s) * img_anchor           (its running RGB image before it)

        The layers after the start layer read ws; with an anchor, all but the last
        anchors.LATENT_BLOCKS blocks read the anchor's ws (its colours and coarse shapes),
        those the latent's. s = 1 is the encoder alone (the picture's layout); s = 0 without
        an anchor is exactly the latent's own image; in between the picture is drawn more
        and more in the model's own content. Bends on layers before the start layer act on
        the anchor's (the latent's) part.
        """
        strength = check_strength(strength)
        kw = dict(noise_mode=noise_mode, taps=taps, weight_taps=weight_taps)
        last = {k: v for k, v in (("stop", stop), ("block_seconds", block_seconds))
                if v is not None}
        if strength >= 1.0:
            return self.G.synthesis(ws, start=(self.layer, act),
                                    noise_generator=noise_generator, **kw, **last)
        noise = None
        if noise_mode == "random":  # both renders must read the same noise
            gen = noise_generator or torch.Generator().manual_seed(0)
            noise = noise_maps(self.G, ws.shape[0], gen, self.device)
        skip_name = start_skip_name(self.layer)
        wanted = [self.layer] + ([skip_name] if skip_name else [])
        own_ws = ws if anchor_ws is None else anchor_ws
        # Only the start layer's activation (and the image entering it) is wanted from this
        # render: a network that can stop early (StyleGAN2 skip) ends after the start
        # layer's block instead of drawing a second whole picture; the same values.
        if can_stop_early(self.G):
            kw["stop"] = f"b{parse_layer(self.layer)[0]}"
        _, own = self.G.synthesis(own_ws, capture=wanted, noise=noise, **kw)
        kw.pop("stop", None)
        mixed = strength * act + (1 - strength) * own[self.layer]
        start = (self.layer, mixed)
        if skip_name:
            start = (self.layer, mixed, (1 - strength) * own[skip_name])
        if anchor_ws is not None:  # the anchor also draws the coarse later blocks (colour)
            from engine.tools import anchors

            ws = anchors.with_latent(self.G, anchor_ws, ws)
        return self.G.synthesis(ws, start=start, noise=noise, **kw, **last)

    @torch.inference_mode()
    def translate_tensor(self, images: Any, ws: Any = None,
                         noise_mode: str = DEFAULTS.noise_mode,
                         taps: dict | None = None, weight_taps: dict | None = None,
                         noise_generator: torch.Generator | None = None,
                         input_size: int | None = None, framing: str = DEFAULT_FRAMING,
                         strength: float = DEFAULT_STRENGTH, anchor: str = DEFAULT_ANCHOR,
                         fit_steps: int | None = None) -> torch.Tensor:
        """Pictures -> translated images, float NCHW in [-1, 1] at the model's resolution."""
        x = self.frame(images, framing, input_size)
        act = self.encode(x, input_size)
        ws = self.ws_for(ws, act.shape[0])
        return self.render(act, ws, strength, noise_mode, taps, weight_taps, noise_generator,
                           self.anchor_for(x, ws, strength, anchor, fit_steps))

    def anchor_for(self, pictures: torch.Tensor, ws: torch.Tensor, strength: float,
                   anchor: str, fit_steps: int | None = None) -> torch.Tensor | None:
        """The anchor ws render blends towards (None: the latent's own), for framed
        pictures: the bank's most alike sample fitted to each picture's coarse colours in
        `fit_steps` steps (DEFAULTS.fit_steps; engine/tools/translate_match.py), or with 0 steps
        the bank's blend (engine/tools/anchors.py). None is looked up when the strength leaves
        nothing to blend."""
        if check_anchor(anchor) == "latent" or check_strength(strength) >= 1.0:
            return None
        from engine.tools import anchors, translate_match

        steps = DEFAULTS.fit_steps if fit_steps is None else int(fit_steps)
        if steps > 0:
            return translate_match.fit_anchor_ws(self.G, pictures, ws, steps).to(ws)
        return anchors.anchor_ws(self.G, pictures, ws)

    def translate(self, images: Any, latent: Any = None, taps: dict | None = None,
                  weight_taps: dict | None = None, noise_mode: str | None = None,
                  noise_seed: int = 0, input_size: int | None = None,
                  framing: str = DEFAULT_FRAMING, strength: float = DEFAULT_STRENGTH,
                  anchor: str = DEFAULT_ANCHOR, fit_steps: int | None = None,
                  return_framed: bool = False) -> Any:
        """Pictures (PIL / uint8 HxWx3 / list / NCHW tensor) -> uint8 images.

        latent: ws, a LatentSpec, or a seed. One picture in gives HxWx3 out; a batch gives
        [N, H, W, 3]. framing: 'crop', 'fit' or 'pad' (frame_pictures); strength: the
        domain strength and anchor what it blends towards (render, ANCHORS), fit_steps
        the match anchor's fit (anchor_for; None: DEFAULTS.fit_steps). With
        return_framed, (translations, framed inputs): the second is exactly what the encoder
        saw, uint8 at its input size.
        """
        from engine.tools.latents import LatentSpec

        if noise_mode is None:
            noise_mode = latent.noise_mode if isinstance(latent, LatentSpec) else "const"
            if isinstance(latent, LatentSpec):
                noise_seed = latent.noise_seed
        gen = None
        if noise_mode == "random":
            gen = torch.Generator().manual_seed(int(noise_seed))  # CPU: device-independent
        single = _is_single(images)
        with torch.inference_mode():
            x = self.frame(images, framing, input_size)
        out = to_uint8(self.translate_tensor(x, latent, noise_mode, taps, weight_taps, gen,
                                             input_size, strength=strength, anchor=anchor,
                                             fit_steps=fit_steps))
        if return_framed:
            seen = to_uint8(x)
            return (out[0], seen[0]) if single else (out, seen)
        return out[0] if single else out

    # --- real time -------------------------------------------------------------------

    def set_latent(self, latent: Any, taps: dict | None = None,
                   weight_taps: dict | None = None, noise_mode: str = DEFAULTS.noise_mode,
                   strength: float = DEFAULT_STRENGTH, framing: str = DEFAULT_FRAMING,
                   anchor: str = DEFAULT_ANCHOR, noise_seed: int | None = None) -> None:
        """Fix the ws (and bends, strength, framing, anchor) translate_frame uses until the
        next call. Random noise is drawn from `noise_seed` (default: the LatentSpec's, else
        0) for every frame, as engine.render draws it for that recipe."""
        from engine.tools.latents import LatentSpec

        if noise_seed is None:
            noise_seed = latent.noise_seed if isinstance(latent, LatentSpec) else 0
        self._frame_anchor = check_anchor(anchor)
        if framing not in FRAMINGS:
            raise StudioError(f"framing must be one of {', '.join(FRAMINGS)}, not {framing!r}")
        with torch.inference_mode():
            self._ws = self.ws_for(latent, 1).clone()
        self._frame_kwargs = dict(taps=taps, weight_taps=weight_taps, noise_mode=noise_mode)
        self._frame_strength = check_strength(strength)
        self._framing = framing
        self._noise_seed = int(noise_seed)

    @torch.inference_mode()
    def translate_frame(self, frame: np.ndarray, stop: str | None = None,
                        block_seconds: dict[int, float] | None = None) -> np.ndarray:
        """One uint8 HxWx3 frame (a webcam image) -> one translated uint8 frame, fast.

        Uses the ws cached by set_latent (seed 0 if never set); no per-frame mapping pass.
        stop `b{res}`: a preview, the running image after that block (res x res); block_seconds
        is filled with each block's seconds (render).
        """
        if self._ws is None:
            self.set_latent(None)
        arr = np.asarray(frame)
        if arr.ndim != 3 or arr.shape[2] < 3:
            raise StudioError(f"a frame must be H x W x 3, got shape {list(arr.shape)}")
        h, w = arr.shape[:2]
        framing = self._framing
        if framing == "crop":  # crop before converting: only the square is copied
            side = min(h, w)
            top, left = (h - side) // 2, (w - side) // 2
            arr = arr[top:top + side, left:left + side]
        # A frame is often read-only (np.asarray of a PIL picture): torch warns on a tensor
        # built on it, so such a frame is copied (a cropped one is copied anyway).
        x = torch.from_numpy(np.require(arr[..., :3], requirements=["C", "W"]))
        x = x.to(self.device)
        x = frame_pictures(x.permute(2, 0, 1)[None].float() / 127.5 - 1, self.input_size,
                           framing)
        act = self.encoder(x)
        anchor = None
        if self._frame_anchor == "match" and self._frame_strength < 1.0:
            anchor = self._frame_anchor_ws(x)
        gen = None
        if self._frame_kwargs.get("noise_mode") == "random":  # CPU: device-independent
            gen = torch.Generator().manual_seed(self._noise_seed)
        img = self.render(act, self._ws, self._frame_strength, **self._frame_kwargs,
                          noise_generator=gen, anchor_ws=anchor, stop=stop,
                          block_seconds=block_seconds)
        out = (img[0] * 127.5 + 128).clamp(0, 255).to(torch.uint8)
        return out.permute(1, 2, 0).cpu().numpy()

    def _frame_anchor_ws(self, x: torch.Tensor) -> torch.Tensor:
        """A webcam frame's anchor: the blend translate() uses (its weights move smoothly
        from frame to frame), or with one anchor the previous frame's while it still fits
        (no flicker between near-equal faces)."""
        from engine.tools import anchors

        if anchors.BLEND > 1:
            return anchors.anchor_ws(self.G, x, self._ws)
        self._kept_anchor = anchors.choose(self.G, x, self._ws, keep=self._kept_anchor)
        bank = anchors.bank_for(self.G)
        return anchors.seed_ws(self.G, (self._kept_anchor + bank.first_seed).tolist())

    # --- folders and videos ----------------------------------------------------------

    def translate_folder(self, src: str | os.PathLike, dst: str | os.PathLike,
                         latent: Any = None, taps: dict | None = None,
                         weight_taps: dict | None = None, progress: Progress | None = None,
                         cancel: Any = None, framing: str = DEFAULT_FRAMING,
                         strength: float = DEFAULT_STRENGTH, anchor: str = DEFAULT_ANCHOR
                         ) -> list[Path]:
        """Translate every picture in a folder to PNGs of the same names in `dst`."""
        from PIL import Image, UnidentifiedImageError

        files = sorted(p for p in Path(src).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise StudioError(f"no pictures ({', '.join(IMAGE_SUFFIXES)}) in {src}")
        ws = self.ws_for(latent, 1)
        written = []
        for i, f in enumerate(files):
            if cancel_requested(cancel):
                raise StudioError(f"translation stopped after {i} of {len(files)} pictures")
            try:
                with Image.open(f) as im:
                    pic = im.convert("RGB")
            except (UnidentifiedImageError, OSError) as exc:
                raise StudioError(f"cannot read {f.name} as a picture") from exc
            out = self.translate(pic, ws, taps, weight_taps, framing=framing,
                                 strength=strength, anchor=anchor)
            target = Path(dst) / f"{f.stem}.png"
            atomic_write(target,
                         lambda tmp, out=out: Image.fromarray(out).save(tmp, format="PNG"))
            written.append(target)
            if progress is not None:
                progress((i + 1) / len(files), f"translated {f.name}")
        return written

    def translate_video(self, src: str | os.PathLike, dst: str | os.PathLike,
                        latent: Any = None, walk: Sequence[float] | None = None,
                        psi: float = 1.0, fps: float | None = None,
                        max_frames: int | None = None, taps: dict | None = None,
                        weight_taps: dict | None = None, progress: Progress | None = None,
                        cancel: Any = None, framing: str = DEFAULT_FRAMING,
                        strength: float = DEFAULT_STRENGTH, anchor: str = DEFAULT_ANCHOR
                        ) -> Path:
        """Translate a video frame by frame: one latent throughout, or a looping walk through
        the seeds in `walk` (W-space lerp). Writes .mp4 or .gif; returns the path."""
        from engine.base.video import read_video_frames, write_video
        from engine.tools.latents import interpolate_ws

        # Shrink frames as they are read: only encoder-sized frames are held in memory.
        with torch.inference_mode():
            small = [frame_pictures(_to_tensor(f)[0], self.input_size, framing)
                     for f in read_video_frames(src, max_frames)]
        if not small:
            raise StudioError(f"{Path(src).name} has no frames")
        if walk:
            ws_frames: Iterable[torch.Tensor] = interpolate_ws(
                self.G, list(walk), len(small), loop=True, psi=psi)
        else:
            ws_frames = [self.ws_for(latent, 1)] * len(small)

        def frames() -> Iterator[np.ndarray]:
            for x, ws in zip(small, ws_frames):
                yield self.translate(x, ws, taps, weight_taps, strength=strength,
                                     anchor=anchor)[0]

        total = len(small)
        report = None
        if progress is not None:
            def report(i: int) -> None:
                progress((i + 1) / total, f"frame {i + 1}/{total}")
        return write_video(frames(), dst, fps or _video_fps(src), report, cancel, total)


def _video_fps(path: str | os.PathLike, default: float = 30.0) -> float:
    p = Path(path)
    try:
        if p.suffix.lower() == ".gif":
            from PIL import Image
            with Image.open(p) as im:
                ms = im.info.get("duration") or 0
            return 1000.0 / ms if ms else default
        import imageio_ffmpeg
        reader = imageio_ffmpeg.read_frames(str(p))
        meta = next(reader)
        reader.close()
        return float(meta.get("fps") or default)
    except Exception:  # an unreadable header: the frame reader reports it properly
        return default


# ----------------------------------------------------------------------------------------
# Command line.


def _load_model(spec: str, device: Any = None) -> tuple[nn.Module, str, str]:
    """(G, file sha256, id) of a zoo spec or a model file."""
    from engine.models import zoo

    m = zoo.load(spec, device=device)
    return m.G, m.sha256, m.id


def _cmd_train(args: argparse.Namespace) -> None:
    if args.processes > 1:
        run_processes(_train_from_args, args.processes, (args,))
    else:
        _train_from_args(args)


def _train_from_args(args: argparse.Namespace) -> None:
    from accelerate import Accelerator

    acc = Accelerator(cpu=args.cpu or not torch.cuda.is_available())
    G, sha, model_id = _load_model(args.model, acc.device)
    arch = {k: getattr(args, k) for k in ("width", "max_width", "blocks", "mean_filter")
            if getattr(args, k) is not None}
    result = train_encoder(
        G, layer=args.layer, input_size=args.input_size, steps=args.steps, batch=args.batch,
        lr=args.lr, psi=args.psi, act_weight=args.act_weight, image_weight=args.image_weight,
        jitter=args.jitter, seed=args.seed, out_dir=args.out, preview_every=args.preview_every,
        checkpoint_every=args.checkpoint_every, resume=not args.no_resume,
        keep_checkpoint=args.keep_checkpoint, model_sha256=sha, model_id=model_id,
        max_seconds=args.max_minutes * 60 if args.max_minutes else None,
        accelerator=acc, show_bar=True, augment=_augment_arg(args.augment),
        photos=args.photos, photo_batch=args.photo_batch, stats_weight=args.stats_weight,
        round_trip_weight=args.round_trip_weight, init_from=args.init_from, **arch)
    if acc.is_main_process:
        print(json.dumps({"encoder": str(result.path), "steps": result.steps,
                          **result.metrics}))


def _augment_arg(text: str | None) -> dict[str, Any]:
    """--augment: 'photo' (the shipped setting), 'off', or JSON of Augmentations fields."""
    if not text or text == "off":
        return {}
    if text == "photo":
        return dict(PHOTO_AUGMENTATIONS)
    try:
        d = json.loads(text)
        assert isinstance(d, dict)
    except (json.JSONDecodeError, AssertionError) as exc:
        raise StudioError(f"--augment takes 'photo', 'off' or a JSON object such as "
                          f'\'{{"p": 0.6, "blur": 1.0}}\', not {text!r}') from exc
    Augmentations.from_dict(d)
    return d


def _cmd_translate(args: argparse.Namespace) -> None:
    from engine.tools.latents import LatentSpec

    G, sha, _ = _load_model(args.model)
    tr = Translator.load(args.encoder, G, model_sha256=sha)
    latent = LatentSpec(seed=args.seed, psi=args.psi, noise_mode=args.noise_mode,
                        noise_seed=args.noise_seed)
    style = dict(framing=args.framing, strength=check_strength(args.strength),
                 anchor=args.anchor)
    src, out = Path(args.input), Path(args.out)
    if src.is_dir():
        paths = tr.translate_folder(src, out, latent, **style)
        print(f"translated {len(paths)} pictures into {out}")
    elif src.suffix.lower() in VIDEO_SUFFIXES:
        tr.translate_video(src, out, latent, walk=args.walk, psi=args.psi, fps=args.fps,
                           max_frames=args.max_frames, **style)
        print(f"wrote {out}")
    elif src.is_file():
        from PIL import Image
        with Image.open(src) as im:
            pic = im.convert("RGB")
        img = tr.translate(pic, latent, **style)
        if out.suffix.lower() not in IMAGE_SUFFIXES:
            out = out / f"{src.stem}.png"
        atomic_write(out, lambda tmp: Image.fromarray(img).save(tmp, format="PNG"))
        print(f"wrote {out}")
    else:
        raise StudioError(f"no such picture, folder or video: {src}")


def _cmd_push(args: argparse.Namespace) -> None:
    url = push_encoder(args.path, args.repo, token=args.token or os.environ.get("HF_TOKEN"),
                       private=args.private)
    print(f"pushed to {url}")


def add_cli(sub: Any) -> None:
    """Register train-encoder, translate and push-encoder."""
    p = sub.add_parser("train-encoder", help="train an activation encoder for a layer",
                       description="Train an encoder that writes a layer's activations from "
                       "a picture. Several GPUs: `accelerate launch --multi_gpu -m engine "
                       "train-encoder ...`; several CPU processes: --processes N or `torchrun "
                       "--nproc_per_node N -m engine train-encoder ...`.")
    p.add_argument("--model", default="default", help="zoo id, Hub id or model file")
    p.add_argument("--layer", default=DEFAULT_LAYER, help="b{res}.conv0 or b{res}.conv1")
    p.add_argument("--input-size", type=int, default=None, help="input pixels (model's)")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch", type=int, default=8, help="images per step per process")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--psi", type=float, default=1.0, help="truncation of training latents")
    p.add_argument("--act-weight", type=float, default=1.0, help="activation MSE weight")
    p.add_argument("--image-weight", type=float, default=1.0,
                   help="image loss weight through the rest of G (0: activation MSE only)")
    p.add_argument("--jitter", type=int, default=0, help="train-time shift, layer pixels")
    p.add_argument("--mean-filter", type=int, default=None, help="odd output box filter")
    p.add_argument("--width", type=int, default=None, help="channels at input resolution")
    p.add_argument("--max-width", type=int, default=None)
    p.add_argument("--blocks", type=int, default=None, help="residual blocks at the output")
    p.add_argument("--augment", default=None,
                   help="input augmentations: 'photo', 'off' or JSON of Augmentations fields")
    p.add_argument("--photos", default=None, help="folder of unlabelled photos")
    p.add_argument("--photo-batch", type=int, default=4, help="photo crops per step")
    p.add_argument("--stats-weight", type=float, default=0.0,
                   help="photos' activation statistics vs the layer's (needs --photos)")
    p.add_argument("--round-trip-weight", type=float, default=0.0,
                   help="coarse L1 of photo vs its render through G (needs --photos)")
    p.add_argument("--init-from", default=None, help="start from this encoder's weights")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output folder (checkpoint, preview, encoder)")
    p.add_argument("--preview-every", type=int, default=100)
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint")
    p.add_argument("--keep-checkpoint", action="store_true")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="stop early after this long and save the encoder as it is")
    p.add_argument("--cpu", action="store_true", help="train on the CPU even with a GPU")
    p.add_argument("--processes", type=int, default=1,
                   help="CPU processes to fork (gloo); for GPUs use accelerate launch")
    p.set_defaults(func=_cmd_train)

    t = sub.add_parser("translate", help="translate a picture, folder or video",
                       description="Translate pictures into the model's domain with an "
                       "encoder: a picture, a folder of pictures, or a video frame by frame.")
    t.add_argument("input", help="picture, folder or video (.mp4/.gif/...)")
    t.add_argument("--encoder", required=True, help="encoder folder, .safetensors or hf://")
    t.add_argument("--model", default="default")
    d = DEFAULTS  # the page's and the API's defaults too
    t.add_argument("--seed", type=float, default=d.seed, help="the latent's seed")
    t.add_argument("--psi", type=float, default=d.psi, help="the latent's truncation")
    t.add_argument("--noise-mode", default=d.noise_mode, choices=("const", "random", "none"))
    t.add_argument("--noise-seed", type=int, default=0, help="seed of random noise")
    t.add_argument("--strength", type=float, default=d.strength,
                   help="domain strength: 1 the encoder alone (the picture's layout), lower "
                        "more of the model's own content")
    t.add_argument("--anchor", default=d.anchor, choices=ANCHORS,
                   help="below strength 1 blend towards: 'match' the model's image most like "
                        "the picture, 'latent' the latent's own image")
    t.add_argument("--framing", default=d.framing, choices=FRAMINGS,
                   help="crop the centre square, fit (squeeze) or pad the whole picture")
    t.add_argument("--walk", type=float, nargs="+", default=None,
                   help="video: walk through these seeds (looping) instead of one latent")
    t.add_argument("--fps", type=float, default=None, help="video: output fps (input's)")
    t.add_argument("--max-frames", type=int, default=None)
    t.add_argument("--out", required=True, help="output picture, folder or video")
    t.set_defaults(func=_cmd_translate)

    h = sub.add_parser("push-encoder", help="upload an encoder folder to the Hugging Face Hub")
    h.add_argument("path", help="encoder folder")
    h.add_argument("--repo", required=True, help="owner/name of the model repo")
    h.add_argument("--token", default=None, help="write token (default: $HF_TOKEN / login)")
    h.add_argument("--private", action="store_true")
    h.set_defaults(func=_cmd_push)
