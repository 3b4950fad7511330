"""Walks and sweeps have one frame source (issue 32): the mp4 the Explore and Bend tabs write
and "Play live" on the canvas render the same recipes (engine.recipes.recipe.walk_ws / at_ws /
sweep_values) through the same renderer, so their frames are the same, bends included.

The pre-encode frames are compared bit for bit; the mp4 itself is lossy (H.264 in yuv420p),
so the decoded file is held to a PSNR bound instead."""

from __future__ import annotations

import dataclasses

import numpy as np

from engine.base.video import read_video_frames
from engine.recipes import recipe
from engine.tools.bending import ChannelSelection
from studio import live, models, render, videos
from studio import session as S

WALK = {"what": "walk", "seeds": "1, 5", "frames": 6, "fps": 10, "loop": True, "space": "z"}


def _bent_session() -> S.Session:
    sess = S.new_session("default")
    S.add_bend(sess, "b16.conv1", "rotate", ChannelSelection(mode="all"))
    S.set_bend_param(sess, 0, "angle", 40)
    S.set_directions(sess, "sefa", [2.0], 0, None)
    return sess


def _played(sess: S.Session, msg: dict) -> list[np.ndarray]:
    """The pictures live playback shows (before the JPEG): each maker's session rendered as
    the channel renders it (live.render_play -> studio.render.render_frame), whole (a frame
    that fits the frame budget; a preview is an earlier block's image, labelled as such)."""
    makers, _, _ = live.play_frames(sess, msg)
    return [np.asarray(_whole(make())) for make in makers]


def _whole(tmp: S.Session) -> object:
    return render.render_frame(tmp, tmp.recipe, 0.0, final=True)[0]


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def test_an_mp4_walk_and_live_playback_give_the_same_frames():
    sess = _bent_session()
    model = models.load("default")
    played = _played(sess, WALK)
    written = list(recipe.walk_frames(sess.recipe, [1, 5], 6, model, loop=True, space="z"))
    assert len(played) == len(written) == 6
    for a, b in zip(played, written):
        assert np.array_equal(a, b)                      # bit for bit before encoding
    # The bend and the direction are in the walk's frames (the old mp4 had neither).
    plain = dataclasses.replace(sess.recipe, bends=[],
                                latent=dataclasses.replace(sess.recipe.latent, directions=[]))
    unbent = list(recipe.walk_frames(plain, [1, 5], 6, model, loop=True, space="z"))
    assert all(_psnr(a, b) < 25 for a, b in zip(unbent, written))
    # The file the Explore tab writes, decoded: the same frames within H.264's loss.
    decoded = list(read_video_frames(videos.walk_video(sess, [1, 5], 6, True, "z", 10)))
    assert len(decoded) == 6
    for frame, pre in zip(decoded, written):
        assert frame.shape == pre.shape
        assert _psnr(frame, pre) > 30, _psnr(frame, pre)
    # ... and each decoded frame is nearest its own pre-encode frame (order kept; a loop
    # between two keyframes passes some points twice, so ties are allowed).
    for i, frame in enumerate(decoded):
        assert _psnr(frame, written[i]) == max(_psnr(frame, pre) for pre in written)


def test_one_looped_seed_circles_around_it_in_both():
    """One keyframe with loop is a circle walk (a seamless loop around the seed) in the mp4
    and live alike; live playback used to show a still."""
    sess = _bent_session()
    msg = {**WALK, "seeds": "3", "frames": 4}
    played = _played(sess, msg)
    written = list(recipe.walk_frames(sess.recipe, [3], 4, models.load("default"), loop=True))
    assert all(np.array_equal(a, b) for a, b in zip(played, written)) and len(played) == 4
    assert not np.array_equal(played[0], played[2])     # it moves


def test_a_looped_sweep_plays_the_written_values_there_and_back():
    sess = _bent_session()
    sess.current = 0
    makers, _, _ = live.play_frames(sess, {"what": "sweep", "param": "angle", "from": 0,
                                          "to": 90, "frames": 4, "fps": 10, "loop": True})
    angles = [make().recipe.bends[0].params["angle"] for make in makers]
    assert angles == [0.0, 30.0, 60.0, 90.0, 60.0, 30.0]
    written = list(recipe.sweep_frames(sess.recipe, "bends.0.params.angle", 0, 90, 4,
                                       models.load("default")))
    played = [np.asarray(_whole(make())) for make in makers[:4]]
    assert all(np.array_equal(a, b) for a, b in zip(played, written))
