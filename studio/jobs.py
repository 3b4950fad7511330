"""Long jobs (training, projection, videos, clustering) and the interactive lane.

Two rules keep one visitor from slowing everyone else down:

- Long jobs share STUDIO_HEAVY_JOBS slots across all sessions, and each session runs at most
  one at a time: asking for a second gets a sentence at once, not a silent queue. A job that
  finds every slot taken waits (reporting so) for at most STUDIO_HEAVY_WAITING others.
- Interactive renders (sliders, bends, grids, webcam frames) never wait for a long job: a
  long job checks its cancel flag between steps, and that check first waits, briefly, while
  any interactive render is running. A render then shares the machine with at most the tail
  of one training step, so its latency stays near its idle value.

Nothing here imports Gradio.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from engine.base.errors import StudioError
from engine.tools import anchors, clusters
from studio.limits import SERVER

# A long job's step waits at most this long for renders, so a stream of renders can slow a
# job but never stop it.
MAX_YIELD_S = 1.0


class JobCancelled(StudioError):
    """A long job stopped because its visitor pressed Cancel (not a failure). Cancel sets
    the session's flag only (no Gradio `cancels=`): the engine stops at its next step and
    the handler ends normally, so the page shows a note, not an error."""


class Jobs:
    """One session's long job: its cancel flag and the name of the job running, if any.

    Gradio keeps a State's object by reference between events, so the Cancel button and the
    running job see the same Event.
    """

    def __init__(self) -> None:
        self.cancel = threading.Event()
        self.running: str | None = None
        self._lock = threading.Lock()

    def start(self) -> threading.Event:
        self.cancel.clear()
        return self.cancel

    def claim(self, what: str) -> None:
        """Mark `what` as this session's job, or refuse when another one is running."""
        with self._lock:
            if self.running is not None:
                raise StudioError(f"this session is already running a long job "
                                  f"({self.running}); wait for it to finish or press its "
                                  f"Cancel button, then try again.")
            self.running = what
            self.cancel.clear()

    def release(self) -> None:
        with self._lock:
            self.running = None

    def __deepcopy__(self, memo: dict) -> Jobs:
        return Jobs()  # an Event cannot be copied; a copy starts with no job running

    def __reduce__(self) -> tuple:
        return (Jobs, ())  # pickled (ZeroGPU worker): a fresh flag


class Lane:
    """Slots for long jobs, and the count of interactive renders running now."""

    def __init__(self, slots: int, waiting: int) -> None:
        self._slots = threading.Semaphore(slots)
        self._waiting = 0
        self._max_waiting = waiting
        self._renders = 0
        self._cond = threading.Condition()

    @contextmanager
    def interactive(self) -> Iterator[None]:
        """Around an interactive render: long jobs pause between steps while it runs."""
        with self._cond:
            self._renders += 1
        try:
            yield
        finally:
            with self._cond:
                self._renders -= 1
                self._cond.notify_all()

    def yield_to_renders(self, max_wait: float = MAX_YIELD_S) -> None:
        """Wait (at most max_wait s) until no interactive render is running."""
        with self._cond:
            self._cond.wait_for(lambda: self._renders == 0, timeout=max_wait)

    def cancel_check(self, cancel: threading.Event) -> Callable[[], bool]:
        """The cancel callable a long job polls between steps: yields to renders first."""
        def check() -> bool:
            self.yield_to_renders()
            return cancel.is_set()
        return check

    @contextmanager
    def heavy(self, jobs: Jobs, what: str,
              progress: Callable[[float, str], Any] | None = None) -> Iterator[Callable]:
        """Run one long job: claims the session's job, waits for a slot, yields the cancel
        callable to hand to the engine."""
        jobs.claim(what)
        try:
            with self.slot(jobs, progress) as cancel:
                yield cancel
        finally:
            jobs.release()

    @contextmanager
    def slot(self, jobs: Jobs,
             progress: Callable[[float, str], Any] | None = None) -> Iterator[Callable]:
        """Hold one of the long-job slots (the session's job already claimed)."""
        self._wait_for_slot(jobs, progress)
        try:
            yield self.cancel_check(jobs.cancel)
        except StudioError as exc:
            if jobs.cancel.is_set() and not isinstance(exc, JobCancelled):
                raise JobCancelled(str(exc)) from exc
            raise
        finally:
            self._slots.release()

    def _wait_for_slot(self, jobs: Jobs, progress: Callable[[float, str], Any] | None) -> None:
        if self._slots.acquire(blocking=False):
            return
        with self._cond:
            if self._waiting >= self._max_waiting:
                raise StudioError("the studio is busy with other visitors' long jobs; try "
                                  "again in a few minutes.")
            self._waiting += 1
        try:
            while not self._slots.acquire(timeout=0.5):
                if jobs.cancel.is_set():
                    raise JobCancelled("cancelled before it started.")
                if progress is not None:
                    progress(0.0, "waiting for other visitors' long jobs to finish…")
        finally:
            with self._cond:
                self._waiting -= 1


LANE = Lane(SERVER.heavy_jobs, SERVER.heavy_waiting)


def _after_fork_in_child() -> None:
    """A ZeroGPU worker is a fork taken at any moment: its lane starts empty and unlocked
    (the slots and the condition's lock belong to the parent's threads)."""
    LANE.__init__(SERVER.heavy_jobs, SERVER.heavy_waiting)  # in place: modules hold LANE


os.register_at_fork(after_in_child=_after_fork_in_child)


def interactive(fn: Callable) -> Callable:
    """Decorator: `fn` is an interactive render (see Lane.interactive). It may use cached
    clusterings only: one it would compute (a recipe's bend may name any) is refused in a
    sentence, and computed as a long job on the Clusters tab; the same for a model's anchor
    bank (engine.tools.anchors), made as a long job by the Translate button."""
    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        with LANE.interactive(), clusters.only_cached(), anchors.only_ready():
            return fn(*args, **kwargs)
    return call



T = TypeVar("T")


def progress_fn(progress: Callable[..., Any]) -> Callable[[float, str], None]:
    """The engine's progress(fraction, message) as calls of the event's gr.Progress."""
    def line(fraction: float, message: str = "") -> None:
        progress(max(0.0, min(1.0, float(fraction))), desc=message or None)
    return line


def frames_job(jobs: Jobs, what: str, frames: int, progress: Callable[..., Any],
               size: str | None, render: Callable[..., T]) -> T:
    """A video job (walk, sweep) in the long-job lane: render(progress=, cancel=, size=) gets
    a per-frame callback (frame i of `frames` moves the page's progress line), the Cancel
    check, and the chosen side in pixels (None: the model's). `progress` is the event's
    gr.Progress."""
    line = progress_fn(progress)
    with LANE.heavy(jobs, what, line) as cancel:
        return render(progress=lambda i: line((i + 1) / frames, "frames"), cancel=cancel,
                      size=int(size or 0) or None)


@dataclass
class Polled:
    """A long job running in a thread, as the page's polling event handler sees it."""
    message: str = "starting…"  # the engine's newest progress line
    fraction: float = 0.0
    points: list[tuple[int, dict[str, float]]] = field(default_factory=list)  # (step, metrics)
    result: Any = None
    error: str | None = None     # one sentence for the page (also when cancelled)
    running: bool = True


def polled_job(jobs: Jobs, work: Callable[..., Any], cancelled: str, failed: str,
               every: float = 1.0) -> Iterator[Polled]:
    """Run work(progress=, cancel=, on_metrics=) in a thread, in a long-job slot (the session's
    job is already claimed; it is released when the work ends), and yield its state about
    every `every` seconds, the last time with running=False. The engine's per-step metrics
    collect in `points`. A StudioError becomes `error`, `cancelled` when the visitor pressed
    Cancel; any other exception `failed: <it>`, never a traceback."""
    from studio import gpu

    state = Polled()

    def report(fraction: float, message: str) -> None:
        state.fraction, state.message = float(fraction), message

    def metrics(step: int, values: dict[str, float]) -> None:
        state.points.append((step, values))

    def run() -> None:
        try:
            with LANE.slot(jobs, report) as cancel:
                state.result = work(progress=report, cancel=cancel, on_metrics=metrics)
        except StudioError as exc:
            state.error = cancelled if jobs.cancel.is_set() else str(exc)
        except MemoryError:  # its message is empty: say what happened
            state.error = f"{failed}: the server ran out of memory; try a smaller setting."
        except Exception as exc:  # noqa: BLE001 - shown to the user, never a traceback
            state.error = f"{failed}: {exc}"
        finally:
            jobs.release()

    # In the request's context: ZeroGPU charges the GPU time to its visitor.
    thread = gpu.start_thread(run)
    while thread.is_alive():
        thread.join(timeout=every)
        yield state
    state.running = False
    yield state
