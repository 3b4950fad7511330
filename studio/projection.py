"""Projection for the studio: fit a latent to a photo, and keep the fitted W+ as a file.

Gradio-free (the tab is studio/tabs/project.py); the fit is engine.tools.projector.project, run
as one GPU call or, on ZeroGPU, as time-boxed calls that resume from its checkpoint
(studio.gpu.run_resumable). No model maths here.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np

from engine.tools import latents
from studio import files, uploads
from studio import gpu as gpu_mod
from studio.models import image_seconds, load
from studio.session import Session


def project(sess: Session, image: Any, steps: int, w_plus: bool,
            progress: Callable[[float, str], None] | None = None, cancel: Any = None) -> Any:
    """Fit a latent to a photo (engine.tools.projector.project) and return its result."""
    from engine.tools import projector

    pic = np.asarray(uploads.open_image(image))
    folder = files.session_dir(sess.token) / "projections" / uuid.uuid4().hex[:8]
    # The checkpoint only matters between time-boxed calls (ZeroGPU).
    ckpt = str(folder / "checkpoint.pt") if gpu_mod.chunked() else None
    try:
        result = gpu_mod.run_resumable(
            _project_now, (sess.model, pic, int(steps), bool(w_plus), ckpt), folder=folder,
            seconds=image_seconds(sess.model, 3 * int(steps)),
            stopped=projector.ProjectionCancelled, progress=progress, cancel=cancel)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if gpu_mod.is_paused(result):
        raise projector.ProjectionCancelled("The projection was cancelled.")
    return result


def _project_now(spec: str, pic: np.ndarray, steps: int, w_plus: bool, ckpt: str | None,
                 progress: Any, cancel: Any, on_metrics: Any = None) -> Any:
    from engine.tools import projector

    m = load(spec)
    return projector.project(m.G, pic, steps=steps, w_plus=w_plus, progress=progress,
                             cancel=cancel, checkpoint_path=ckpt,
                             frame_every=max(1, steps // 60))


def save_latent(sess: Session, ws: Any) -> str:
    """A fitted W+ as a .npy file in the session's folder (the recipe and CLI read it)."""
    path = files.new_output_path(sess.token, "latent", ".npy")
    latents.save_w(path, ws)
    return str(path)
