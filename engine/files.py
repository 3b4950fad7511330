"""Writing files so that a crash, a kill -9 or a full disk never leaves half of one.

Every file the engine writes (models, checkpoints, recipes, videos, caches) goes through
`atomic_write`: the content is written to a temporary file beside the target, flushed to
disk, and renamed over the target in one step. Readers see the old file or the new one,
never a torn one; when writing fails the temporary file is removed and the old file stays.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any


def temp_path_beside(path: Path) -> Path:
    """A unique hidden name in the target's folder that keeps its suffix (writers such as
    video or PNG encoders pick their format from it)."""
    return path.with_name(f".{path.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}{path.suffix}")


def fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """Call write(temp path), fsync it, then rename it to `path`; returns `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_beside(path)
    try:
        write(tmp)
        fsync_file(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    import torch

    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def atomic_save_npy(path: str | os.PathLike, array: Any) -> Path:
    import numpy as np

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.save would add .npy to a bare name
            np.save(f, array)

    return atomic_write(path, write)
