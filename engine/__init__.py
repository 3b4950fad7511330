"""Activation Studio engine: UI-free core (models, bending, recipes, clusters, latents)."""

from __future__ import annotations

from typing import Any


def render(recipe: Any, model: Any = None) -> Any:
    """Render a `engine.recipes.recipe.Recipe` to a PIL.Image (see engine.recipes.recipe.render)."""
    from engine.recipes.recipe import render as _render  # lazy: keeps `import engine` light

    return _render(recipe, model)
