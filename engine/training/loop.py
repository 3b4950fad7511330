"""What every training loop in the engine shares, so each loop file keeps only its maths.

- `StepLoop`: the scaffold the four loops (GAN training, encoder training, projection, latent
  encoder training) run in. It resumes from the checkpoint, checks cancel and the time limit
  before every step, hands each step's metrics to `on_metrics(step, metrics)` (and a JSON-lines
  log), reports `progress(fraction, message)`, draws a tqdm bar, and writes the checkpoint
  atomically when due, when stopped and at the end. The loop itself reads top to bottom:

      loop = StepLoop(total=steps, checkpointer=..., state=lambda: {...}, cancel=cancel, ...)
      saved = loop.resume()             # the checkpoint's state or None; sets loop.step
      ...restore the loop's own tensors from `saved`...
      for step in loop:                 # stops before a step on cancel or time
          ...one step of maths...
          loop.end_step({"loss": loss})  # metrics, progress, checkpoint when due

- `step_generator`: the random draws of a step come from a generator seeded by (seed, step,
  rank), so a resumed run draws exactly what an uninterrupted one would have drawn.
- `Checkpointer`: atomic checkpoints (temp file + rename, so a kill -9 leaves the previous one
  whole) that carry the run's settings; resuming with different settings is refused in one
  sentence instead of silently training something else.
- `MetricsLog`: structured per-step metrics as JSON lines plus an optional callback
  `on_metrics(step, metrics)`; a resumed run first drops the lines written after its
  checkpoint, so the file always reads as one run.
- `StopCheck`: cancel (a threading.Event, a callable or a bool) and a time limit, decided the
  same way on every process so they all stop at the same step.
- `crossed`: whether a counter passed a multiple of an interval (snapshots, sample grids).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from engine.base.devices import to_host
from engine.base.errors import StudioError, cancel_requested
from engine.base.files import atomic_torch_save, atomic_write_text

MetricsCallback = Callable[[int, dict[str, float]], None]


class LoopCancelled(StudioError):
    """The user stopped a training loop; its checkpoint was written, so running again resumes."""


def step_generator(seed: int, step: int, rank: int, device: torch.device | str
                   ) -> torch.Generator:
    """The generator for one step of one process: the same (seed, step, rank), the same draws."""
    g = torch.Generator(device=device)
    g.manual_seed((seed * 1_000_003 + step) * 1009 + rank)
    return g


def crossed(before: int, after: int, interval: int) -> bool:
    """Whether going from `before` to `after` passed a multiple of `interval` (> 0)."""
    return interval > 0 and before // interval != after // interval


class Checkpointer:
    """One checkpoint file holding a loop's state plus the settings that made it.

    `settings` is JSON-able; keys in `may_change` (run length, logging intervals, ...) may differ
    when resuming, any other difference is refused. A setting the checkpoint does not name was
    added after it was written: the run then had that setting's value in `defaults`. With
    strict=False an unreadable checkpoint or one of other settings is ignored (the run starts
    afresh) instead of refused.
    """

    def __init__(self, path: str | os.PathLike, settings: Mapping[str, Any],
                 may_change: Iterable[str] = (), defaults: Mapping[str, Any] | None = None,
                 strict: bool = True):
        self.path = Path(path)
        self.settings = dict(settings)
        self.may_change = frozenset(may_change)
        self.defaults = dict(defaults or {})
        self.strict = strict

    def exists(self) -> bool:
        return self.path.is_file()

    def load(self, device: torch.device | str = "cpu") -> dict[str, Any] | None:
        """The saved state, or None when there is none; refuses other settings (strict)."""
        if not self.exists():
            return None
        try:
            state = torch.load(self.path, map_location=device, weights_only=True)
        except Exception as exc:  # a checkpoint is always whole (atomic), so this is not ours
            if not self.strict:
                return None
            raise StudioError(f"{self.path} is not a checkpoint this trainer can read; use "
                              f"another output folder.") from exc
        saved = state.get("settings", {}) if isinstance(state, dict) else {}
        for key, value in self.settings.items():
            was = saved.get(key, self.defaults.get(key, value))
            if key in self.may_change or was == value:
                continue
            if not self.strict:
                return None
            raise StudioError(f"{self.path} was written with {key}={was!r}, not {value!r}; "
                              f"use the same settings to resume, or another output folder.")
        return state

    def save(self, state: Mapping[str, Any]) -> None:
        # Copied to the CPU first: the file loads anywhere, and the tensors still training
        # are never handed to torch.save (under ZeroGPU's emulation that leaves a model
        # that cannot be moved to the CPU afterwards).
        atomic_torch_save(to_host({**state, "settings": self.settings}), self.path)


class MetricsLog:
    """Per-step metrics as JSON lines, each with `step`; optional `on_metrics` callback."""

    def __init__(self, path: str | os.PathLike | None, resume_step: int = 0,
                 on_metrics: MetricsCallback | None = None):
        self.path = Path(path) if path is not None else None
        self.on_metrics = on_metrics
        if self.path is not None and self.path.exists():
            kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= resume_step]
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        self._file = None

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        record = {"step": int(step), **{k: _jsonable(v) for k, v in metrics.items()}}
        if self.path is not None:
            if self._file is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._file = open(self.path, "a", encoding="utf-8")
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()  # a kill loses at most the line being written
        if self.on_metrics is not None:
            self.on_metrics(int(step), dict(record))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a metrics log; a torn last line (killed mid-write) is ignored."""
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            out.append(record)
    return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return float(value.detach())
    return value


class StopCheck:
    """Cancel and time limit, agreed over processes (any process stopping stops all)."""

    def __init__(self, accelerator: Any = None, cancel: Any = None,
                 max_seconds: float | None = None):
        """max_seconds: None for no limit (0 stops before the first step)."""
        self.acc = accelerator
        self.cancel = cancel
        self.max_seconds = max_seconds
        self.t_start = time.monotonic()

    def __call__(self) -> str | None:
        """'cancel', 'time' or None."""
        flags = torch.tensor([float(cancel_requested(self.cancel)),
                              float(self.max_seconds is not None
                                    and time.monotonic() - self.t_start > self.max_seconds)])
        if self.acc is not None and self.acc.num_processes > 1:  # one process: no round trip
            flags = self.acc.reduce(flags.to(self.acc.device), "max").cpu()
        if flags[0] > 0:
            return "cancel"
        if flags[1] > 0:
            return "time"
        return None


ProgressCallback = Callable[[float, str], Any]


def describe_step(loop: StepLoop, metrics: Mapping[str, float]) -> str:
    """The default progress line: 'step 12/100, loss 0.1234'."""
    text = f"step {loop.step}/{loop.total_steps}"
    return text + (f", loss {metrics['loss']:.4f}" if "loss" in metrics else "")


class StepLoop:
    """The scaffolding of a loop of steps; the module docstring shows its use.

    Counting: `step` counts steps; `total` and `checkpoint_every` are in units of `per_step`
    (1: steps; the GAN trainer counts images, per_step = batch). Checkpoints hold the loop's
    `state()` plus `step`, `elapsed` (seconds over all runs) and, with `history_key`, that
    metric's value at every step (`history`), all restored by `resume()`.
    """

    def __init__(self, total: int, *, per_step: int = 1,
                 checkpointer: Checkpointer | None = None,
                 state: Callable[[], Mapping[str, Any]] | None = None,
                 checkpoint_every: int = 0,
                 cancel: Any = None, max_seconds: float | None = None,
                 cancelled: Callable[[StepLoop], Exception] | None = None,
                 progress: ProgressCallback | None = None,
                 describe: Callable[[StepLoop, Mapping[str, float]], str] = describe_step,
                 on_metrics: MetricsCallback | None = None,
                 metrics_path: str | os.PathLike | None = None,
                 history_key: str | None = None, report_every: int = 1,
                 bar: str | None = None, bar_keys: Iterable[str] = ("loss",),
                 accelerator: Any = None):
        """total: the run's length (in units); per_step: units a step adds;
        checkpointer/state: where and what to save (None: no checkpoints);
        checkpoint_every: units between checkpoints (0: only when stopped and at the end);
        cancel (Event, callable or bool) and max_seconds (None: no limit): checked before
        every step; cancelled(loop): the exception a cancel raises (after the checkpoint);
        progress(fraction, message) with message = describe(loop, metrics);
        on_metrics(step, metrics) and metrics_path (JSON lines): every step's metrics;
        history_key: the metric kept per step in `history`; report_every: steps between
        reports (metrics may be device tensors, read back together then: one sync, not one a
        step); bar: a tqdm bar with this description showing `bar_keys`; accelerator: with
        several processes only the main one reports and saves, and all agree when to stop.
        """
        self.total = int(total)
        self.per_step = int(per_step)
        self.checkpointer = checkpointer
        self.state = state
        self.checkpoint_every = int(checkpoint_every)
        self.stop_check = StopCheck(accelerator, cancel, max_seconds)
        self.cancelled = cancelled or (lambda loop: LoopCancelled(
            f"Stopped at step {loop.step}; run it again to resume."))
        self.progress = progress
        self.describe = describe
        self.on_metrics = on_metrics
        self.metrics_path = metrics_path
        self.history_key = history_key
        self.report_every = max(int(report_every), 1)
        self.bar_desc = bar
        self.bar_keys = tuple(bar_keys)
        self.acc = accelerator
        self.is_main = accelerator is None or accelerator.is_main_process
        self.step = 0
        self.history: list[float] = []
        self.stopped: str | None = None  # 'cancel' or 'time' once the loop stopped early
        self.resumed_from = 0
        self._elapsed_before = 0.0
        self._t_start = time.perf_counter()
        self._pending: list[tuple[int, Mapping[str, Any]]] = []
        self._log: MetricsLog | None = None
        self._bar: Any = None

    @property
    def done(self) -> int:
        """Units done: steps x per_step."""
        return self.step * self.per_step

    @property
    def total_steps(self) -> int:
        return -(-self.total // self.per_step)

    def elapsed(self) -> float:
        """Seconds spent in this run and every run it resumed."""
        return self._elapsed_before + time.perf_counter() - self._t_start

    def resume(self, device: torch.device | str = "cpu") -> dict[str, Any] | None:
        """The checkpoint's state (None: start afresh); sets step, history and elapsed."""
        state = self.checkpointer.load(device) if self.checkpointer is not None else None
        if state is not None:
            self.step = self.resumed_from = int(state["step"])
            self.history = [float(x) for x in state.get("history", [])]
            self._elapsed_before = float(state.get("elapsed", 0.0))
        return state

    def __iter__(self) -> Iterator[int]:
        """The steps still to run; before each, the stop check (all processes agree)."""
        self._open()
        try:
            while self.done < self.total:
                self.stopped = self.stop_check()
                if self.stopped:
                    self._flush()
                    self.save()
                    if self.stopped == "cancel":
                        raise self.cancelled(self)
                    return
                yield self.step
            self._flush()
        finally:
            self.close()

    def end_step(self, metrics: Mapping[str, Any] | None = None) -> None:
        """After a step: count it, report its metrics when due, checkpoint when due."""
        before = self.done
        self.step += 1
        self._pending.append((self.step, metrics or {}))
        if self.step % self.report_every == 0 or self.done >= self.total:
            self._flush()
        if crossed(before, self.done, self.checkpoint_every) or self.done >= self.total:
            self._flush()
            self.save()

    def save(self) -> None:
        """Write the checkpoint now (main process; every process waits for it)."""
        if self.checkpointer is None or self.state is None:
            return
        if self.is_main:
            extra = {"history": list(self.history)} if self.history_key else {}
            self.checkpointer.save({**self.state(), **extra, "step": self.step,
                                    "elapsed": self.elapsed()})
        if self.acc is not None:
            self.acc.wait_for_everyone()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def _open(self) -> None:
        if not self.is_main:
            return
        if self.metrics_path is not None or self.on_metrics is not None:
            self._log = MetricsLog(self.metrics_path, self.step, self.on_metrics)
        if self.bar_desc is not None:
            from tqdm import tqdm
            self._bar = tqdm(total=self.total, initial=min(self.done, self.total),
                             desc=self.bar_desc, unit="img" if self.per_step > 1 else "step",
                             unit_scale=self.per_step > 1, dynamic_ncols=True, mininterval=1)

    def _flush(self) -> None:
        """Read the pending steps' metrics back (one device sync), then report them."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        tensors = [v for _, m in pending for v in m.values() if isinstance(v, torch.Tensor)]
        values = iter(torch.stack([t.detach().float().reshape(()) for t in tensors]).tolist()
                      if tensors else [])
        records = [(step, {k: next(values) if isinstance(v, torch.Tensor) else v
                           for k, v in m.items()}) for step, m in pending]
        for step, record in records:
            if self.history_key is not None:
                self.history.append(float(record[self.history_key]))
            if self._log is not None:
                self._log.write(step, record)
        if not self.is_main:
            return
        last = records[-1][1]
        if self._bar is not None:
            self._bar.set_postfix({k: f"{last[k]:.4g}" for k in self.bar_keys if k in last},
                                  refresh=False)  # update() redraws, at most once a second
            self._bar.update(min(self.done, self.total) - self._bar.n)
        if self.progress is not None:
            self.progress(min(self.done / self.total, 1.0), self.describe(self, last))
