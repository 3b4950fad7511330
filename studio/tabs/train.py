"""Train: fine-tune the loaded model on uploaded pictures, with live sample grids, Cancel and
resume; the result joins the model list. The logic is studio/finetune.py (no Gradio)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr
import torch

from engine.base.errors import StudioError
from studio import finetune, gpu, models
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
    checked_file,
    curves,
    job_errors,
    need,
    with_cancel,
)

PICTURE_TYPES = [".zip", ".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"]
CURVES = ("loss_g", "loss_d", "aug_p")  # what the plot follows, one line each

LABEL, ID = "Train", "train"  # the tab's title and id (its element: tab-train)


def layout(ui: UI) -> None:
    gr.Markdown("Fine-tune the loaded model on your own pictures (a .zip or several files; at "
                "least 10, a few hundred is best). It starts from the model and, when its file "
                "has one, its discriminator; adaptive augmentation keeps a small set from "
                "being memorised. The result joins the model list.")
    ui.gt_files = checked_file(gr.File(file_count="multiple", file_types=PICTURE_TYPES,
                                       label="Pictures (.zip or several files)", height=120,
                                       elem_id="gt-files"))
    with gr.Row():
        ui.gt_steps = capped_slider(1, LIMITS.gan_steps, min(100, LIMITS.gan_steps),
                                    label="Steps", elem_id="gt-steps")
        ui.gt_batch = capped_slider(1, LIMITS.gan_batch, min(8, LIMITS.gan_batch),
                                    label="Pictures per step", elem_id="gt-batch")
    with gr.Row():
        ui.gt_augment = gr.Radio(list(finetune.AUGMENTS), value="ada", label="Augmentation",
                                 info="ada: its strength adapts to how well the "
                                      "discriminator knows your pictures")
        ui.gt_fit = gr.Radio(list(finetune.FITS), value="crop", label="Make square by",
                             info="crop the centre, or pad the whole picture")
        ui.gt_xflip = gr.Checkbox(True, label="Also train on mirrored pictures")
    ui.gt_estimate = gr.Markdown("", elem_id="gt-estimate")
    with gr.Row():
        ui.gt_go = gr.Button("Fine-tune / resume", variant="primary", elem_id="gt-go")
        ui.gt_cancel = cancel_button(elem_id="gt-cancel")
    ui.gt_status = gr.Markdown("", elem_id="gt-status")
    with gr.Row():
        ui.gt_samples = gr.Image(label="Samples (the same seeds every time)", type="filepath",
                                 interactive=False, height=300, elem_id="gt-samples",
                                 elem_classes="pixelated")
        ui.gt_plot = gr.LinePlot(x="step", y="value", color="curve", height=300,
                                 label="Losses and augmentation p", x_title="step",
                                 y_title="value")
    ui.gt_model = gr.State(None)  # the path of the model the last run exported
    ui.gt_load = gr.Button("Load the fine-tuned model", elem_id="gt-load", interactive=False)


def show(ui: UI, sess: Session) -> dict[Any, Any]:
    """Nothing here follows an undo or a recipe (a run belongs to its pictures)."""
    return {}


def reset(ui: UI, sess: Session) -> dict[Any, Any]:
    """A model switch clears the estimate and the grids (they were for the old model)."""
    return {ui.gt_estimate: "", ui.gt_status: "", ui.gt_samples: None}


def outputs(ui: UI) -> list[Any]:
    """Every component show() and reset() change."""
    return [ui.gt_estimate, ui.gt_status, ui.gt_samples]


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _stored(sess: Session, uploaded: Any) -> tuple[Path, str, Any]:
    """The uploaded pictures checked and stored (nothing decoded: this runs before a slot is
    taken), and the session model's info."""
    if gpu.on_zerogpu():
        raise StudioError("fine-tuning needs a CPU or a dedicated GPU, and this Space shares "
                          "ZeroGPU slices; run python -m engine train-gan on your own machine.")
    info = models.model_info(sess.model)
    data, digest = finetune.store_pictures(sess, uploaded, info.resolution)
    return data, digest, info


def _read_and_speed(sess: Session, data: Path, digest: str, info: Any, steps: float,
                    batch: float, augment: str, fit: str, measure: bool = True) -> str:
    """Inside a long-job slot: the stored pictures read, and the sentence saying how many
    there are and how long the run will take here (without `measure`, only a speed measured
    before is used)."""
    pics = finetune.read_pictures(data, digest, info.resolution, fit)
    found = f"**{pics.pictures} pictures** ready at {info.resolution} px"
    found += f" ({pics.note.rstrip('.')})." if pics.note else "."
    ips = finetune.speed(models.generator(sess.model), info.sha256, int(batch), augment,
                         _device(), measure=measure)
    if ips is None:
        return found
    return f"{found} {finetune.estimate(ips, int(steps), int(batch), _device(), info.title)}"


@job_errors
def check(ui: UI, sess: Session | None, uploaded: Any, steps: float, batch: float,
          augment: str, fit: str, progress: gr.Progress = gr.Progress()) -> dict[Any, Any]:
    """Read the uploaded pictures and say how long fine-tuning on them takes here, before
    any run starts. Reading them is the memory a run takes, so it waits for a long-job slot
    (as the speed probe does: the first time for a model, batch and augmentation, a
    training step is timed); while the session runs a job the estimate stays as it is."""
    sess = need(sess)
    if not uploaded:
        return {ui.gt_estimate: ""}
    data, digest, info = _stored(sess, uploaded)  # over-size sets refused before waiting
    if sess.jobs.running is not None:
        return {}
    model = sess.model
    with LANE.heavy(sess.jobs, "reading the pictures", progress_fn(progress)):
        sentence = _read_and_speed(sess, data, digest, info, steps, batch, augment, fit)
    if sess.model != model:  # switched while it waited: the estimate was the old model's
        return {}
    return {ui.gt_estimate: sentence}


def train(ui: UI, sess: Session | None, uploaded: Any, steps: float, batch: float,
          augment: str, xflip: bool, fit: str) -> Iterator[dict[Any, Any]]:
    """Fine-tune (or resume) in a worker thread; yields status, the newest sample grid and
    the curves while it runs, then the model in the list. The pictures are read in that
    thread, inside the long-job slot."""
    try:
        sess = need(sess)
        sess.jobs.claim("a fine-tuning")
    except StudioError as exc:
        raise gr.Error(str(exc), print_exception=False) from exc
    try:
        data, digest, info = _stored(sess, uploaded)
        key = models.model_key(sess.model) or ""
        cfg = finetune.run_settings(sess, data, digest, key, int(steps), int(batch), augment,
                                    bool(xflip), fit)
    except StudioError as exc:
        sess.jobs.release()
        raise gr.Error(str(exc), print_exception=False) from exc
    except BaseException:
        sess.jobs.release()
        raise
    said: dict[Any, Any] = {}

    def work(**kw: Any) -> Path:
        said[ui.gt_estimate] = _read_and_speed(sess, data, digest, info, steps, batch,
                                               augment, fit, measure=False)
        return finetune.fine_tune(cfg, **kw)

    yield {ui.gt_status: "starting…"}
    for job in polled_job(
            sess.jobs, work,
            cancelled="Fine-tuning cancelled after a checkpoint; press Fine-tune / resume "
                      "with the same pictures and settings to continue.",
            failed="fine-tuning stopped"):
        grid = finetune.latest_grid(cfg)
        shown = {ui.gt_plot: curves(job.points, CURVES),
                 ui.gt_samples: str(grid) if grid else None, **said}
        # The estimate follows the speed this run measures (the probe's was a guess).
        so_far = finetune.run_estimate(job.points, int(steps), int(batch))
        if so_far and ui.gt_estimate in said:
            shown[ui.gt_estimate] = f"{said[ui.gt_estimate]}\n\n{so_far}"
        if job.running or job.error:
            yield {ui.gt_status: job.error or f"{job.message} ({job.fraction:.0%})", **shown}
    ips = finetune.run_speed(job.points, int(batch))
    if ips:  # the next estimate for this model starts from this run's speed
        finetune.remember_speed(info.sha256, int(batch), augment, _device(), ips)
    if job.error:
        return
    path = str(job.result)
    yield {ui.gt_status: f"Done: {finetune.summary(path)}. The model is in the model list; "
                         f"**Load the fine-tuned model** opens it.",
           **shown, ui.gt_model: path, ui.gt_load: gr.update(interactive=True),
           ui.model_box: gr.update(choices=_choices(ui, sess))}


def _choices(ui: UI, sess: Session) -> list[tuple[str, str]]:
    return models.session_choices(ui.model_choices, sess)


def estimate_again(ui: UI, loaded: Any) -> None:
    """After the model-loading event `loaded` succeeds, the estimate is made again for the
    new model when pictures are waiting (the switch cleared the old model's)."""
    loaded.success(bind(check, ui), [ui.session, *_settings(ui)], [ui.gt_estimate],
                   api_name=False, **ui.heavy())


def _settings(ui: UI) -> list[Any]:
    return [ui.gt_files, ui.gt_steps, ui.gt_batch, ui.gt_augment, ui.gt_fit]


def wire(ui: UI, page: Page) -> None:
    settings = _settings(ui)
    ui.gt_files.upload(bind(check, ui), [ui.session, *settings], [ui.gt_estimate],
                       api_name="check_pictures", **ui.heavy())
    for comp in (ui.gt_steps, ui.gt_batch):
        comp.release(bind(check, ui), [ui.session, *settings], [ui.gt_estimate],
                     api_name=False, **ui.heavy())
    with_cancel(ui.gt_go.click, ui.gt_cancel, bind(train, ui),
                [ui.session, ui.gt_files, ui.gt_steps, ui.gt_batch, ui.gt_augment,
                 ui.gt_xflip, ui.gt_fit],
                [ui.gt_estimate, ui.gt_status, ui.gt_plot, ui.gt_samples, ui.gt_model,
                 ui.gt_load, ui.model_box], api_name="fine_tune", **ui.heavy())
    ui.gt_cancel.click(cancel_job, [ui.session], None, api_name="cancel_fine_tune")
    estimate_again(ui, ui.gt_load.click(page.load_model, [ui.session, ui.gt_model],
                                        page.outputs, api_name=False, **ui.job()))
