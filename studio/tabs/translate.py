"""Translate: train an encoder for a layer, translate a picture or the webcam through it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import gradio as gr

from engine.base.errors import StudioError
from engine.tools.translator import DEFAULT_ANCHOR, DEFAULT_FRAMING, DEFAULT_STRENGTH, FRAMINGS
from studio import session as S
from studio import translation
from studio.jobs import LANE, polled_job, progress_fn
from studio.limits import LIMITS
from studio.session import Session
from studio.tabs.explore import cancel_job
from studio.ui import (
    UI,
    Page,
    bind,
    cancel_button,
    capped_slider,
    checked_image,
    curves,
    layer_update,
    need,
    note_if_scaled_up,
    user_errors,
    with_cancel,
)

# The webcam over the live channel (studio/live.js drives it): frames as fast as the engine
# translates them, with its frame rate and latency. While it runs the translation is drawn
# over the output image and the camera's own picture over Before (the input), both in the
# canvas column that stays in view. The streaming Webcam box below is the Gradio path (and
# the API's translate_frame).
LIVE_CAM_HTML = """
<div class="live-cam-row">
  <button id="live-cam-start" class="lg secondary">Start live webcam</button>
  <span id="live-cam-stats"></span>
</div>
"""

ENCODER_INFO = "shipped, trained here, a path or hf://"
NO_ENCODER_INFO = ("this model has no encoder yet: train one under \"Train an encoder\" "
                   "below (or name one: a path or hf://)")

LABEL, ID = "Translate", "translate"  # the tab's title and id (its element: tab-translate)


def layout(ui: UI) -> None:
    gr.Markdown("An encoder writes one layer's activation maps from your picture; the layers "
                "after it still follow the latent (Explore) and the bends (Bend).")
    with gr.Row():
        ui.tr_encoder = gr.Dropdown([], label="Encoder", scale=3, allow_custom_value=True,
                                    elem_id="tr-encoder",
                                    info=ENCODER_INFO)
        ui.tr_refresh = gr.Button("Refresh list", size="sm", scale=1)
    with gr.Accordion("Train an encoder", open=False):
        with gr.Row():
            ui.tr_layer = gr.Dropdown([], label="Layer it writes")
            ui.tr_steps = capped_slider(10, LIMITS.train_steps, 300, step=10, label="Steps",
                                        elem_id="tr-steps")
            ui.tr_batch = capped_slider(1, LIMITS.train_batch, 8, label="Batch")
        with gr.Row():
            ui.tr_train = gr.Button("Train / resume", variant="primary")
            ui.tr_cancel = cancel_button(elem_id="tr-cancel")
        ui.tr_status = gr.Markdown("")
        with gr.Row():
            ui.tr_loss = gr.LinePlot(x="step", y="value", color="curve", height=220,
                                     label="Training loss", x_title="step", y_title="loss")
            ui.tr_preview = gr.Image(label="Preview: input | translation", type="filepath",
                                     interactive=False, elem_id="tr-preview", height=220,
                                     elem_classes="pixelated")
    with gr.Row():
        ui.tr_input = checked_image(label="Picture to translate", type="filepath",
                                    image_mode=None, sources=["upload", "clipboard"],
                                    height=240, elem_id="tr-input")
        with gr.Column():
            ui.tr_strength = gr.Slider(0.0, 1.0, DEFAULT_STRENGTH, step=0.05,
                                       label="Domain strength", elem_id="tr-strength",
                                       info="1: the encoder alone (the picture's layout); "
                                            "lower: more of the model's own content")
            ui.tr_anchor = gr.Radio([("the model's image laid out most like the picture",
                                      "match"), ("the latent's own image", "latent")],
                                    value=DEFAULT_ANCHOR, label="Below 1, blend towards",
                                    elem_id="tr-anchor",
                                    info="the first keeps the picture's layout and "
                                         "colours at low strength; the latent draws the "
                                         "finest layers")
            ui.tr_framing = gr.Radio(list(FRAMINGS), value=DEFAULT_FRAMING, label="Framing",
                                     elem_id="tr-framing",
                                     info="crop the centre square, fit (squeeze) the whole "
                                          "picture, or pad it; Before shows what the encoder "
                                          "sees")
            ui.tr_on = gr.Button("Translate this picture", variant="primary", elem_id="tr-go")
            ui.tr_off = gr.Button("Stop translating (back to the latent)")
    with gr.Accordion("Webcam (live)", open=False):
        gr.HTML(LIVE_CAM_HTML, elem_id="live-cam", padding=False)
        # Folded away: beside the live webcam a second, slower webcam read as a duplicate.
        with gr.Accordion("Webcam through Gradio events (slower; when the live channel is "
                          "unavailable, or for the API)", open=False, elem_id="cam-fallback"):
            with gr.Row():
                ui.cam_in = checked_image(sources=["webcam"], streaming=True, type="numpy",
                                          label="Webcam", height=240)
                ui.cam_out = gr.Image(label="Translated", type="numpy", streaming=True,
                                      height=240, elem_classes="pixelated", elem_id="cam-out")


def encoder_update(sess: Session | None, value: str | None = None) -> Any:
    """The encoder list for the session's model; when it has none (a fine-tuned or
    uploaded model), the box says so before Translate fails."""
    found = translation.encoder_choices(sess, sess.model if sess else None)
    return gr.update(choices=translation.encoder_options(found),
                     value=value if value else (found[0] if found else None),
                     info=ENCODER_INFO if found else NO_ENCODER_INFO)


def show(ui: UI, sess: Session) -> dict[Any, Any]:
    """Nothing here follows an undo or a recipe (the picture and encoder are the page's)."""
    return {}


def reset(ui: UI, sess: Session) -> dict[Any, Any]:
    """A new model: its layers and encoders; the old model's training panel goes."""
    return {ui.tr_layer: layer_update(sess), ui.tr_encoder: encoder_update(sess),
            ui.tr_status: "", ui.tr_preview: None, ui.cam_out: None}


def outputs(ui: UI) -> list[Any]:
    """Every component show() and reset() change."""
    return [ui.tr_layer, ui.tr_encoder, ui.tr_status, ui.tr_preview, ui.cam_out]


@user_errors
def refresh_encoders(ui: UI, sess: Session | None, current: str | None) -> Any:
    return encoder_update(sess, current)


def train(ui: UI, sess: Session, layer: str, steps: float, batch: float) -> Iterator[dict]:
    """Train (or resume) an encoder, yielding status, loss curve and preview."""
    try:
        sess = need(sess)
        if not layer:
            raise StudioError("choose the layer the encoder should write.")
        sess.jobs.claim("an encoder training")
    except StudioError as exc:
        raise gr.Error(str(exc), print_exception=False) from exc
    preview = translation.preview_path(sess, layer, int(batch))
    for job in polled_job(
            sess.jobs, lambda **kw: translation.train_encoder(sess, layer, int(steps), int(batch),
                                                          **kw),
            cancelled="Training cancelled; press Train / resume with the same steps to "
                      "continue from its last checkpoint.", failed="training stopped"):
        shown = {ui.tr_loss: curves(job.points, ("loss",)),
                 ui.tr_preview: str(preview) if preview.exists() else None}
        if job.running or job.error:
            yield {ui.tr_status: job.error or job.message, **shown}
    if job.error:
        return
    res = job.result
    m = res.metrics
    done = (f"Trained {res.steps} steps in {res.seconds:.0f} s ({res.images_per_s:.1f} img/s); "
            f"final loss {m.get('final_loss')}"
            + (f", PSNR on its own images {m['psnr_db_own_images']} dB"
               if "psnr_db_own_images" in m else "") + ".")
    yield {ui.tr_encoder: encoder_update(sess, str(res.path) if res.path else None),
           ui.tr_status: done, **shown}


def anchor_bank_job(sess: Session, progress: Any) -> None:
    """Make the model's anchor bank first when the translation needs one that is not ready:
    a long job (its slot, progress on the busy line, the session's Cancel), never inside the
    interactive render that follows."""
    if translation.needs_anchor_bank(sess):
        report = progress_fn(progress)
        with LANE.heavy(sess.jobs, "an anchor bank", report) as cancel:
            translation.make_anchor_bank(sess, progress=report, cancel=cancel)


@user_errors
def translate(ui: UI, sess: Session, encoder: str | None, picture: Any,
              strength: float = DEFAULT_STRENGTH, framing: str = DEFAULT_FRAMING,
              anchor: str = DEFAULT_ANCHOR, progress: gr.Progress = gr.Progress()
              ) -> dict[Any, Any]:
    """Translate an uploaded picture through the encoder; latent and bends apply. Before
    shows the picture as the encoder saw it."""
    from studio.ui import pictures
    sess = need(sess)
    if not encoder:
        raise StudioError("choose or train an encoder first.")
    path, pic = translation.save_input_image(sess, picture)
    S.set_translator(sess, encoder, path, strength, framing, anchor)
    anchor_bank_job(sess, progress)
    seen = translation.framed_input(sess)
    if seen is not None:
        note_if_scaled_up(pic.size, min(seen.size), "the encoder reads")
    return pictures(ui, sess)


@user_errors
def restyle(ui: UI, sess: Session, strength: float, framing: str,
            anchor: str = DEFAULT_ANCHOR, progress: gr.Progress = gr.Progress()
            ) -> dict[Any, Any]:
    """A new domain strength, framing or anchor for the picture being translated (none:
    no-op)."""
    from studio.ui import pictures
    sess = need(sess)
    t = sess.recipe.translator
    if t is None or not t.image:
        return {ui.session: sess}  # not {}: Gradio reads an empty dict as one output value
    S.set_translator(sess, t.encoder, t.image, strength, framing, anchor)
    anchor_bank_job(sess, progress)
    return pictures(ui, sess)


@user_errors
def translate_off(ui: UI, sess: Session) -> dict[Any, Any]:
    from studio.ui import pictures
    sess = need(sess)
    S.set_translator(sess, None, None)
    return pictures(ui, sess)


def cam_frame(sess: Session | None, encoder: str | None, frame: Any,
              strength: float = DEFAULT_STRENGTH, framing: str = DEFAULT_FRAMING,
              anchor: str = DEFAULT_ANCHOR) -> Any:
    if sess is None or frame is None or not encoder:
        return None
    try:
        return translation.translate_frame(sess, encoder, frame, strength, framing, anchor)
    except StudioError as exc:
        gr.Warning(str(exc))
        return None


def wire(ui: UI, page: Page) -> None:
    ui.tr_refresh.click(bind(refresh_encoders, ui), [ui.session, ui.tr_encoder],
                        [ui.tr_encoder], api_name="list_encoders")
    with_cancel(ui.tr_train.click, ui.tr_cancel, bind(train, ui),
                [ui.session, ui.tr_layer, ui.tr_steps, ui.tr_batch],
                [ui.tr_encoder, ui.tr_status, ui.tr_loss, ui.tr_preview],
                api_name="train_encoder", **ui.heavy())
    ui.tr_cancel.click(cancel_job, [ui.session], None, api_name="cancel_training")
    outs = [ui.session, ui.output, ui.before]
    ui.tr_on.click(bind(translate, ui), [ui.session, ui.tr_encoder, ui.tr_input,
                                         ui.tr_strength, ui.tr_framing, ui.tr_anchor], outs,
                   api_name="translate", **ui.job())
    style = [ui.session, ui.tr_strength, ui.tr_framing, ui.tr_anchor]
    ui.tr_strength.release(bind(restyle, ui), style, outs, api_name="translate_style",
                           **ui.job())
    ui.tr_framing.input(bind(restyle, ui), style, outs, api_name=False, **ui.job())
    ui.tr_anchor.input(bind(restyle, ui), style, outs, api_name=False, **ui.job())
    ui.tr_off.click(bind(translate_off, ui), [ui.session], outs, api_name="translate_off",
                    **ui.job())
    ui.cam_in.stream(cam_frame, [ui.session, ui.tr_encoder, ui.cam_in, ui.tr_strength,
                                 ui.tr_framing, ui.tr_anchor], [ui.cam_out],
                     api_name="translate_frame", stream_every=0.1, time_limit=120,
                     concurrency_limit=2, show_progress="hidden")
