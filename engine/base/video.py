"""Frames -> video: .mp4 through imageio-ffmpeg (libx264, yuv420p), .gif through Pillow.

Frames stream from any iterable (a generator that renders as it goes): nothing holds the
whole clip in memory except the GIF encoder's palette frames, which Pillow needs. Progress
is reported per frame and a cancel check stops between frames, leaving no partial file.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from engine.base.errors import StudioError, cancel_requested
from engine.base.files import atomic_write

VIDEO_SUFFIXES = (".mp4", ".gif")
MP4_QUALITY = 8  # imageio-ffmpeg quality 0..10 (10 best); 8 is visually lossless for GANs


class VideoCancelled(StudioError):
    """The user stopped a video render; no file was written."""


def _as_frame(frame: Any, index: int) -> np.ndarray:
    arr = np.asarray(frame)
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise StudioError(f"frame {index} has shape {list(arr.shape)}; frames must be "
                          f"H x W x 3 images")
    if arr.dtype != np.uint8:
        raise StudioError(f"frame {index} has dtype {arr.dtype}; frames must be uint8")
    return np.ascontiguousarray(arr[:, :, :3])


def _even(frame: np.ndarray) -> np.ndarray:
    # yuv420p halves the chroma resolution: x264 needs even sizes. Pad one edge pixel.
    h, w = frame.shape[:2]
    if h % 2 or w % 2:
        frame = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    return frame


def write_video(frames: Iterable[np.ndarray], path: str | os.PathLike, fps: float = 30,
                progress: Callable[[int], Any] | None = None, cancel: Any = None,
                total: int | None = None) -> Path:
    """Write uint8 HxWx3 frames to `path` (.mp4 or .gif); returns the path.

    progress(i) is called after frame i (0-based) is written; `cancel` (a callable, an
    Event or a bool) is checked before each frame and raises VideoCancelled. The file is
    written under a temporary name and renamed at the end, so a failed render leaves nothing.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in VIDEO_SUFFIXES:
        raise StudioError(f"cannot write {path.name}: video files must end in .mp4 or .gif")
    if not fps > 0:
        raise StudioError(f"fps must be positive, got {fps}")

    def write(tmp: Path) -> None:
        writer = _write_mp4 if suffix == ".mp4" else _write_gif
        if writer(frames, tmp, fps, progress, cancel) == 0:
            raise StudioError("no frames to write: the video would be empty")

    return atomic_write(path, write)


def _frames_checked(frames: Iterable[np.ndarray], cancel: Any) -> Iterator[np.ndarray]:
    size = None
    for i, frame in enumerate(frames):
        if cancel_requested(cancel):
            raise VideoCancelled("video rendering was cancelled")
        arr = _as_frame(frame, i)
        if size is None:
            size = arr.shape
        elif arr.shape != size:
            raise StudioError(f"frame {i} is {arr.shape[1]}x{arr.shape[0]} but the first "
                              f"frame is {size[1]}x{size[0]}; all frames must be one size")
        yield arr


def _write_mp4(frames: Iterable[np.ndarray], path: Path, fps: float,
               progress: Callable[[int], Any] | None, cancel: Any) -> int:
    import imageio_ffmpeg  # lazy: only video needs ffmpeg

    writer = None
    count = 0
    try:
        for arr in _frames_checked(frames, cancel):
            arr = _even(arr)
            if writer is None:
                h, w = arr.shape[:2]
                writer = imageio_ffmpeg.write_frames(
                    str(path), (w, h), fps=fps, codec="libx264", pix_fmt_out="yuv420p",
                    quality=MP4_QUALITY, macro_block_size=1,
                    output_params=["-movflags", "+faststart"])
                writer.send(None)  # start the generator
            writer.send(arr)
            if progress is not None:
                progress(count)
            count += 1
    finally:
        if writer is not None:
            writer.close()
    return count


def _write_gif(frames: Iterable[np.ndarray], path: Path, fps: float,
               progress: Callable[[int], Any] | None, cancel: Any) -> int:
    from PIL import Image

    # Pillow writes a GIF in one call; hand it a generator so frames are rendered while it
    # encodes. It keeps the paletted frames (1 byte a pixel), never the RGB clip.
    counter = [0]

    def paletted() -> Iterator[Image.Image]:
        for arr in _frames_checked(frames, cancel):
            yield Image.fromarray(arr).quantize(colors=256, method=Image.Quantize.MEDIANCUT,
                                                dither=Image.Dither.NONE)
            if progress is not None:
                progress(counter[0])
            counter[0] += 1

    it = paletted()
    first = next(it, None)
    if first is None:
        return 0
    duration = max(20, int(round(1000 / fps)))  # browsers clamp faster GIF frames
    first.save(path, format="GIF", save_all=True, append_images=it, loop=0,
               duration=duration, disposal=1, optimize=False)
    return counter[0]


def read_video_frames(path: str | os.PathLike, max_frames: int | None = None
                      ) -> Iterator[np.ndarray]:
    """Yield the frames of a video or GIF as uint8 HxWx3 arrays, one at a time."""
    path = Path(path)
    if not path.is_file():
        raise StudioError(f"video file not found: {path}")
    if path.suffix.lower() == ".gif":
        yield from _read_gif(path, max_frames)
        return
    import imageio_ffmpeg

    try:
        reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
        meta = next(reader)
    except (OSError, RuntimeError, StopIteration) as exc:
        raise StudioError(f"cannot read {path.name} as a video: {exc}") from exc
    w, h = meta["size"]
    try:
        for i, raw in enumerate(reader):
            if max_frames is not None and i >= max_frames:
                break
            yield np.frombuffer(raw, dtype=np.uint8).reshape(h, w, 3).copy()
    finally:
        reader.close()


def _read_gif(path: Path, max_frames: int | None) -> Iterator[np.ndarray]:
    from PIL import Image, ImageSequence

    try:
        img = Image.open(path)
    except OSError as exc:
        raise StudioError(f"cannot read {path.name} as a GIF: {exc}") from exc
    with img:
        for i, frame in enumerate(ImageSequence.Iterator(img)):
            if max_frames is not None and i >= max_frames:
                break
            yield np.asarray(frame.convert("RGB")).copy()
