"""Where the studio keeps what it downloads and writes, and persistent storage on a Space.

A Hugging Face Space with persistent storage mounts it at /data; everything else in the
container is lost at each restart. When a data folder is in use (`STUDIO_DATA_DIR`, else /data
when it exists and is writable), the studio points these at it, unless they are already set:

| variable | set to | what lives there |
|---|---|---|
| `HF_HOME` | `<data>/huggingface` | Hub downloads and our converted safetensors |
| `STUDIO_OUTPUT_DIR` | `<data>/outputs` | trained encoders, recipes, videos, checked uploads |
| `ACTIVATION_STUDIO_CACHE` | `<data>/cache` | cached clusterings |

Files a Space preloaded at build time (`preload_from_hub` in README.md) sit in the default
Hub cache of the image, not under /data; `ACTIVATION_STUDIO_PRELOAD_CACHE` is set to that
folder so engine.models.zoo reads them from there instead of downloading them again.

This module is Gradio-free and must run before studio and engine read their settings (the
studio's output folder is fixed at import), so spaces_app.py calls `configure()` first.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from pathlib import Path

ENV_DATA_DIR = "STUDIO_DATA_DIR"
SPACE_STORAGE = Path("/data")  # where a Space mounts its persistent storage
ENV_PRELOAD_CACHE = "ACTIVATION_STUDIO_PRELOAD_CACHE"


def data_dir(environ: MutableMapping[str, str] | None = None,
             space_storage: Path = SPACE_STORAGE) -> Path | None:
    """The persistent data folder: STUDIO_DATA_DIR, else /data when it is a writable folder,
    else None (everything stays in the usual per-user caches and the temp folder)."""
    env = os.environ if environ is None else environ
    if env.get(ENV_DATA_DIR):
        return Path(env[ENV_DATA_DIR]).expanduser()
    if space_storage.is_dir() and os.access(space_storage, os.W_OK | os.X_OK):
        return space_storage
    return None


def _default_hub_cache(env: MutableMapping[str, str]) -> Path:
    """The Hub cache huggingface_hub would use with this environment (engine.models.zoo's rule)."""
    if env.get("HF_HUB_CACHE"):
        return Path(env["HF_HUB_CACHE"]).expanduser()
    if env.get("HF_HOME"):
        return Path(env["HF_HOME"]).expanduser() / "hub"
    xdg = env.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(xdg).expanduser() / "huggingface" / "hub"


def configure(environ: MutableMapping[str, str] | None = None,
              space_storage: Path = SPACE_STORAGE) -> dict[str, str]:
    """Point the caches and the output folder at the data folder (see the module docstring);
    settings already present win. Returns the variables it set."""
    env = os.environ if environ is None else environ
    root = data_dir(env, space_storage)
    if root is None:
        return {}
    build_cache = _default_hub_cache(env)
    wanted = {"HF_HOME": root / "huggingface", "STUDIO_OUTPUT_DIR": root / "outputs",
              "ACTIVATION_STUDIO_CACHE": root / "cache"}
    changed = {}
    for name, path in wanted.items():
        if not env.get(name):
            path.mkdir(parents=True, exist_ok=True)
            env[name] = changed[name] = str(path)
    if "HF_HOME" in changed and not env.get("HF_HUB_CACHE") and not env.get(ENV_PRELOAD_CACHE):
        env[ENV_PRELOAD_CACHE] = changed[ENV_PRELOAD_CACHE] = str(build_cache)
    return changed
