"""Where the studio's work runs: a ZeroGPU call, a dedicated GPU, or the CPU.

On ZeroGPU (`SPACES_ZERO_GPU`) CUDA exists only inside functions wrapped by `spaces.GPU`:
each call books a GPU for at most its `duration`, runs in a forked worker and pickles its
result back to the main process, which has no CUDA. The rules here follow from that:

- Models live on the CPU between calls (engine.devices.storage_device) and are copied to
  the GPU inside a call (`model_device()` tells studio.models.load which one it wants).
- A call's result is moved to the CPU before it leaves (`engine.devices.to_host`): a CUDA
  tensor or module could not be unpickled by the main process.
- Durations come from the job's size (`duration` may be a function of the call's arguments)
  and are capped at `max_call_seconds()`; longer jobs run as time-boxed calls that
  checkpoint and resume (`run_in_chunks`). Progress and cancel cross to the worker through
  files in the job's folder (`Relay`), since a callback cannot be pickled.
- Small models render on the CPU in the main process (`cpu_is_enough`): booking a GPU and
  copying a 64 px model there costs more than the render, and the caches (directions,
  translators) of the main process survive, where a worker's die with it.
- Threads started for a job copy the caller's context (`start_thread`), which holds the
  Gradio request ZeroGPU charges the visitor's quota to.

Off ZeroGPU `spaces.GPU` is a no-op and everything runs in this process on
engine.devices.default_device() (STUDIO_DEVICE).
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from engine import devices

try:  # the ZeroGPU client; a no-op decorator off ZeroGPU
    import spaces
except ImportError:  # pragma: no cover - spaces is in requirements.txt
    spaces = None

ENV_MAX_CALL_S = "STUDIO_GPU_MAX_SECONDS"
ENV_CHUNK_S = "STUDIO_GPU_CHUNK_SECONDS"
ENV_CPU_MAX_RESOLUTION = "STUDIO_CPU_MAX_RESOLUTION"
DEFAULT_MAX_CALL_S = 120        # a ZeroGPU call may book a few minutes; shorter ones queue first
DEFAULT_CPU_MAX_RESOLUTION = 64  # models up to this size render on the CPU on ZeroGPU
SETUP_S = 10                    # worker start, model copy to the GPU, result transfer

_call_device: contextvars.ContextVar[torch.device | None] = contextvars.ContextVar(
    "studio_gpu_call_device", default=None)
# Tests replace how a booked call runs (tests/zerogpu.py emulates a ZeroGPU worker).
_runner: Callable[..., Any] | None = None


def on_zerogpu() -> bool:
    return devices.on_zerogpu()


def max_call_seconds() -> int:
    try:
        return max(1, int(os.environ.get(ENV_MAX_CALL_S, DEFAULT_MAX_CALL_S)))
    except ValueError:
        return DEFAULT_MAX_CALL_S


def chunk_seconds() -> float:
    """The time box of one call of a long job: STUDIO_GPU_CHUNK_SECONDS, else the longest
    call less the setup time."""
    try:
        return max(0.0, float(os.environ[ENV_CHUNK_S]))
    except (KeyError, ValueError):
        return float(max(1, max_call_seconds() - SETUP_S))


def cpu_max_resolution() -> int:
    try:
        return int(os.environ.get(ENV_CPU_MAX_RESOLUTION, DEFAULT_CPU_MAX_RESOLUTION))
    except ValueError:
        return DEFAULT_CPU_MAX_RESOLUTION


def in_gpu_call() -> bool:
    return _call_device.get() is not None


def model_device() -> torch.device:
    """The device a model should be on for the code running now: the call's device inside
    a GPU call, else where models are kept."""
    return _call_device.get() or devices.storage_device()


def cpu_is_enough(resolution: int) -> bool:
    """On ZeroGPU, whether a model this size is rendered on the CPU without booking a GPU."""
    return on_zerogpu() and resolution <= cpu_max_resolution()


def chunked() -> bool:
    """Whether long jobs run as time-boxed calls: on ZeroGPU (and under its emulation)."""
    return on_zerogpu() or _runner is not None


def set_runner(runner: Callable[..., Any] | None) -> None:
    """Tests: run booked calls as runner(fn, *args, **kwargs) (None: spaces.GPU's way)."""
    global _runner
    _runner = runner


def capped(seconds: float) -> int:
    """A duration ZeroGPU accepts: at least 5 s, at most max_call_seconds()."""
    return int(min(max(5, round(seconds)), max_call_seconds()))


def gpu(duration: int | Callable[..., float] = 60,
        cpu_if: Callable[..., bool] | None = None) -> Callable[[Callable], Callable]:
    """Run fn in a GPU call (spaces.GPU on ZeroGPU), its result moved to the CPU.

    duration: seconds, or a function of fn's arguments (by name) giving them (capped).
    cpu_if: a function of fn's arguments (by name); when true on ZeroGPU, fn runs here on
    the CPU without booking a GPU (see cpu_is_enough)."""
    def deco(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def inside(*args: Any, **kwargs: Any) -> Any:
            device = devices.default_device()
            if device.type == "cuda":
                devices.apply_precision_policy()
            token = _call_device.set(device)
            try:
                return devices.to_host(fn(*args, **kwargs))
            finally:
                _call_device.reset(token)

        signature = inspect.signature(fn)

        def named(args: tuple, kwargs: dict) -> dict[str, Any]:
            bound = signature.bind_partial(*args, **kwargs)
            bound.apply_defaults()
            return dict(bound.arguments)

        def seconds(*args: Any, **kwargs: Any) -> int:
            return capped(duration(**named(args, kwargs)) if callable(duration) else duration)

        def small(args: tuple, kwargs: dict) -> bool:
            return cpu_if is not None and on_zerogpu() and bool(cpu_if(**named(args, kwargs)))

        booked = spaces.GPU(duration=seconds)(inside) if spaces is not None else inside

        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            if in_gpu_call():  # already inside one (nested helper): no second booking
                return fn(*args, **kwargs)
            if small(args, kwargs):
                return fn(*args, **kwargs)
            if _runner is not None:
                return _runner(inside, *args, **kwargs)
            return booked(*args, **kwargs)

        call.seconds = seconds  # type: ignore[attr-defined]
        call.small = small      # type: ignore[attr-defined]
        return call
    return deco


# ----------------------------------------------------------------------------------------
# Long jobs: time-boxed calls, progress and cancel through files.


class Relay:
    """Progress, per-step metrics and cancel between the page (this process) and a GPU
    worker, through small files in the job's folder. Picklable: the worker gets a copy that
    writes progress and metrics and reads the cancel flag; `watch` here relays them to the
    page's callbacks."""

    PROGRESS, METRICS, CANCEL = "progress.json", "metrics.jsonl", "cancel"

    def __init__(self, folder: str | os.PathLike, seconds: float | None = None) -> None:
        self.folder = str(folder)
        self.seconds = seconds      # the time box, counted from start()
        self.deadline: float | None = None
        self.checks = 0

    def start(self) -> Relay:
        """Begin the time box (called inside the worker, on its clock)."""
        if self.seconds is not None:
            self.deadline = time.monotonic() + self.seconds
        self.checks = 0
        return self

    def timed_out(self) -> bool:
        # The first check of a call never times out: every call makes at least one step,
        # however long its setup took, so a job always finishes.
        self.checks += 1
        return self.checks > 1 and self.deadline is not None and \
            time.monotonic() >= self.deadline

    def cancelled(self) -> bool:
        return Path(self.folder, self.CANCEL).exists()

    def __call__(self) -> bool:
        """The engine's cancel check: the page asked to stop, or the time box is over."""
        return self.cancelled() or self.timed_out()

    def progress(self, *args: Any) -> None:
        """The engine's progress callback, whatever its arguments (fraction, message...)."""
        path = Path(self.folder, self.PROGRESS)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps([a if isinstance(a, (int, float)) else str(a) for a in args]))
        os.replace(tmp, path)

    def metrics(self, step: int, metrics: dict[str, Any]) -> None:
        """The engine's on_metrics callback: one JSON line a step (none is lost between two
        looks of `watch`, unlike progress, of which only the newest matters)."""
        with open(Path(self.folder, self.METRICS), "a", encoding="utf-8") as f:
            f.write(json.dumps({**metrics, "step": int(step)}) + "\n")

    def read_progress(self) -> tuple | None:
        try:
            return tuple(json.loads(Path(self.folder, self.PROGRESS).read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def read_metrics(self, offset: int) -> tuple[list[dict[str, Any]], int]:
        """The whole metric lines written after byte `offset`, and the offset after them."""
        try:
            with open(Path(self.folder, self.METRICS), "rb") as f:
                f.seek(offset)
                data = f.read()
        except OSError:
            return [], offset
        whole = data[:data.rfind(b"\n") + 1]  # a line being written waits for the next look
        return [json.loads(line) for line in whole.splitlines()], offset + len(whole)

    def clear(self) -> None:
        for name in (self.PROGRESS, self.METRICS, self.CANCEL):
            Path(self.folder, name).unlink(missing_ok=True)

    def watch(self, progress: Callable[..., Any] | None, cancel: Any,
              on_metrics: Callable[[int, dict], Any] | None = None) -> Callable[[], None]:
        """Relay the worker's progress and metrics to `progress` and `on_metrics`, and
        `cancel` to the worker, from a thread of this process, until the returned stop() is
        called (which relays what is left)."""
        from engine.errors import cancel_requested

        done = threading.Event()
        seen: list[tuple | None] = [None]
        offset = [0]

        def look() -> None:
            got = self.read_progress()
            if progress is not None and got is not None and got != seen[0]:
                seen[0] = got
                progress(*got)
            if on_metrics is not None:
                records, offset[0] = self.read_metrics(offset[0])
                for record in records:
                    on_metrics(int(record["step"]), record)
            if cancel is not None and cancel_requested(cancel):
                Path(self.folder, self.CANCEL).touch()

        def loop() -> None:
            while not done.wait(0.2):
                look()
        thread = start_thread(loop)

        def stop() -> None:
            done.set()
            thread.join(timeout=2)
            look()  # the steps since the last look
        return stop


def _job_folder() -> Path:
    """A fresh folder for one job's relay files (the worker is a fork on this machine)."""
    import tempfile
    import uuid

    folder = Path(tempfile.gettempdir()) / "activation-studio-jobs" / uuid.uuid4().hex
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def gpu_job(duration: int | Callable[..., float] = 60,
            cpu_if: Callable[..., bool] | None = None) -> Callable[[Callable], Callable]:
    """gpu() for jobs that take `progress` and `cancel` keywords. In this process they are
    passed on as they are; to a ZeroGPU worker they travel as a Relay (files)."""
    def deco(fn: Callable) -> Callable:
        booked = gpu(duration, cpu_if)(fn)

        @functools.wraps(fn)
        def call(*args: Any, progress: Any = None, cancel: Any = None, **kwargs: Any) -> Any:
            local = in_gpu_call() or booked.small(args, kwargs)
            if local or (not on_zerogpu() and _runner is None):
                return booked(*args, progress=progress, cancel=cancel, **kwargs)
            relay = Relay(_job_folder())
            on_metrics = kwargs.pop("on_metrics", None)  # for jobs that report metrics
            if on_metrics is not None:
                kwargs["on_metrics"] = relay.metrics
            stop = relay.watch(progress, cancel, on_metrics)
            try:
                return booked(*args, progress=relay.progress, cancel=relay, **kwargs)
            finally:
                stop()
                relay.clear()
                try:
                    Path(relay.folder).rmdir()
                except OSError:
                    pass
        call.seconds = booked.seconds  # type: ignore[attr-defined]
        return call
    return deco


def run_in_chunks(call: Callable[[Relay], Any], folder: str | os.PathLike,
                  progress: Callable[[float, str], Any] | None, cancel: Any,
                  is_paused: Callable[[Any], bool], box_seconds: float | None = None,
                  max_chunks: int = 1000,
                  on_metrics: Callable[[int, dict], Any] | None = None) -> Any:
    """Run a resumable job as time-boxed GPU calls: call(relay) runs one chunk (the engine's
    cancel check is the relay, so the run checkpoints and stops when its time is up) and
    returns a result; while is_paused(result), the next call resumes from the checkpoint.
    The chunk hands relay.progress and relay.metrics to the engine; they reach `progress`
    and `on_metrics` here."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    relay = Relay(folder, box_seconds if box_seconds is not None else chunk_seconds())
    relay.clear()
    stop = relay.watch(progress, cancel, on_metrics)
    try:
        for _ in range(max_chunks):
            result = call(relay)
            if not is_paused(result) or relay.cancelled():
                return result
        return result
    finally:
        stop()
        relay.clear()


def start_thread(target: Callable[..., Any], *args: Any, **kwargs: Any) -> threading.Thread:
    """A daemon thread running target in a copy of the caller's context: ZeroGPU finds the
    Gradio request (the visitor whose quota a GPU call is charged to) there."""
    ctx = contextvars.copy_context()
    thread = threading.Thread(target=ctx.run, args=(target, *args), kwargs=kwargs,
                              daemon=True)
    thread.start()
    return thread


PAUSED = "paused"  # what a time-boxed chunk of a resumable job returns when its time was up


def is_paused(result: Any) -> bool:
    return isinstance(result, str) and result == PAUSED


@gpu_job(lambda seconds, **_: seconds)
def _resumable_whole(seconds: float, run: Callable[..., Any], args: tuple,
                     progress: Any = None, cancel: Any = None, on_metrics: Any = None) -> Any:
    return run(*args, progress=progress, cancel=cancel, on_metrics=on_metrics)


@gpu(lambda **_: max_call_seconds())
def _resumable_chunk(run: Callable[..., Any], args: tuple, stopped: type[BaseException],
                     relay: Relay) -> Any:
    try:
        return run(*args, progress=relay.progress, cancel=relay.start(),
                   on_metrics=relay.metrics)
    except stopped:
        return PAUSED  # checkpoint written; the next call resumes


def run_resumable(run: Callable[..., Any], args: tuple, *, folder: str | os.PathLike,
                  seconds: float, stopped: type[BaseException],
                  progress: Callable[..., Any] | None = None, cancel: Any = None,
                  on_metrics: Callable[[int, dict], Any] | None = None) -> Any:
    """Run a job that checkpoints and resumes (encoder training, projection).

    run(*args, progress=, cancel=, on_metrics=) is the job, a module-level function (a
    ZeroGPU worker finds it by name); `stopped` is the exception it raises when cancelled
    after writing its checkpoint. Where calls are not time-boxed: one GPU call of `seconds`
    (a cancel raises `stopped`). On ZeroGPU: a series of time-boxed calls, each resuming
    from the checkpoint the last one wrote under `folder` (run_in_chunks); the answer is
    PAUSED (is_paused) when it stopped before the end."""
    if not chunked():
        return _resumable_whole(seconds, run, args, progress=progress, cancel=cancel,
                                on_metrics=on_metrics)
    return run_in_chunks(lambda relay: _resumable_chunk(run, args, stopped, relay), folder,
                         progress, cancel, is_paused=is_paused, on_metrics=on_metrics)
