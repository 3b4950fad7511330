"""The Activation Studio page: a model bar, six tabs of controls, one canvas column.

`build_app()` only assembles: each tab's layout and events live in studio/tabs/<tab>.py
(handlers at module level, returning {component: value}), the session's edits in the
Gradio-free studio/session.py, long jobs in studio/jobs.py, shared pieces in studio/ui.py.
`spaces_app.py` launches the page with CSS and JS from here.
"""

from __future__ import annotations

import gradio as gr

from engine.base.errors import StudioError
from studio import live, models
from studio.limits import SERVER
from studio.tabs import (
    canvas,
    model_bar,
    perform,
)
from studio.tabs.explore import draw_seed
from studio.ui import UI, Page, bind

__all__ = ["CSS", "JS", "build_app", "draw_seed"]

CSS = """
#canvas img, #before img, .pixelated img { image-rendering: pixelated; }
#canvas img, #before img, #cam-out img, #tr-preview img {
  width: 100%; height: 100%; object-fit: contain; }
#model-card { font-size: 0.92em; }
/* Image labels sit above the picture, not over its top (Before's pad band, the top row of
   the Train samples); the picture gets the rest of the block's height. (The output image
   has no label: its live layers cover the whole block.) */
#before > label.float, #gt-samples > label.float,
#grid-out > label.float { position: static !important; }
#before .image-container, #gt-samples .image-container,
#grid-out .image-container { height: calc(100% - 28px) !important; }
/* The cluster file's drop zone as tall as its words (a fixed height cut them off). */
#recipe-clusters { height: auto !important; }
/* Teach's gallery is as tall as its rows: Gradio gave it a fixed 450 px (~230 px blank). */
#teach-grid .grid-wrap { min-height: 0 !important; height: auto !important;
  max-height: none !important; }
/* The busy line leaves the top right to the live channel's label (#live-bar): a long
   progress text ran under it. */
#busy { min-height: 30px; width: calc(100% - 250px) !important; }
#intro { font-size: 0.95em; }
/* The canvas column stays in view while the controls scroll (at 1280x800 too); Gradio's
   container hides overflow, which would stop position: sticky, and clip does not. */
.gradio-container { overflow: clip !important; }
/* The live channel's frames are drawn over the output image (studio/live.js). The output
   grows with the window: the canvas column (busy line, output, undo, Before, the Recipe
   and Performance headers) fits its height from 800 px up, so Before stays in view. */
#canvas { position: relative; height: clamp(300px, calc(100vh - 460px), 700px) !important; }
#live-canvas { position: absolute; left: 0; right: 0; bottom: 0; top: 0; width: 100%;
  height: 100%; object-fit: contain; image-rendering: pixelated; pointer-events: none;
  background: var(--block-background-fill); z-index: 5; display: none; }
/* The channel's status sits at the top right of the canvas column, beside the busy line,
   so it costs the sticky column no height. */
#live-bar { position: absolute; top: 2px; right: 6px; z-index: 6; font-size: 0.8em;
  color: var(--body-text-color-subdued); min-height: 0; max-width: 240px; text-align: right; }
#live-key, #live-sync { display: none !important; }
#live-error { color: var(--error-text-color); }
/* The live webcam: its translation over the output, the camera's picture over Before. */
#before { position: relative; }
#live-cam-out, #live-cam-video { position: absolute; left: 0; right: 0; bottom: 0; top: 0;
  width: 100%; height: 100%; object-fit: contain; pointer-events: none;
  background: var(--block-background-fill); display: none; }
#live-cam-out { z-index: 6; image-rendering: pixelated; }
#live-cam-video { z-index: 6; }
.live-play { width: 100%; padding: 6px; border-radius: var(--button-large-radius);
  border: 1px solid var(--button-secondary-border-color);
  background: var(--button-secondary-background-fill); font-weight: 600; cursor: pointer; }
.pause-glyph { display: inline-block; width: 0.7em; height: 0.8em; vertical-align: -0.05em;
  box-sizing: border-box; border-left: 0.25em solid currentColor;
  border-right: 0.25em solid currentColor; }
#live-cam-start { padding: 6px 14px; border-radius: var(--button-large-radius);
  border: 1px solid var(--button-secondary-border-color);
  background: var(--button-secondary-background-fill); font-weight: 600; cursor: pointer; }
.live-cam-row { display: flex; gap: 12px; align-items: center; margin: 6px 0; }
/* Gradio's columns wrap; capped at the window height this one would move what does not fit
   (the open Recipe panel) into a second column off to the right. It scrolls instead. */
/* At most the window less the page's footer (~55 px): a sticky column taller than what its
   row leaves above the footer was pushed up out of view at the end of the page. */
#canvas-col { position: sticky; top: 8px; align-self: flex-start; max-height: calc(100vh - 72px);
  overflow-y: auto; flex-wrap: nowrap !important; }
#canvas-col > * { flex-shrink: 0; }
""" + perform.CSS

# Run once when the page loads: the undo shortcuts, the live channel's page side, then the
# Performance panel's (on the live channel).
JS = (f"() => {{ ({canvas.SHORTCUTS_JS.strip()})(); ({live.page_js().strip()})(); "
      f"({perform.page_js().strip()})(); }}")

INTRO = ("**Activation Studio** takes a StyleGAN2 apart: explore its latents, group a layer's "
         "channels into clusters, bend them (the image on the right follows every change), "
         "translate your own pictures or project a photo into the model. The recipe under "
         "the image replays any result from a script; Ctrl+Z undoes an edit.")


def _model_list(default_model: str) -> tuple[list[tuple[str, str]], int]:
    """The model dropdown's choices and the number of ws of the model a session opens on."""
    try:
        choices = models.catalogue_choices()
    except StudioError:
        choices = []
    if default_model not in [c[1] for c in choices]:
        choices = [(default_model, default_model)] + choices
    try:  # size the w-index sliders for the model a session opens on
        n_ws = models.model_info(default_model).num_ws
    except StudioError:
        n_ws = 18
    return choices, n_ws


def build_app(default_model: str | None = None) -> gr.Blocks:
    """The whole page; `default_model` is the spec a new session opens on."""
    default_model = default_model or models.DEFAULT_MODEL
    choices, n_ws = _model_list(default_model)
    ui = UI(model_choices=choices, n_ws=n_ws)
    # Gradio deletes uploads and its copies of outputs by the same age rule as studio.files.
    age = SERVER.file_age_s
    with gr.Blocks(title="Activation Studio", delete_cache=(min(3600, age), age)) as demo:
        ui.session = gr.State(None)
        gr.Markdown(INTRO, elem_id="intro")
        with gr.Row():
            # The model bar heads the controls' column, not the page: the canvas column
            # then starts at the top, and the output and Before fit a 1280x800 window.
            with gr.Column(scale=3):
                model_bar.layout(ui, choices, default_model)
                with gr.Tabs(elem_id="tabs") as ui.tabs:
                    for tab in model_bar.TABS:
                        with gr.Tab(tab.LABEL, id=tab.ID, elem_id=f"tab-{tab.ID}"):
                            tab.layout(ui)
            with gr.Column(scale=2, elem_id="canvas-col"):
                canvas.layout(ui)
        page = Page(demo=demo, outputs=model_bar.page_outputs(ui),
                    load_model=bind(model_bar.load_model, ui))
        for part in (*model_bar.TABS, canvas, perform, model_bar):
            part.wire(ui, page)
    return demo
