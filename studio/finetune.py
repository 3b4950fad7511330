"""Fine-tuning the loaded model on a visitor's pictures: the Train tab's logic, no Gradio.

- `prepare_pictures`: the uploaded files (one .zip, or several pictures) are size-checked,
  copied into the session's folder under a name made from their contents (the same pictures
  give the same folder, so a run on them can resume) by `store_pictures`, and read once by
  the engine's checked reader, which counts what it can use (`read_pictures`: decoding is
  the memory a run takes, so it happens inside a long-job slot only, within
  STUDIO_MAX_PICTURE_BYTES).
- `estimate`: how long a run will take here, from images/s measured on this machine
  (`engine.training.train_gan.measure_speed`, cached per model, batch and augmentation), said in one
  sentence before anything starts; on a CPU it says so.
- `run_settings` / `fine_tune`: the engine's `train` with the page's limits (steps, batch,
  minutes), a run folder named by everything a resume must keep, fixed-seed sample grids and
  per-step metrics for the page; the export lands in the session's folder, where
  `trained_models` finds it for the model list.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.base.errors import StudioError
from engine.training import datasets
from engine.training.train_gan import MIN_IMAGES, MODEL_NAME, TrainConfig, measure_speed
from studio import files, uploads
from studio.limits import LIMITS, SERVER
from studio.session import Session

AUGMENTS = ("ada", "none")   # the page offers adaptive augmentation or none
FITS = datasets.FITS
RUNS_DIR = "gans"            # session folder: one sub-folder per run
PICTURES_DIR = "gan-pictures"
GRID_EVERY = 8               # sample grids per run (plus the one before the first step)
CHECKPOINTS_EVERY = 10       # checkpoints per run (Cancel keeps the steps since the last one too)
PAGE_ADA_KIMG = 2.0          # page runs are short: ADA's p may go from 0 to 1 in 2 kimg
MAX_FILES = 2000             # separate picture files in one upload (a zip may hold more)
PAGE_LR_G = 0.0005           # a pretrained G takes small steps (README: "The Train tab")


@dataclass
class PictureSet:
    """Uploaded pictures ready for the trainer."""
    data: Path            # a folder of pictures or one .zip, in the session's folder
    pictures: int         # readable pictures
    note: str | None      # the sentence about skipped files, if any
    digest: str           # sha256 of the uploaded files (names the folder and the run)


def _paths(uploaded: Any) -> list[Path]:
    items = uploaded if isinstance(uploaded, list | tuple) else [uploaded]
    items = [i for i in items if i is not None]
    if not items:
        raise StudioError("upload your pictures first: a .zip of them or several picture "
                          "files (at least 10; a few hundred is best).")
    return [uploads.upload_path(i, "picture", limit=LIMITS.gan_upload_bytes) for i in items]


def _digest(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.suffix.lower().encode() + b"\0")
        with open(p, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        h.update(b"\1")
    return h.hexdigest()


def store_pictures(sess: Session, uploaded: Any, resolution: int) -> tuple[Path, str]:
    """Check the uploaded pictures' sizes and store them in the session's folder, named by
    their content: (the stored folder or zip, its digest). Nothing is decoded here, so this
    may run outside a long-job slot; what decoding them would take is checked against
    SERVER.picture_bytes from their count alone."""
    paths = _paths(uploaded)
    if len(paths) > MAX_FILES:
        raise StudioError(f"{len(paths)} files are more than {MAX_FILES} at once; put the "
                          f"pictures into one .zip instead.")
    total = sum(p.stat().st_size for p in paths)
    if total > LIMITS.gan_upload_bytes:
        raise StudioError(f"the pictures are {total / 2**20:.0f} MiB in all, more than the "
                          f"{LIMITS.gan_upload_bytes / 2**20:.0f} MiB limit; upload fewer or "
                          f"smaller ones.")
    zips = [p for p in paths if p.suffix.lower() == ".zip"]
    if zips and len(paths) > 1:
        raise StudioError("upload either one .zip of pictures or several picture files, not "
                          "both; put the pictures into the zip.")
    if not zips and len(paths) < MIN_IMAGES:
        raise StudioError(f"{len(paths)} picture files are too few; fine-tuning needs at least "
                          f"{MIN_IMAGES} (a few hundred is best).")
    try:
        count = datasets.zip_entry_count(zips[0]) if zips else len(paths)
    except datasets.DatasetError as exc:
        raise StudioError(str(exc)) from exc
    need = count * resolution * resolution * 3
    if need > SERVER.picture_bytes:
        raise StudioError(f"{count} {'files in the zip' if zips else 'pictures'} at "
                          f"{resolution} px take {need / 2**20:.0f} MiB once read, more "
                          f"than this studio's {SERVER.picture_bytes / 2**20:.0f} MiB for "
                          f"one run (STUDIO_MAX_PICTURE_BYTES); upload fewer pictures.")
    digest = _digest(paths)
    folder = files.session_dir(sess.token) / PICTURES_DIR / digest[:16]
    data = folder / ("pictures.zip" if zips else "pictures")
    if not data.exists():
        files.make_room()
        # Written beside the folder and renamed into place: two events storing the same
        # pictures at once (an upload and a slider) each finish whole, and the first wins.
        tmp = folder.with_name(f"{folder.name}.{uuid.uuid4().hex[:8]}.partial")
        target = tmp / data.name
        if zips:
            target.parent.mkdir(parents=True)
            shutil.copyfile(zips[0], target)
        else:
            target.mkdir(parents=True)
            for i, p in enumerate(paths):  # our own names: an upload's name never becomes a path
                shutil.copyfile(p, target / f"{i:05d}{p.suffix.lower()}")
        try:
            tmp.rename(folder)
        except OSError:  # stored meanwhile by the other event
            shutil.rmtree(tmp, ignore_errors=True)
    return data, digest


def read_pictures(data: Path, digest: str, resolution: int, fit: str = "crop") -> PictureSet:
    """Decode stored pictures (the memory a run needs): call it inside a long-job slot only,
    so the server reads one visitor's pictures at a time."""
    if fit not in FITS:
        raise StudioError(f"square the pictures by one of {', '.join(FITS)}; got {fit!r}.")
    try:
        loaded = datasets.load_pictures(data, resolution, fit=fit)
    except datasets.DatasetError as exc:
        raise StudioError(_sentence(str(exc).replace(str(data), "the upload"))) from exc
    if len(loaded.images) < MIN_IMAGES:
        raise StudioError(f"only {len(loaded.images)} of the uploaded pictures can be read; "
                          f"fine-tuning needs at least {MIN_IMAGES} (a few hundred is best).")
    return PictureSet(data=data, pictures=len(loaded.images), note=loaded.skipped_sentence(),
                      digest=digest)


def prepare_pictures(sess: Session, uploaded: Any, resolution: int,
                     fit: str = "crop") -> PictureSet:
    """Check, store and read the uploaded pictures for a run at `resolution` (inside a
    long-job slot: it decodes them); one sentence when they cannot be used (too big in all,
    a zip mixed with pictures, too few readable)."""
    if fit not in FITS:
        raise StudioError(f"square the pictures by one of {', '.join(FITS)}; got {fit!r}.")
    data, digest = store_pictures(sess, uploaded, resolution)
    return read_pictures(data, digest, resolution, fit)


def _sentence(text: str) -> str:
    text = text.strip().replace("'the upload'", "the upload")
    return text if text.endswith(".") else text + "."


# ----------------------------------------------------------------------------------------
# How long it will take.

_speeds: dict[tuple[str, int, str, str], float] = {}
_speeds_lock = threading.Lock()


def _after_fork_in_child() -> None:
    """A fork (a ZeroGPU worker) must not inherit a lock held by a thread it lacks."""
    global _speeds_lock
    _speeds_lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def speed(G: Any, model_key: str, batch: int, augment: str, device: str = "cpu",
          measure: bool = True) -> float | None:
    """Measured training images/s of this model here: one probe per model, batch,
    augmentation and device, then the cached figure (None when not measured yet and
    `measure` is False)."""
    key = (model_key, int(batch), augment, device)
    with _speeds_lock:
        if key in _speeds or not measure:
            return _speeds.get(key)
    # ADA starts at p = 0 and adapts; a fifth of the transforms is a fair middle.
    ips = measure_speed(G, int(batch), aug_p=0.2 if augment == "ada" else 0.0, steps=1,
                        device=device)
    with _speeds_lock:
        _speeds[key] = ips
    return ips


def duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} hours"


def remember_speed(model_key: str, batch: int, augment: str, device: str,
                   images_per_s: float) -> None:
    """A run's own measured speed replaces the probe's for the next estimate: the run's
    includes its sample grids and checkpoints, which a one-step probe leaves out."""
    if images_per_s > 0:
        with _speeds_lock:
            _speeds[(model_key, int(batch), augment, device)] = float(images_per_s)


def run_speed(points: list[tuple[int, dict[str, float]]], batch: int) -> float | None:
    """Images/s of a running job from its per-step metrics (step, {'time_s': seconds since
    the run started, ...}): the steps between its first and newest report over the time
    between them, so the set-up before the first step does not count. None before two."""
    timed = [(step, m["time_s"]) for step, m in points if "time_s" in m]
    if len(timed) < 2 or timed[-1][1] <= timed[0][1]:
        return None
    (s0, t0), (s1, t1) = timed[0], timed[-1]
    return (s1 - s0) * batch / (t1 - t0)


def run_estimate(points: list[tuple[int, dict[str, float]]], steps: int,
                 batch: int) -> str | None:
    """While a run goes: its step, its own measured speed and the time left at that speed
    (None before it has measured one)."""
    ips = run_speed(points, batch)
    if ips is None or ips <= 0:
        return None
    step = points[-1][0]
    left = max(0, steps - step) * batch / ips
    return (f"Step {step} of {steps}: this run measures {ips:.1f} images/s, so about "
            f"{duration(left)} left.")


def estimate(images_per_s: float, steps: int, batch: int, device: str,
             model: str = "") -> str:
    """One sentence: the measured speed, the run's length and whether it fits the limit."""
    where = "this CPU (no GPU here)" if device == "cpu" else f"this machine's {device.upper()}"
    seconds = steps * batch / max(images_per_s, 1e-9)
    what = f"fine-tuning {model}" if model else "fine-tuning"
    text = (f"On {where} {what} runs at about {images_per_s:.1f} images/s (measured here): "
            f"{steps} steps of {batch} pictures take about {duration(seconds)}")
    limit_s = LIMITS.gan_minutes * 60
    if seconds > limit_s:
        fit_steps = int(limit_s * images_per_s / batch)
        text += (f", more than this studio's {LIMITS.gan_minutes} min per run, so it stops "
                 f"after about {fit_steps} steps (press Fine-tune again to continue)")
    return text + "."


# ----------------------------------------------------------------------------------------
# The run.


def runs_dir(sess: Session) -> Path:
    return files.session_dir(sess.token) / RUNS_DIR


def run_settings(sess: Session, data: Path, digest: str, model_key: str, steps: int,
                 batch: int, augment: str, xflip: bool, fit: str) -> TrainConfig:
    """The engine's config for a page run, within the page's limits. The folder is named by
    what a resume must keep (model, pictures, batch, augmentation, x-flips, fit), so pressing
    the button again with more steps continues the same run."""
    if augment not in AUGMENTS:
        raise StudioError(f"augmentation must be one of {', '.join(AUGMENTS)}; got "
                          f"{augment!r}.")
    steps, batch = int(steps), int(batch)
    if not 1 <= steps <= LIMITS.gan_steps:
        raise StudioError(f"steps must be between 1 and {LIMITS.gan_steps} "
                          f"(STUDIO_MAX_GAN_STEPS); got {steps}.")
    if not 1 <= batch <= LIMITS.gan_batch:
        raise StudioError(f"the batch must be between 1 and {LIMITS.gan_batch} "
                          f"(STUDIO_MAX_GAN_BATCH); got {batch}.")
    keep = f"{sess.model}|{model_key}|{digest}|{batch}|{augment}|{xflip}|{fit}"
    name = f"{model_key[:10] or 'model'}-{hashlib.sha256(keep.encode()).hexdigest()[:10]}"
    return TrainConfig(
        base=sess.model, data=str(data), out=str(runs_dir(sess) / name), fit=fit,
        batch=batch, total_kimg=steps * batch / 1000, augment=augment, xflip=bool(xflip),
        lr_g=PAGE_LR_G,
        ada_kimg=PAGE_ADA_KIMG,
        snapshot_kimg=max(1, steps // CHECKPOINTS_EVERY) * batch / 1000,
        sample_kimg=max(1, steps // GRID_EVERY) * batch / 1000,
        max_minutes=float(LIMITS.gan_minutes))


def fine_tune(cfg: TrainConfig, progress: Callable[[float, str], Any] | None = None,
              cancel: Any = None,
              on_metrics: Callable[[int, dict[str, float]], None] | None = None) -> Path:
    """Run (or resume) the engine's trainer; the exported generator's path."""
    from engine.training.train_gan import train

    files.make_room()
    return train(cfg, progress=progress, cancel=cancel, on_metrics=on_metrics)


def latest_grid(cfg: TrainConfig) -> Path | None:
    """The newest sample grid of a run (the grid before the first step until there is one)."""
    samples = Path(cfg.out) / "samples"
    grids = sorted(samples.glob("fakes[0-9]*.png"), key=lambda p: p.stat().st_mtime) \
        if samples.is_dir() else []
    if grids:
        return grids[-1]
    first = samples / "fakes_init.png"
    return first if first.exists() else None


def _source(model_path: str | Path) -> dict[str, Any]:
    """The provenance the trainer wrote beside an export (empty when it cannot be read)."""
    import json

    from engine.gan.checkpoints import sidecar_path

    try:
        source = json.loads(sidecar_path(Path(model_path)).read_text())["source"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    return source if isinstance(source, dict) else {}


def summary(model_path: str | Path) -> str:
    """What a run did, from its export's sidecar (what the model card says)."""
    source = _source(model_path)
    try:
        return (f"{source['kimg'] * 1000:.0f} pictures shown in {source['steps']} steps, final "
                f"augmentation p {source['final_aug_p']:.3f}")
    except (KeyError, TypeError, ValueError):
        return "the run is exported"


def trained_models(sess: Session) -> list[tuple[str, str]]:
    """(label, path) of every model this session fine-tuned, newest first."""
    root = runs_dir(sess)
    if not root.is_dir():
        return []
    found = sorted(root.glob(f"*/{MODEL_NAME}"), key=lambda p: p.stat().st_mtime,
                   reverse=True)
    out = []
    for p in found:
        source = _source(p)
        base = (source.get("base_model") or {}).get("title") or "a model"
        out.append((f"fine-tuned here: {base}, {source.get('steps', '?')} steps", str(p)))
    return out
