"""Where the studio's work runs: a ZeroGPU call, a dedicated GPU, or the CPU.

On ZeroGPU (`SPACES_ZERO_GPU`) CUDA exists only inside functions wrapped by `spaces.GPU`:
each call books a GPU for at most its `duration`, runs in a forked worker and pickles its
result back to the main process, which has no CUDA. The rules here follow from that:

- Models live on the CPU between calls (engine.base.devices.storage_device) and are copied to
  the GPU inside a call (`model_device()` tells studio.models.load which one it wants).
- A call's result is moved to the CPU before it leaves (`engine.base.devices.to_host`): a CUDA
  tensor or module could not be unpickled by the main process.
- Durations come from the job's size (`duration` may be a function of the call's arguments)
  and are capped at `max_call_seconds()`; longer jobs run as time-boxed calls that
  checkpoint and resume (`run_in_chunks`). Progress and cancel cross to the worker through
  files in the job's folder (`Relay`), since a callback cannot be pickled.
- Small models render on the CPU in the main process (`cpu_is_enough`): booking a GPU and
  copying a 64 px model there costs more than the render, and the caches (directions,
  translators) of the main process survive, where a worker's die with it.
- Threads started for a job copy the caller's context (`start_thread`), which holds the
  Gradio request ZeroGPU charges the visitor's quota to; a live channel sets one from its
  handshake (`set_visitor`).
- One function is decorated with spaces.GPU (`_run`, dispatching to the studio's GPU
  functions by name): spaces keeps a worker pool per decorated function, so one visitor's
  calls of every kind share one worker and its model copies.
- A live channel holds one call while it works (`Hold`): its frames are requests answered
  inside that call, not a call each.

Off ZeroGPU `spaces.GPU` is a no-op and everything runs in this process on
engine.base.devices.default_device() (STUDIO_DEVICE).
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import json
import os
import pickle
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from engine.base import devices

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


def chunk_box(work_seconds: float) -> float:
    """The time box of each call of a long job of about `work_seconds` of GPU work: the
    work with a margin when it fits one call (a short job books a short call, which ZeroGPU
    queues first and charges less quota), else chunk_seconds()."""
    return min(chunk_seconds(), max(1.0, 1.5 * work_seconds))


def chunk_call_seconds(relay: Relay) -> int:
    """The booked duration of one time-boxed call: its box plus the setup."""
    box = relay.seconds if relay.seconds is not None else chunk_seconds()
    return capped(box + SETUP_S)


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
    return on_zerogpu()


def capped(seconds: float) -> int:
    """A duration ZeroGPU accepts: at least 5 s, at most max_call_seconds()."""
    return int(min(max(5, round(seconds)), max_call_seconds()))


# ----------------------------------------------------------------------------------------
# One entry point. spaces.GPU keeps a pool of forked workers per decorated function: one
# decoration per studio function meant up to 8 workers for one visitor, each with its own
# model copies. Every studio GPU function is registered here by name instead, and ZeroGPU
# runs one function, `_run`, which looks the job up in the worker (a fork of this process,
# so it has every registered job) and runs it: calls of any kind reuse one worker.

_JOBS: dict[str, Callable[..., Any]] = {}       # name -> the job as a GPU call runs it
_SECONDS: dict[str, Callable[..., int]] = {}    # name -> its booked seconds, from its args


def register(name: str, job: Callable[..., Any], seconds: Callable[..., int]) -> str:
    """Make `job` callable in GPU calls as `name` (at import: workers forked later have it)."""
    _JOBS[name] = job
    _SECONDS[name] = seconds
    return name


def _run(name: str, args: tuple, kwargs: dict) -> Any:
    """The one function ZeroGPU runs in its workers: the registered job `name`."""
    return _JOBS[name](*args, **kwargs)


def _duration(name: str, args: tuple, kwargs: dict) -> int:
    """ZeroGPU's duration for a call of `_run`: the job's own, from its arguments."""
    return _SECONDS[name](*args, **kwargs)


def book(name: str, args: tuple, kwargs: dict) -> Any:
    """Run the registered job `name` in a GPU call: spaces.GPU's one wrapper of `_run` (it
    decides when called whether this is ZeroGPU, and keeps one wrapper per function, so one
    worker pool)."""
    if spaces is None:  # pragma: no cover - spaces is in requirements.txt
        return _run(name, args, kwargs)
    return spaces.GPU(duration=_duration)(_run)(name, args, kwargs)


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

        name = register(f"{fn.__module__}.{fn.__qualname__}", inside, seconds)

        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            if in_gpu_call():  # already inside one (nested helper): no second booking
                return fn(*args, **kwargs)
            if small(args, kwargs):
                return fn(*args, **kwargs)
            held = _holding.get()
            if held is not None and chunked():  # a live gesture's call is open: use it
                return held.run(name, args, kwargs)
            if not on_zerogpu():
                return inside(*args, **kwargs)
            return book(name, args, kwargs)

        call.seconds = seconds  # type: ignore[attr-defined]
        call.small = small      # type: ignore[attr-defined]
        call.job_name = name    # type: ignore[attr-defined]
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
        from engine.base.errors import cancel_requested

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
    """A fresh folder for one job's relay files (the worker is a fork on this machine).

    Made by mkdtemp: private to this user (0700) and created atomically, so the pickles a
    held call exchanges there (`Hold`) are only ever this process's and its worker's own
    data, never a file anyone else could place; visitors' files never go through pickle."""
    import tempfile

    return Path(tempfile.mkdtemp(prefix="activation-studio-job-"))


def gpu_job(duration: int | Callable[..., float] = 60,
            cpu_if: Callable[..., bool] | None = None) -> Callable[[Callable], Callable]:
    """gpu() for jobs that take `progress` and `cancel` keywords. In this process they are
    passed on as they are; to a ZeroGPU worker they travel as a Relay (files)."""
    def deco(fn: Callable) -> Callable:
        booked = gpu(duration, cpu_if)(fn)

        @functools.wraps(fn)
        def call(*args: Any, progress: Any = None, cancel: Any = None, **kwargs: Any) -> Any:
            local = in_gpu_call() or booked.small(args, kwargs)
            if local or not on_zerogpu():
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


# ----------------------------------------------------------------------------------------
# Held calls: one GPU call for a whole live gesture or webcam run (issue 34).

ENV_HOLD_S = "STUDIO_GPU_HOLD_SECONDS"
ENV_HOLD_IDLE_S = "STUDIO_GPU_HOLD_IDLE_SECONDS"
DEFAULT_HOLD_S = 60       # booked per held call (capped); a gesture longer books another
DEFAULT_HOLD_IDLE_S = 2.0  # no new value this long: the held call ends, the GPU goes back
POLL_S = 0.002            # how often both sides look for the other's newest file

_holding: contextvars.ContextVar[Hold | None] = contextvars.ContextVar(
    "studio_gpu_holding", default=None)


def _setting(name: str, default: float) -> float:
    try:
        return max(0.0, float(os.environ.get(name, default)))
    except ValueError:
        return default


def hold_seconds() -> int:
    return capped(_setting(ENV_HOLD_S, DEFAULT_HOLD_S))


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _read_pickle(path: Path) -> Any:
    """A request or answer of a held call, written by this process or its forked worker
    into their private job folder (_job_folder); not a path a visitor can name."""
    try:
        return pickle.loads(path.read_bytes())
    except (OSError, EOFError, pickle.UnpicklingError):
        return None


class Hold:
    """A GPU call held open while a page's live channel works (a drag, a webcam run).

    On ZeroGPU every live frame as a call of its own paid the booking, a worker hand-over
    and the model's copy to the GPU each time. Under a Hold, the GPU functions the channel
    calls (`gpu()`, while `holding` is set) go to one booked call instead: this process
    writes the newest request into the Hold's folder (the relay's way: files, since the
    worker is a fork), the call runs it as soon as it sees it and writes the answer back,
    and waits for the next. The call ends when no request comes for
    STUDIO_GPU_HOLD_IDLE_SECONDS, near its booked STUDIO_GPU_HOLD_SECONDS, or on close();
    the next request then books a new one. Requests are answered in turn (one at a time)."""

    REQUEST, ANSWER, CLOSED = "request.pkl", "answer.pkl", "closed"

    def __init__(self) -> None:
        self.folder = ""                     # made on first use (only ZeroGPU uses it)
        self.seq = 0
        self.calls = 0                       # GPU calls booked for this hold
        self._lock = threading.Lock()
        self._call: threading.Thread | None = None
        self._failed: list[BaseException] = []
        self._closed = False

    def run(self, name: str, args: tuple, kwargs: dict) -> Any:
        """The registered job `name` run in the held call (booked if none is open)."""
        with self._lock:
            if not self.folder:
                self.folder = str(_job_folder())
            self.seq += 1
            folder = Path(self.folder)
            Path(folder, self.CLOSED).unlink(missing_ok=True)
            _write_atomic(folder / self.REQUEST, pickle.dumps((self.seq, name, args, kwargs)))
            while True:
                answer = _read_pickle(folder / self.ANSWER)
                if answer is not None and answer[0] == self.seq:
                    ok, value = answer[1], answer[2]
                    if ok:
                        return value
                    raise value
                if self._call is None or not self._call.is_alive():
                    if self._failed:    # the booking itself failed (quota, worker error)
                        raise self._failed.pop()
                    # It ended (idle, its time, closed) without this answer, unless it
                    # wrote it just before ending: book the next call.
                    answer = _read_pickle(folder / self.ANSWER)
                    if answer is None or answer[0] != self.seq:
                        self._book()
                    continue
                time.sleep(POLL_S)

    def _book(self) -> None:
        self.calls += 1

        def call() -> None:
            _holding.set(None)  # the held call itself is booked, not routed to this hold
            try:
                serve(self.folder, hold_seconds(), _setting(ENV_HOLD_IDLE_S,
                                                            DEFAULT_HOLD_IDLE_S))
            except BaseException as exc:  # handed to the waiting run()
                self._failed.append(exc)
            finally:
                if self._closed:
                    self._remove()
        self._call = start_thread(call)

    def close(self) -> None:
        """End the held call now (the page went); its folder goes when the call has ended.
        Does not wait (the live channel closes from its event loop)."""
        self._closed = True
        if not self.folder:
            return
        Path(self.folder, self.CLOSED).touch()
        if self._call is None or not self._call.is_alive():
            self._remove()

    def _remove(self) -> None:
        import shutil
        shutil.rmtree(self.folder, ignore_errors=True)


def _answerable(exc: BaseException) -> BaseException:
    """An error as it can cross back: itself when it pickles, else its sentence."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return RuntimeError(str(exc))


@gpu(lambda folder, seconds, idle_s: seconds)
def serve(folder: str, seconds: float, idle_s: float) -> int:
    """The held call (in the worker): run each new request as it comes, newest only, until
    idle for idle_s, `seconds` less the setup are over, or the hold is closed; returns how
    many it answered. A model used here is copied to the GPU once for the whole call."""
    folder_path = Path(folder)
    deadline = time.monotonic() + max(1.0, seconds - SETUP_S)
    answered = _read_pickle(folder_path / Hold.ANSWER)
    last = answered[0] if answered is not None else 0
    count, idle_since = 0, time.monotonic()
    while time.monotonic() < deadline and not Path(folder, Hold.CLOSED).exists():
        request = _read_pickle(folder_path / Hold.REQUEST)
        if request is None or request[0] <= last:
            if time.monotonic() - idle_since > idle_s:
                break
            time.sleep(POLL_S)
            continue
        seq, name, args, kwargs = request
        try:
            answer = (seq, True, _JOBS[name](*args, **kwargs))
        except Exception as exc:  # the channel says it in a sentence
            answer = (seq, False, _answerable(exc))
        _write_atomic(folder_path / Hold.ANSWER, pickle.dumps(answer))
        last, count, idle_since = seq, count + 1, time.monotonic()
    return count


def holding(hold: Hold | None) -> contextvars.Token:
    """Route this context's GPU functions to `hold` (None: book each call)."""
    return _holding.set(hold)


ZEROGPU_HEADERS = ("x-ip-token",)  # what a page may add to its handshake's headers


def set_visitor(handshake: Any, page: Any = None) -> None:
    """Charge the GPU calls made from this context to the visitor of a live channel.

    ZeroGPU reads the visitor's quota token (X-IP-Token) from the Gradio request it finds in
    the caller's context; a WebSocket is no Gradio event, so it found none and charged the
    Space. The request here holds the handshake's headers, and the page's ZeroGPU headers
    (a browser cannot set headers on a WebSocket, so the page sends the ones Gradio's client
    gets from huggingface.co in its first message): only X-IP-Token, a token ZeroGPU checks
    itself, so a page gains nothing by sending another."""
    import gradio as gr
    from gradio.context import LocalContext

    headers = {str(k).lower(): str(v) for k, v in dict(handshake or {}).items()}
    if isinstance(page, dict):
        headers.update({k: str(page[k])[:4096] for k in ZEROGPU_HEADERS
                        if isinstance(page.get(k), str)})
    LocalContext.request.set(gr.Request(headers=headers))


def open_channel(handshake: Any, page: Any = None) -> Hold:
    """For a live channel, in its context: its visitor (set_visitor) and a Hold, so the GPU
    work of its gestures and webcam frames runs in one call at a time. close() it at the end."""
    set_visitor(handshake, page)
    hold = Hold()
    holding(hold)
    return hold


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


@gpu(lambda relay, **_: chunk_call_seconds(relay))
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
    from the checkpoint the last one wrote under `folder` (run_in_chunks), each booking its
    box (chunk_box: the job's `seconds` when they fit one call) plus the setup; the answer
    is PAUSED (is_paused) when it stopped before the end."""
    if not chunked():
        return _resumable_whole(seconds, run, args, progress=progress, cancel=cancel,
                                on_metrics=on_metrics)
    return run_in_chunks(lambda relay: _resumable_chunk(run, args, stopped, relay), folder,
                         progress, cancel, is_paused=is_paused, on_metrics=on_metrics,
                         box_seconds=chunk_box(seconds))
