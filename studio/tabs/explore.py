"""Explore: seed, truncation, noise, style mixing, per-layer W+ edits, directions, grids and
walk videos."""

from __future__ import annotations

import copy
import random
from typing import Any

import gradio as gr

from engine.tools import latents
from studio import files, models, render, uploads, videos
from studio import session as S
from studio.jobs import frames_job, progress_fn
from studio.limits import LIMITS
from studio.live import PLAY_HTML
from studio.session import Session
from studio.tabs import explore_teach
from studio.ui import (
    LIVE,
    UI,
    Page,
    bind,
    cancel_button,
    capped_slider,
    checked_file,
    floats,
    job_errors,
    live_pictures,
    need,
    pictures,
    user_errors,
    with_cancel,
)

N_DIRECTIONS = 5  # direction sliders shown (top components of SeFa / GANSpace)

# The "Random seed" button's own generator, seeded by the OS: no other code's seeding (a
# training, a library) can make the seeds it offers predictable or the same for every user.
_SEED_RNG = random.SystemRandom()

LABEL, ID = "Explore", "explore"  # the tab's title and id (its element: tab-explore)


def draw_seed() -> int:
    """A seed for the "Random seed" button, from the OS's randomness."""
    return _SEED_RNG.randrange(0, 100000)


def layout(ui: UI) -> None:
    n_ws = ui.n_ws  # the w-index sliders fit the model a session opens on
    """The Explore tab's controls, built into `ui`."""
    with gr.Row():
        ui.seed = gr.Number(0, precision=0, minimum=0, maximum=2**32 - 1, label="Seed",
                            elem_id="seed", scale=2)
        ui.rand_btn = gr.Button("Random seed", scale=1)
    ui.seed_frac = gr.Slider(0, 1, 0, step=0.01, elem_id="seed-frac",
                             label="Fractional seed: drag to blend into the next seed")
    with gr.Row():
        ui.psi = gr.Slider(-1, 2, 0.7, step=0.01, label="Truncation ψ", elem_id="psi")
        ui.cutoff = gr.Slider(0, n_ws, 0, step=1, elem_id="cutoff",
                              label="Truncation cutoff (0 = every w)")
    with gr.Row():
        ui.noise_mode = gr.Radio(["const", "random", "none"], value="const", label="Noise")
        ui.noise_seed = gr.Number(0, precision=0, minimum=0, label="Noise seed")
    with gr.Accordion("Style mixing", open=False):
        with gr.Row():
            ui.mix_on = gr.Checkbox(False, label="Mix in a second seed")
            ui.mix_seed = gr.Number(1, precision=0, minimum=0, label="Second seed")
        with gr.Row():
            ui.mix_start = gr.Slider(0, n_ws, 0, step=1, label="From w")
            ui.mix_end = gr.Slider(0, n_ws, min(4, n_ws), step=1, label="To w (exclusive)")
    _move_layout(ui)
    _layer_edits_layout(ui, n_ws)
    _directions_layout(ui, n_ws)
    explore_teach.layout(ui)
    _grids_layout(ui)


def _move_layout(ui: UI) -> None:
    """StyleGAN3's user transform of the input features (shown for alias-free models)."""
    with gr.Accordion("Move the input (StyleGAN3)", open=True, visible=False,
                      elem_id="sg3-move") as ui.move_box:
        with gr.Row():
            ui.move_x = gr.Slider(-0.5, 0.5, 0, step=0.01, label="Translate x (image widths)",
                                  elem_id="translate-x")
            ui.move_y = gr.Slider(-0.5, 0.5, 0, step=0.01, label="Translate y",
                                  elem_id="translate-y")
            ui.move_rot = gr.Slider(-180, 180, 0, step=1, label="Rotate (degrees)",
                                    elem_id="rotate")


def _layer_edits_layout(ui: UI, n_ws: int) -> None:
    with gr.Accordion("Per-layer W+ edits", open=False):
        with gr.Row():
            ui.le_op = gr.Radio([("Swap in another seed's w", "swap"), ("Random w", "random"),
                                 ("Negate (reflect about the average w)", "negate")],
                                value="swap", label="Edit")
            ui.le_index = gr.Slider(0, n_ws - 1, 0, step=1, label="w index")
            ui.le_seed = gr.Number(1, precision=0, minimum=0, label="Seed (swap / random)")
        with gr.Row():
            ui.le_add = gr.Button("Add layer edit", size="sm")
            ui.le_clear = gr.Button("Remove all layer edits", size="sm")
        ui.le_list = gr.Markdown("")


def _directions_layout(ui: UI, n_ws: int) -> None:
    with gr.Accordion("Directions", open=True):
        with gr.Row():
            ui.dir_method = gr.Radio([("SeFa", "sefa"), ("GANSpace", "ganspace"),
                                      ("Boundary file", "file")], value="sefa",
                                     label="Directions from", elem_id="dir-method")
            ui.boundary = checked_file(gr.File(label="InterFaceGAN boundary (.npy)",
                                               file_types=[".npy"], visible=False, height=90))
        ui.dir_sliders = [gr.Slider(-10, 10, 0, step=0.1, label=f"Direction {i}",
                                    elem_id=f"dir-{i}")
                          for i in range(N_DIRECTIONS)]
        with gr.Row():
            ui.dir_start = gr.Slider(0, n_ws, 0, step=1, label="Apply from w")
            ui.dir_end = gr.Slider(0, n_ws, n_ws, step=1, label="to w (exclusive)")
        ui.dir_reset = gr.Button("Reset directions", size="sm")


def _grids_layout(ui: UI) -> None:
    with gr.Accordion("Grids and walks", open=False):
        with gr.Row():
            ui.grid_seeds = gr.Textbox("0, 1, 2, 3", label="Seeds")
            ui.grid_psis = gr.Textbox("1, 0.7, 0.4, 0", label="ψ values")
            ui.grid_kind = gr.Radio(["seeds × ψ", "seeds × style mix"], value="seeds × ψ",
                                    label="Grid")
        ui.grid_btn = gr.Button("Render grid")
        ui.grid_out = gr.Image(label="Grid", type="pil", format="png", interactive=False,
                               elem_classes="pixelated", height=300, elem_id="grid-out")
        with gr.Row():
            ui.walk_seeds = gr.Textbox("0, 1, 2", label="Keyframe seeds", elem_id="walk-seeds")
            ui.walk_frames = capped_slider(2, LIMITS.video_frames, 60, label="Frames",
                                           elem_id="walk-frames")
            ui.walk_fps = capped_slider(1, LIMITS.video_fps, 24, label="fps", elem_id="walk-fps")
            # String values: the API page documents a dropdown's values as strings.
            ui.walk_size = gr.Dropdown([("model size", "0"), ("256 px", "256"),
                                        ("512 px", "512")], value="256", label="Video size")
        with gr.Row():
            ui.walk_loop = gr.Checkbox(True, label="Loop", elem_id="walk-loop")
            ui.walk_space = gr.Radio(["z", "w"], value="z", label="Interpolate in",
                                     elem_id="walk-space")
            ui.walk_btn = gr.Button("Render walk video")
            ui.walk_cancel = cancel_button(elem_id="walk-cancel")
        gr.HTML(PLAY_HTML.format(what="walk"), padding=False)


def latent_inputs(ui: UI) -> list[Any]:
    """The controls set_latent reads, in its API order."""
    return [ui.seed, ui.seed_frac, ui.psi, ui.cutoff, ui.noise_mode, ui.noise_seed, ui.mix_on,
            ui.mix_seed, ui.mix_start, ui.mix_end, ui.dir_method, ui.boundary, *ui.dir_sliders,
            ui.dir_start, ui.dir_end]


def live_sliders(ui: UI) -> list[Any]:
    """The sliders whose values travel over the live channel (studio/live.js LATENT)."""
    return [ui.seed_frac, ui.psi, ui.cutoff, *ui.dir_sliders]


# ----------------------------------------------------------------------------------------
# What the tab shows for a session (after a model switch, a recipe, undo or redo).

def show(ui: UI, sess: Session) -> dict[Any, Any]:
    """Every latent control set to the session's latent, and its layer-edit list."""
    lat = sess.recipe.latent
    info = models.model_info(sess.model)
    n = info.num_ws
    amounts, method, start, end = [0.0] * N_DIRECTIONS, "sefa", 0, None
    for d in lat.directions:
        slot = 0 if d.method == "file" else d.index
        if 0 <= slot < N_DIRECTIONS:
            amounts[slot] = d.amount
        method, start, end = d.method, d.layer_start, d.layer_end
    base = int(lat.seed // 1)
    out = {ui.seed: gr.update(value=base, label=seed_label(sess)),
           ui.seed_frac: round(lat.seed - base, 4), ui.psi: lat.psi,
           ui.cutoff: gr.update(maximum=n, value=lat.cutoff or 0),
           ui.noise_mode: lat.noise_mode, ui.noise_seed: lat.noise_seed,
           ui.mix_on: lat.mix_seed is not None,
           ui.mix_seed: lat.mix_seed if lat.mix_seed is not None else 1,
           ui.mix_start: gr.update(maximum=n, value=lat.mix_start),
           ui.mix_end: gr.update(maximum=n, value=lat.mix_end if lat.mix_end is not None
                                 else n),
           ui.dir_method: method, ui.boundary: gr.update(visible=method == "file"),
           ui.dir_start: gr.update(maximum=n, value=start),
           ui.dir_end: gr.update(maximum=n, value=end if end is not None else n),
           ui.le_index: gr.update(maximum=n - 1), ui.le_list: layer_edit_list(sess),
           ui.move_box: gr.update(visible=info.alias_free),
           ui.move_x: float((lat.translate or (0.0, 0.0))[0]),
           ui.move_y: float((lat.translate or (0.0, 0.0))[1]),
           ui.move_rot: float(lat.rotate or 0)}
    for i, (slider, amount) in enumerate(zip(ui.dir_sliders, amounts)):
        out[slider] = gr.update(value=amount, visible=method != "file" or i == 0)
    return {**out, **explore_teach.show(ui, sess)}


def outputs(ui: UI) -> list[Any]:
    """Every component show() and reset() change."""
    return [ui.seed, ui.seed_frac, ui.psi, ui.cutoff, ui.noise_mode, ui.noise_seed, ui.mix_on,
            ui.mix_seed, ui.mix_start, ui.mix_end, ui.dir_method, ui.boundary, *ui.dir_sliders,
            ui.dir_start, ui.dir_end, ui.le_index, ui.le_list, ui.move_box, ui.move_x,
            ui.move_y, ui.move_rot, *explore_teach.outputs(ui), ui.grid_out]


def reset(ui: UI, sess: Session) -> dict[Any, Any]:
    """A new model: the old model's grid, boundary file, marks and trained boundaries go."""
    return {ui.grid_out: None, ui.boundary: None, **explore_teach.reset(ui, sess)}


def seed_label(sess: Session | None) -> str:
    """The seed box's label: it says so while the latent is a fitted one (Project), whose
    seed box still holds the old seed."""
    if sess is not None and sess.recipe.latent.w is not None:
        return "Seed (Explore shows the latent fitted in Project; type a seed to go back)"
    return "Seed"


def layer_edit_list(sess: Session) -> str:
    edits = sess.recipe.latent.layer_edits
    return "\n".join(f"{i + 1}. {e.op} w[{e.w_index}]"
                     + (f" (seed {e.seed})" if e.op != "negate" else "")
                     for i, e in enumerate(edits)) or "_No layer edits._"


# ----------------------------------------------------------------------------------------
# Handlers.

@user_errors
def set_latent(ui: UI, sess: Session, seed_v: float, frac: float, psi_v: float, cut: float,
               nmode: str, nseed: float, mix: bool, mseed: float, mstart: float, mend: float,
               method: str, boundary_file: Any, *rest: float) -> dict[Any, Any]:
    """Set every latent field from the Explore controls; returns the new image."""
    sess = need(sess)
    before = copy.deepcopy(sess.recipe.latent)
    # The mixing range only while mixing: unused otherwise, and written then it would make
    # the first event after a live drag an edit of its own (an undo step that shows nothing).
    mixing = dict(mix_seed=int(mseed or 0), mix_start=int(mstart), mix_end=int(mend)) \
        if mix else dict(mix_seed=None)
    S.set_seed_controls(sess, seed_v, frac, psi_v, cut)
    S.set_latent(sess, noise_mode=nmode, noise_seed=int(nseed or 0), **mixing)
    path = None
    if method == "file" and boundary_file is not None:
        path = str(uploads.upload_path(boundary_file, "boundary"))
        sess.uploads.add(path)
        latents.load_boundary(path, models.generator(sess.model))
    S.set_directions(sess, method, [float(a) for a in rest[:N_DIRECTIONS]], int(rest[-2]),
                     int(rest[-1]), path)
    return live_pictures(ui, sess, sess.recipe.latent != before)


@user_errors
def set_transform(ui: UI, sess: Session, x: float, y: float, degrees: float
                  ) -> dict[Any, Any]:
    """StyleGAN3: translate (image widths) and rotate (degrees) the input features."""
    sess = need(sess)
    S.set_latent(sess, translate=[float(x), float(y)] if (x or y) else None,
                 rotate=float(degrees or 0))
    return pictures(ui, sess)


@job_errors
def random_seed(ui: UI, sess: Session | None) -> int:
    return draw_seed()


@user_errors
def pick_method(ui: UI, sess: Session | None, method: str,
                progress: gr.Progress = gr.Progress()) -> dict[Any, Any]:
    """Show the boundary upload (and one slider) for 'file'; compute GANSpace's PCA once."""
    if sess is not None and method == "ganspace":
        render.warm_directions(sess, method, progress_fn(progress))
    out = {ui.boundary: gr.update(visible=method == "file")}
    for i, slider in enumerate(ui.dir_sliders):
        out[slider] = gr.update(visible=method != "file" or i == 0)
    return out


@user_errors
def add_layer_edit(ui: UI, sess: Session, op: str, index: float,
                   seed_v: float) -> dict[Any, Any]:
    """Edit one w of W+: swap it with another seed's, randomise or negate it."""
    sess = need(sess)
    S.add_layer_edit(sess, op, int(index), int(seed_v or 0))
    return {**pictures(ui, sess), ui.le_list: layer_edit_list(sess)}


@user_errors
def clear_layer_edits(ui: UI, sess: Session) -> dict[Any, Any]:
    sess = need(sess)
    S.remove_layer_edit(sess, None)
    return {**pictures(ui, sess), ui.le_list: layer_edit_list(sess)}


@user_errors
def render_grid(ui: UI, sess: Session, seeds_t: str, psis_t: str, kind: str) -> Any:
    """A seeds × ψ grid, or seeds × style-mix ranges with the second seed."""
    sess = need(sess)
    seeds = floats(seeds_t, "seeds")
    if kind == "seeds × ψ":
        return render.psi_grid(sess, seeds, floats(psis_t, "ψ values"))
    mix = sess.recipe.latent.mix_seed
    return render.mix_grid(sess, seeds, float(mix if mix is not None else 1))


@job_errors
def render_walk(ui: UI, sess: Session, seeds_t: str, frames: float, fps: float, loop: bool,
                space: str, size: str = "256", progress: gr.Progress = gr.Progress()) -> str:
    """An interpolation (or loop) video through keyframe seeds, as mp4."""
    sess = need(sess)
    keys = floats(seeds_t, "keyframe seeds")
    return files.served(frames_job(
        sess.jobs, "a walk video", int(frames), progress, size,
        lambda **job: videos.walk_video(sess, keys, int(frames), bool(loop), space,
                                         float(fps), **job)))


def cancel_job(sess: Session | None) -> None:
    """Stop this session's long job (every Cancel button)."""
    if sess is not None:
        sess.jobs.cancel.set()


def wire(ui: UI, page: Page) -> None:
    """The Explore tab's events."""
    inputs, outs = [ui.session, *latent_inputs(ui)], [ui.session, ui.output, ui.before]
    setter = bind(set_latent, ui)
    dragged = {id(c) for c in live_sliders(ui)}
    for comp in latent_inputs(ui):
        if isinstance(comp, gr.File):
            for evt in (comp.upload, comp.clear):
                evt(setter, inputs, outs, api_name=False, **LIVE)
        elif id(comp) in dragged:
            # Dragged over the live channel, which applies each value: the event fires once,
            # when the drag ends (studio/live.js fires it on every move on the fallback).
            comp.release(setter, inputs, outs, api_name=False, **LIVE)
        elif comp is ui.seed:
            # Typed over the live channel too: on Enter, not every key (the fallback's every
            # key: studio/live.js presses Enter for it). Not on blur: clicking Undo blurs the
            # box, and that event would type the old value back after the undo.
            comp.submit(setter, inputs, outs, api_name=False, **LIVE).then(
                lambda sess: gr.update(label=seed_label(sess)), [ui.session], [ui.seed],
                api_name=False, show_progress="hidden")
        else:
            comp.input(setter, inputs, outs, api_name=False, **LIVE)
    # One documented endpoint for scripts; the per-control events above share its fn.
    gr.Button(visible=False).click(setter, inputs, outs, api_name="set_latent", **LIVE)
    move_inputs = [ui.session, ui.move_x, ui.move_y, ui.move_rot]
    mover = bind(set_transform, ui)
    for comp in move_inputs[1:]:
        comp.input(mover, move_inputs, outs, api_name=False, **LIVE)
    gr.Button(visible=False).click(mover, move_inputs, outs, api_name="set_transform", **LIVE)
    ui.rand_btn.click(bind(random_seed, ui), [ui.session], [ui.seed],
                      api_name="random_seed").then(setter, inputs, outs, api_name=False, **LIVE)
    ui.dir_method.input(bind(pick_method, ui), [ui.session, ui.dir_method],
                        [ui.boundary, *ui.dir_sliders], api_name="pick_direction_method",
                        **ui.job()).then(setter, inputs, outs, api_name=False, **LIVE)
    ui.dir_reset.click(lambda: [0.0] * N_DIRECTIONS, None, ui.dir_sliders,
                       api_name=False).then(setter, inputs, outs, api_name=False, **LIVE)
    le_outs = [*outs, ui.le_list]
    ui.le_add.click(bind(add_layer_edit, ui), [ui.session, ui.le_op, ui.le_index, ui.le_seed],
                    le_outs, api_name="add_layer_edit", **ui.job())
    ui.le_clear.click(bind(clear_layer_edits, ui), [ui.session], le_outs,
                      api_name="clear_layer_edits", **ui.job())
    ui.grid_btn.click(bind(render_grid, ui), [ui.session, ui.grid_seeds, ui.grid_psis,
                                              ui.grid_kind], [ui.grid_out],
                      api_name="render_grid", **ui.job())
    with_cancel(ui.walk_btn.click, ui.walk_cancel, bind(render_walk, ui),
                [ui.session, ui.walk_seeds, ui.walk_frames, ui.walk_fps, ui.walk_loop,
                 ui.walk_space, ui.walk_size], [ui.video], api_name="render_walk",
                **ui.heavy())
    ui.walk_cancel.click(cancel_job, [ui.session], None, api_name="cancel_walk")
    explore_teach.wire(ui, lambda event: event.then(setter, inputs, outs, api_name=False,
                                                     **LIVE))

