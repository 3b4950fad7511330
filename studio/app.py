"""The Activation Studio page: a model bar, five tabs, one large output canvas.

`build_app()` returns the gr.Blocks; `spaces_app.py` launches it. Per-user state is a
`studio.session.Session` in a gr.State (a Recipe plus what is on screen); callbacks edit it
and ask `studio.backend` (hence engine) for pictures. Live edits use `.input`/`.release`
with trigger_mode="always_last" and no progress spinner; long jobs report through
gr.Progress and stop with their Cancel button. Every callback has a stable api_name.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable
from typing import Any

import gradio as gr
import numpy as np

from engine.bending import (
    OPERATIONS,
    WEIGHT_OPERATIONS,
    WeightEdit,
    undone_by_demodulation,
)
from engine.errors import StudioError
from engine.latents import DirectionEdit
from engine.recipe import Recipe
from studio import backend, files, uploads
from studio import session as S
from studio.jobs import LANE
from studio.limits import LIMITS, SERVER
from studio.session import Session, bend_label, successor

CSS = """
#canvas img, #before img, .pixelated img { image-rendering: pixelated; }
#canvas img, #before img, #cam-out img, #tr-preview img {
  width: 100%; height: 100%; object-fit: contain; }
#model-card { font-size: 0.92em; }
#busy { min-height: 30px; position: sticky; top: 0; z-index: 50;
  background: var(--background-fill-primary); }
#intro { font-size: 0.95em; }
"""

N_DIRECTIONS = 5        # direction sliders shown (top components of SeFa / GANSpace)
def _most(kinds: tuple[str, ...]) -> int:
    """The most parameters of these types any bending operation has: one control each."""
    return max(sum(p.type in kinds for p in op.params) for op in OPERATIONS.values())


N_SLIDERS = _most(("float", "int"))  # generic parameter sliders in the bend editor
N_CHOICES = _most(("choice",))       # generic dropdowns (rotate: fill, interpolation, pivot)
N_CHECKS = _most(("bool",))          # generic checkboxes
# Interactive events share one lane of STUDIO_CONCURRENCY; long jobs have their own lane
# (studio/jobs.py holds them to STUDIO_HEAVY_JOBS at once and one per session).
INTERACTIVE = dict(concurrency_id="interactive", concurrency_limit=LIMITS.concurrency)
HEAVY_LANE = dict(concurrency_id="heavy",
                  concurrency_limit=SERVER.heavy_jobs + SERVER.heavy_waiting)
LIVE = dict(trigger_mode="always_last", show_progress="hidden", **INTERACTIVE)
WHERE_CHOICES = ["selected clusters", "all channels", "random fraction"]
GALLERY_COLUMNS = 6     # cluster tiles per row

# The "Random seed" button's own generator, seeded by the OS: no other code's seeding (a
# training, a library) can make the seeds it offers predictable or the same for every user.
_SEED_RNG = random.SystemRandom()


def draw_seed() -> int:
    """A seed for the "Random seed" button, from the OS's randomness."""
    return _SEED_RNG.randrange(0, 100000)


def checked_image(**kwargs: Any) -> gr.Image:
    """A gr.Image whose every payload goes through studio.uploads.open_image, the one checked
    reader: a file outside the studio's folders, a damaged, empty, fake or oversized picture
    (pixel cap included, webcam frames and data URLs too) gets one clear sentence, and
    Gradio's own decoder never sees it.

    (Replacing the instance's preprocess, not subclassing: Gradio writes a .pyi stub beside
    every component subclass.)"""
    comp = gr.Image(**kwargs)

    def preprocess(payload: Any) -> Any:
        if payload is None:
            return None
        url = getattr(payload, "url", None)
        source = url if isinstance(url, str) and url.startswith("data:") else payload
        try:
            pic = uploads.open_image(source)
        except StudioError as exc:
            raise gr.Error(str(exc), print_exception=False) from exc
        if comp.type == "numpy":
            return np.asarray(pic)
        if comp.type == "pil":
            return pic
        if source is payload:
            return str(payload.path)
        path = files.new_output_path(None, "picture", ".png")
        pic.save(path, format="PNG")
        return str(path)

    comp.preprocess = preprocess
    if not kwargs.get("streaming"):
        # Check at upload time too, so a bad file is named at once, not at the next button.
        comp.upload(lambda _: None, comp, None, api_name=False, show_progress="hidden")
    return comp


def checked_file(comp: Any) -> Any:
    """A file component (gr.File, gr.UploadButton) whose payload path is checked by
    studio.files before its handler sees it: a request that names a server file instead of
    uploading one gets the same sentence whatever the path."""
    stock = comp.preprocess

    def preprocess(payload: Any) -> Any:
        if payload is not None:
            for item in payload if isinstance(payload, list) else [payload]:
                path = getattr(item, "path", None)
                try:
                    files.check_server_file(path if isinstance(path, str) else "")
                except StudioError as exc:
                    raise gr.Error(str(exc), print_exception=False) from exc
        return stock(payload)

    comp.preprocess = preprocess
    return comp


def user_errors(fn: Callable) -> Callable:
    """Turn engine's one-sentence StudioError into a gr.Error toast, never a traceback; and
    a failed edit leaves the session exactly as it was before the event."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        sess = next((a for a in args if isinstance(a, Session)), None)
        try:
            if sess is None:
                return fn(*args, **kwargs)
            with S.edit(sess):  # all or nothing, and undoable
                return fn(*args, **kwargs)
        except StudioError as exc:
            if isinstance(exc, gr.Error):
                raise
            raise gr.Error(str(exc), print_exception=False) from exc
    return wrapper


def job_errors(fn: Callable) -> Callable:
    """user_errors for long jobs: no transaction around them, since the visitor keeps
    editing while they run (a failed training must not undo those edits)."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except StudioError as exc:
            if isinstance(exc, gr.Error):
                raise
            raise gr.Error(str(exc), print_exception=False) from exc
    return wrapper


def _need(sess: Session | None) -> Session:
    if sess is None:
        raise StudioError("the page is still loading its model; wait a moment and try again.")
    return sess


def capped_slider(low: int, limit: int, value: int, step: int = 1, **kwargs: Any) -> gr.Slider:
    """An integer slider that stops at a studio limit (engine/limits.py)."""
    high = max(low, limit)
    return gr.Slider(low, high, min(value, high), step=step, **kwargs)


def _floats(text: str, what: str, limit: int = LIMITS.grid_values) -> list[float]:
    try:
        vals = [float(t) for t in str(text).replace(";", ",").split(",") if t.strip()]
    except ValueError as exc:
        raise StudioError(f"{what} must be numbers separated by commas, like 1, 2, 3.") from exc
    if not vals:
        raise StudioError(f"give at least one value for {what}.")
    if len(vals) > limit:
        raise StudioError(f"give at most {limit} values for {what}.")
    return vals


def _progress_fn(progress: gr.Progress) -> Callable[[float, str], None]:
    def report(fraction: float, message: str = "") -> None:
        progress(max(0.0, min(1.0, float(fraction))), desc=message or None)
    return report


def _conv_layers(sess: Session) -> list[str]:
    info = backend.model_info(sess.model)
    return [name for name in info.layers if not name.endswith("torgb")]


def _default_layer(layers: list[str]) -> str:
    """A middle layer: coarse enough to hold parts of the face, fine enough to bend."""
    pref = [n for n in layers if n.startswith("b16.")]
    return pref[-1] if pref else layers[len(layers) // 2]


def build_app(default_model: str | None = None) -> gr.Blocks:
    """The whole page; `default_model` is the spec a new session opens on."""
    default_model = default_model or backend.DEFAULT_MODEL
    try:
        choices = backend.catalogue_choices()
    except StudioError:
        choices = []
    if default_model not in [c[1] for c in choices]:
        choices = [(default_model, default_model)] + choices
    try:  # size the w-index sliders for the model a session opens on
        n_ws = backend.model_info(default_model).num_ws
    except StudioError:
        n_ws = 18

    # Gradio deletes uploads and its copies of outputs by the same age rule as studio.files.
    age = SERVER.file_age_s
    with gr.Blocks(title="Activation Studio", delete_cache=(min(3600, age), age)) as demo:
        session = gr.State(None)
        gr.Markdown(
            "**Activation Studio** takes a StyleGAN2 apart: explore its latents, group a "
            "layer's channels into clusters, bend them (the image on the right follows every "
            "change), translate your own pictures or project a photo into the model. The "
            "recipe under the image replays any result from a script.",
            elem_id="intro")

        # ---------------------------------------------------------------- model bar
        with gr.Row(elem_id="model-bar", equal_height=True):
            model_box = gr.Dropdown(choices=choices, value=default_model,
                                    allow_custom_value=True, label="Model", scale=3,
                                    info="pick one, or paste hf://owner/repo/file.pkl",
                                    elem_id="model-box")
            with gr.Column(scale=1, min_width=160):
                load_btn = gr.Button("Load model", variant="primary", elem_id="load-model")
                ckpt_upload = checked_file(gr.UploadButton(
                    "Upload checkpoint", size="sm",
                    file_types=[".pkl", ".pt", ".pth", ".safetensors"]))
            model_card = gr.Markdown("Loading the model…", elem_id="model-card")

        # Progress bars and error marks of button-started jobs land on this one line, so the
        # canvas never disappears under a spinner or an error badge.
        busy = gr.Markdown("", elem_id="busy", container=False)
        JOB = dict(show_progress_on=[busy], **INTERACTIVE)
        HEAVY = dict(show_progress_on=[busy], **HEAVY_LANE)
        with gr.Row():
            # ---------------------------------------------------------- controls
            with gr.Column(scale=3):
                with gr.Tabs(elem_id="tabs") as tabs:
                    with gr.Tab("Explore", id="explore", elem_id="tab-explore"):
                        with gr.Row():
                            seed = gr.Number(0, precision=0, minimum=0, maximum=2**32 - 1,
                                             label="Seed", elem_id="seed", scale=2)
                            rand_btn = gr.Button("Random seed", scale=1)
                        seed_frac = gr.Slider(0, 1, 0, step=0.01, elem_id="seed-frac",
                                              label="Fractional seed: drag to blend into "
                                                    "the next seed")
                        with gr.Row():
                            psi = gr.Slider(-1, 2, 0.7, step=0.01, label="Truncation ψ",
                                            elem_id="psi")
                            cutoff = gr.Slider(0, n_ws, 0, step=1, elem_id="cutoff",
                                               label="Truncation cutoff (0 = every w)")
                        with gr.Row():
                            noise_mode = gr.Radio(["const", "random", "none"], value="const",
                                                  label="Noise")
                            noise_seed = gr.Number(0, precision=0, minimum=0,
                                                   label="Noise seed")
                        with gr.Accordion("Style mixing", open=False):
                            with gr.Row():
                                mix_on = gr.Checkbox(False, label="Mix in a second seed")
                                mix_seed = gr.Number(1, precision=0, minimum=0,
                                                     label="Second seed")
                            with gr.Row():
                                mix_start = gr.Slider(0, n_ws, 0, step=1, label="From w")
                                mix_end = gr.Slider(0, n_ws, min(4, n_ws), step=1,
                                                    label="To w (exclusive)")
                        with gr.Accordion("Per-layer W+ edits", open=False):
                            with gr.Row():
                                le_op = gr.Radio([("Swap in another seed's w", "swap"),
                                                  ("Random w", "random"),
                                                  ("Negate", "negate")], value="swap",
                                                 label="Edit")
                                le_index = gr.Slider(0, n_ws - 1, 0, step=1, label="w index")
                                le_seed = gr.Number(1, precision=0, minimum=0,
                                                    label="Seed (swap / random)")
                            with gr.Row():
                                le_add = gr.Button("Add layer edit", size="sm")
                                le_clear = gr.Button("Remove all layer edits", size="sm")
                            le_list = gr.Markdown("")
                        with gr.Accordion("Directions", open=True):
                            with gr.Row():
                                dir_method = gr.Radio(
                                    [("SeFa", "sefa"), ("GANSpace", "ganspace"),
                                     ("Boundary file", "file")], value="sefa",
                                    label="Directions from")
                                boundary = checked_file(gr.File(
                                    label="InterFaceGAN boundary (.npy)", file_types=[".npy"],
                                    visible=False, height=90))
                            dir_sliders = [gr.Slider(-10, 10, 0, step=0.1,
                                                     label=f"Direction {i}")
                                           for i in range(N_DIRECTIONS)]
                            with gr.Row():
                                dir_start = gr.Slider(0, n_ws, 0, step=1,
                                                      label="Apply from w")
                                dir_end = gr.Slider(0, n_ws, n_ws, step=1,
                                                    label="to w (exclusive)")
                            dir_reset = gr.Button("Reset directions", size="sm")
                        with gr.Accordion("Grids and walks", open=False):
                            with gr.Row():
                                grid_seeds = gr.Textbox("0, 1, 2, 3", label="Seeds")
                                grid_psis = gr.Textbox("1, 0.7, 0.4, 0", label="ψ values")
                                grid_kind = gr.Radio(["seeds × ψ", "seeds × style mix"],
                                                     value="seeds × ψ", label="Grid")
                            grid_btn = gr.Button("Render grid")
                            grid_out = gr.Image(label="Grid", type="pil", format="png",
                                                interactive=False, elem_classes="pixelated",
                                                height=300)
                            with gr.Row():
                                walk_seeds = gr.Textbox("0, 1, 2", label="Keyframe seeds")
                                walk_frames = capped_slider(2, LIMITS.video_frames, 60,
                                                           label="Frames")
                                walk_fps = capped_slider(1, LIMITS.video_fps, 24, label="fps")
                            with gr.Row():
                                walk_loop = gr.Checkbox(True, label="Loop")
                                walk_space = gr.Radio(["z", "w"], value="z",
                                                      label="Interpolate in")
                                walk_btn = gr.Button("Render walk video")
                                walk_cancel = gr.Button("Cancel", variant="stop")

                    with gr.Tab("Clusters", id="clusters", elem_id="tab-clusters"):
                        with gr.Row():
                            cl_layer = gr.Dropdown([], label="Layer", elem_id="cl-layer")
                            cl_k = gr.Slider(2, 16, 6, step=1, label="Clusters k",
                                             elem_id="cl-k")
                            cl_samples = capped_slider(16, LIMITS.cluster_samples, 64, step=16,
                                                       label="Samples (latents)")
                        with gr.Row():
                            cl_suggest = gr.Button("Suggest k")
                            cl_compute = gr.Button("Compute clusters", variant="primary",
                                                   elem_id="cl-compute")
                            cl_cancel = gr.Button("Cancel", variant="stop")
                        cl_status = gr.Markdown("")
                        gr.Markdown("Each tile shows where a cluster's channels fire on the "
                                    "current image. Click tiles to select clusters for "
                                    "bending (orange frame); click again to drop one.")
                        cl_gallery = gr.Gallery(show_label=False, columns=GALLERY_COLUMNS,
                                                height=136,
                                                allow_preview=False, elem_id="cl-gallery",
                                                format="png",
                                                object_fit="contain", interactive=False)
                        cl_selected = gr.CheckboxGroup([], label="Selected clusters",
                                                       elem_id="cl-selected")
                        cl_ablation = gr.Image(label="Ablation preview (last clicked)",
                                               type="pil", format="png", interactive=False,
                                               elem_classes="pixelated", height=200)

                    with gr.Tab("Bend", id="bend", elem_id="tab-bend"):
                        with gr.Row():
                            add_op = gr.Dropdown([(o.title, o.name) for o in
                                                  OPERATIONS.values()], value="rotate",
                                                 label="Operation", elem_id="add-op")
                            add_layer = gr.Dropdown([], label="Layer", elem_id="add-layer")
                            add_where = gr.Radio(WHERE_CHOICES, value="all channels",
                                                 label="Channels", elem_id="add-where")
                        with gr.Row():
                            add_fraction = gr.Slider(0.05, 1, 0.5, step=0.05, visible=False,
                                                     label="Random fraction")
                            add_btn = gr.Button("Add bend", variant="primary",
                                                elem_id="add-bend")
                        stack = gr.Radio([], type="index", label="Bend stack (click to edit)",
                                         elem_id="stack")
                        with gr.Row():
                            bend_enabled = gr.Checkbox(True, label="Enabled",
                                                       elem_id="bend-enabled")
                            up_btn = gr.Button("Move up", size="sm")
                            down_btn = gr.Button("Move down", size="sm")
                            remove_btn = gr.Button("Remove", size="sm", variant="stop")
                        bend_help = gr.Markdown("")
                        p_sliders = [gr.Slider(0, 1, 0, label=f"param {i}", visible=False,
                                               elem_id=f"p-slider-{i}")
                                     for i in range(N_SLIDERS)]
                        p_choices = [gr.Dropdown([], label=f"choice {i}", visible=False)
                                     for i in range(N_CHOICES)]
                        p_checks = [gr.Checkbox(False, label=f"flag {i}", visible=False)
                                    for i in range(N_CHECKS)]
                        with gr.Accordion("Weight edits", open=False):
                            with gr.Row():
                                w_op = gr.Dropdown([(o.title, o.name) for o in
                                                    WEIGHT_OPERATIONS.values()],
                                                   value="scale", label="Weight edit")
                                w_layer = gr.Dropdown([], label="Layer")
                                w_axis = gr.Radio(["out", "in"], value="in",
                                                  label="Channels axis")
                            with gr.Row():
                                w_amount = gr.Slider(-10, 10, 2, step=0.05,
                                                     label="Factor / noise std")
                                w_where = gr.Radio(WHERE_CHOICES, value="random fraction",
                                                   label="Channels")
                            with gr.Row():
                                w_add = gr.Button("Add weight edit")
                                w_clear = gr.Button("Remove all weight edits")
                            w_list = gr.Markdown("")
                        with gr.Accordion("Parameter sweep to video", open=False):
                            with gr.Row():
                                sw_param = gr.Dropdown([], label="Parameter of this bend")
                                sw_from = gr.Number(0, label="From")
                                sw_to = gr.Number(360, label="To")
                            with gr.Row():
                                sw_frames = capped_slider(2, LIMITS.video_frames, 48,
                                                          label="Frames")
                                sw_fps = capped_slider(1, LIMITS.video_fps, 24, label="fps")
                                sw_btn = gr.Button("Render sweep")
                                sw_cancel = gr.Button("Cancel", variant="stop")
                        # API-only: set one parameter of one bend by name (gradio_client).
                        api_index = gr.Number(0, precision=0, visible=False)
                        api_name_box = gr.Textbox("", visible=False)
                        api_value = gr.Textbox("", visible=False)
                        api_btn = gr.Button(visible=False)

                    with gr.Tab("Translate", id="translate", elem_id="tab-translate"):
                        gr.Markdown("An encoder writes one layer's activation maps from "
                                    "your picture; the layers after it still follow the "
                                    "latent (Explore) and the bends (Bend).")
                        with gr.Row():
                            tr_encoder = gr.Dropdown([], label="Encoder", scale=3,
                                                     allow_custom_value=True,
                                                     elem_id="tr-encoder",
                                                     info="shipped, trained here, a path "
                                                          "or hf://")
                            tr_refresh = gr.Button("Refresh list", size="sm", scale=1)
                        with gr.Accordion("Train an encoder", open=False):
                            with gr.Row():
                                tr_layer = gr.Dropdown([], label="Layer it writes")
                                tr_steps = capped_slider(10, LIMITS.train_steps, 300, step=10,
                                                        label="Steps", elem_id="tr-steps")
                                tr_batch = capped_slider(1, LIMITS.train_batch, 8, label="Batch")
                            with gr.Row():
                                tr_train = gr.Button("Train / resume", variant="primary")
                                tr_cancel = gr.Button("Cancel", variant="stop")
                            tr_status = gr.Markdown("")
                            with gr.Row():
                                tr_loss = gr.LinePlot(x="step", y="loss", height=220,
                                                      label="Training loss", x_title="step",
                                                      y_title="loss")
                                tr_preview = gr.Image(label="Preview: input | translation",
                                                      type="filepath", interactive=False,
                                                      elem_id="tr-preview",
                                                      height=220, elem_classes="pixelated")
                        with gr.Row():
                            tr_input = checked_image(label="Picture to translate",
                                                     type="filepath", image_mode=None,
                                                     sources=["upload", "clipboard"],
                                                     height=240, elem_id="tr-input")
                            with gr.Column():
                                tr_on = gr.Button("Translate this picture", variant="primary",
                                                  elem_id="tr-go")
                                tr_off = gr.Button("Stop translating (back to the latent)")
                        with gr.Accordion("Webcam (live)", open=False):
                            with gr.Row():
                                cam_in = checked_image(sources=["webcam"], streaming=True,
                                                  type="numpy", label="Webcam", height=240)
                                cam_out = gr.Image(label="Translated", type="numpy",
                                                   streaming=True, height=240,
                                                   elem_classes="pixelated",
                                                   elem_id="cam-out")
                    with gr.Tab("Project", id="project", elem_id="tab-project"):
                        gr.Markdown("Fit a latent so the model redraws your photo, then "
                                    "take it to Explore, bend it or walk from it.")
                        with gr.Row():
                            pr_input = checked_image(label="Photo", type="filepath",
                                                     image_mode=None,
                                                     sources=["upload", "clipboard"],
                                                     height=240, elem_id="pr-input")
                            with gr.Column():
                                pr_steps = capped_slider(10, LIMITS.projection_steps, 200, step=10,
                                                        label="Steps")
                                pr_wplus = gr.Checkbox(True, label="Fit W+ (one w per layer)")
                                with gr.Row():
                                    pr_go = gr.Button("Fit", variant="primary",
                                                      elem_id="pr-go")
                                    pr_cancel = gr.Button("Cancel", variant="stop")
                        pr_status = gr.Markdown("")
                        with gr.Row():
                            pr_send = gr.Button("Send latent to Explore", elem_id="pr-send")
                            pr_file = gr.File(label="Fitted latent (.npy)", interactive=False,
                                              height=80)

            # ---------------------------------------------------------- canvas
            with gr.Column(scale=2):
                output = gr.Image(label="Output", type="pil", format="png", height=460,
                                  interactive=False, elem_id="canvas",
                                  buttons=["download", "fullscreen"])
                with gr.Row():
                    before = gr.Image(label="Before (no bends, or the input)", type="pil",
                                      format="png", interactive=False, height=200, elem_id="before",
                                      buttons=["download"])
                    video = gr.Video(label="Video", height=200, interactive=False,
                                     elem_id="video")
                with gr.Accordion("Recipe", open=False, elem_id="recipe-acc") as rec_acc:
                    rec_code = gr.Code(language="json", label="Recipe JSON",
                                       interactive=False, elem_id="recipe-code")
                    with gr.Row():
                        rec_save = gr.Button("Save recipe", elem_id="recipe-save")
                        rec_load = checked_file(gr.UploadButton(
                            "Load recipe", file_types=[".json"], elem_id="recipe-load"))
                    rec_file = gr.File(label="Recipe file", interactive=False,
                                       elem_id="recipe-file", height=80)

        # ================================================================= callbacks
        latent_inputs = [seed, seed_frac, psi, cutoff, noise_mode, noise_seed, mix_on,
                         mix_seed, mix_start, mix_end, dir_method, boundary, *dir_sliders,
                         dir_start, dir_end]
        pool = [*p_sliders, *p_choices, *p_checks]

        def model_outputs(sess: Session) -> list[Any]:
            info = backend.model_info(sess.model)
            layers = [n for n in info.layers if not n.endswith("torgb")]
            layer = _default_layer(layers)
            n = info.num_ws
            encoders = backend.encoder_choices(sess, sess.model)
            return [sess, backend.card(info), backend.render(sess), None,
                    gr.update(choices=layers, value=layer),
                    gr.update(choices=layers, value=layer),
                    gr.update(choices=layers, value=layer),
                    gr.update(maximum=n, value=0), gr.update(maximum=n, value=0),
                    gr.update(maximum=n, value=min(4, n)), gr.update(maximum=n, value=0),
                    gr.update(maximum=n, value=n), [], gr.update(choices=[], value=[]),
                    gr.update(choices=[], value=None), *_latent_controls(sess),
                    gr.update(choices=layers, value=layer),
                    gr.update(choices=backend.encoder_options(encoders),
                              value=encoders[0] if encoders else None),
                    gr.update(maximum=n - 1, value=0), _le_list(sess)]

        model_outs = [session, model_card, output, before, cl_layer, add_layer, w_layer,
                      cutoff, mix_start, mix_end, dir_start, dir_end, cl_gallery,
                      cl_selected, stack, *latent_inputs, tr_layer, tr_encoder, le_index,
                      le_list]

        def _latent_controls(sess: Session) -> list[Any]:
            """Control values that show a session's latent (after a load or a recipe)."""
            lat = sess.recipe.latent
            amounts = [0.0] * N_DIRECTIONS
            method = "sefa"
            start, end = 0, None
            for d in lat.directions:
                if d.method != "file" and 0 <= d.index < N_DIRECTIONS:
                    amounts[d.index] = d.amount
                elif d.method == "file":
                    amounts[0] = d.amount
                method, start, end = d.method, d.layer_start, d.layer_end
            base = int(lat.seed // 1)
            n = backend.model_info(sess.model).num_ws
            return [base, round(lat.seed - base, 4), lat.psi, lat.cutoff or 0, lat.noise_mode,
                    lat.noise_seed, lat.mix_seed is not None,
                    lat.mix_seed if lat.mix_seed is not None else 1, lat.mix_start,
                    lat.mix_end if lat.mix_end is not None else n, method, None, *amounts,
                    start, end if end is not None else n]

        @user_errors
        def load_model(sess: Session | None, spec: str,
                       progress: gr.Progress = gr.Progress()) -> list[Any]:
            """Load a model (catalogue id, hf://..., path) and start a fresh session on it."""
            new = successor(sess, spec)
            if (spec or "").strip() and backend.is_path_spec(spec):
                backend.check_session_file(new, spec.strip())
            backend.model_info(spec, _progress_fn(progress))
            return model_outputs(new)

        @user_errors
        def upload_checkpoint(sess: Session | None, file: Any,
                              progress: gr.Progress = gr.Progress()) -> list[Any]:
            path = str(uploads.upload_path(file, "checkpoint", limit=LIMITS.checkpoint_bytes))
            new = successor(sess, path)
            new.uploads.add(path)
            backend.model_info(path, _progress_fn(progress))
            return [gr.update(value=path), *model_outputs(new)]

        @user_errors
        def set_latent(sess: Session, seed_v: float, frac: float, psi_v: float, cut: float,
                       nmode: str, nseed: float, mix: bool, mseed: float, mstart: float,
                       mend: float, method: str, boundary_file: Any, *rest: float) -> tuple:
            """Set every latent field from the Explore controls; returns the new image."""
            sess = _need(sess)
            lat = sess.recipe.latent
            amounts, dstart, dend = rest[:N_DIRECTIONS], int(rest[-2]), int(rest[-1])
            new_seed = float(int(seed_v or 0)) + float(frac or 0)
            if lat.w is not None and new_seed != lat.seed:
                lat.w = None  # moving the seed leaves a projected latent behind
            lat.seed = new_seed
            lat.psi = float(psi_v)
            lat.cutoff = int(cut) or None
            lat.noise_mode = nmode
            lat.noise_seed = int(nseed or 0)
            lat.mix_seed = int(mseed or 0) if mix else None
            lat.mix_start, lat.mix_end = int(mstart), int(mend)
            path = None
            if method == "file":
                if boundary_file is None:
                    amounts = [0.0] * len(amounts)
                else:
                    path = str(uploads.upload_path(boundary_file, "boundary"))
                    sess.uploads.add(path)
                    backend.check_boundary(sess, path)
            lat.directions = [DirectionEdit(method=method, index=0 if method == "file" else i,
                                            amount=float(a), layer_start=dstart,
                                            layer_end=dend, path=path)
                              for i, a in enumerate(amounts)
                              if a and (method != "file" or i == 0)]
            return sess, backend.render(sess), _before(sess)

        def _before(sess: Session) -> Any:
            """What an edit is judged against: the input picture when translating, else the
            latent without bends; nothing when there is no edit."""
            r = sess.recipe
            if r.translator is not None and r.translator.image:
                try:
                    return uploads.open_image(r.translator.image)
                except StudioError:
                    return None
            if r.bends or r.weight_edits:
                return backend.render(sess, with_bends=False)
            return None

        @user_errors
        def random_seed(sess: Session) -> int:
            return draw_seed()

        load_btn.click(load_model, [session, model_box], model_outs, api_name="load_model",
                       **JOB)
        ckpt_upload.upload(upload_checkpoint, [session, ckpt_upload], [model_box, *model_outs],
                           api_name="upload_checkpoint", **JOB)
        demo.load(load_model, [session, model_box], model_outs, api_name=False, **JOB)
        latent_outs = [session, output, before]
        for comp in latent_inputs:
            if isinstance(comp, gr.Slider):
                comp.input(set_latent, [session, *latent_inputs], latent_outs,
                           api_name=False, **LIVE)
            elif isinstance(comp, gr.File):
                for evt in (comp.upload, comp.clear):
                    evt(set_latent, [session, *latent_inputs], latent_outs, api_name=False,
                        **LIVE)
            else:
                comp.input(set_latent, [session, *latent_inputs], latent_outs,
                           api_name=False, **LIVE)
        # One documented endpoint for scripts; the per-control events above share its fn.
        gr.Button(visible=False).click(set_latent, [session, *latent_inputs], latent_outs,
                                       api_name="set_latent")
        rand_btn.click(random_seed, [session], [seed], api_name="random_seed").then(
            set_latent, [session, *latent_inputs], latent_outs, api_name=False, **LIVE)
        @user_errors
        def pick_method(sess: Session, method: str,
                        progress: gr.Progress = gr.Progress()) -> Any:
            """Show the boundary upload for 'file'; compute GANSpace's PCA once, up front."""
            if sess is not None and method == "ganspace":
                progress(0.1, desc="GANSpace: principal axes of 10,000 sampled w")
                backend.warm_directions(sess, method)
            return gr.update(visible=method == "file")

        dir_method.input(pick_method, [session, dir_method], [boundary],
                         api_name="pick_direction_method", **JOB).then(
            set_latent, [session, *latent_inputs], latent_outs, api_name=False, **LIVE)
        dir_reset.click(lambda: [0.0] * N_DIRECTIONS, None, dir_sliders,
                        api_name=False).then(set_latent, [session, *latent_inputs],
                                             latent_outs, api_name=False, **LIVE)

        def _le_list(sess: Session) -> str:
            edits = sess.recipe.latent.layer_edits
            return "\n".join(f"{i + 1}. {e.op} w[{e.w_index}]"
                             + (f" (seed {e.seed})" if e.op != "negate" else "")
                             for i, e in enumerate(edits)) or "_No layer edits._"

        @user_errors
        def add_layer_edit(sess: Session, op: str, index: float, seed_v: float) -> list[Any]:
            """Edit one w of W+: swap it with another seed's, randomise or negate it."""
            from engine.latents import LayerEdit
            sess = _need(sess)
            sess.recipe.latent.layer_edits.append(
                LayerEdit(op=op, w_index=int(index), seed=int(seed_v or 0)))
            try:
                out = backend.render(sess)
            except StudioError:
                sess.recipe.latent.layer_edits.pop()
                raise
            return [sess, out, _before(sess), _le_list(sess)]

        @user_errors
        def clear_layer_edits(sess: Session) -> list[Any]:
            sess = _need(sess)
            sess.recipe.latent.layer_edits.clear()
            return [sess, backend.render(sess), _before(sess), _le_list(sess)]

        le_add.click(add_layer_edit, [session, le_op, le_index, le_seed],
                     [session, output, before, le_list], api_name="add_layer_edit", **JOB)
        le_clear.click(clear_layer_edits, [session], [session, output, before, le_list],
                       api_name="clear_layer_edits", **JOB)

        @user_errors
        def render_grid(sess: Session, seeds_t: str, psis_t: str, kind: str) -> Any:
            """A seeds × ψ grid, or seeds × style-mix ranges with the second seed."""
            sess = _need(sess)
            seeds_l = _floats(seeds_t, "seeds")
            if kind == "seeds × ψ":
                return backend.psi_grid(sess, seeds_l, _floats(psis_t, "ψ values"))
            mix = sess.recipe.latent.mix_seed
            return backend.mix_grid(sess, seeds_l, float(mix if mix is not None else 1))

        grid_btn.click(render_grid, [session, grid_seeds, grid_psis, grid_kind], [grid_out],
                       api_name="render_grid", **JOB)

        @job_errors
        def render_walk(sess: Session, seeds_t: str, frames: float, fps: float, loop: bool,
                        space: str, progress: gr.Progress = gr.Progress()) -> str:
            """An interpolation (or loop) video through keyframe seeds, as mp4."""
            sess = _need(sess)
            total = int(frames)
            keys = _floats(seeds_t, "keyframe seeds")
            with LANE.heavy(sess.jobs, "a walk video", _progress_fn(progress)) as cancel:
                return backend.walk_video(sess, keys, total, bool(loop), space, float(fps),
                                          progress=lambda i: progress((i + 1) / total,
                                                                      desc="frames"),
                                          cancel=cancel)

        walk_evt = walk_btn.click(render_walk, [session, walk_seeds, walk_frames, walk_fps,
                                                walk_loop, walk_space], [video],
                                  api_name="render_walk", **HEAVY)

        def cancel_job(sess: Session | None) -> None:
            if sess is not None:
                sess.jobs.cancel.set()

        walk_cancel.click(cancel_job, [session], None, api_name="cancel_walk", cancels=[walk_evt])

        # ------------------------------------------------------------- clusters
        def _cluster_view(sess: Session) -> list[Any]:
            tiles = backend.overlay_tiles(sess)
            c = sess.clusters
            choices = [(f"#{i} ({c.sizes[i]} ch)", i) for i in range(c.k)] if c else []
            rows = -(-len(tiles) // GALLERY_COLUMNS) if tiles else 1
            return [gr.update(value=tiles, selected_index=None, height=24 + 112 * rows),
                    gr.update(choices=choices, value=sorted(sess.selected))]

        @job_errors
        def compute_clusters(sess: Session, layer: str, k: float, samples: float,
                             progress: gr.Progress = gr.Progress()) -> list[Any]:
            """Cluster a layer's channels (cached), then show one overlay tile per cluster."""
            sess = _need(sess)
            report = _progress_fn(progress)
            with LANE.heavy(sess.jobs, "a clustering", report) as cancel:
                result = backend.compute_clusters(sess, layer, int(k), int(samples),
                                                  progress=report, cancel=cancel)
            sess.clusters, sess.selected = result, []
            msg = (f"{result.k} clusters of {result.num_channels} channels on "
                   f"**{result.layer}** from {result.samples} latents; click tiles to "
                   f"select.")
            return [sess, msg, *_cluster_view(sess), gr.update(value=result.layer)]

        @job_errors
        def suggest(sess: Session, layer: str, samples: float,
                    progress: gr.Progress = gr.Progress()) -> list[Any]:
            """Pick k by silhouette score and put it on the k slider."""
            sess = _need(sess)
            report = _progress_fn(progress)
            with LANE.heavy(sess.jobs, "a search for k", report) as cancel:
                best = backend.suggest_k(sess, layer, int(samples), progress=report,
                                         cancel=cancel)
            return [best, f"Suggested k = **{best}** (best silhouette score)."]

        cl_evt = cl_compute.click(compute_clusters, [session, cl_layer, cl_k, cl_samples],
                                  [session, cl_status, cl_gallery, cl_selected, add_layer],
                                  api_name="compute_clusters", **HEAVY)
        sg_evt = cl_suggest.click(suggest, [session, cl_layer, cl_samples], [cl_k, cl_status],
                                  api_name="suggest_k", **HEAVY)
        cl_cancel.click(cancel_job, [session], None, api_name="cancel_clusters",
                        cancels=[cl_evt, sg_evt])

        @user_errors
        def click_tile(sess: Session, evt: gr.SelectData) -> list[Any]:
            sess = _need(sess)
            if sess.clusters is None:
                raise StudioError("compute clusters first.")
            cid = int(evt.index)
            S.toggle_cluster(sess, cid)
            return [sess, *_cluster_view(sess), backend.ablation(sess, cid),
                    _where_after_selection(sess)]

        @user_errors
        def select_clusters(sess: Session, ids: list[int]) -> list[Any]:
            """Set the selected cluster ids (what 'selected clusters' bends act on)."""
            sess = _need(sess)
            if sess.clusters is None:
                raise StudioError("compute clusters first.")
            new = S.select_clusters(sess, ids)
            abl = backend.ablation(sess, new[-1]) if new else gr.update()
            return [sess, *_cluster_view(sess), abl, _where_after_selection(sess)]

        def _where_after_selection(sess: Session) -> Any:
            # Selecting clusters is a choice of channels: new bends use them from then on.
            return gr.update(value="selected clusters") if sess.selected else gr.update()

        cl_gallery.select(click_tile, [session], [session, cl_gallery, cl_selected,
                                                  cl_ablation, add_where],
                          api_name=False, **JOB)
        cl_selected.input(select_clusters, [session, cl_selected],
                          [session, cl_gallery, cl_selected, cl_ablation, add_where],
                          api_name="select_clusters", show_progress="hidden")

        # ------------------------------------------------------------- bends
        def _stack_labels(sess: Session) -> Any:
            bends = sess.recipe.bends
            labels = [(bend_label(i, b), i) for i, b in enumerate(bends)]
            cur = sess.current if sess.current is not None and sess.current < len(bends) \
                else None
            sess.current = cur
            return gr.update(choices=labels, value=cur)

        def _editor(sess: Session) -> list[Any]:
            """Stack list + the pool of generic controls relabelled for the current bend."""
            bends = sess.recipe.bends
            ups: list[Any] = [_stack_labels(sess)]
            cur = sess.current
            sliders, choices_, checks = [], [], []
            help_text = ""
            numeric = []
            if cur is not None:
                b = bends[cur]
                op = OPERATIONS[b.op]
                help_text = f"**{op.title}** — {op.help}" if op.help else f"**{op.title}**"
                for spec in op.params:
                    val = b.params.get(spec.name, spec.default)
                    label = spec.name.replace("_", " ")
                    info = spec.help or None
                    if spec.type in ("float", "int"):
                        step = spec.step or (1 if spec.type == "int" else 0.01)
                        sliders.append(gr.update(visible=True, label=label, info=info,
                                                 minimum=spec.min, maximum=spec.max,
                                                 step=step, value=val))
                        numeric.append(spec.name)
                    elif spec.type == "choice":
                        choices_.append(gr.update(visible=True, label=label, info=info,
                                                  choices=list(spec.choices), value=val))
                    elif spec.type == "bool":
                        checks.append(gr.update(visible=True, label=label, info=info,
                                                value=bool(val)))
            ups.append(gr.update(value=bends[cur].enabled) if cur is not None
                       else gr.update(value=True))
            ups.append(help_text)
            ups += (sliders + [gr.update(visible=False)] * N_SLIDERS)[:N_SLIDERS]
            ups += (choices_ + [gr.update(visible=False)] * N_CHOICES)[:N_CHOICES]
            ups += (checks + [gr.update(visible=False)] * N_CHECKS)[:N_CHECKS]
            ups.append(gr.update(choices=numeric, value=numeric[0] if numeric else None))
            return ups

        editor_outs = [stack, bend_enabled, bend_help, *pool, sw_param]

        def _slot_names(sess: Session) -> dict[str, list[str]]:
            if sess.current is None:
                return {"float": [], "choice": [], "bool": []}
            op = OPERATIONS[sess.recipe.bends[sess.current].op]
            return {"float": [p.name for p in op.params if p.type in ("float", "int")],
                    "choice": [p.name for p in op.params if p.type == "choice"],
                    "bool": [p.name for p in op.params if p.type == "bool"]}

        @user_errors
        def add_bend(sess: Session, op: str, layer: str, where: str, fraction: float
                     ) -> list[Any]:
            """Append a bend (operation on a layer's selected channels) and edit it."""
            sess = _need(sess)
            if op not in OPERATIONS:
                raise StudioError(f"unknown operation {op!r}; choose one from the list.")
            if not layer:
                raise StudioError("choose the layer to bend.")
            S.add_bend(sess, layer, op, S.selection_for(sess, where, fraction))
            return [sess, backend.render(sess), _before(sess), *_editor(sess)]

        @user_errors
        def pick_bend(sess: Session, index: int | None) -> list[Any]:
            sess = _need(sess)
            sess.current = index
            return [sess, *_editor(sess)]

        def _restack(fn: Callable[[Session], None]) -> Callable:
            @user_errors
            def handler(sess: Session) -> list[Any]:
                sess = _need(sess)
                if sess.current is None:
                    raise StudioError("click a bend in the stack first.")
                fn(sess)
                return [sess, backend.render(sess), _before(sess), *_editor(sess)]
            return handler

        def _up(sess: Session) -> None:
            S.move(sess, "bend", sess.current, -1)

        def _down(sess: Session) -> None:
            S.move(sess, "bend", sess.current, +1)

        def _remove(sess: Session) -> None:
            S.remove(sess, "bend", sess.current)

        @user_errors
        def toggle_bend(sess: Session, on: bool) -> list[Any]:
            """Enable or disable the bend being edited."""
            sess = _need(sess)
            if sess.current is None:
                raise StudioError("click a bend in the stack first.")
            sess.recipe.bends[sess.current].enabled = bool(on)
            return [sess, backend.render(sess), _before(sess), *_editor(sess)[:1]]

        bend_outs = [session, output, before, *editor_outs]
        add_where.change(lambda where: gr.update(visible=where == "random fraction"),
                         add_where, add_fraction, api_name=False, show_progress="hidden")
        add_btn.click(add_bend, [session, add_op, add_layer, add_where, add_fraction],
                      bend_outs, api_name="add_bend", **JOB)
        stack.input(pick_bend, [session, stack], [session, *editor_outs],
                    api_name="pick_bend", show_progress="hidden")
        up_btn.click(_restack(_up), [session], bend_outs, api_name="bend_up", **JOB)
        down_btn.click(_restack(_down), [session], bend_outs, api_name="bend_down", **JOB)
        remove_btn.click(_restack(_remove), [session], bend_outs, api_name="remove_bend", **JOB)
        bend_enabled.input(toggle_bend, [session, bend_enabled],
                           [session, output, before, stack], api_name="toggle_bend",
                           show_progress="hidden")

        def _set_param(sess: Session, name: str, value: Any) -> None:
            b = sess.recipe.bends[sess.current]
            spec = OPERATIONS[b.op].spec(name) if hasattr(OPERATIONS[b.op], "spec") else None
            if spec is not None and spec.type == "int":
                value = int(round(float(value)))
            elif spec is not None and spec.type == "float":
                value = float(value)
            old = dict(b.params)
            b.params[name] = value
            try:
                backend.check_bend(sess, b)
            except StudioError:
                b.params = old
                raise

        def _slot_handler(kind: str, slot: int) -> Callable:
            # The stack's labels come back with each image, so the list never shows an
            # older value than the picture does.
            @user_errors
            def handler(sess: Session, value: Any) -> tuple:
                sess = _need(sess)
                names = _slot_names(sess)[kind]
                if slot >= len(names):
                    return sess, gr.update(), gr.update()
                _set_param(sess, names[slot], value)
                return sess, backend.render(sess), _stack_labels(sess)
            return handler

        for i, s in enumerate(p_sliders):
            s.input(_slot_handler("float", i), [session, s], [session, output, stack],
                    api_name=f"bend_slider_{i}", **LIVE)
        for i, d in enumerate(p_choices):
            d.input(_slot_handler("choice", i), [session, d], [session, output, stack],
                    api_name=f"bend_choice_{i}", **LIVE)
        for i, c in enumerate(p_checks):
            c.input(_slot_handler("bool", i), [session, c], [session, output, stack],
                    api_name=f"bend_check_{i}", **LIVE)

        @user_errors
        def set_bend_param(sess: Session, index: float, name: str, value: str) -> tuple:
            """Scripting: set parameter `name` of bend `index` (0-based) and render."""
            sess = _need(sess)
            i = int(index)
            if not 0 <= i < len(sess.recipe.bends):
                raise StudioError(f"there is no bend {i}; the stack has "
                                  f"{len(sess.recipe.bends)}.")
            sess.current = i
            _set_param(sess, name, _parse_value(value))
            return sess, backend.render(sess)

        api_btn.click(set_bend_param, [session, api_index, api_name_box, api_value],
                      [session, output], api_name="set_bend_param", **LIVE)

        # ------------------------------------------------------------- weight edits
        def _w_list(sess: Session) -> str:
            edits = sess.recipe.weight_edits
            if not edits:
                return "_No weight edits._"
            return "\n".join(f"{i + 1}. {WEIGHT_OPERATIONS[e.op].title} @ {e.layer} "
                             f"({e.params.get('axis', 'out')}, {e.channels.mode})"
                             + "".join(f", {k}={v:g}" if isinstance(v, float) else f", {k}={v}"
                                       for k, v in (e.params or {}).items() if k != "axis")
                             for i, e in enumerate(edits))

        @user_errors
        def add_weight_edit(sess: Session, op: str, layer: str, axis: str, amount: float,
                            where: str) -> list[Any]:
            """Append a weight edit (conv weights changed per call, before modulation)."""
            sess = _need(sess)
            spec = WEIGHT_OPERATIONS[op]
            params: dict[str, Any] = {}
            for p in spec.params:
                if p.name == "axis":
                    params["axis"] = axis
                elif p.type == "float" and not any(k != "axis" for k in params):
                    params[p.name] = float(amount)
            sel = S.selection_for(sess, where)
            edit = WeightEdit(layer=layer, op=op, params=params, channels=sel)
            if undone_by_demodulation(edit):
                raise StudioError("weight demodulation divides this scale back out, so it would "
                                  "change nothing; scale some input channels (axis 'in' with a "
                                  "random fraction or clusters) or use the Multiply bend.")
            sess.recipe.weight_edits.append(edit)
            try:
                backend.check_weight_edit(sess, edit)
            except StudioError:
                sess.recipe.weight_edits.pop()
                raise
            return [sess, backend.render(sess), _before(sess), _w_list(sess)]

        @user_errors
        def clear_weight_edits(sess: Session) -> list[Any]:
            sess = _need(sess)
            sess.recipe.weight_edits.clear()
            return [sess, backend.render(sess), _before(sess), _w_list(sess)]

        w_add.click(add_weight_edit, [session, w_op, w_layer, w_axis, w_amount, w_where],
                    [session, output, before, w_list], api_name="add_weight_edit", **JOB)
        w_clear.click(clear_weight_edits, [session], [session, output, before, w_list],
                      api_name="clear_weight_edits", **JOB)

        # ------------------------------------------------------------- sweep
        @job_errors
        def render_sweep(sess: Session, param: str, start: float, stop: float, frames: float,
                         fps: float, progress: gr.Progress = gr.Progress()) -> str:
            """Animate one parameter of the current bend from `start` to `stop` (mp4)."""
            sess = _need(sess)
            if sess.current is None or not param:
                raise StudioError("click a bend with a numeric parameter first.")
            total = int(frames)
            with LANE.heavy(sess.jobs, "a sweep video", _progress_fn(progress)) as cancel:
                return backend.sweep_video(sess, f"bends.{sess.current}.params.{param}",
                                           float(start), float(stop), total, float(fps),
                                           progress=lambda i: progress((i + 1) / total,
                                                                       desc="frames"),
                                           cancel=cancel)

        sw_evt = sw_btn.click(render_sweep, [session, sw_param, sw_from, sw_to, sw_frames,
                                             sw_fps], [video], api_name="render_sweep", **HEAVY)
        sw_cancel.click(cancel_job, [session], None, api_name="cancel_sweep", cancels=[sw_evt])

        # ------------------------------------------------------------- recipe
        @user_errors
        def show_recipe(sess: Session) -> str:
            return _need(sess).recipe.to_json()

        @user_errors
        def save_recipe(sess: Session) -> list[Any]:
            """Write the current recipe to a JSON file for download."""
            sess = _need(sess)
            path = backend.new_output_path(sess, "recipe", ".json")
            sess.recipe.save(path)
            return [str(path), sess.recipe.to_json()]

        @user_errors
        def load_recipe(sess: Session, file: Any) -> list[Any]:
            """Replace the session's recipe with an uploaded one (validated first)."""
            data = uploads.read_json(file, "recipe")
            rec = Recipe.from_dict(data)
            new = successor(sess, rec.model)
            backend.check_recipe_files(new, rec)
            backend.validate(rec)
            new.recipe = rec
            if sess is not None and sess.model == rec.model:
                new.clusters, new.selected = sess.clusters, sess.selected
            out = model_outputs(new)
            out[3] = _before(new)
            return [*out, *_editor(new), rec.to_json(), gr.update(value=rec.model)]

        rec_acc.expand(show_recipe, [session], [rec_code], api_name="show_recipe",
                       show_progress="hidden")
        # Every new output image comes from the session's recipe: keep its JSON in step.
        output.change(lambda sess: show_recipe(sess) if sess is not None else gr.update(),
                      [session], [rec_code], api_name=False, show_progress="hidden",
                      trigger_mode="always_last")
        rec_save.click(save_recipe, [session], [rec_file, rec_code], api_name="save_recipe", **JOB)
        rec_load.upload(load_recipe, [session, rec_load],
                        [*model_outs, *editor_outs, rec_code, model_box],
                        api_name="load_recipe", **JOB)
        # ------------------------------------------------------------- translate
        @user_errors
        def refresh_encoders(sess: Session | None, current: str | None) -> Any:
            found = backend.encoder_choices(sess, sess.model if sess else None)
            value = current if current else (found[0] if found else None)
            return gr.update(choices=backend.encoder_options(found), value=value)

        tr_refresh.click(refresh_encoders, [session, tr_encoder], [tr_encoder],
                         api_name="list_encoders")

        def train(sess: Session, layer: str, steps: float, batch: float):
            """Train (or resume) an encoder, yielding status, loss curve and preview."""
            import threading

            import pandas as pd

            try:
                sess = _need(sess)
                if not layer:
                    raise StudioError("choose the layer the encoder should write.")
                sess.jobs.claim("an encoder training")
            except StudioError as exc:
                raise gr.Error(str(exc), print_exception=False) from exc
            points: list[tuple[int, float]] = []
            box: dict[str, Any] = {}

            def report(fraction: float, message: str) -> None:
                box["msg"] = message
                loss = _loss_of(message)
                if loss is not None:
                    points.append((len(points) + 1, loss))

            def work() -> None:
                try:
                    with LANE.slot(sess.jobs, report) as cancel:
                        box["result"] = backend.train_encoder(sess, layer, int(steps),
                                                              int(batch), progress=report,
                                                              cancel=cancel)
                except StudioError as exc:
                    box["error"] = str(exc)
                except Exception as exc:  # noqa: BLE001 - shown to the user, never a traceback
                    box["error"] = f"training stopped: {exc}"
                finally:
                    sess.jobs.release()

            thread = threading.Thread(target=work, daemon=True)
            thread.start()
            preview = backend.preview_path(sess, layer, int(steps))
            while True:
                thread.join(timeout=1.0)
                recent = points[-2000:]
                plot = pd.DataFrame({  # typed even when empty, so the axes are numeric
                    "step": pd.Series([p[0] for p in recent], dtype="int64"),
                    "loss": pd.Series([p[1] for p in recent], dtype="float64")})
                shown = str(preview) if preview.exists() else None
                if not thread.is_alive():
                    break
                yield (gr.update(), box.get("msg", "starting…"), plot, shown)
            if "error" in box:
                msg = box["error"]
                if sess.jobs.cancel.is_set():
                    msg += " Press Train again to resume from the last checkpoint."
                yield (gr.update(), msg, plot, shown)
                return
            res = box["result"]
            path = str(res.path) if res.path else None
            m = res.metrics
            done = (f"Trained {res.steps} steps in {res.seconds:.0f} s "
                    f"({res.images_per_s:.1f} img/s); final loss {m.get('final_loss')}"
                    + (f", PSNR on its own images {m['psnr_db_own_images']} dB"
                       if "psnr_db_own_images" in m else "") + ".")
            found = backend.encoder_choices(sess, sess.model)
            yield (gr.update(choices=backend.encoder_options(found), value=path), done, plot,
                   str(preview) if preview.exists() else None)

        tr_evt = tr_train.click(train, [session, tr_layer, tr_steps, tr_batch],
                                [tr_encoder, tr_status, tr_loss, tr_preview],
                                api_name="train_encoder", **HEAVY_LANE)
        tr_cancel.click(cancel_job, [session], None, api_name="cancel_training", cancels=[tr_evt])

        @user_errors
        def translate(sess: Session, encoder: str | None, picture: Any) -> list[Any]:
            """Translate an uploaded picture through the encoder; latent and bends apply."""
            sess = _need(sess)
            if not encoder:
                raise StudioError("choose or train an encoder first.")
            path, pic = backend.save_input_image(sess, picture)
            backend.set_translator(sess, encoder, path)
            return [sess, backend.render(sess), pic]

        @user_errors
        def translate_off(sess: Session) -> list[Any]:
            sess = _need(sess)
            backend.set_translator(sess, None, None)
            return [sess, backend.render(sess), _before(sess)]

        tr_on.click(translate, [session, tr_encoder, tr_input], [session, output, before],
                    api_name="translate", **JOB)
        tr_off.click(translate_off, [session], [session, output, before],
                     api_name="translate_off", **JOB)

        def cam_frame(sess: Session | None, encoder: str | None, frame: Any) -> Any:
            if sess is None or frame is None or not encoder:
                return None
            try:
                return backend.translate_frame(sess, encoder, frame)
            except StudioError as exc:
                gr.Warning(str(exc))
                return None

        cam_in.stream(cam_frame, [session, tr_encoder, cam_in], [cam_out],
                      api_name="translate_frame", stream_every=0.1, time_limit=120,
                      concurrency_limit=2, show_progress="hidden")

        # ------------------------------------------------------------- project
        @job_errors
        def fit(sess: Session, photo: Any, steps: float, w_plus: bool,
                progress: gr.Progress = gr.Progress()) -> list[Any]:
            """Project a photo into the model's latent space (W or W+)."""
            sess = _need(sess)
            report = _progress_fn(progress)
            with LANE.heavy(sess.jobs, "a projection", report) as cancel:
                res = backend.project(sess, photo, int(steps), bool(w_plus), progress=report,
                                      cancel=cancel)
            from engine.latents import ws_to_list
            sess.projected = ws_to_list(res.w)
            msg = (f"PSNR **{res.psnr:.2f} dB** after {res.steps} steps "
                   f"(loss: {res.loss_name}; from {res.init}). Send it to Explore to edit.")
            vid = backend.frames_video(sess, res.frames, "projection")
            return [sess, backend._pil(res.image), backend._pil(res.target), msg,
                    backend.save_latent(sess, res.w), vid]

        pr_evt = pr_go.click(fit, [session, pr_input, pr_steps, pr_wplus],
                             [session, output, before, pr_status, pr_file, video],
                             api_name="project", **HEAVY)
        pr_cancel.click(cancel_job, [session], None, api_name="cancel_projection", cancels=[pr_evt])

        @user_errors
        def send_to_explore(sess: Session) -> list[Any]:
            """Use the fitted latent as the session's latent (psi 1, no truncation)."""
            sess = _need(sess)
            if sess.projected is None:
                raise StudioError("fit a photo first.")
            lat = sess.recipe.latent
            lat.w, lat.psi, lat.cutoff, lat.mix_seed = sess.projected, 1.0, None, None
            lat.directions, lat.layer_edits = [], []
            gr.Info("Explore now shows the fitted latent (W+), not a seed; the fitted noise "
                    "maps stay behind, so fine detail can differ a little. Typing a seed goes "
                    "back to seeds.")
            return [sess, backend.render(sess), _before(sess), *_latent_controls(sess),
                    gr.Tabs(selected="explore")]

        pr_send.click(send_to_explore, [session],
                      [session, output, before, *latent_inputs, tabs],
                      api_name="send_to_explore", **JOB)
    return demo


def _loss_of(message: str) -> float | None:
    """The loss figure in a training progress line ('step 3/100 loss 0.1234 (...)')."""
    import re
    m = re.search(r"loss[ =]([0-9.eE+-]+)", message or "")
    try:
        return float(m.group(1)) if m else None
    except ValueError:
        return None


def _parse_value(text: str) -> Any:
    """A parameter value typed as text: number, true/false, or a choice name."""
    t = str(text).strip()
    if t.lower() in ("true", "false"):
        return t.lower() == "true"
    try:
        return float(t)
    except ValueError:
        return t
