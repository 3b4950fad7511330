"""How much one request may ask of the server, each limit set by an environment variable.

A public Space serves strangers: every size a request can choose (pixels, frames, steps,
batch, queue length) has a ceiling here, so no single request can take the machine. The
page's sliders stop at these values and the server refuses anything beyond them, API calls
included (Gradio checks slider bounds on the server). The engine's recipe validation applies
the same values, so a recipe cannot ask for more than a slider can. README.md lists them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import Any


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(float(raw))
    except ValueError as exc:
        raise ValueError(f"the environment variable {name} must be a number, got {raw!r}") \
            from exc
    if value <= 0:
        raise ValueError(f"the environment variable {name} must be positive, got {raw!r}")
    return value


@dataclass(frozen=True)
class Limits:
    image_pixels: int = 40_000_000             # STUDIO_MAX_IMAGE_PIXELS: decoded upload size
    upload_bytes: int = 50 * 2**20             # STUDIO_MAX_UPLOAD_BYTES: image/recipe/boundary
    checkpoint_bytes: int = 4 * 2**30          # STUDIO_MAX_CHECKPOINT_BYTES: uploaded model
    bundle_bytes: int = 2**30                  # STUDIO_MAX_BUNDLE_BYTES: a bundle, unpacked
    video_frames: int = 240                    # STUDIO_MAX_VIDEO_FRAMES: walk and sweep videos
    video_fps: int = 60                        # STUDIO_MAX_VIDEO_FPS
    music_video_frames: int = 1800             # STUDIO_MAX_MUSIC_VIDEO_FRAMES: a music video
    audio_bytes: int = 100 * 2**20             # STUDIO_MAX_AUDIO_BYTES: an audio file
    audio_seconds: int = 600                   # STUDIO_MAX_AUDIO_SECONDS: audio decoded
    grid_values: int = 16                      # STUDIO_MAX_GRID_VALUES: seeds / ψ per list
    cluster_samples: int = 256                 # STUDIO_MAX_CLUSTER_SAMPLES: latents per k-means
    cluster_k: int = 16                        # STUDIO_MAX_CLUSTER_K: clusters per layer
    bends: int = 64                            # STUDIO_MAX_BENDS: bends in one recipe
    weight_edits: int = 64                     # STUDIO_MAX_WEIGHT_EDITS: weight edits in one
    layer_edits: int = 64                      # STUDIO_MAX_LAYER_EDITS: latent per-layer edits
    directions: int = 32                       # STUDIO_MAX_DIRECTIONS: latent direction edits
    mappings: int = 64                         # STUDIO_MAX_MAPPINGS: live-control mappings
    recording_bytes: int = 20 * 2**20          # STUDIO_MAX_RECORDING_BYTES: one performance
    output_size: int = 2048                    # STUDIO_MAX_OUTPUT_SIZE: output resize, px a side
    translator_input_size: int = 1024          # STUDIO_MAX_TRANSLATOR_INPUT: encoder input, px
    hub_cache_bytes: int = 20 * 2**30          # STUDIO_MAX_HUB_CACHE_BYTES: studio mode's cache
    train_steps: int = 3000                    # STUDIO_MAX_TRAIN_STEPS: encoder training
    train_batch: int = 32                      # STUDIO_MAX_TRAIN_BATCH
    projection_steps: int = 1000               # STUDIO_MAX_PROJECTION_STEPS
    gan_steps: int = 500                       # STUDIO_MAX_GAN_STEPS: fine-tuning from the page
    gan_batch: int = 16                        # STUDIO_MAX_GAN_BATCH
    gan_minutes: int = 30                      # STUDIO_MAX_GAN_MINUTES: one run, then it stops
    gan_upload_bytes: int = 200 * 2**20        # STUDIO_MAX_GAN_UPLOAD_BYTES: its pictures, in all
    queue_size: int = 64                       # STUDIO_QUEUE_SIZE: waiting requests, then "busy"
    concurrency: int = 4                       # STUDIO_CONCURRENCY: requests run at once

    @classmethod
    def from_env(cls) -> Limits:
        return cls(**{f.name: _env_int(ENV_NAMES[f.name], f.default) for f in fields(cls)})


ENV_NAMES = {
    "image_pixels": "STUDIO_MAX_IMAGE_PIXELS", "upload_bytes": "STUDIO_MAX_UPLOAD_BYTES",
    "checkpoint_bytes": "STUDIO_MAX_CHECKPOINT_BYTES", "bundle_bytes": "STUDIO_MAX_BUNDLE_BYTES",
    "video_frames": "STUDIO_MAX_VIDEO_FRAMES", "video_fps": "STUDIO_MAX_VIDEO_FPS",
    "music_video_frames": "STUDIO_MAX_MUSIC_VIDEO_FRAMES",
    "audio_bytes": "STUDIO_MAX_AUDIO_BYTES", "audio_seconds": "STUDIO_MAX_AUDIO_SECONDS",
    "grid_values": "STUDIO_MAX_GRID_VALUES",
    "cluster_samples": "STUDIO_MAX_CLUSTER_SAMPLES", "cluster_k": "STUDIO_MAX_CLUSTER_K",
    "bends": "STUDIO_MAX_BENDS", "weight_edits": "STUDIO_MAX_WEIGHT_EDITS",
    "layer_edits": "STUDIO_MAX_LAYER_EDITS", "directions": "STUDIO_MAX_DIRECTIONS",
    "mappings": "STUDIO_MAX_MAPPINGS", "recording_bytes": "STUDIO_MAX_RECORDING_BYTES",
    "output_size": "STUDIO_MAX_OUTPUT_SIZE",
    "translator_input_size": "STUDIO_MAX_TRANSLATOR_INPUT",
    "hub_cache_bytes": "STUDIO_MAX_HUB_CACHE_BYTES",
    "train_steps": "STUDIO_MAX_TRAIN_STEPS",
    "train_batch": "STUDIO_MAX_TRAIN_BATCH", "projection_steps": "STUDIO_MAX_PROJECTION_STEPS",
    "gan_steps": "STUDIO_MAX_GAN_STEPS", "gan_batch": "STUDIO_MAX_GAN_BATCH",
    "gan_minutes": "STUDIO_MAX_GAN_MINUTES", "gan_upload_bytes": "STUDIO_MAX_GAN_UPLOAD_BYTES",
    "queue_size": "STUDIO_QUEUE_SIZE", "concurrency": "STUDIO_CONCURRENCY",
}

LIMITS = Limits.from_env()


def current_limits() -> Limits:
    """The limits as the environment sets them now (the engine reads them per call, so a
    test or a long-lived process sees a changed variable; LIMITS is the value at import)."""
    return Limits.from_env()


def above_limit(name: str, value: Any, limits: Limits | None = None) -> str | None:
    """'<value> is above the limit of <n> (<ENV>)' when `value` exceeds limit `name`, else
    None: the reason part of a 'field: reason' problem, naming what raises the limit."""
    limit = getattr(limits or current_limits(), name)
    if isinstance(value, int | float) and not isinstance(value, bool) and value > limit:
        return f"{value} is above the limit of {limit} ({ENV_NAMES[name]})"
    return None



# Which files on the server a request may name (a model path, an encoder, a boundary, a
# picture in a recipe): "any" suits a studio on your own machine; "studio" allows only what
# was uploaded to this studio or written by it, so a stranger on a public Space cannot make
# it read (or reveal the existence of) other files. A Space (SPACE_ID set) defaults to it.
# The same mode makes engine.models.zoo guard Hub downloads (size, token, cache).
def server_files() -> str:
    """'any' or 'studio', as the environment sets it now."""
    value = os.environ.get("STUDIO_SERVER_FILES") or (
        "studio" if os.environ.get("SPACE_ID") else "any")
    if value not in ("any", "studio"):
        raise ValueError(f"STUDIO_SERVER_FILES must be 'any' or 'studio', got {value!r}")
    return value


def studio_mode() -> bool:
    """Whether this process serves strangers (STUDIO_SERVER_FILES=studio, or on a Space)."""
    return server_files() == "studio"


SERVER_FILES = server_files()
