"""The Performance panel under the canvas: where OSC goes (the session key), the page's own
sources (studio/perform.js: Web MIDI with learn, the microphone's features, keys), the
full-window view with the sources' meters, and the recorder, whose recording renders to mp4
here (the long-job lane, progress and Cancel).

The sources, learn and the recorder are plain HTML driven by the script over the live
channel; only the render is a Gradio event (it writes a file)."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from engine.base.errors import StudioError
from studio import files, sources
from studio.jobs import frames_job
from studio.limits import LIMITS
from studio.session import Session
from studio.tabs.explore import cancel_job
from studio.ui import UI, Page, bind, cancel_button, capped_slider, job_errors, need, with_cancel

PANEL_HTML = """
<div id="perf-panel">
  <div class="perf-row"><b>Performance</b><span style="flex:1"></span>
    <button id="perf-close" class="perf-btn" aria-label="close">✕</button></div>
  <p id="perf-osc">OSC: waiting for the live channel…</p>
  <div class="perf-row">
    <button id="perf-midi" class="perf-btn">Connect MIDI</button>
    <button id="perf-mic" class="perf-btn">Start microphone</button>
    <label><input type="checkbox" id="perf-keys"> Keys play</label>
    <button id="perf-learn" class="perf-btn">Learn</button>
    <button id="perf-full" class="perf-btn">Full window</button>
    <button id="perf-record" class="perf-btn">● Record</button>
  </div>
  <p id="perf-status" class="perf-status"></p>
  <p id="perf-help" class="perf-status">Learn: move a MIDI control, play a note or press a key,
  then click a slider (ψ, fractional seed, a direction, a bend's number, a weight edit's
  amount). With <b>Keys play</b> on, keys drive their mappings; Shift+1…9 saves the
  current state, 1…9 jumps back to it.</p>
  <div id="perf-meters"></div>
  <p id="perf-recorded" class="perf-status"></p>
</div>
"""

CSS = """
#perf-acc { position: fixed !important; right: 16px; bottom: 16px; width: 480px;
  max-width: calc(100vw - 32px); max-height: calc(100vh - 64px); overflow-y: auto;
  z-index: 900; padding: 10px; background: var(--background-fill-primary);
  border: 1px solid var(--border-color-primary); border-radius: var(--radius-lg);
  box-shadow: 0 4px 24px rgba(0, 0, 0, .25); }
#perf-acc:not(.perf-open) { display: none !important; }
#perf-open { padding: 0 8px; border-radius: 4px; cursor: pointer; font-weight: 600;
  border: 1px solid var(--button-secondary-border-color);
  background: var(--button-secondary-background-fill); }
.perf-row { display: flex; flex-wrap: wrap; gap: 8px; align-items: center; margin: 6px 0; }
.perf-btn { padding: 4px 10px; border-radius: var(--button-large-radius);
  border: 1px solid var(--button-secondary-border-color);
  background: var(--button-secondary-background-fill); cursor: pointer; }
.perf-btn[data-on="1"] { background: var(--button-primary-background-fill);
  color: var(--button-primary-text-color); }
.perf-status { font-size: 0.85em; margin: 2px 0; color: var(--body-text-color-subdued); }
#perf-meters { display: grid; grid-template-columns: max-content 1fr; gap: 2px 8px;
  font-size: 0.8em; }
.perf-meter { height: 8px; background: var(--neutral-200); border-radius: 4px; overflow: hidden;
  align-self: center; min-width: 60px; }
.perf-meter > i { display: block; height: 100%; background: var(--color-accent); }
body.perf-learning [id^="p-slider-"], body.perf-learning #psi, body.perf-learning #seed-frac,
body.perf-learning [id^="dir-"]:not(#dir-method), body.perf-learning #w-amount {
  outline: 2px dashed var(--color-accent); cursor: crosshair; }
/* The full-window view: the canvas fills the screen, the meters stand beside it. */
#perf-stage { position: fixed; inset: 0; z-index: 1000; background: #000; display: flex; }
#perf-stage > canvas { flex: 1; min-width: 0; height: 100%; object-fit: contain;
  image-rendering: pixelated; }
#perf-stage > #perf-meters { width: 220px; padding: 12px; color: #ddd; align-content: start; }
"""


def layout(ui: UI) -> None:
    # A floating panel (fixed position, opened by the "Perform" button the script puts in
    # the live bar): it takes no room from the canvas column, which must fit at 1280x800.
    with gr.Column(elem_id="perf-acc", elem_classes=["perf-dialog"]):
        gr.HTML(PANEL_HTML, elem_id="perf-html", container=False, padding=False)
        with gr.Row():
            ui.perf_fps = capped_slider(1, LIMITS.video_fps, 24, label="Recording video fps",
                                        elem_id="perf-fps")
            ui.perf_size = gr.Dropdown([("model size", "0"), ("256 px", "256"),
                                        ("512 px", "512")], value="256", label="Video size")
        with gr.Row():
            ui.perf_btn = gr.Button("Render the recording to mp4", elem_id="perf-render")
            ui.perf_cancel = cancel_button(elem_id="perf-cancel")


@job_errors
def render_recording(ui: UI, sess: Session, fps: float, size: str = "256",
                     progress: gr.Progress = gr.Progress()) -> str:
    """The last recording of this session's live page, every frame rendered in full."""
    from engine.recipes import performance
    sess = need(sess)
    perf = getattr(sess, "performance", None)
    if perf is None:
        raise StudioError("record a performance first (● Record on the Performance panel, "
                          "then stop it).")
    frames = performance.frame_count(perf, float(fps))
    if frames > LIMITS.video_frames:
        raise StudioError(
            f"this recording lasts {performance.duration(perf):.1f} s: {frames} frames at "
            f"{fps:g} fps, above the limit of {LIMITS.video_frames} (STUDIO_MAX_VIDEO_FRAMES); "
            "lower the fps or record a shorter piece.")
    return files.served(frames_job(
        sess.jobs, "the recording's video", frames, progress, size,
        lambda **job: sources.performance_video(sess, perf, float(fps), **job)))


def wire(ui: UI, page: Page) -> None:
    with_cancel(ui.perf_btn.click, ui.perf_cancel, bind(render_recording, ui),
                [ui.session, ui.perf_fps, ui.perf_size], [ui.video],
                api_name="render_recording", **ui.heavy())
    ui.perf_cancel.click(cancel_job, [ui.session], None, api_name="cancel_recording")


def page_js() -> str:
    """The panel's script (studio/perform.js), run once when the page loads after live.js."""
    return (Path(__file__).parents[1] / "perform.js").read_text()
