"""What a recipe's fields are called and how a bad one is reported: field paths
('bends.0.params.angle', 'bends[0].params.angle', 'latent.seed') as the sweep, live mappings
and the studio's controls name them, and RecipeError, which lists every bad field. Below
engine.recipes.recipe, so that modules the recipe's validation calls (mappings) can use them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from engine.base.errors import StudioError

MAX_LISTED_PROBLEMS = 20  # a RecipeError's message lists this many; .problems has them all


class RecipeError(StudioError):
    """A recipe that cannot render; `problems` lists every bad field as 'path: reason'."""

    def __init__(self, problems: Sequence[str], what: str = "The recipe"):
        self.problems = list(problems)
        count = len(self.problems)
        noun = "problem" if count == 1 else "problems"
        # The message goes to the page as one toast: the first few problems say what to fix.
        shown = self.problems[:MAX_LISTED_PROBLEMS]
        more = f"; and {count - len(shown)} more" if count > len(shown) else ""
        super().__init__(f"{what} has {count} {noun}: " + "; ".join(shown) + more)


_PATH_PART = re.compile(r"[^.\[\]]+")


def parse_path(path: str) -> list[str | int]:
    parts: list[str | int] = []
    for token in _PATH_PART.findall(path):
        parts.append(int(token) if token.isdigit() else token)
    if not parts:
        raise RecipeError([f"{path!r}: not a field path (example: bends.0.params.angle)"],
                          "The sweep")
    return parts
