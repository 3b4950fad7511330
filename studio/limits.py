"""The studio's limits live in `engine.limits`, so recipes, the CLI and the page share one
validation path; this module re-exports them for the studio's code."""

from engine.limits import ENV_NAMES, LIMITS, SERVER_FILES, Limits

__all__ = ["ENV_NAMES", "LIMITS", "SERVER_FILES", "Limits"]
