"""The studio's limits live in `engine.base.limits`, so recipes, the CLI and the page share one
validation path; this module re-exports them for the studio's code, and adds the limits only
a server has (long jobs at once, upload kinds, disk)."""

from __future__ import annotations

from dataclasses import dataclass, fields

from engine.base.limits import ENV_NAMES, LIMITS, SERVER_FILES, Limits, _env_int

__all__ = ["ENV_NAMES", "LIMITS", "SERVER", "SERVER_ENV_NAMES", "SERVER_FILES", "Limits",
           "ServerLimits"]


@dataclass(frozen=True)
class ServerLimits:
    """What the server itself holds: long jobs at once, upload kinds, disk."""
    heavy_jobs: int = 1                        # STUDIO_HEAVY_JOBS: long jobs run at once, all
    heavy_waiting: int = 8                     # STUDIO_HEAVY_WAITING: queued long jobs, then busy
    recipe_bytes: int = 2 * 2**20              # STUDIO_MAX_RECIPE_BYTES: recipe JSON upload
    boundary_bytes: int = 2**20                # STUDIO_MAX_BOUNDARY_BYTES: direction .npy upload
    output_bytes: int = 2 * 2**30              # STUDIO_MAX_OUTPUT_BYTES: output folder, in all
    file_age_s: int = 24 * 3600                # STUDIO_FILE_MAX_AGE: uploads/outputs kept (s)
    uploads_bytes: int = 10 * 2**30            # STUDIO_MAX_UPLOADS_BYTES: upload folder, in all
    picture_bytes: int = 2 * 2**30             # STUDIO_MAX_PICTURE_BYTES: a run's pictures, read

    @classmethod
    def from_env(cls) -> ServerLimits:
        return cls(**{f.name: _env_int(SERVER_ENV_NAMES[f.name], f.default)
                      for f in fields(cls)})


SERVER_ENV_NAMES = {
    "heavy_jobs": "STUDIO_HEAVY_JOBS", "heavy_waiting": "STUDIO_HEAVY_WAITING",
    "recipe_bytes": "STUDIO_MAX_RECIPE_BYTES", "boundary_bytes": "STUDIO_MAX_BOUNDARY_BYTES",
    "output_bytes": "STUDIO_MAX_OUTPUT_BYTES", "file_age_s": "STUDIO_FILE_MAX_AGE",
    "picture_bytes": "STUDIO_MAX_PICTURE_BYTES", "uploads_bytes": "STUDIO_MAX_UPLOADS_BYTES",
}

SERVER = ServerLimits.from_env()
