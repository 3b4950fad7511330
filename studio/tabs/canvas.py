"""The canvas column: the running job's progress, the output with its 'before', the video,
undo/redo, and the recipe (show, save, load). It stays in view while the tabs scroll."""

from __future__ import annotations

import copy
from typing import Any

import gradio as gr

from engine.base.errors import StudioError
from engine.recipes import bend_import, recipe
from studio import files, models, recipe_files, uploads
from studio import session as S
from studio.limits import LIMITS
from studio.session import Session
from studio.tabs import model_bar, perform
from studio.ui import (
    LIVE,
    UI,
    Page,
    bind,
    checked_file,
    job_errors,
    need,
    pictures,
    user_errors,
)

RECIPE_TYPES = [".json", ".yaml", ".yml", ".txt", ".zip"]


def layout(ui: UI) -> None:
    # Progress bars and error marks of button-started jobs land on this one line, at the
    # top of the canvas, so they are in view and never cover the image.
    ui.busy = gr.Markdown("", elem_id="busy", container=False)
    # Which path frames take (studio/live.py); the page's script fills it in. The key and
    # the sync button are for the script only and take no room.
    gr.HTML('<span id="live-status" data-mode="connecting">Gradio events</span> '
            '<span id="live-error"></span>', container=False, padding=False,
            elem_id="live-bar")
    ui.live_key = gr.HTML("", elem_id="live-key", container=False, padding=False)
    ui.live_sync = gr.Button("sync", visible="hidden", elem_id="live-sync")
    # No label over the output: its live layers (studio/live.js) cover the whole block.
    ui.output = gr.Image(label="Output", show_label=False, type="pil", format="png",
                         height=380, interactive=False, elem_id="canvas",
                         buttons=["download", "fullscreen"])
    with gr.Row():
        ui.undo_btn = gr.Button("↶ Undo", size="sm", elem_id="undo")
        ui.redo_btn = gr.Button("↷ Redo", size="sm", elem_id="redo")
    with gr.Row():
        ui.before = gr.Image(label="Before (no bends, or the input)", type="pil", format="png",
                             interactive=False, height=150, elem_id="before",
                             buttons=["download"])
        ui.video = gr.Video(label="Video", height=150, interactive=False, elem_id="video")
    with gr.Accordion("Recipe", open=False, elem_id="recipe-acc") as ui.rec_acc:
        ui.rec_code = gr.Code(language="json", label="Recipe JSON (edit, then Apply)",
                              interactive=True, elem_id="recipe-code")
        with gr.Row():
            ui.rec_apply = gr.Button("Apply edited JSON", size="sm", elem_id="recipe-apply")
            ui.rec_save = gr.Button("Save recipe", elem_id="recipe-save")
            ui.rec_bundle = gr.Button("Save recipe bundle (.zip with its files)",
                                      elem_id="recipe-bundle")
            ui.rec_load = checked_file(gr.UploadButton(
                "Load recipe / YAML", file_types=RECIPE_TYPES, elem_id="recipe-load"))
        ui.rec_clusters = checked_file(gr.File(
            label="Cluster file for a network-bending YAML (optional, upload before it)",
            file_types=[".json", ".yaml", ".yml"], elem_id="recipe-clusters"))
        ui.rec_file = gr.File(label="Recipe file", interactive=False, elem_id="recipe-file",
                              height=70)
    perform.layout(ui)   # OSC, MIDI, microphone, keys, full window, recorder


@user_errors
def show_recipe(ui: UI, sess: Session) -> str:
    return need(sess).recipe.to_json()


@user_errors
def save_bundle(ui: UI, sess: Session) -> dict[Any, Any]:
    """Write the recipe and every file it names (picture, encoder, uploaded model) to a
    zip that renders the same image on any machine (engine/recipes/bundle.py)."""
    sess = need(sess)
    return {ui.rec_file: str(recipe_files.save_bundle(sess)), ui.rec_code: sess.recipe.to_json()}


@user_errors
def save_recipe(ui: UI, sess: Session) -> dict[Any, Any]:
    """Write the current recipe to a JSON file for download."""
    sess = need(sess)
    path = files.new_output_path(sess.token, "recipe", ".json")
    sess.recipe.save(path)
    return {ui.rec_file: str(path), ui.rec_code: sess.recipe.to_json()}


def apply_recipe(ui: UI, sess: Session, rec: Any) -> dict[Any, Any]:
    """Check a recipe's files and fields, make it the session's, and show it everywhere."""
    recipe_files.check_recipe_files(sess, rec)
    recipe.validate(rec, models.load(rec.model))
    model_changed = rec.model != sess.model
    S.load_recipe(sess, rec)
    return model_bar.show_session(ui, sess, model_changed)


@user_errors
def load_recipe(ui: UI, sess: Session, file: Any, clusters: Any = None) -> dict[Any, Any]:
    """Replace the session's recipe with an uploaded one: a recipe JSON, a recipe bundle,
    Broad's network-bending YAML (with its cluster file) or the seed notebooks' template."""
    sess = need(sess)
    if str(getattr(file, "name", file) or "").lower().endswith(".zip"):
        path = uploads.upload_path(file, "recipe bundle", limit=LIMITS.checkpoint_bytes)
        return apply_recipe(ui, sess, recipe_files.open_bundle(sess, path))
    path = uploads.upload_path(file, "recipe", limit=uploads.MAX_RECIPE_BYTES)
    cluster_path = None
    if clusters is not None:
        cluster_path = uploads.upload_path(clusters, "cluster file",
                                           limit=uploads.MAX_RECIPE_BYTES)
    rec, warnings = bend_import.load_recipe_file(path, cluster_path, model=sess.model,
                                                 latent=sess.recipe.latent)
    if warnings:
        gr.Warning(import_note(warnings))
    return apply_recipe(ui, sess, rec)


def import_note(warnings: list[str]) -> str:
    """One toast for an imported bend file's warning lines (one per transform or note): only
    the lines that say a transform was skipped count as left out; the others were imported
    with a change, or are notes about the file."""
    left = sum("skipped (" in line for line in warnings)
    head = f"{left} transform(s) left out" if left else "Imported with notes"
    return (f"{head}: " + "; ".join(warnings[:8]) + (" …" if len(warnings) > 8 else ""))


@user_errors
def apply_json(ui: UI, sess: Session, text: str) -> dict[Any, Any]:
    """The recipe JSON as edited in the viewer becomes the session's recipe."""
    from engine.recipes.recipe import Recipe
    sess = need(sess)
    return apply_recipe(ui, sess, Recipe.from_json(text or ""))


@job_errors
def undo(ui: UI, sess: Session) -> dict[Any, Any]:
    """Back one edit (Ctrl+Z)."""
    return _history(ui, need(sess), S.undo, "nothing to undo.")


@job_errors
def redo(ui: UI, sess: Session) -> dict[Any, Any]:
    """Forward one undone edit (Ctrl+Shift+Z)."""
    return _history(ui, need(sess), S.redo, "nothing to redo.")


def _history(ui: UI, sess: Session, step: Any, empty: str) -> dict[Any, Any]:
    model = sess.model
    if not step(sess):
        raise StudioError(empty)
    return model_bar.show_session(ui, sess, sess.model != model)


# Ctrl+Z / Ctrl+Shift+Z (Cmd on a Mac) press the Undo / Redo buttons, except while typing.
# Enter in a slider's number box applies the value typed, as it does in the seed box:
# Gradio's slider fires its `release` when the box loses focus, not on Enter.
SHORTCUTS_JS = """
() => {
  document.addEventListener('keydown', (e) => {
    const t = e.target;
    if (e.key !== 'Enter' || !t || t.tagName !== 'INPUT' || t.type !== 'number') return;
    if ((t.getAttribute('aria-label') || '').startsWith('number input for')) t.blur();
  });
  document.addEventListener('keydown', (e) => {
    if (!(e.ctrlKey || e.metaKey) || e.key.toLowerCase() !== 'z') return;
    const t = e.target;
    if (t && (t.tagName === 'INPUT' || t.tagName === 'TEXTAREA' || t.isContentEditable)) return;
    const btn = document.querySelector(e.shiftKey ? '#redo' : '#undo');
    if (btn) { e.preventDefault(); btn.click(); }
  });
}
"""


@user_errors
def sync(ui: UI, sess: Session) -> dict[Any, Any]:
    """After a live gesture: the Gradio output shows what the live canvas shows, and the
    bend stack's labels the values the channel applied (a value typed into a bend's number
    box reaches the session through the channel, and no Gradio event of its own relabels)."""
    from studio.tabs.bend import stack_labels

    sess = need(sess)
    shown = copy.deepcopy(sess.recipe)
    out = pictures(ui, sess)
    if sess.recipe != shown:  # an edit landed while rendering: show it, not the older one
        out = pictures(ui, sess)
    return {**out, **stack_labels(ui, sess)}


def wire(ui: UI, page: Page) -> None:
    ui.live_sync.click(bind(sync, ui), [ui.session],
                       [ui.session, ui.output, ui.before, ui.stack],
                       api_name=False, **LIVE)
    ui.rec_acc.expand(bind(show_recipe, ui), [ui.session], [ui.rec_code],
                      api_name="show_recipe", show_progress="hidden")
    # Every new output image comes from the session's recipe: keep its JSON in step.
    ui.output.change(lambda sess: sess.recipe.to_json() if sess is not None else gr.update(),
                     [ui.session], [ui.rec_code], api_name=False, show_progress="hidden",
                     trigger_mode="always_last")
    ui.rec_save.click(bind(save_recipe, ui), [ui.session], [ui.rec_file, ui.rec_code],
                      api_name="save_recipe", **ui.job())
    ui.rec_bundle.click(bind(save_bundle, ui), [ui.session], [ui.rec_file, ui.rec_code],
                        api_name="save_bundle", **ui.job())
    ui.rec_load.upload(bind(load_recipe, ui), [ui.session, ui.rec_load, ui.rec_clusters],
                       page.outputs, api_name="load_recipe", **ui.job())
    ui.rec_apply.click(bind(apply_json, ui), [ui.session, ui.rec_code], page.outputs,
                       api_name="apply_recipe_json", **ui.job())
    ui.undo_btn.click(bind(undo, ui), [ui.session], page.outputs, api_name="undo", **ui.job())
    ui.redo_btn.click(bind(redo, ui), [ui.session], page.outputs, api_name="redo", **ui.job())
