"""Rendering for the studio: a session's picture, live frames, and the psi and mix grids.

Gradio-free; each function forwards to engine (recipe.render, engine.recipes.incremental,
engine.tools.latents) on the device studio.gpu chooses, and hands back PIL pictures. No model
maths here.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image

from engine.base.errors import StudioError
from engine.recipes import incremental, recipe
from engine.tools import bending, latents
from studio import gpu as gpu_mod
from studio.gpu import gpu
from studio.jobs import interactive
from studio.models import generator, image_seconds, load, small
from studio.session import Session


def pil(arr: np.ndarray) -> Image.Image:
    """An engine picture (H, W, 3 uint8) as a PIL image."""
    return Image.fromarray(np.ascontiguousarray(arr))


def render(sess: Session, with_bends: bool = True) -> Image.Image:
    """The session's output image; with_bends=False gives the plain latent (the 'before')."""
    r = sess.recipe
    if not with_bends:
        r = dataclasses.replace(r, bends=[], weight_edits=[], translator=None)
    return render_recipe(r)


@interactive
@gpu(lambda r, **_: image_seconds(r.model), cpu_if=lambda r, **_: small(r.model))
def render_recipe(r: recipe.Recipe) -> Image.Image:
    return recipe.render(r, load(r.model))


@interactive
def render_frame(sess: Session, r: recipe.Recipe, budget_s: float, final: bool
                 ) -> tuple[Image.Image, int]:
    """A live frame of recipe `r` (the session's, or a copy being previewed): (picture,
    0 for the full picture or the block whose running image a preview shows).

    In this process (not on ZeroGPU for models it books a GPU for) frames go through the
    session's kept activations (engine.recipes.incremental: an edit re-renders from its layer on),
    and unless `final` a frame that would not fit budget_s stops at the deepest block that
    does. The full picture equals recipe.render(r) pixel for pixel."""
    if gpu_mod.on_zerogpu() and not small(r.model):
        return render_recipe(r), 0
    m = load(r.model)
    G = getattr(m, "G", m)
    if not incremental.can_start(G):    # StyleGAN3: every frame whole, as render_recipe
        return recipe.render(r, m), 0
    costs = incremental.costs_for(G)
    start, changed = sess.tail.plan(r, G)
    stop = None if final else incremental.preview_block(G, costs, budget_s, start, changed)
    seconds: dict[int, float] = {}
    t0 = time.perf_counter()
    img = sess.tail.render(r, m, stop=stop, block_seconds=seconds)
    pic = incremental.to_picture(G, img, r)
    costs.observe(seconds, start, time.perf_counter() - t0)
    return pic, 0 if stop is None else int(stop[1:])


def warm_directions(sess: Session, method: str,
                    progress: Callable[[float, str], Any] | None = None) -> None:
    """Compute (and cache in engine.tools.latents) a model's directions before the first drag.

    Not a GPU call: SeFa is an eigen-decomposition of weights and GANSpace maps latents
    only, both quick on a CPU, and done here they stay in this process's cache instead
    of dying with a ZeroGPU worker. `progress(fraction, message)` follows GANSpace's
    stages (its sampling and PCA take seconds on a busy CPU)."""
    G = generator(sess.model)
    if method == "ganspace":
        latents.ganspace_directions(G, progress=progress)
    elif method == "sefa":
        latents.sefa_directions(G)


@interactive
@gpu(lambda sess, seeds, psis, **_: image_seconds(sess.model, len(seeds) * len(psis)),
     cpu_if=lambda sess, **_: small(sess.model))
def psi_grid(sess: Session, seeds: list[float], psis: list[float]) -> Image.Image:
    G = generator(sess.model)
    lat = sess.recipe.latent
    grid = latents.psi_grid(G, seeds, psis, lat.cutoff, lat.noise_mode,
                            noise_seed=lat.noise_seed)
    return labelled_grid(grid, [f"seed {_num(s)}" for s in seeds],
                         [f"psi {_num(p)}" for p in psis])


@interactive
@gpu(lambda sess, seeds, **_: image_seconds(sess.model, (len(seeds) + 1) ** 2),
     cpu_if=lambda sess, **_: small(sess.model))
def mix_grid(sess: Session, seeds: list[float], mix_seed: float) -> Image.Image:
    G = generator(sess.model)
    grid = latents.mix_grid(G, seeds, mix_seed, psi=sess.recipe.latent.psi,
                            noise_mode=sess.recipe.latent.noise_mode,
                            noise_seed=sess.recipe.latent.noise_seed)
    cols = ["seed"] + [f"w{a}-{b - 1} from {_num(mix_seed)}"
                       for a, b in latents.default_mix_ranges(G.num_ws)] + \
        [f"seed {_num(mix_seed)}"]
    return labelled_grid(grid, [f"seed {_num(s)}" for s in seeds], cols)


def _num(v: float) -> str:
    return f"{v:g}"


GRID_LABEL_MIN_TILE = 128  # tiles are enlarged (nearest) to at least this, so labels fit
# Label letters as a share of the grid's longer side: a grid is shown about 300 px tall,
# so its labels stay 12-15 px on screen however many tiles it holds.
GRID_LABEL_SHARE = 0.05


def labelled_grid(grid: np.ndarray, rows: list[str], cols: list[str],
                  pad: int = 2) -> Image.Image:
    """A grid from engine.tools.latents.image_grid with its row and column names drawn in a
    white margin outside the tiles (the tiles enlarged with nearest-neighbour first when
    they are small), in letters sized to the grid so they stay readable when the page
    shrinks it. PIL's built-in font is ASCII only, hence "psi", not the Greek letter."""
    from PIL import ImageDraw, ImageFont

    h_tile = (grid.shape[0] + pad) // len(rows) - pad
    scale = max(1, -(-GRID_LABEL_MIN_TILE // max(1, h_tile)))
    img = pil(grid)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    pitch_y = img.height / len(rows) + pad * scale / len(rows)
    pitch_x = img.width / len(cols) + pad * scale / len(cols)
    font = ImageFont.load_default(size=max(11, round(GRID_LABEL_SHARE
                                                     * max(img.width, img.height))))
    gap = max(3, font.size // 4)
    widths = [font.getlength(name) for name in rows]
    left, top = int(max(widths, default=0)) + 2 * gap, font.size + 2 * gap
    out = Image.new("RGB", (img.width + left, img.height + top), (255, 255, 255))
    out.paste(img, (left, top))
    draw = ImageDraw.Draw(out)
    for i, name in enumerate(rows):
        draw.text((gap, top + (i + 0.5) * pitch_y), name, fill=(0, 0, 0), font=font,
                  anchor="lm")
    col_font = _fitting_font(font, cols, pitch_x - gap)
    for j, name in enumerate(cols):
        draw.text((left + (j + 0.5) * pitch_x, top - gap), name, fill=(0, 0, 0),
                  font=col_font, anchor="md")
    return out


def _fitting_font(font: Any, names: list[str], width: float) -> Any:
    """`font`, or a smaller size of it (not under 11 px) in which every name fits `width`
    pixels, so column names do not run into each other."""
    longest = max((font.getlength(n) for n in names), default=0.0)
    if longest <= width:
        return font
    return font.font_variant(size=max(11, int(font.size * width / longest)))


def check_bend(sess: Session, bend: Any) -> None:
    """Raise StudioError naming every problem of one bend on the session's model."""
    problems = bending.validate_bend(bend, generator(sess.model))
    if problems:
        raise StudioError("this bend cannot be applied: " + "; ".join(problems))


def check_weight_edit(sess: Session, edit: Any) -> None:
    problems = bending.validate_weight_edit(edit, generator(sess.model))
    if problems:
        raise StudioError("this weight edit cannot be applied: " + "; ".join(problems))
