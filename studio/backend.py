"""The studio's only door into engine: load models, render recipes, turn outputs into files.

Every function here forwards to engine's public API and reshapes the answer for Gradio
(PIL images, file paths, markdown). No model maths lives here.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from engine.errors import StudioError

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


# TEMPORARY until engine.zoo lands: read a local file through engine.checkpoints.
@functools.lru_cache(maxsize=4)
def _load_local(spec: str) -> Any:
    from engine.checkpoints import load_generator
    return load_generator(spec).eval()


def load_model(spec: str, progress: Callable[[float, str], None] | None = None) -> Any:
    """The generator for `spec` (catalogue id, hf://..., local path), from engine's cache."""
    spec = (spec or "").strip()
    if not spec:
        raise StudioError("choose a model from the list, paste an hf:// address or upload a "
                          "checkpoint.")
    return _load_local(spec)


def model_info(spec: str) -> ModelInfo:
    G = load_model(spec)
    shapes = G.layer_shapes()
    return ModelInfo(spec=spec, title=spec, resolution=G.resolution,
                     layers=list(G.synthesis.layers),
                     channels={k: v[0] for k, v in shapes.items()}, num_ws=G.num_ws,
                     w_dim=G.cfg.w_dim, sha256="")


def render(spec: str, latent: dict[str, Any]) -> Image.Image:
    """TEMPORARY: render a seed until engine.recipe.render lands."""
    import torch
    G = load_model(spec)
    with torch.no_grad():
        z = G.seed_to_z(int(latent.get("seed", 0)))
        ws = G.mapping(z, psi=float(latent.get("psi", 1.0)))
        img = G.synthesis(ws, noise_mode="const")
    arr = ((img[0].permute(1, 2, 0).clamp(-1, 1) + 1) * 127.5).round().byte().cpu().numpy()
    return Image.fromarray(np.asarray(arr))
