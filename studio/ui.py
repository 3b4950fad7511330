"""What every tab of the page shares: the component registry, event settings, error
handling, checked upload components and small parsers.

A tab module builds its controls into the one `UI` registry (`ui.seed`, `ui.output`, ...)
and wires module-level handlers, bound to the registry with `bind`. A handler returns a
dict keyed by component, so it names what it changes instead of filling a positional list.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import gradio as gr
import numpy as np
from gradio.data_classes import ListFiles

from engine.base.errors import StudioError
from studio import files, live, models, render, translation, uploads
from studio import session as S
from studio.jobs import JobCancelled
from studio.limits import LIMITS, SERVER
from studio.session import Session

# Interactive events share one lane of STUDIO_CONCURRENCY; long jobs have their own lane
# (studio/jobs.py holds them to STUDIO_HEAVY_JOBS at once and one per session).
INTERACTIVE = dict(concurrency_id="interactive", concurrency_limit=LIMITS.concurrency)
HEAVY_LANE = dict(concurrency_id="heavy",
                  concurrency_limit=SERVER.heavy_jobs + SERVER.heavy_waiting)
LIVE = dict(trigger_mode="always_last", show_progress="hidden", **INTERACTIVE)


@dataclass
class Page:
    """What a tab's wire() may use of the page beyond its own controls: the Blocks, every
    component that showing a whole session changes, and the model bar's load handler
    (bound to the page; a tab that opens a model calls it instead of importing the bar)."""
    demo: gr.Blocks
    outputs: list[Any]
    load_model: Callable[..., Any]


class UI(SimpleNamespace):
    """Every component of the page by name, plus the event settings that need one."""

    def job(self) -> dict[str, Any]:
        """A button's interactive event: progress and error marks on the busy line."""
        return dict(show_progress_on=[self.busy], **INTERACTIVE)

    def heavy(self) -> dict[str, Any]:
        """A long job's event: the heavy lane, progress on the busy line."""
        return dict(show_progress_on=[self.busy], **HEAVY_LANE)


def cancel_button(**kwargs: Any) -> gr.Button:
    """A long job's Cancel: greyed out until its job starts (`with_cancel`); an idle red
    Cancel looked like something to press."""
    return gr.Button("Cancel", variant="secondary", interactive=False, **kwargs)


def with_cancel(trigger: Callable, cancel: gr.Button, fn: Callable, inputs: list[Any],
                outputs: list[Any], starting: dict[Any, Any] | None = None,
                **kwargs: Any) -> Any:
    """`trigger(fn, inputs, outputs, **kwargs)` (a button's click starting a long job), with
    `cancel` live and red while the job runs and greyed out again however it ends; the
    `starting` updates (the previous run's results going stale) land as it starts. Returns
    the job's event."""
    starting = {cancel: gr.update(interactive=True, variant="stop"), **(starting or {})}
    started = trigger(lambda: starting, None, list(starting), api_name=False,
                      show_progress="hidden", queue=False)
    job = started.then(fn, inputs, outputs, **kwargs)
    job.then(lambda: gr.update(interactive=False, variant="secondary"), None, [cancel],
             api_name=False, show_progress="hidden", queue=False)
    return job


def finite(args: tuple[Any, ...]) -> None:
    """Refuse NaN and infinities from an API client in one sentence. Gradio's range check
    lets NaN through (it is neither below a minimum nor above a maximum), and a handler doing
    int() of it failed with Gradio's generic error. Checked here, not on the components:
    Gradio rebuilds a component that an event updated, so a patched preprocess is lost."""
    for value in args:
        if isinstance(value, float) and not math.isfinite(value):
            raise gr.Error("a number sent is not finite (NaN or infinity); send a finite "
                           "number.", print_exception=False)


# Components whose value is a file Gradio serves to the browser.
FILE_OUTPUTS = (gr.File, gr.Video, gr.Image, gr.DownloadButton)


def served_files(out: Any) -> Any:
    """A handler's dict answer with every file output's path made servable from the data
    folder (studio.files.served); a handler answering positionally calls served itself."""
    if not isinstance(out, dict):
        return out
    return {comp: files.served(value) if isinstance(comp, FILE_OUTPUTS)
            and isinstance(value, str | Path) else value for comp, value in out.items()}


def bind(fn: Callable, ui: UI) -> Callable:
    """`fn(ui, ...)` as the event function `(...)`, keeping its name, docstring and
    signature (less `ui`), and staying a generator function when `fn` is one: Gradio reads
    all three."""
    if inspect.isgeneratorfunction(fn):
        def bound(*args: Any, **kwargs: Any) -> Any:
            finite(args)
            for out in fn(ui, *args, **kwargs):
                yield served_files(out)
    else:
        def bound(*args: Any, **kwargs: Any) -> Any:
            finite(args)
            return served_files(fn(ui, *args, **kwargs))
    functools.update_wrapper(bound, fn)
    sig = inspect.signature(fn)
    bound.__signature__ = sig.replace(parameters=list(sig.parameters.values())[1:])
    return bound


# A request that needed more memory than the server had (a forged size no check caught, or
# a setting too big for this machine) still gets a sentence, not Gradio's bare "Error".
OUT_OF_MEMORY = ("the server ran out of memory for this request; try a smaller file or "
                 "setting, or try again later.")


def _as_gr_error(exc: StudioError) -> gr.Error:
    return exc if isinstance(exc, gr.Error) else gr.Error(str(exc), print_exception=False)


def user_errors(fn: Callable) -> Callable:
    """Turn engine's one-sentence StudioError into a gr.Error toast, never a traceback; the
    first Session argument is edited all or nothing, and the edit can be undone."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        sess = next((a for a in args if isinstance(a, Session)), None)
        try:
            if sess is None:
                return fn(*args, **kwargs)
            live.settle(sess)  # what the live channel got lands first, in order
            with S.edit(sess):
                return fn(*args, **kwargs)
        except StudioError as exc:
            raise _as_gr_error(exc) from exc
        except MemoryError as exc:
            raise gr.Error(OUT_OF_MEMORY, print_exception=False) from exc
    return wrapper


def job_errors(fn: Callable) -> Callable:
    """user_errors without the transaction: for long jobs (the visitor keeps editing while
    they run, and a failed job must not undo those edits) and for undo/redo themselves. A
    job its visitor cancelled is not an error: a note says so and nothing else changes."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except JobCancelled:
            gr.Info("Cancelled.")
            return gr.skip()
        except StudioError as exc:
            raise _as_gr_error(exc) from exc
        except MemoryError as exc:
            raise gr.Error(OUT_OF_MEMORY, print_exception=False) from exc
    return wrapper


def need(sess: Session | None) -> Session:
    if sess is None:
        raise StudioError("the page is still loading its model; wait a moment and try again.")
    return sess


def capped_slider(low: int, limit: int, value: int, step: int = 1, **kwargs: Any) -> gr.Slider:
    """An integer slider that stops at a studio limit (engine/base/limits.py)."""
    high = max(low, limit)
    return gr.Slider(low, high, min(value, high), step=step, **kwargs)


def floats(text: str, what: str, limit: int = LIMITS.grid_values) -> list[float]:
    """Comma-separated numbers typed in a box, at most `limit` of them (session.numbers)."""
    return S.numbers(text, what, limit)


def curves(points: list[tuple[int, dict[str, float]]], names: tuple[str, ...],
           recent: int = 2000) -> Any:
    """A LinePlot's data (step, curve, value) from the engine's per-step metrics: one curve
    per name, over the `recent` last steps; None before the first step. (A LinePlot with
    `color=` that was first sent an empty frame draws every later line without a stroke.)"""
    import pandas as pd
    rows = [(step, name, float(m[name])) for step, m in points[-recent:]
            for name in names if name in m]
    if not rows:
        return None
    return pd.DataFrame({
        "step": pd.Series([r[0] for r in rows], dtype="int64"),
        "curve": pd.Series([r[1] for r in rows], dtype="object"),
        "value": pd.Series([r[2] for r in rows], dtype="float64")})


def conv_layers(spec: str) -> list[str]:
    return models.model_info(spec).conv_layers


def layer_update(sess: Session) -> Any:
    """A layer dropdown for the session's model: its conv layers, the default chosen."""
    layers = conv_layers(sess.model)
    return gr.update(choices=layers, value=default_layer(layers))


def default_layer(layers: list[str]) -> str:
    """A middle layer: coarse enough to hold parts of the face, fine enough to bend."""
    pref = [n for n in layers if n.startswith("b16.")]
    return pref[-1] if pref else layers[len(layers) // 2]


def note_if_scaled_up(size: tuple[int, int], needed: int, reader: str) -> None:
    """A picture smaller than what reads it is scaled up and looks blurred: say so, rather
    than let a 16×16 picture pass silently."""
    width, height = size
    if min(width, height) < needed:
        gr.Warning(f"The picture is {width}×{height} px, smaller than the {needed} px "
                   f"{reader}: it is scaled up, so it looks blurred.")


def before_image(sess: Session) -> Any:
    """What an edit is judged against: the input picture as the encoder saw it (framed, at
    its input size) when translating, else the latent without bends; nothing when there is
    no edit."""
    r = sess.recipe
    if r.translator is not None and r.translator.image:
        try:
            return translation.framed_input(sess)
        except StudioError:
            return None
    if r.bends or r.weight_edits:
        return render.render(sess, with_bends=False)
    return None


def pictures(ui: UI, sess: Session) -> dict[Any, Any]:
    """The session, its output image and its 'before' image."""
    return {ui.session: sess, ui.output: render.render(sess), ui.before: before_image(sess)}


def live_pictures(ui: UI, sess: Session, changed: bool = True) -> dict[Any, Any]:
    """pictures() for a slider's event. While the page's live channel is open it has already
    shown and applied this slider's value (studio/live.py): when the event `changed` nothing,
    it only returns the session, and the sync at the end of the gesture renders the Gradio
    output once."""
    if live.is_active(sess) and not changed:
        return {ui.session: sess}
    return pictures(ui, sess)


# ----------------------------------------------------------------------------------------
# Upload components whose payloads go through the studio's checks.

def checked_image(**kwargs: Any) -> gr.Image:
    """A gr.Image whose every payload goes through studio.uploads.open_image, the one checked
    reader: a file outside the studio's folders, a damaged, empty, fake or oversized picture
    (pixel cap included, webcam frames and data URLs too) gets one clear sentence, and
    Gradio's own decoder never sees it.

    (Replacing the instance's preprocess, not subclassing: Gradio writes a .pyi stub beside
    every component subclass.)"""
    comp = gr.Image(**kwargs)
    comp.preprocess = functools.partial(_image_payload, comp)
    if not kwargs.get("streaming"):
        # Check at upload time too, so a bad file is named at once, not at the next button.
        comp.upload(lambda _: None, comp, None, api_name=False, show_progress="hidden")
    return comp


def _image_payload(comp: gr.Image, payload: Any) -> Any:
    if payload is None:
        return None
    url = getattr(payload, "url", None)
    source = url if isinstance(url, str) and url.startswith("data:") else payload
    try:
        pic = uploads.open_image(source)
    except StudioError as exc:
        raise gr.Error(str(exc), print_exception=False) from exc
    if comp.type == "numpy":
        return np.asarray(pic)
    if comp.type == "pil":
        return pic
    if source is payload:
        return str(payload.path)
    path = files.new_output_path(None, "picture", ".png")
    pic.save(path, format="PNG")
    return str(path)



def checked_file(comp: Any) -> Any:
    """A file component (gr.File, gr.UploadButton) whose payload path is checked by
    studio.files before its handler sees it: a request that names a server file instead of
    uploading one gets the same sentence whatever the path."""
    stock = comp.preprocess

    def preprocess(payload: Any) -> Any:
        if payload is not None:
            # A multiple-file component's payload is Gradio's ListFiles (iterable, not a list).
            many = isinstance(payload, list | ListFiles)
            for item in payload if many else [payload]:
                path = getattr(item, "path", None)
                try:
                    files.check_server_file(path if isinstance(path, str) else "")
                except StudioError as exc:
                    raise gr.Error(str(exc), print_exception=False) from exc
        return stock(payload)

    comp.preprocess = preprocess
    return comp
