"""The model bar (model list, upload, card) and showing a whole session on the page: after a
model switch, a loaded recipe, undo or redo every tab shows the session, and panels of the
previous model are cleared.

Every tab in TABS keeps one contract: LABEL and ID (its place in the tab strip), `layout(ui)`,
`wire(ui, page)`, `show(ui, sess)` (its controls showing a session), `reset(ui, sess)` (after a
model switch: the new model's choices, the old model's panels cleared) and `outputs(ui)` (every
component those two change). A new tab is a new module in TABS; nothing here changes."""

from __future__ import annotations

import dataclasses
from typing import Any

import gradio as gr

from studio import files, finetune, live, models, uploads
from studio import session as S
from studio.limits import LIMITS
from studio.session import Session, successor
from studio.tabs import bend, clusters, explore, project, train, translate
from studio.ui import UI, Page, bind, checked_file, pictures, user_errors

TABS = (explore, clusters, bend, translate, project, train)  # in the tab strip's order


def layout(ui: UI, choices: list[tuple[str, str]], default_model: str) -> None:
    with gr.Row(elem_id="model-bar", equal_height=True):
        ui.model_box = gr.Dropdown(choices=choices, value=default_model,
                                   allow_custom_value=True, label="Model", scale=3,
                                   info="pick one, or paste hf://owner/repo/file.pkl",
                                   elem_id="model-box")
        with gr.Column(scale=1, min_width=160):
            # Not the page's primary button: the model in the box is already loaded.
            ui.load_btn = gr.Button("Load model", variant="secondary", elem_id="load-model")
            ui.ckpt_upload = checked_file(gr.UploadButton(
                "Upload checkpoint", size="sm", file_types=list(models.CHECKPOINT_TYPES)))
    # Under the bar, the whole column wide: beside it in the controls' column it wrapped
    # into six narrow lines.
    ui.model_card = gr.Markdown("Loading the model…", elem_id="model-card")


def show_session(ui: UI, sess: Session, model_changed: bool) -> dict[Any, Any]:
    """Every control showing `sess`; with model_changed, the model's layers, encoders and
    limits too, and every panel that showed the previous model cleared."""
    out = pictures(ui, sess)
    for tab in TABS:
        out.update(tab.show(ui, sess))
    if model_changed:
        out.update({ui.model_card: model_card(ui, sess, models.model_info(sess.model)),
                    ui.live_key: live.key_html(sess),
                    ui.model_box: gr.update(value=sess.model, choices=model_choices(ui, sess)),
                    ui.video: None})
        for tab in TABS:
            out.update(tab.reset(ui, sess))
    return out


def model_card(ui: UI, sess: Session, info: models.ModelInfo) -> str:
    """The model card, a fine-tuned model's headed by its name in the model list: its own
    title is its file name, generator.safetensors, the same for every run."""
    names = {path: label for label, path in finetune.trained_models(sess)}
    name = names.get(sess.model)
    return models.card(dataclasses.replace(info, title=name) if name else info)


def model_choices(ui: UI, sess: Session) -> list[tuple[str, str]]:
    return models.session_choices(ui.model_choices, sess)


def page_outputs(ui: UI) -> list[Any]:
    """Everything show_session may change; the first four are load_model's API answer."""
    return [ui.session, ui.model_card, ui.output, ui.before, ui.model_box, ui.video,
            ui.live_key, *[c for tab in TABS for c in tab.outputs(ui)]]


@user_errors
def load_model(ui: UI, sess: Session | None, spec: str,
               progress: gr.Progress = gr.Progress()) -> dict[Any, Any]:
    """Load a model (catalogue id, hf://..., path) and start afresh on it."""
    from studio.jobs import progress_fn
    new = successor(sess, spec)
    if (spec or "").strip() and models.is_path_spec(spec):
        files.check_session_file(spec.strip(), new.token, new.uploads)
    models.model_info(spec, progress_fn(progress))
    if sess is not None:
        S.switch_model(sess, spec)  # the same object: a running job's Cancel still works
        new = sess
    return show_session(ui, new, model_changed=True)


@user_errors
def upload_checkpoint(ui: UI, sess: Session | None, file: Any,
                      progress: gr.Progress = gr.Progress()) -> dict[Any, Any]:
    path = str(uploads.upload_path(file, "checkpoint", limit=LIMITS.checkpoint_bytes))
    if sess is None:
        sess = successor(None, path)
    sess.uploads.add(path)
    return load_model.__wrapped__(ui, sess, path, progress)  # one undoable edit, not two


def wire(ui: UI, page: Page) -> None:
    outs = page.outputs
    loading = ui.load_btn.click(bind(load_model, ui), [ui.session, ui.model_box], outs,
                                api_name="load_model", **ui.job())
    # A load that failed must not leave the box naming it: it goes back to the model loaded.
    loading.failure(lambda sess: sess.model if sess is not None else gr.update(),
                    [ui.session], [ui.model_box], api_name=False, show_progress="hidden")
    uploaded = ui.ckpt_upload.upload(
        bind(upload_checkpoint, ui), [ui.session, ui.ckpt_upload],
        [ui.model_box, *[o for o in outs if o is not ui.model_box]],
        api_name="upload_checkpoint", **ui.job())
    for event in (loading, uploaded):  # Train's estimate is made again for the new model
        train.estimate_again(ui, event)
    page.demo.load(bind(load_model, ui), [ui.session, ui.model_box], outs, api_name=False,
              **ui.job())
