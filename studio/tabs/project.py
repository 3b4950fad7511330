"""Project: fit a latent so the model redraws a photo, then take it to Explore."""

from __future__ import annotations

from typing import Any

import gradio as gr

from engine.tools.latents import ws_to_list
from studio import models, projection, render, uploads, videos
from studio import session as S
from studio.jobs import LANE, progress_fn
from studio.limits import LIMITS
from studio.session import Session
from studio.tabs import explore
from studio.tabs.explore import cancel_job
from studio.ui import (
    UI,
    Page,
    bind,
    cancel_button,
    capped_slider,
    checked_image,
    job_errors,
    need,
    note_if_scaled_up,
    pictures,
    user_errors,
    with_cancel,
)

LABEL, ID = "Project", "project"  # the tab's title and id (its element: tab-project)


def layout(ui: UI) -> None:
    gr.Markdown("Fit a latent so the model redraws your photo, then take it to Explore, bend "
                "it or walk from it.")
    with gr.Row():
        ui.pr_input = checked_image(label="Photo", type="filepath", image_mode=None,
                                    sources=["upload", "clipboard"], height=240,
                                    elem_id="pr-input")
        with gr.Column():
            ui.pr_steps = capped_slider(10, LIMITS.projection_steps, 200, step=10,
                                        label="Steps", elem_id="pr-steps")
            ui.pr_wplus = gr.Checkbox(True, label="Fit W+ (one w per layer)")
            with gr.Row():
                ui.pr_go = gr.Button("Fit", variant="primary", elem_id="pr-go")
                ui.pr_cancel = cancel_button(elem_id="pr-cancel")
    ui.pr_status = gr.Markdown("")
    with gr.Row():
        ui.pr_send = gr.Button("Send latent to Explore", elem_id="pr-send", interactive=False)
        ui.pr_file = gr.File(label="Fitted latent (.npy)", interactive=False, height=80)


def show(ui: UI, sess: Session) -> dict[Any, Any]:
    """Nothing here follows an undo or a recipe (a fit belongs to its photo)."""
    return {}


def reset(ui: UI, sess: Session) -> dict[Any, Any]:
    """A new model: the old model's fit and its latent file go."""
    return {ui.pr_status: "", ui.pr_file: None}


def outputs(ui: UI) -> list[Any]:
    """Every component show() and reset() change."""
    return [ui.pr_status, ui.pr_file]


@job_errors
def fit(ui: UI, sess: Session, photo: Any, steps: float, w_plus: bool,
        progress: gr.Progress = gr.Progress()) -> dict[Any, Any]:
    """Project a photo into the model's latent space (W or W+). A cancelled fit is not an
    error: the status says so and the page stays as it was."""
    sess = need(sess)
    if photo is not None:
        note_if_scaled_up(uploads.open_image(photo).size,
                          models.model_info(sess.model).resolution, "the model draws")
    report = progress_fn(progress)
    with LANE.heavy(sess.jobs, "a projection", report) as cancel:
        try:
            res = projection.project(sess, photo, int(steps), bool(w_plus), progress=report,
                                  cancel=cancel)
        except Exception:
            if not sess.jobs.cancel.is_set():
                raise
            gr.Info("Projection cancelled.")
            return {ui.pr_status: "Projection cancelled; press Fit to start again."}
    sess.projected = ws_to_list(res.w)
    msg = (f"PSNR **{res.psnr:.2f} dB** after {res.steps} steps (loss: {res.loss_name}; "
           f"from {res.init}). Send it to Explore to edit.")
    return {ui.session: sess, ui.output: render.pil(res.image),
            ui.before: render.pil(res.target), ui.pr_status: msg,
            ui.pr_file: projection.save_latent(sess, res.w),
            ui.pr_send: gr.update(interactive=True),
            ui.video: videos.frames_video(sess, res.frames, "projection")}


@user_errors
def send_to_explore(ui: UI, sess: Session) -> dict[Any, Any]:
    """Use the fitted latent as the session's latent (psi 1, no truncation)."""
    sess = need(sess)
    translation_off = S.send_projection(sess)
    gr.Info("Explore now shows the fitted latent (W+), not a seed; the fitted noise maps stay "
            "behind, so fine detail can differ a little. Typing a seed goes back to seeds."
            + (" The translation is off (it drew over the latent)." if translation_off
               else ""))
    return {**pictures(ui, sess), **explore.show(ui, sess), ui.tabs: gr.Tabs(selected="explore")}


def wire(ui: UI, page: Page) -> None:
    # While a new fit runs, the previous fit's figures, file and Send are stale: they go.
    stale = {ui.pr_status: "Fitting… (progress above the image)", ui.pr_file: None,
             ui.pr_send: gr.update(interactive=False)}
    with_cancel(ui.pr_go.click, ui.pr_cancel, bind(fit, ui),
                [ui.session, ui.pr_input, ui.pr_steps, ui.pr_wplus],
                [ui.session, ui.output, ui.before, ui.pr_status, ui.pr_file, ui.video,
                 ui.pr_send], starting=stale, api_name="project", **ui.heavy())
    # The flag alone stops the fit (at its next step), so the handler answers "cancelled"
    # in the status line instead of the event ending in an error.
    ui.pr_cancel.click(cancel_job, [ui.session], None, api_name="cancel_projection")
    # Explore's controls (its grid is only cleared by a model switch: not an output here).
    explore_controls = [c for c in explore.outputs(ui) if c is not ui.grid_out]
    ui.pr_send.click(bind(send_to_explore, ui), [ui.session],
                     [ui.session, ui.output, ui.before, ui.tabs, *explore_controls],
                     api_name="send_to_explore", **ui.job())
