"""Videos for the studio: latent walks, recipe sweeps and a job's frames, as mp4 files in
the session's own folder. Gradio-free; the frames come from engine (latents, recipe,
video), long renders run as studio.gpu jobs that report progress and can be cancelled.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import numpy as np

from engine.recipes import recipe
from studio import files
from studio.gpu import gpu_job
from studio.models import image_seconds, load, small
from studio.session import Session


def snapshot(sess: Session, size: int | None = None) -> Any:
    """A copy of the session's recipe taken under its lock, `size` as its output_size: a
    video job renders for seconds on another thread while the page and the live channel
    keep editing the session's recipe in place."""
    with sess.lock:
        r = copy.deepcopy(sess.recipe)
    if size:
        r.output_size = int(size)
    return r


@gpu_job(lambda sess, frames, **_: image_seconds(sess.model, frames),
         cpu_if=lambda sess, **_: small(sess.model))
def walk_video(sess: Session, seeds: list[float], frames: int, loop: bool, space: str,
               fps: float, progress: Callable[[int], Any] | None = None,
               cancel: Any = None, size: int | None = None) -> str:
    """A walk through keyframe seeds as an mp4, with everything the session's recipe does
    (bends, weight edits, directions): engine.recipes.recipe.walk, the frames live playback shows;
    `size` scales the frames (the recipe's output_size)."""
    out = files.new_output_path(sess.token, "walk", ".mp4")
    recipe.walk(snapshot(sess, size), seeds, frames, out, fps=fps, model=load(sess.model),
                loop=loop, space=space, progress=progress, cancel=cancel)
    return str(out)


@gpu_job(lambda sess, frames, **_: image_seconds(sess.model, frames),
         cpu_if=lambda sess, **_: small(sess.model))
def sweep_video(sess: Session, path: str, start: float, stop: float, frames: int, fps: float,
                progress: Callable[[int], Any] | None = None, cancel: Any = None,
                size: int | None = None) -> str:
    """Animate a numeric recipe field into an mp4 (engine.recipes.recipe.sweep); `size` scales
    the frames (the recipe's output_size), so a 64 px model gives a watchable video."""
    out = files.new_output_path(sess.token, "sweep", ".mp4")
    recipe.sweep(snapshot(sess, size), path, start, stop, frames, out, fps=fps,
                 model=load(sess.model), progress=progress, cancel=cancel)
    return str(out)


def frames_video(sess: Session, frames: list[np.ndarray], stem: str,
                 fps: float = 20) -> str | None:
    """A job's frames (a projection's steps) as an mp4, or None when there are none."""
    if not frames:
        return None
    from engine.base.video import write_video
    out = files.new_output_path(sess.token, stem, ".mp4")
    write_video(frames, out, fps=fps)
    return str(out)


@gpu_job(lambda sess, frames, **_: image_seconds(sess.model, frames),
         cpu_if=lambda sess, **_: small(sess.model))
def music_video(sess: Session, track: str, frames: int, fps: float, start: float = 0.0,
                progress: Callable[[int], Any] | None = None, cancel: Any = None,
                size: int | None = None) -> str:
    """The session's recipe played by an audio track (engine.recipes.music): its audio mappings, or
    a walk on loudness and beats and its bends on the bands; the track's stretch from
    `start` muxed in. At most `frames` frames, fewer where the track ends first."""
    from engine.recipes import music

    out = files.new_output_path(sess.token, "music", ".mp4")
    music.music_video(snapshot(sess), track, out, fps=fps, frames=frames, start=start,
                      model=load(sess.model), progress=progress, cancel=cancel, size=size)
    return str(out)
