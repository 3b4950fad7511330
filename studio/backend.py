"""The studio's only door into engine: load models, render sessions, make pictures and files.

Every function forwards to engine's public API and reshapes the answer for Gradio (PIL
images, file paths, markdown). No model maths lives here.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from engine import bending, clusters, incremental, latents, networks, recipe, zoo
from engine.errors import StudioError
from engine.translator import DEFAULTS as TRANSLATE_DEFAULTS
from studio import files
from studio import gpu as gpu_mod
from studio.gpu import gpu, gpu_job
from studio.jobs import interactive
from studio.limits import SERVER_FILES
from studio.session import Session

DEFAULT_MODEL = os.environ.get("STUDIO_MODEL", "default")



def _resolution(spec: str) -> int:
    return int(load(spec).resolution)


def _image_seconds(spec: str, images: float = 1) -> float:
    """A generous GPU-time estimate for rendering `images` pictures of a model: about 0.05 s
    a picture at 256 px, growing with the area; plus the call's setup."""
    return gpu_mod.SETUP_S + images * 0.05 * (_resolution(spec) / 256) ** 2


def _small(spec: str) -> bool:
    """On ZeroGPU: a model small enough to render here on the CPU (no GPU booked)."""
    return gpu_mod.cpu_is_enough(_resolution(spec))


OUT_DIR, REPO = files.OUT_DIR, files.REPO


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
                     w_dim=G.cfg.w_dim, sha256=str(getattr(m, "sha256", "") or ""),
                     conv_layers=networks.conv_layers(G), alias_free=networks.is_stylegan3(G))


def model_key(spec: str) -> str | None:
    m = load(spec)
    return getattr(m, "sha256", None) or None


def card(info: ModelInfo) -> str:
    """Markdown for the model bar."""
    convs = [(k, info.channels[k]) for k in info.conv_layers]
    chans = " · ".join(f"{k} {v}" for k, v in convs)
    kind = "StyleGAN3 (alias-free), " if info.alias_free else ""
    return (f"**{info.title}** — {kind}{info.resolution}×{info.resolution} px, {len(convs)} "
            f"conv layers, {info.num_ws} ws × {info.w_dim}  \n<small>channels: {chans}</small>")


# ----------------------------------------------------------------------------------------
# Rendering.

def _pil(arr: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(arr))


def render(sess: Session, with_bends: bool = True) -> Image.Image:
    """The session's output image; with_bends=False gives the plain latent (the 'before')."""
    r = sess.recipe
    if not with_bends:
        r = dataclasses.replace(r, bends=[], weight_edits=[], translator=None)
    return render_recipe(r)


@interactive
@gpu(lambda r, **_: _image_seconds(r.model), cpu_if=lambda r, **_: _small(r.model))
def render_recipe(r: recipe.Recipe) -> Image.Image:
    return recipe.render(r, load(r.model))


@interactive
def render_frame(sess: Session, r: recipe.Recipe, budget_s: float, final: bool
                 ) -> tuple[Image.Image, int]:
    """A live frame of recipe `r` (the session's, or a copy being previewed): (picture,
    0 for the full picture or the block whose running image a preview shows).

    In this process (not on ZeroGPU for models it books a GPU for) frames go through the
    session's kept activations (engine.incremental: an edit re-renders from its layer on),
    and unless `final` a frame that would not fit budget_s stops at the deepest block that
    does. The full picture equals recipe.render(r) pixel for pixel."""
    if gpu_mod.on_zerogpu() and not _small(r.model):
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


def warm_directions(sess: Session, method: str) -> None:
    """Compute (and cache in engine.latents) a model's directions before the first drag.

    Not a GPU call: SeFa is an eigen-decomposition of weights and GANSpace maps latents
    only, both quick on a CPU, and done here they stay in this process's cache instead
    of dying with a ZeroGPU worker."""
    G = generator(sess.model)
    if method == "ganspace":
        latents.ganspace_directions(G)
    elif method == "sefa":
        latents.sefa_directions(G)


@interactive
@gpu(lambda sess, seeds, psis, **_: _image_seconds(sess.model, len(seeds) * len(psis)),
     cpu_if=lambda sess, **_: _small(sess.model))
def psi_grid(sess: Session, seeds: list[float], psis: list[float]) -> Image.Image:
    G = generator(sess.model)
    lat = sess.recipe.latent
    grid = latents.psi_grid(G, seeds, psis, lat.cutoff, lat.noise_mode,
                            noise_seed=lat.noise_seed)
    return labelled_grid(grid, [f"seed {_num(s)}" for s in seeds],
                         [f"psi {_num(p)}" for p in psis])


@interactive
@gpu(lambda sess, seeds, **_: _image_seconds(sess.model, (len(seeds) + 1) ** 2),
     cpu_if=lambda sess, **_: _small(sess.model))
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


def labelled_grid(grid: np.ndarray, rows: list[str], cols: list[str],
                  pad: int = 2) -> Image.Image:
    """A grid from engine.latents.image_grid with its row and column names drawn in a
    margin (the tiles enlarged with nearest-neighbour first when they are small). PIL's
    built-in font is ASCII only, hence "psi", not the Greek letter."""
    from PIL import ImageDraw

    h_tile = (grid.shape[0] + pad) // len(rows) - pad
    scale = max(1, -(-GRID_LABEL_MIN_TILE // max(1, h_tile)))
    img = _pil(grid)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    pitch_y = img.height / len(rows) + pad * scale / len(rows)
    pitch_x = img.width / len(cols) + pad * scale / len(cols)
    left, top = 84, 22
    out = Image.new("RGB", (img.width + left, img.height + top), (255, 255, 255))
    out.paste(img, (left, top))
    draw = ImageDraw.Draw(out)
    for i, name in enumerate(rows):
        draw.text((4, top + int(i * pitch_y + pitch_y / 2) - 6), name[:13], fill=(0, 0, 0))
    for j, name in enumerate(cols):
        draw.text((left + int(j * pitch_x) + 3, 5), name[:int(pitch_x // 6)], fill=(0, 0, 0))
    return out


@gpu_job(lambda sess, frames, **_: _image_seconds(sess.model, frames),
         cpu_if=lambda sess, **_: _small(sess.model))
def walk_video(sess: Session, seeds: list[float], frames: int, loop: bool, space: str,
               fps: float, progress: Callable[[int], Any] | None = None,
               cancel: Any = None, size: int | None = None) -> str:
    G = generator(sess.model)
    out = new_output_path(sess, "walk", ".mp4")
    latents.write_walk(G, seeds, frames, out, fps=fps, loop=loop, space=space,
                       psi=sess.recipe.latent.psi, noise_mode=sess.recipe.latent.noise_mode,
                       noise_seed=sess.recipe.latent.noise_seed, progress=progress, cancel=cancel,
                       size=size)
    return str(out)


# ----------------------------------------------------------------------------------------
# Clusters.

@gpu_job(lambda sess, samples, **_: _image_seconds(sess.model, samples),
         cpu_if=lambda sess, **_: _small(sess.model))
def compute_clusters(sess: Session, layer: str, k: int, samples: int,
                     progress: Callable[[float, str], None] | None = None, cancel: Any = None
                     ) -> clusters.ClusterResult:
    G = generator(sess.model)
    return clusters.compute_clusters(G, layer, int(k), samples=int(samples), seed=0,
                                     model_key=model_key(sess.model), progress=progress,
                                     cancel=cancel)


@gpu_job(lambda sess, samples, **_: _image_seconds(sess.model, samples),
         cpu_if=lambda sess, **_: _small(sess.model))
def suggest_k(sess: Session, layer: str, samples: int,
              progress: Callable[[float, str], None] | None = None, cancel: Any = None) -> int:
    G = generator(sess.model)
    best, _ = clusters.suggest_k(G, layer, samples=int(samples), progress=progress,
                                 cancel=cancel)
    return best


SELECTED_FRAME = (255, 124, 0)  # the page's accent orange


@interactive
@gpu(lambda sess, **_: _image_seconds(sess.model, 2 + (sess.clusters.k if sess.clusters else 0)),
     cpu_if=lambda sess, **_: _small(sess.model))
def overlay_tiles(sess: Session) -> list[tuple[Image.Image, str]]:
    """(tile, caption) per cluster of the session's clustering, for the current latent."""
    c = sess.clusters
    if c is None:
        return []
    G = generator(sess.model)
    ws = latents.compute_ws(G, sess.recipe.latent)
    tiles = []
    for cid, part in enumerate(clusters.cluster_tiles(G, c, ws[0], tile=clusters.MIN_TILE)[1:]):
        chosen = cid in sess.selected
        # The selection is drawn into the tile (an orange frame), not left to the gallery's
        # own highlight, which marks the last tile clicked even when that click deselected.
        framed = ImageOps.expand(_pil(part), border=4,
                                 fill=SELECTED_FRAME if chosen else (255, 255, 255))
        tiles.append((framed, f"#{cid} · {c.sizes[cid]} ch" + (" ✓" if chosen else "")))
    return tiles


@interactive
@gpu(lambda sess, **_: _image_seconds(sess.model, 2),
     cpu_if=lambda sess, **_: _small(sess.model))
def ablation(sess: Session, cluster_id: int) -> Image.Image:
    G = generator(sess.model)
    ws = latents.compute_ws(G, sess.recipe.latent)
    return _pil(clusters.ablation_preview(G, sess.clusters, int(cluster_id), ws[0]))


# ----------------------------------------------------------------------------------------
# Files.

def check_server_file(path: str, what: str = "file") -> None:
    """With STUDIO_SERVER_FILES=studio, refuse a path outside the studio's folders (any
    session's); `what` is kept for callers, the sentence is the same whatever the path."""
    files.check_server_file(path)


def is_studio_file(path: str) -> bool:
    """True for a file this studio wrote itself (any session's)."""
    return files.is_output(path)


def check_session_file(sess: Session, path: str) -> None:
    """With STUDIO_SERVER_FILES=studio, refuse a path this session may not open
    (studio.files.check_session_file): one sentence whatever the path."""
    files.check_session_file(path, sess.token, sess.uploads)


def check_recipe_files(sess: Session, r: recipe.Recipe) -> None:
    """Every server path a recipe names must be the session's own, shipped, or uploaded by
    it; a recipe never makes the server show a picture this session was not given."""
    if is_path_spec(r.model):
        check_session_file(sess, r.model)
    if r.translator is not None and r.translator.encoder and \
            not r.translator.encoder.startswith(zoo.HF_PREFIX):
        check_session_file(sess, r.translator.encoder)
    if r.translator is not None and r.translator.image:
        if SERVER_FILES == "any" and not files.is_output(r.translator.image):
            raise StudioError("this recipe translates a picture that was not uploaded to "
                              "this studio; upload the picture on the Translate tab and "
                              "translate it there.")
        check_session_file(sess, r.translator.image)
    for d in r.latent.directions:
        if getattr(d, "path", None):
            check_session_file(sess, d.path)
    if r.blend is not None and is_path_spec(r.blend.model):
        check_session_file(sess, r.blend.model)


def is_local_model(spec: str) -> bool:
    """True when a model spec names a file on this server (not a catalogue id or hf://)."""
    return is_path_spec(spec)


def save_bundle(sess: Session) -> Path:
    """The session's recipe with its files, as a zip in the session's folder."""
    from engine import bundle
    return bundle.save_bundle(sess.recipe, new_output_path(sess, "bundle", ".zip"))


def open_bundle(sess: Session, path: Path) -> recipe.Recipe:
    """An uploaded bundle's recipe, its files unpacked into the session's folder (so the
    session may open them, and nobody else)."""
    import uuid

    from engine import bundle
    files.make_room()
    return bundle.read_bundle(path, files.session_dir(sess.token) / "bundles" / uuid.uuid4().hex)


def new_output_path(sess: Session | None, stem: str, suffix: str) -> Path:
    """A fresh file in the session's own output folder (None: the shared one)."""
    return files.new_output_path(sess.token if sess is not None else None, stem, suffix)


# ----------------------------------------------------------------------------------------
# Checks (engine's validators, with the model's layers and channel counts).

def check_boundary(sess: Session, path: str) -> None:
    """An uploaded boundary .npy fits the model, or one sentence about the file itself."""
    latents.load_boundary(path, generator(sess.model))


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


@gpu_job(lambda sess, frames, **_: _image_seconds(sess.model, frames),
         cpu_if=lambda sess, **_: _small(sess.model))
def sweep_video(sess: Session, path: str, start: float, stop: float, frames: int, fps: float,
                progress: Callable[[int], Any] | None = None, cancel: Any = None,
                size: int | None = None) -> str:
    """Animate a numeric recipe field into an mp4 (engine.recipe.sweep); `size` scales
    the frames (the recipe's output_size), so a 64 px model gives a watchable video."""
    out = new_output_path(sess, "sweep", ".mp4")
    r = dataclasses.replace(sess.recipe, output_size=int(size)) if size else sess.recipe
    recipe.sweep(r, path, start, stop, frames, out, fps=fps, model=load(sess.model),
                 progress=progress, cancel=cancel)
    return str(out)


# ----------------------------------------------------------------------------------------
# Translation.

ENCODER_GLOBS = ("engine/default_model/**/encoder.safetensors",
                 "engine/default_model/*encoder*.safetensors")


def encoder_options(paths: list[str]) -> list[tuple[str, str]]:
    """(label, path) pairs for the encoder dropdown: where it came from, its layer, steps."""
    from engine import translator

    options = []
    for path in paths:
        p = Path(path)
        origin = f"trained here ({p.parent.name})" if p.is_relative_to(OUT_DIR) else "shipped"
        info = translator.list_encoder(p)
        detail = p.name
        if info is not None:
            detail = f"{info.layer}, {info.steps} steps"
            if info.saved_at:
                detail += f", {info.saved_at[:16].replace('T', ' ')}"
        options.append((f"{origin}: {detail}", path))
    return options


def _trained_encoders(sess: Session | None) -> list[str]:
    """Encoders trained in this studio that `sess` may see: its own with
    STUDIO_SERVER_FILES=studio (none before it has a session), everyone's on your own
    machine."""
    if SERVER_FILES == "any":
        folders = [OUT_DIR / "sessions", OUT_DIR / "encoders"]
        pattern = "**/encoder.safetensors"
    elif sess is None:
        return []
    else:
        folders, pattern = [encoder_dir(sess)], "*/encoder.safetensors"
    return [str(p) for folder in folders if folder.is_dir() for p in sorted(folder.glob(pattern))]


def encoder_choices(sess: Session | None, spec: str | None = None) -> list[str]:
    """Encoders on disk (shipped ones, then those trained here that the session may see);
    with `spec`, only those trained for that model (by the sha256 recorded beside each)."""

    from engine import translator

    found: list[str] = []
    for pattern in ENCODER_GLOBS:
        found += sorted(str(p) for p in REPO.glob(pattern))
    found = list(dict.fromkeys(found + _trained_encoders(sess)))
    if spec is None:
        return found
    m = load(spec)
    shas = {m.sha256, translator.weights_sha256(m.G)}
    return [path for path in found
            if (info := translator.list_encoder(path)) is not None and info.model_shas & shas]


def encoder_dir(sess: Session) -> Path:
    return files.session_dir(sess.token) / "encoders"


PAUSED = "paused"  # what a time-boxed GPU call returns when its time was up


def train_encoder(sess: Session, layer: str, steps: int, batch: int,
                  progress: Callable[[float, str], None] | None = None, cancel: Any = None,
                  on_metrics: Callable[[int, dict], Any] | None = None) -> Any:
    """Train (or resume) an encoder for `layer`; saved under this session's folder. The
    folder is named by layer and batch only, so a cancelled run resumes even when the step
    count changed (the engine lets steps grow). on_metrics(step, {"loss": ...}) hears every
    step (engine.translator.train_encoder).

    On ZeroGPU the run is a series of time-boxed GPU calls, each resuming from the
    checkpoint the last one wrote (studio.gpu.run_in_chunks); elsewhere one call."""
    from engine import translator

    files.make_room()
    out = encoder_dir(sess) / f"{layer}-b{batch}"
    args = (sess.model, layer, int(steps), int(batch), str(out))
    if not gpu_mod.chunked():
        return _train_call(*args, progress=progress, cancel=cancel, on_metrics=on_metrics)
    result = gpu_mod.run_in_chunks(lambda relay: _train_chunk(*args, relay), out, progress,
                                   cancel, is_paused=lambda r: r == PAUSED,
                                   on_metrics=on_metrics)
    if result == PAUSED:
        raise translator.TrainingCancelled(f"encoder training stopped before step {steps}; "
                                           f"run it again to resume")
    return result


def _train_encoder_now(spec: str, layer: str, steps: int, batch: int, out: str,
                       progress: Any, cancel: Any, on_metrics: Any) -> Any:
    from engine import translator

    m = load(spec)
    return translator.train_encoder(m.G, layer=layer, steps=steps, batch=batch,
                                    out_dir=out, progress=progress, cancel=cancel,
                                    on_metrics=on_metrics,
                                    preview_every=max(10, steps // 10),
                                    checkpoint_every=max(10, steps // 10),
                                    model_sha256=m.sha256, model_id=m.id,
                                    eval_seeds=range(4))


@gpu_job(lambda **_: gpu_mod.max_call_seconds())
def _train_call(spec: str, layer: str, steps: int, batch: int, out: str,
                progress: Any = None, cancel: Any = None, on_metrics: Any = None) -> Any:
    return _train_encoder_now(spec, layer, steps, batch, out, progress, cancel, on_metrics)


@gpu(lambda **_: gpu_mod.max_call_seconds())
def _train_chunk(spec: str, layer: str, steps: int, batch: int, out: str,
                 relay: gpu_mod.Relay) -> Any:
    from engine import translator

    try:
        return _train_encoder_now(spec, layer, steps, batch, out, relay.progress,
                                  relay.start(), relay.metrics)
    except translator.TrainingCancelled:
        return PAUSED  # checkpoint written; the next call resumes


def preview_path(sess: Session, layer: str, batch: int) -> Path:
    from engine import translator
    return encoder_dir(sess) / f"{layer}-b{batch}" / translator.PREVIEW_FILE


def save_input_image(sess: Session, image: Any) -> tuple[str, Image.Image]:
    """Check an uploaded picture and keep a clean RGB PNG copy, in the session's folder,
    that its recipe can name."""
    from studio import uploads
    pic = uploads.open_image(image)
    pic.thumbnail((1024, 1024))  # the encoder sees at most the model's size anyway
    path = new_output_path(sess, "input", ".png")
    pic.save(path, format="PNG")
    return str(path), pic


def set_translator(sess: Session, encoder: str | None, image: str | None,
                   strength: float = TRANSLATE_DEFAULTS.strength,
                   framing: str = TRANSLATE_DEFAULTS.framing,
                   anchor: str = TRANSLATE_DEFAULTS.anchor) -> None:
    """Point the session's recipe at an encoder and a picture (None turns translation off),
    with the domain strength, what it blends towards and the framing
    (engine.translator.render / frame_pictures)."""
    from engine import translator
    if not encoder or not image:
        sess.recipe.translator = None
        return
    if not encoder.startswith(zoo.HF_PREFIX):
        check_session_file(sess, encoder)
    if framing not in translator.FRAMINGS:
        raise StudioError(f"framing must be one of {', '.join(translator.FRAMINGS)}.")
    sess.recipe.translator = recipe.TranslatorSpec(
        encoder=encoder, image=image, strength=translator.check_strength(strength),
        framing=framing, anchor=translator.check_anchor(anchor))


def framed_input(sess: Session) -> Image.Image | None:
    """The translated picture exactly as the encoder reads it (framed, at its input size),
    or None when the session is not translating."""
    from engine.latents import to_uint8
    from studio import uploads
    t = sess.recipe.translator
    if t is None or not t.image:
        return None
    tr = recipe.cached_translator(t.encoder, load(sess.model).G)
    x = tr.frame(uploads.open_image(t.image), t.framing, t.input_size)
    return Image.fromarray(to_uint8(x)[0])


def live_translator(sess: Session, encoder: str) -> Any:
    """The session's Translator for webcam frames (kept in the session, not globally)."""
    from engine import translator
    cache = getattr(sess, "live", None)
    m = load(sess.model)
    # Only while it is built on the model loaded now: one the zoo evicted must not live on.
    if cache is not None and cache[0] == (sess.model, encoder) and cache[1].G is m.G:
        return cache[1]
    if not encoder.startswith(zoo.HF_PREFIX):
        check_session_file(sess, encoder)
    tr = translator.Translator.load(encoder, m.G, model_sha256=m.sha256)
    sess.live = ((sess.model, encoder), tr)
    return tr


@interactive
@gpu(lambda sess, **_: _image_seconds(sess.model, 2),
     cpu_if=lambda sess, **_: _small(sess.model))
def translate_frame(sess: Session, encoder: str, frame: Any,
                    strength: float = TRANSLATE_DEFAULTS.strength,
                    framing: str = TRANSLATE_DEFAULTS.framing,
                    anchor: str = TRANSLATE_DEFAULTS.anchor) -> np.ndarray:
    """One webcam frame through the encoder, with the session's latent and bends, at a domain
    strength (blending towards `anchor`) and framing. The frame goes through the same
    checked reader as every other picture (pixel cap included)."""
    from studio import uploads
    frame = np.asarray(uploads.open_image(frame))
    tr = live_translator(sess, encoder)
    m = load(sess.model)
    r = sess.recipe
    taps, wtaps = bending.make_taps(m.G, r.bends, r.weight_edits, model_key=m.sha256)
    tr.set_latent(r.latent, taps=taps, weight_taps=wtaps, noise_mode=r.latent.noise_mode,
                  strength=strength, framing=framing, anchor=anchor)
    return tr.translate_frame(frame)


# ----------------------------------------------------------------------------------------
# Projection.

def project(sess: Session, image: Any, steps: int, w_plus: bool,
            progress: Callable[[float, str], None] | None = None, cancel: Any = None) -> Any:
    """Fit a latent to a photo (engine.projector.project) and return its result; on ZeroGPU
    as time-boxed GPU calls that resume from the projection's checkpoint."""
    from engine import projector
    from studio import uploads

    pic = np.asarray(uploads.open_image(image))
    if not gpu_mod.chunked():
        return _project_call(sess.model, pic, int(steps), bool(w_plus), None,
                             progress=progress, cancel=cancel)
    folder = files.session_dir(sess.token) / "projections" / uuid.uuid4().hex[:8]
    ckpt = str(folder / "checkpoint.pt")
    try:
        result = gpu_mod.run_in_chunks(
            lambda relay: _project_chunk(sess.model, pic, int(steps), bool(w_plus), ckpt,
                                         relay),
            folder, progress, cancel, is_paused=lambda r: r == PAUSED)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if result == PAUSED:
        raise projector.ProjectionCancelled("The projection was cancelled.")
    return result


def _project_now(spec: str, pic: np.ndarray, steps: int, w_plus: bool, ckpt: str | None,
                 progress: Any, cancel: Any) -> Any:
    from engine import projector

    m = load(spec)
    return projector.project(m.G, pic, steps=steps, w_plus=w_plus, progress=progress,
                             cancel=cancel, checkpoint_path=ckpt,
                             frame_every=max(1, steps // 60))


@gpu_job(lambda spec, steps, **_: _image_seconds(spec, 3 * steps))
def _project_call(spec: str, pic: np.ndarray, steps: int, w_plus: bool, ckpt: str | None,
                  progress: Any = None, cancel: Any = None) -> Any:
    return _project_now(spec, pic, steps, w_plus, ckpt, progress, cancel)


@gpu(lambda **_: gpu_mod.max_call_seconds())
def _project_chunk(spec: str, pic: np.ndarray, steps: int, w_plus: bool, ckpt: str,
                   relay: gpu_mod.Relay) -> Any:
    from engine import projector

    try:
        return _project_now(spec, pic, steps, w_plus, ckpt, relay.progress, relay.start())
    except projector.ProjectionCancelled:
        return PAUSED


def save_latent(sess: Session, ws: Any) -> str:
    path = new_output_path(sess, "latent", ".npy")
    latents.save_w(path, ws)
    return str(path)


def frames_video(sess: Session, frames: list[np.ndarray], stem: str,
                 fps: float = 20) -> str | None:
    if not frames:
        return None
    from engine.video import write_video
    out = new_output_path(sess, stem, ".mp4")
    write_video(frames, out, fps=fps)
    return str(out)
