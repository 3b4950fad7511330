"""The model bar (model list, upload, card) and showing a whole session on the page: after a
model switch, a loaded recipe, undo or redo every tab shows the session, and panels of the
previous model are cleared."""

from __future__ import annotations

import dataclasses
from typing import Any

import gradio as gr

from studio import files, finetune, live, models, uploads
from studio import session as S
from studio.limits import LIMITS
from studio.session import Session, successor
from studio.tabs import bend, clusters, explore, project, train, translate
from studio.ui import UI, bind, checked_file, conv_layers, default_layer, pictures, user_errors

CHECKPOINT_TYPES = (".pkl", ".pt", ".pth", ".safetensors")


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
                "Upload checkpoint", size="sm", file_types=list(CHECKPOINT_TYPES)))
        ui.model_card = gr.Markdown("Loading the model…", elem_id="model-card")


def show_session(ui: UI, sess: Session, model_changed: bool) -> dict[Any, Any]:
    """Every control showing `sess`; with model_changed, the model's layers, encoders and
    limits too, and every panel that showed the previous model cleared."""
    out = {**pictures(ui, sess), **explore.show(ui, sess), **bend.show(ui, sess),
           **clusters.show(ui, sess)}
    if model_changed:
        info = models.model_info(sess.model)
        layers = conv_layers(sess.model)
        layer = default_layer(layers)
        out.update({ui.model_card: model_card(ui, sess, info),
                    ui.live_key: live.key_html(sess),
            ui.model_box: gr.update(value=sess.model, choices=model_choices(ui, sess)),
            ui.video: None, **explore.reset(ui), **clusters.reset(ui, layers, layer),
            **bend.reset(ui, layers, layer), **translate.reset(ui, sess, layers, layer),
            **project.reset(ui), **train.reset(ui)})
    return out


def model_card(ui: UI, sess: Session, info: models.ModelInfo) -> str:
    """The model card, a fine-tuned model's headed by its name in the model list: its own
    title is its file name, generator.safetensors, the same for every run."""
    names = {path: label for label, path in finetune.trained_models(sess)}
    name = names.get(sess.model)
    return models.card(dataclasses.replace(info, title=name) if name else info)


def model_choices(ui: UI, sess: Session) -> list[tuple[str, str]]:
    """The model list plus this session's own uploaded checkpoints and fine-tuned models
    (one click away, and seen by nobody else)."""
    known = list(ui.model_choices)
    mine = sorted(p for p in sess.uploads if p.endswith(CHECKPOINT_TYPES))
    tuned = [c for c in finetune.trained_models(sess) if c[1] not in [k[1] for k in known]]
    return tuned + [(f"uploaded: {p.rsplit('/', 1)[-1]}", p) for p in mine
                    if p not in [c[1] for c in known]] + known


def page_outputs(ui: UI) -> list[Any]:
    """Everything show_session may change; the first four are load_model's API answer."""
    return [ui.session, ui.model_card, ui.output, ui.before, ui.model_box, ui.video,
            *explore.shown(ui), ui.grid_out, *bend.shown(ui), *clusters.shown(ui),
            ui.cl_layer, ui.cl_status, ui.cl_ablation, ui.add_layer, ui.w_layer, ui.tr_layer,
            ui.tr_encoder, ui.tr_status, ui.tr_preview, ui.cam_out, ui.pr_status, ui.pr_file,
            ui.live_key, *train.cleared(ui)]


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


def wire(ui: UI, demo: gr.Blocks) -> None:
    outs = page_outputs(ui)
    loading = ui.load_btn.click(bind(load_model, ui), [ui.session, ui.model_box], outs,
                                api_name="load_model", **ui.job())
    # A load that failed must not leave the box naming it: it goes back to the model loaded.
    loading.failure(lambda sess: sess.model if sess is not None else gr.update(),
                    [ui.session], [ui.model_box], api_name=False, show_progress="hidden")
    ui.ckpt_upload.upload(bind(upload_checkpoint, ui), [ui.session, ui.ckpt_upload],
                          [ui.model_box, *[o for o in outs if o is not ui.model_box]],
                          api_name="upload_checkpoint", **ui.job())
    demo.load(bind(load_model, ui), [ui.session, ui.model_box], outs, api_name=False,
              **ui.job())
