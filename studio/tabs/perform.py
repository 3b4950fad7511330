"""The Performance panel under the canvas: where OSC goes (the session key), and the page's
own sources (studio/perform.js: MIDI, the microphone, keys), the full-window view and the
recorder. Its controls are plain HTML that the script drives over the live channel."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from studio.ui import UI

PANEL_HTML = """
<div id="perf-panel">
  <p id="perf-osc">OSC: waiting for the live channel…</p>
</div>
"""


def layout(ui: UI) -> None:
    with gr.Accordion("Performance: OSC, MIDI, microphone, keys", open=False,
                      elem_id="perf-acc"):
        gr.HTML(PANEL_HTML, elem_id="perf-html", container=False, padding=False)


def page_js() -> str:
    """The panel's script (studio/perform.js), run once when the page loads after live.js."""
    return (Path(__file__).parents[1] / "perform.js").read_text()
