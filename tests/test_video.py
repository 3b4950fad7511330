"""Video writing and reading: mp4 through imageio-ffmpeg, gif through Pillow."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from engine.base.errors import StudioError
from engine.base.video import VideoCancelled, read_video_frames, write_video


def frames(n: int = 8, h: int = 32, w: int = 48):
    """A moving bar on a coloured ramp: each frame differs from the last."""
    for i in range(n):
        a = np.zeros((h, w, 3), np.uint8)
        a[..., 0] = np.linspace(0, 255, w).astype(np.uint8)
        a[:, 4 * i:4 * i + 4, 1] = 255
        yield a


def test_mp4_round_trip(tmp_path):
    seen = []
    out = write_video(frames(), tmp_path / "clip.mp4", fps=12, progress=seen.append)
    assert out == tmp_path / "clip.mp4" and out.stat().st_size > 0
    assert seen == list(range(8))
    got = list(read_video_frames(out))
    assert len(got) == 8 and got[0].shape == (32, 48, 3) and got[0].dtype == np.uint8
    ref = list(frames())
    for a, b in zip(got, ref):  # lossy, but close
        assert np.abs(a.astype(int) - b.astype(int)).mean() < 6
    assert len(list(read_video_frames(out, max_frames=3))) == 3
    assert not list(tmp_path.glob(".*partial*"))


def test_mp4_odd_sizes_are_padded_even(tmp_path):
    out = write_video(frames(3, 31, 45), tmp_path / "odd.mp4", fps=5)
    got = next(read_video_frames(out))
    assert got.shape == (32, 46, 3)


def test_gif_round_trip_loops(tmp_path):
    from PIL import Image

    out = write_video(frames(5, 31, 45), tmp_path / "clip.gif", fps=10)
    with Image.open(out) as im:
        assert im.info.get("loop") == 0 and im.n_frames == 5
        assert im.info.get("duration") == 100
    got = list(read_video_frames(out))
    assert len(got) == 5 and got[0].shape == (31, 45, 3)
    ref = list(frames(5, 31, 45))
    assert np.abs(got[2].astype(int) - ref[2].astype(int)).mean() < 4


def test_frames_stream_from_a_generator(tmp_path):
    produced = []

    def gen():
        for i, f in enumerate(frames(6)):
            produced.append(i)
            yield f

    progress = []

    def on_progress(i):  # by frame i, no frame after i has been rendered yet
        progress.append((i, len(produced)))

    write_video(gen(), tmp_path / "s.mp4", progress=on_progress)
    assert all(made == i + 1 for i, made in progress)


def test_cancel_leaves_no_file(tmp_path):
    stop = threading.Event()

    def gen():
        for i, f in enumerate(frames(6)):
            if i == 2:
                stop.set()
            yield f

    for name in ("c.mp4", "c.gif"):
        stop.clear()
        with pytest.raises(VideoCancelled):
            write_video(gen(), tmp_path / name, cancel=stop)
        assert not (tmp_path / name).exists()
    assert list(tmp_path.iterdir()) == []


def test_bad_inputs_are_user_errors(tmp_path):
    with pytest.raises(StudioError, match="mp4 or .gif"):
        write_video(frames(), tmp_path / "x.avi")
    with pytest.raises(StudioError, match="empty"):
        write_video(iter([]), tmp_path / "x.mp4")
    with pytest.raises(StudioError, match="uint8"):
        write_video([np.zeros((8, 8, 3), np.float32)], tmp_path / "x.gif")
    with pytest.raises(StudioError, match="one size"):
        write_video([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 10, 3), np.uint8)],
                    tmp_path / "x.mp4")
    with pytest.raises(StudioError, match="not found"):
        list(read_video_frames(tmp_path / "missing.mp4"))
    (tmp_path / "junk.mp4").write_bytes(b"not a video")
    with pytest.raises(StudioError):
        list(read_video_frames(tmp_path / "junk.mp4"))
    assert not (tmp_path / "x.mp4").exists()
