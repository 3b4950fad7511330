"""The studio's only door into engine: load models, render sessions, make pictures and files.

Every function forwards to engine's public API and reshapes the answer for Gradio (PIL
images, file paths, markdown). No model maths lives here.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from engine import bending, clusters, latents, recipe, zoo
from engine.errors import StudioError
from studio.state import Session

DEFAULT_MODEL = os.environ.get("STUDIO_MODEL", "default")
OUT_DIR = Path(os.environ.get("STUDIO_OUTPUT_DIR") or tempfile.gettempdir()) / "activation-studio"


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


def catalogue_choices() -> list[tuple[str, str]]:
    """(label, spec) pairs for the model dropdown, the default model first."""
    return [(e.title + ("" if e.verified else " (unverified)"), e.id) for e in zoo.catalogue()]


def load(spec: str, progress: Callable[[float, str], None] | None = None) -> Any:
    """The LoadedModel for `spec` (catalogue id, hf://..., local path), from engine's LRU."""
    spec = (spec or "").strip()
    if not spec:
        raise StudioError("choose a model from the list, paste an hf:// address or upload a "
                          "checkpoint.")
    return zoo.load(spec, progress=progress)


def generator(spec: str) -> Any:
    """The Generator of a spec (engine.zoo keeps it loaded)."""
    m = load(spec)
    return getattr(m, "G", m)


def model_info(spec: str, progress: Callable[[float, str], None] | None = None) -> ModelInfo:
    m = load(spec, progress)
    G = getattr(m, "G", m)
    shapes = G.layer_shapes()
    return ModelInfo(spec=spec, title=str(getattr(m, "title", None) or spec),
                     resolution=G.resolution, layers=list(G.synthesis.layers),
                     channels={k: v[0] for k, v in shapes.items()}, num_ws=G.num_ws,
                     w_dim=G.cfg.w_dim, sha256=str(getattr(m, "sha256", "") or ""))


def model_key(spec: str) -> str | None:
    m = load(spec)
    return getattr(m, "sha256", None) or None


def card(info: ModelInfo) -> str:
    """Markdown for the model bar."""
    convs = [(k, v) for k, v in info.channels.items() if not k.endswith("torgb")]
    chans = " · ".join(f"{k} {v}" for k, v in convs)
    return (f"**{info.title}** — {info.resolution}×{info.resolution} px, {len(convs)} conv "
            f"layers, {info.num_ws} ws × {info.w_dim}  \n<small>channels: {chans}</small>")


# ----------------------------------------------------------------------------------------
# Rendering.

def _pil(arr: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(arr))


def render(sess: Session, with_bends: bool = True) -> Image.Image:
    """The session's output image; with_bends=False gives the plain latent (the 'before')."""
    r = sess.recipe
    if not with_bends:
        r = dataclasses.replace(r, bends=[], weight_edits=[], translator=None)
    return recipe.render(r, load(r.model))


def psi_grid(sess: Session, seeds: list[float], psis: list[float]) -> Image.Image:
    G = generator(sess.model)
    lat = sess.recipe.latent
    return _pil(latents.psi_grid(G, seeds, psis, lat.cutoff, lat.noise_mode))


def mix_grid(sess: Session, seeds: list[float], mix_seed: float) -> Image.Image:
    G = generator(sess.model)
    return _pil(latents.mix_grid(G, seeds, mix_seed, psi=sess.recipe.latent.psi,
                                 noise_mode=sess.recipe.latent.noise_mode))


def walk_video(sess: Session, seeds: list[float], frames: int, loop: bool, space: str,
               fps: float, progress: Callable[[int], Any] | None, cancel: Any) -> str:
    G = generator(sess.model)
    out = new_output_path("walk", ".mp4")
    latents.write_walk(G, seeds, frames, out, fps=fps, loop=loop, space=space,
                       psi=sess.recipe.latent.psi, noise_mode=sess.recipe.latent.noise_mode,
                       noise_seed=sess.recipe.latent.noise_seed, progress=progress, cancel=cancel)
    return str(out)


# ----------------------------------------------------------------------------------------
# Clusters.

def compute_clusters(sess: Session, layer: str, k: int, samples: int,
                     progress: Callable[[float, str], None] | None, cancel: Any
                     ) -> clusters.ClusterResult:
    G = generator(sess.model)
    return clusters.compute_clusters(G, layer, int(k), samples=int(samples), seed=0,
                                     model_key=model_key(sess.model), progress=progress,
                                     cancel=cancel)


def suggest_k(sess: Session, layer: str, samples: int,
              progress: Callable[[float, str], None] | None, cancel: Any) -> int:
    G = generator(sess.model)
    best, _ = clusters.suggest_k(G, layer, samples=int(samples), progress=progress,
                                 cancel=cancel)
    return best


def overlay_tiles(sess: Session) -> list[tuple[Image.Image, str]]:
    """(tile, caption) per cluster of the session's clustering, for the current latent."""
    c = sess.clusters
    if c is None:
        return []
    G = generator(sess.model)
    ws = latents.compute_ws(G, sess.recipe.latent)
    tile = clusters.MIN_TILE
    # One column: the sheet is the image tile then one tile per cluster, each with its
    # caption strip above it and a gap below, so it splits at fixed heights.
    sheet = clusters.cluster_overlays(G, c, ws[0], tile=tile, cols=1)
    step = (sheet.shape[0] + 2) // (c.k + 1)
    tiles = []
    for i in range(1, c.k + 1):
        part = sheet[i * step:i * step + step - 2]
        cid = i - 1
        mark = " ✓" if cid in sess.selected else ""
        tiles.append((_pil(part), f"#{cid} · {c.sizes[cid]} ch{mark}"))
    return tiles


def ablation(sess: Session, cluster_id: int) -> Image.Image:
    G = generator(sess.model)
    ws = latents.compute_ws(G, sess.recipe.latent)
    return _pil(clusters.ablation_preview(G, sess.clusters, int(cluster_id), ws[0]))


# ----------------------------------------------------------------------------------------
# Files.

def new_output_path(stem: str, suffix: str) -> Path:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=stem + "-", suffix=suffix, dir=OUT_DIR)
    os.close(fd)
    return Path(name)


# ----------------------------------------------------------------------------------------
# Checks (engine's validators, with the model's layers and channel counts).

def check_bend(sess: Session, bend: Any) -> None:
    """Raise StudioError naming every problem of one bend on the session's model."""
    problems = bending.validate_bend(bend, generator(sess.model))
    if problems:
        raise StudioError("this bend cannot be applied: " + "; ".join(problems))


def check_weight_edit(sess: Session, edit: Any) -> None:
    problems = bending.validate_weight_edit(edit, generator(sess.model))
    if problems:
        raise StudioError("this weight edit cannot be applied: " + "; ".join(problems))


def validate(r: recipe.Recipe) -> None:
    """Raise RecipeError (a StudioError) listing every problem of a recipe for its model."""
    recipe.validate(r, load(r.model))


def sweep_video(sess: Session, path: str, start: float, stop: float, frames: int, fps: float,
                progress: Callable[[int], Any] | None, cancel: Any) -> str:
    """Animate a numeric recipe field into an mp4 (engine.recipe.sweep)."""
    out = new_output_path("sweep", ".mp4")
    recipe.sweep(sess.recipe, path, start, stop, frames, out, fps=fps, model=load(sess.model),
                 progress=progress, cancel=cancel)
    return str(out)
