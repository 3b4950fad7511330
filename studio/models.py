"""Models for the studio: load one (catalogue id, hf://..., a checkpoint on this server),
describe it for the model bar, and estimate what rendering its pictures costs.

Gradio-free; engine.models.zoo keeps the loaded models (an LRU), this module only chooses the
device and refuses server paths a session may not name. No model maths here.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from engine.base.errors import StudioError
from engine.gan import networks
from engine.models import zoo
from studio import files, finetune
from studio import gpu as gpu_mod
from studio.limits import SERVER_FILES

DEFAULT_MODEL = os.environ.get("STUDIO_MODEL", "default")


@dataclass
class ModelInfo:
    """What the model bar shows about a loaded model."""
    spec: str
    title: str
    resolution: int
    layers: list[str]
    channels: dict[str, int]
    num_ws: int
    w_dim: int
    sha256: str
    conv_layers: list[str] = field(default_factory=list)  # layers with feature maps
    alias_free: bool = False        # StyleGAN3: its input can be translated and rotated


def catalogue_choices() -> list[tuple[str, str]]:
    """(label, spec) pairs for the model dropdown, the default model first."""
    return [(e.title + ("" if e.verified else " (unverified)"), e.id) for e in zoo.catalogue()]


def load(spec: str, progress: Callable[[float, str], None] | None = None) -> Any:
    """The LoadedModel for `spec` (catalogue id, hf://..., local path), from engine's LRU."""
    spec = (spec or "").strip()
    if not spec:
        raise StudioError("choose a model from the list, paste an hf:// address or upload a "
                          "checkpoint.")
    if SERVER_FILES != "any" and is_path_spec(spec):  # (load runs on every render)
        files.check_server_file(spec)
    # The CPU copy between calls on ZeroGPU, the call's GPU inside one (studio/gpu.py).
    return zoo.load(spec, progress=progress, device=gpu_mod.model_device())


def is_path_spec(spec: str) -> bool:
    """True when a model spec names a file (not a catalogue id or a Hub address). Decided
    by its form alone, so the answer says nothing about which files exist."""
    spec = spec.strip()
    if spec.startswith(zoo.HF_PREFIX) or zoo.HUB_URL.match(spec):
        return False
    return spec not in {e.id for e in zoo.catalogue()}


def generator(spec: str) -> Any:
    """The Generator of a spec (engine.models.zoo keeps it loaded)."""
    m = load(spec)
    return getattr(m, "G", m)


def model_info(spec: str, progress: Callable[[float, str], None] | None = None) -> ModelInfo:
    m = load(spec, progress)
    G = getattr(m, "G", m)
    shapes = G.layer_shapes()
    return ModelInfo(spec=spec, title=str(getattr(m, "title", None) or spec),
                     resolution=G.resolution, layers=list(G.synthesis.layers),
                     channels={k: v[0] for k, v in shapes.items()}, num_ws=G.num_ws,
                     w_dim=G.cfg.w_dim, sha256=str(getattr(m, "sha256", "") or ""),
                     conv_layers=networks.conv_layers(G), alias_free=networks.is_stylegan3(G))


def model_key(spec: str) -> str | None:
    """The loaded model's weight hash (what cached clusterings are keyed by), or None."""
    m = load(spec)
    return getattr(m, "sha256", None) or None


def card(info: ModelInfo) -> str:
    """Markdown for the model bar."""
    convs = [(k, info.channels[k]) for k in info.conv_layers]
    chans = " · ".join(f"{k} {v}" for k, v in convs)
    kind = "StyleGAN3 (alias-free), " if info.alias_free else ""
    return (f"**{info.title}** — {kind}{info.resolution}×{info.resolution} px, {len(convs)} "
            f"conv layers, {info.num_ws} ws × {info.w_dim}  \n<small>channels: {chans}</small>")


CHECKPOINT_TYPES = (".pkl", ".pt", ".pth", ".safetensors")


def session_choices(known: list[tuple[str, str]], sess: Any) -> list[tuple[str, str]]:
    """The model list (`known`: (label, spec) pairs) plus the session's own uploaded
    checkpoints and fine-tuned models (one click away, and seen by nobody else)."""
    known = list(known)
    mine = sorted(p for p in sess.uploads if p.endswith(CHECKPOINT_TYPES))
    tuned = [c for c in finetune.trained_models(sess) if c[1] not in [k[1] for k in known]]
    return tuned + [(f"uploaded: {p.rsplit('/', 1)[-1]}", p) for p in mine
                    if p not in [c[1] for c in known]] + known


def image_seconds(spec: str, images: float = 1) -> float:
    """A generous GPU-time estimate for rendering `images` pictures of a model: about 0.05 s
    a picture at 256 px, growing with the area; plus the call's setup."""
    return gpu_mod.SETUP_S + images * 0.05 * (int(load(spec).resolution) / 256) ** 2


def small(spec: str) -> bool:
    """On ZeroGPU: a model small enough to render here on the CPU (no GPU booked)."""
    return gpu_mod.cpu_is_enough(int(load(spec).resolution))
