"""Control values from outside the page's sliders: one recipe field set by its path.

OSC messages (studio/osc.py), MIDI controllers, the microphone and the keyboard (the page's
studio/live.js) all end as `{"kind": "field", "path": "bends.0.params.angle", "value": 45}`
messages on a session's live channel, so they render and reach the session exactly as a
slider's value does (studio/live.py: previewed on a copy, applied once its frame rendered).
"""

from __future__ import annotations

import re
from typing import Any

from engine.errors import StudioError
from engine.recipe import RecipeError
from engine.recipe import set_field as recipe_set_field
from studio.session import Session

MAX_PATH = 200
# A recipe field's path: names and list indexes joined by dots ("bends.0.params.angle").
PATH_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.([A-Za-z_][A-Za-z0-9_]*|[0-9]+))*")


def check_path(path: Any) -> str:
    """`path` when it is a well-formed field path, else one sentence."""
    if not isinstance(path, str) or len(path) > MAX_PATH or not PATH_RE.fullmatch(path):
        raise StudioError(f"{str(path)[:60]!r} is not a recipe field path "
                          "(e.g. bends.0.params.angle or latent.psi).")
    return path


def number(value: Any, what: str) -> float:
    """A finite float from an OSC/JSON value (bools are 0/1), else one sentence."""
    if isinstance(value, bool):
        return float(value)
    if not isinstance(value, int | float) or value != value \
            or value in (float("inf"), float("-inf")):
        raise StudioError(f"{what} needs a finite number, got {str(value)[:40]!r}.")
    return float(value)


def set_field(sess: Session, path: Any, value: Any) -> None:
    """Set the numeric recipe field `path` of `sess` (ints rounded), or one sentence."""
    path = check_path(path)
    value = number(value, path)
    try:
        sess.recipe = recipe_set_field(sess.recipe, path, value)
    except RecipeError as exc:
        raise StudioError(f"{exc.problems[0]}.") from None
