"""What every training loop in the engine shares, so each loop file keeps only its maths.

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
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from engine.errors import StudioError, cancel_requested
from engine.files import atomic_torch_save, atomic_write_text

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
    when resuming, any other difference is refused.
    """

    def __init__(self, path: str | os.PathLike, settings: Mapping[str, Any],
                 may_change: Iterable[str] = ()):
        self.path = Path(path)
        self.settings = dict(settings)
        self.may_change = frozenset(may_change)

    def exists(self) -> bool:
        return self.path.is_file()

    def load(self, device: torch.device | str = "cpu") -> dict[str, Any] | None:
        """The saved state, or None when there is no checkpoint; refuses other settings."""
        if not self.exists():
            return None
        try:
            state = torch.load(self.path, map_location=device, weights_only=True)
        except Exception as exc:  # a checkpoint is always whole (atomic), so this is not ours
            raise StudioError(f"{self.path} is not a checkpoint this trainer can read; use "
                              f"another output folder.") from exc
        saved = state.get("settings", {})
        for key, value in self.settings.items():
            if key in self.may_change or saved.get(key, value) == value:
                continue
            raise StudioError(f"{self.path} was written with {key}={saved.get(key)!r}, not "
                              f"{value!r}; use the same settings to resume, or another output "
                              f"folder.")
        return state

    def save(self, state: Mapping[str, Any]) -> None:
        atomic_torch_save({**state, "settings": self.settings}, self.path)


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
        self.acc = accelerator
        self.cancel = cancel
        self.max_seconds = max_seconds if max_seconds and max_seconds > 0 else None
        self.t_start = time.monotonic()

    def __call__(self) -> str | None:
        """'cancel', 'time' or None."""
        flags = torch.tensor([float(cancel_requested(self.cancel)),
                              float(self.max_seconds is not None
                                    and time.monotonic() - self.t_start > self.max_seconds)])
        if self.acc is not None and self.acc.num_processes > 1:
            flags = self.acc.reduce(flags.to(self.acc.device), "max").cpu()
        if flags[0] > 0:
            return "cancel"
        if flags[1] > 0:
            return "time"
        return None
