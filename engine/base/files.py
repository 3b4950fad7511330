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


def regular_file_size(path: str | os.PathLike, what: str = "file",
                      max_bytes: int | None = None) -> int:
    """The size of `path` if it is a regular file of at most `max_bytes`; otherwise a
    StudioError in one sentence. Devices (/dev/zero), FIFOs and folders are refused by their
    type, without being opened: reading one would never end, and opening a FIFO blocks."""
    import stat

    from engine.base.errors import StudioError

    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise StudioError(f"There is no {what} at {p}.") from None
    except OSError as exc:
        raise StudioError(f"The {what} {p} cannot be read ({exc.strerror or exc}).") from exc
    if stat.S_ISDIR(st.st_mode):
        raise StudioError(f"{p} is a folder, not a {what}.")
    if not stat.S_ISREG(st.st_mode):
        raise StudioError(f"{p} is not a regular file (a device, pipe or socket), so it cannot "
                          f"be a {what}.")
    if max_bytes is not None and st.st_size > max_bytes:
        raise StudioError(f"The {what} {p.name} is {st.st_size / 2**20:.1f} MiB, more than the "
                          f"limit of {max_bytes / 2**20:.0f} MiB.")
    return st.st_size


def open_regular(path: str | os.PathLike, what: str = "file") -> Any:
    """Open a regular file for reading in binary mode; anything else is refused unopened
    (see regular_file_size) and, against a swap after the check, again by its descriptor."""
    import stat

    from engine.base.errors import StudioError

    regular_file_size(path, what)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise StudioError(f"{path} is not a regular file, so it cannot be a {what}.")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
