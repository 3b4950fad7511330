"""Music video (under the Bend tab's sweep): upload a track, render the recipe played by it in
the long-job lane (progress, Cancel), and the mp4 with the track appears in the video pane."""

from __future__ import annotations

import gradio as gr

from studio import files, uploads, videos
from studio.jobs import frames_job
from studio.limits import LIMITS
from studio.session import Session
from studio.tabs.explore import cancel_job
from studio.ui import (
    UI,
    bind,
    cancel_button,
    capped_slider,
    checked_file,
    job_errors,
    need,
    with_cancel,
)

AUDIO_TYPES = [".wav", ".mp3", ".flac", ".ogg", ".oga", ".opus", ".m4a", ".aac", ".aif",
               ".aiff", ".webm", ".mp4"]


def layout(ui: UI) -> None:
    with gr.Accordion("Music video", open=False, elem_id="mv-acc"):
        gr.Markdown("The recipe played by a track: its audio mappings drive it, or else the "
                    "seed walks faster when the music is loud and jumps on each beat, and the "
                    "bends follow bass, mid and treble. The track is muxed into the mp4.")
        with gr.Row():
            ui.mv_track = checked_file(gr.File(label="Audio track", file_types=AUDIO_TYPES,
                                               height=90, elem_id="mv-track"))
            ui.mv_start = gr.Number(0, label="Start (s)", minimum=0, elem_id="mv-start")
            ui.mv_seconds = gr.Number(10, label="Length (s)", minimum=0.1,
                                      elem_id="mv-seconds")
        with gr.Row():
            ui.mv_fps = capped_slider(1, LIMITS.video_fps, 24, label="fps", elem_id="mv-fps")
            ui.mv_size = gr.Dropdown([("model size", "0"), ("256 px", "256"),
                                      ("512 px", "512")], value="256", label="Video size")
            ui.mv_btn = gr.Button("Render music video", elem_id="mv-render")
            ui.mv_cancel = cancel_button(elem_id="mv-cancel")


def frames_for(seconds: float, fps: float) -> int:
    """Frames for `seconds` at `fps`, at least 1 and at most the limit."""
    import math

    from engine.base.errors import StudioError

    if not (math.isfinite(float(seconds)) and float(seconds) > 0):
        raise StudioError(f"length: {seconds!r} must be a positive number of seconds.")
    if not (math.isfinite(float(fps)) and float(fps) > 0):
        raise StudioError(f"fps: {fps!r} must be a positive number.")
    exact = float(seconds) * float(fps)  # may overflow to inf: checked before round()
    if exact > LIMITS.music_video_frames:
        raise StudioError(f"{float(seconds):g} s at {float(fps):g} fps is {exact:.0f} frames, "
                          f"more than the limit of {LIMITS.music_video_frames} "
                          f"(STUDIO_MAX_MUSIC_VIDEO_FRAMES).")
    frames = max(1, round(exact))
    return frames


@job_errors
def render_music_video(ui: UI, sess: Session, track: object, start: float, seconds: float,
                       fps: float, size: str = "256",
                       progress: gr.Progress = gr.Progress()) -> str | None:
    """The session's recipe played by the uploaded track, as an mp4 with the track."""
    from engine.base.errors import StudioError

    sess = need(sess)
    if track is None:
        raise StudioError("upload an audio track first.")
    path = uploads.upload_path(track, "audio track", limit=LIMITS.audio_bytes)
    frames = frames_for(seconds, fps)
    return files.served(frames_job(
        sess.jobs, "a music video", frames, progress, size,
        lambda **job: videos.music_video(sess, str(path), frames, float(fps),
                                         float(start or 0), **job)))


def wire(ui: UI) -> None:
    with_cancel(ui.mv_btn.click, ui.mv_cancel, bind(render_music_video, ui),
                [ui.session, ui.mv_track, ui.mv_start, ui.mv_seconds, ui.mv_fps, ui.mv_size],
                [ui.video], api_name="render_music_video", **ui.heavy())
    ui.mv_cancel.click(cancel_job, [ui.session], None, api_name="cancel_music_video")
