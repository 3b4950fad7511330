"""Translation for the studio: the encoders a session may use, training one, the framed
input picture, and webcam frames through an encoder.

Gradio-free (the tab is studio/tabs/translate.py); pointing a session's recipe at an
encoder is a session edit (studio.session.set_translator). No model maths here.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from engine.recipes import recipe
from engine.tools import bending
from engine.tools.translator import DEFAULTS as TRANSLATE_DEFAULTS
from studio import files, uploads
from studio import gpu as gpu_mod
from studio import session as S
from studio.gpu import gpu
from studio.jobs import interactive
from studio.limits import SERVER_FILES
from studio.models import image_seconds, load, small
from studio.session import Session

ENCODER_GLOBS = ("engine/models/default_model/**/encoder.safetensors",
                 "engine/models/default_model/*encoder*.safetensors")


def encoder_options(paths: list[str]) -> list[tuple[str, str]]:
    """(label, path) pairs for the encoder dropdown: where it came from, its layer, steps."""
    from engine.tools import translator

    options = []
    for path in paths:
        p = Path(path)
        origin = (f"trained here ({p.parent.name})" if p.is_relative_to(files.OUT_DIR)
                  else "shipped")
        info = translator.list_encoder(p)
        detail = p.name
        if info is not None:
            detail = f"{info.layer}, {info.steps} steps"
            if info.saved_at:
                detail += f", {info.saved_at[:16].replace('T', ' ')}"
        options.append((f"{origin}: {detail}", path))
    return options


def _trained_encoders(sess: Session | None) -> list[str]:
    """Encoders trained in this studio that `sess` may see: its own with
    STUDIO_SERVER_FILES=studio (none before it has a session), everyone's on your own
    machine."""
    if SERVER_FILES == "any":
        folders = [files.OUT_DIR / "sessions", files.OUT_DIR / "encoders"]
        pattern = "**/encoder.safetensors"
    elif sess is None:
        return []
    else:
        folders, pattern = [encoder_dir(sess)], "*/encoder.safetensors"
    return [str(p) for folder in folders if folder.is_dir() for p in sorted(folder.glob(pattern))]


def encoder_choices(sess: Session | None, spec: str | None = None) -> list[str]:
    """Encoders on disk (shipped ones, then those trained here that the session may see);
    with `spec`, only those trained for that model (by the sha256 recorded beside each)."""
    from engine.tools import translator

    found: list[str] = []
    for pattern in ENCODER_GLOBS:
        found += sorted(str(p) for p in files.REPO.glob(pattern))
    found = list(dict.fromkeys(found + _trained_encoders(sess)))
    if spec is None:
        return found
    m = load(spec)
    shas = {m.sha256, translator.weights_sha256(m.G)}
    return [path for path in found
            if (info := translator.list_encoder(path)) is not None and info.model_shas & shas]


def encoder_dir(sess: Session) -> Path:
    return files.session_dir(sess.token) / "encoders"


def train_encoder(sess: Session, layer: str, steps: int, batch: int,
                  progress: Callable[[float, str], None] | None = None, cancel: Any = None,
                  on_metrics: Callable[[int, dict], Any] | None = None) -> Any:
    """Train (or resume) an encoder for `layer`; saved under this session's folder. The
    folder is named by layer and batch only, so a cancelled run resumes even when the step
    count changed (the engine lets steps grow). on_metrics(step, {"loss": ...}) hears every
    step (engine.tools.translator.train_encoder). On ZeroGPU the run is a series of time-boxed
    GPU calls (studio.gpu.run_resumable); elsewhere one call."""
    from engine.tools import translator

    files.make_room()
    out = encoder_dir(sess) / f"{layer}-b{batch}"
    result = gpu_mod.run_resumable(
        _train_encoder_now, (sess.model, layer, int(steps), int(batch), str(out)), folder=out,
        seconds=train_seconds(sess.model, int(steps), int(batch)),
        stopped=translator.TrainingCancelled,
        progress=progress, cancel=cancel, on_metrics=on_metrics)
    if gpu_mod.is_paused(result):
        raise translator.TrainingCancelled(f"encoder training stopped before step {steps}; "
                                           f"run it again to resume")
    return result


def train_seconds(spec: str, steps: int, batch: int) -> float:
    """GPU work of an encoder training: each step renders its batch and back-propagates
    through the encoder (about three renders' worth of work an image)."""
    return image_seconds(spec, 3 * steps * batch)


def _train_encoder_now(spec: str, layer: str, steps: int, batch: int, out: str,
                       progress: Any, cancel: Any, on_metrics: Any) -> Any:
    from engine.tools import translator

    m = load(spec)
    return translator.train_encoder(m.G, layer=layer, steps=steps, batch=batch,
                                    out_dir=out, progress=progress, cancel=cancel,
                                    on_metrics=on_metrics,
                                    preview_every=max(10, steps // 10),
                                    checkpoint_every=max(10, steps // 10),
                                    model_sha256=m.sha256, model_id=m.id,
                                    eval_seeds=range(4))


def preview_path(sess: Session, layer: str, batch: int) -> Path:
    from engine.tools import translator
    return encoder_dir(sess) / f"{layer}-b{batch}" / translator.PREVIEW_FILE


def save_input_image(sess: Session, image: Any) -> tuple[str, Image.Image]:
    """Check an uploaded picture and keep a clean RGB PNG copy, in the session's folder,
    that its recipe can name."""
    pic = uploads.open_image(image)
    pic.thumbnail((1024, 1024))  # the encoder sees at most the model's size anyway
    path = files.new_output_path(sess.token, "input", ".png")
    pic.save(path, format="PNG")
    return str(path), pic


def framed_input(sess: Session) -> Image.Image | None:
    """The translated picture exactly as the encoder reads it (framed, at its input size),
    or None when the session is not translating."""
    from engine.tools.latents import to_uint8
    t = sess.recipe.translator
    if t is None or not t.image:
        return None
    tr = recipe.cached_translator(t.encoder, load(sess.model).G)
    x = tr.frame(uploads.open_image(t.image), t.framing, t.input_size)
    return Image.fromarray(to_uint8(x)[0])


def needs_anchor_bank(sess: Session) -> bool:
    """Whether the session's translation blends towards the model's images ('match') and
    the model's anchor bank is not ready (engine.tools.anchors.ready_bank): it must be made, as a
    long job, before an interactive render can use it."""
    from engine.tools import anchors
    from engine.tools.translator import check_strength
    t = sess.recipe.translator
    if t is None or t.anchor != "match" or check_strength(t.strength) >= 1.0:
        return False
    return anchors.ready_bank(load(sess.model).G) is None


def make_anchor_bank(sess: Session, progress: Callable[[float, str], None] | None = None,
                     cancel: Any = None) -> None:
    """Render the model's anchor bank (engine.tools.anchors.bank_for: kept with the model and on
    disk), with progress and cancel; run it in the long-job lane."""
    from engine.tools import anchors
    anchors.bank_for(load(sess.model).G, progress=progress, cancel=cancel)


@interactive
@gpu(lambda sess, **_: image_seconds(sess.model, 2),
     cpu_if=lambda sess, **_: small(sess.model))
def translate_frame(sess: Session, encoder: str, frame: Any,
                    strength: float = TRANSLATE_DEFAULTS.strength,
                    framing: str = TRANSLATE_DEFAULTS.framing,
                    anchor: str = TRANSLATE_DEFAULTS.anchor) -> np.ndarray:
    """One webcam frame through the encoder, with the session's latent and bends, at a domain
    strength (blending towards `anchor`) and framing. The frame goes through the same
    checked reader as every other picture (pixel cap included)."""
    tr = _frame_translator(sess, encoder, strength, framing, anchor)
    return tr.translate_frame(np.asarray(uploads.open_image(frame)))


@interactive
@gpu(lambda sess, **_: image_seconds(sess.model, 2),
     cpu_if=lambda sess, **_: small(sess.model))
def translate_frame_within(sess: Session, encoder: str, frame: Any, budget_s: float,
                           strength: float = TRANSLATE_DEFAULTS.strength,
                           framing: str = TRANSLATE_DEFAULTS.framing,
                           anchor: str = TRANSLATE_DEFAULTS.anchor) -> tuple[np.ndarray, int]:
    """translate_frame within a frame budget, as the live canvas's drags: when the whole
    picture would take
    longer than budget_s (engine.recipes.incremental.BlockCosts, learnt from these frames), the
    running image of the deepest block that fits, brought up to the model's size. Returns
    (the frame, 0 or the preview's block resolution)."""
    from PIL import Image

    from engine.recipes import incremental
    tr = _frame_translator(sess, encoder, strength, framing, anchor)
    picture = np.asarray(uploads.open_image(frame))
    G = tr.G
    if not incremental.can_preview(G) or (gpu_mod.on_zerogpu() and not small(sess.model)):
        return tr.translate_frame(picture), 0
    costs = incremental.costs_for(G)
    stop = incremental.preview_block(G, costs, budget_s, tr.layer, tr.layer)
    seconds: dict[int, float] = {}
    out = tr.translate_frame(picture, stop=stop, block_seconds=seconds)
    seconds.pop(incremental.block_of(tr.layer), None)   # run only in part
    costs.observe(seconds)
    if stop is None:
        return out, 0
    res = G.cfg.resolution
    return np.asarray(Image.fromarray(out).resize((res, res), Image.Resampling.BILINEAR)), \
        int(stop[1:])


def _frame_translator(sess: Session, encoder: str, strength: float, framing: str,
                      anchor: str) -> Any:
    """The session's webcam Translator set to its latent and bends, strength, framing and
    anchor."""
    tr = S.live_translator(sess, encoder, load(sess.model))
    m = load(sess.model)
    r = sess.recipe
    taps, wtaps = bending.make_taps(m.G, r.bends, r.weight_edits, model_key=m.sha256)
    tr.set_latent(r.latent, taps=taps, weight_taps=wtaps, noise_mode=r.latent.noise_mode,
                  strength=strength, framing=framing, anchor=anchor)
    return tr
