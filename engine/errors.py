"""User-facing errors: each message is one sentence a user can act on, shown as is.

The studio turns a `StudioError` into `gr.Error`, the CLI prints its message; anything else
is a bug and may show a traceback. Raise with `from exc` to keep the cause for developers.
"""

from __future__ import annotations


class StudioError(Exception):
    """A failure the user can act on; `str(err)` is one sentence, no traceback needed."""


class CheckpointError(StudioError):
    """A model file that cannot be read: missing, truncated, unknown format, wrong shapes."""


class UnsafePickleError(CheckpointError):
    """A pickle asked for something outside the allow-list; nothing it asked for was run."""

    def __init__(self, message: str, global_name: str | None = None):
        super().__init__(message)
        self.global_name = global_name  # the refused "module.name", when one is known
