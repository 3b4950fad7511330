"""User-facing errors: each message is one sentence a user can act on, shown as is.

The studio turns a `StudioError` into `gr.Error`, the CLI prints its message; anything else
is a bug and may show a traceback. Raise with `from exc` to keep the cause for developers.
"""

from __future__ import annotations

from typing import Any


def cancel_requested(cancel: Any) -> bool:
    """Whether a long job should stop: `cancel` is None, a threading.Event, a callable
    returning a bool, or a bool. Jobs check it between steps and raise their *Cancelled."""
    if cancel is None:
        return False
    is_set = getattr(cancel, "is_set", None)  # threading.Event
    if is_set is not None:
        return bool(is_set())
    return bool(cancel()) if callable(cancel) else bool(cancel)


class StudioError(Exception):
    """A failure the user can act on; `str(err)` is one sentence, no traceback needed."""


class CheckpointError(StudioError):
    """A model file that cannot be read: missing, truncated, unknown format, wrong shapes."""


class UnsafePickleError(CheckpointError):
    """A pickle asked for something outside the allow-list; nothing it asked for was run."""

    def __init__(self, message: str, global_name: str | None = None):
        super().__init__(message)
        self.global_name = global_name  # the refused "module.name", when one is known
