"""Music videos: a recipe played by a synthetic track of known loudness (per-frame image change
follows the envelope), the track muxed in at its length, default audio mappings, progress,
cancel, limits and the command line."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

from engine.base import audio
from engine.base.errors import StudioError
from engine.base.video import VideoCancelled, read_video_frames
from engine.models import zoo
from engine.recipes import mappings, music
from engine.recipes.recipe import Recipe
from engine.tools.latents import LatentSpec
from tests.helpers.audio_tracks import click_track, envelope, tone_track, write_wav

SR = audio.SAMPLE_RATE
FPS = 12
SECONDS = 2.5
# Measured: r = 0.90 (in the commit that added this test); a video whose walk
# ignored the loudness, or moved at a constant speed, correlates near 0.
MIN_CORRELATION = 0.8


def walk_recipe() -> Recipe:
    return Recipe(latent=LatentSpec(seed=5.0, psi=0.8), mappings=[
        {"name": "walk", "target": "latent.seed", "mode": "rate", "out": [0.0, 2.5],
         "source": {"kind": "audio", "feature": "loudness"}}])


@pytest.fixture(scope="module")
def model():
    return zoo.load("default")


@pytest.fixture(scope="module")
def tone(tmp_path_factory):
    samples, _ = tone_track(SECONDS, SR)
    return write_wav(tmp_path_factory.mktemp("music") / "tone.wav", samples, SR)


@pytest.fixture(scope="module")
def walk_video(tone, model, tmp_path_factory):
    progress: list[int] = []
    out = tmp_path_factory.mktemp("video") / "walk.mp4"
    made = music.music_video(walk_recipe(), tone, out, fps=FPS, model=model,
                             progress=progress.append)
    return made, progress


def image_change(frames: list[np.ndarray]) -> np.ndarray:
    """Mean absolute change of each frame from the one before (frame 1 on)."""
    stack = np.stack(frames).astype(np.float64)
    return np.abs(np.diff(stack, axis=0)).mean(axis=(1, 2, 3))


def test_image_change_follows_the_loudness_envelope(walk_video):
    made, progress = walk_video
    frames = list(read_video_frames(made.path))
    assert made.frames == len(frames) == int(SECONDS * FPS)
    assert progress == list(range(made.frames))
    change = image_change(frames)
    # Between frames k-1 and k the walk moves at frame k's loudness.
    loud = envelope((np.arange(1, made.frames) + 0.5) / FPS)
    r = float(np.corrcoef(change, loud)[0, 1])
    print(f"per-frame image change vs loudness envelope: Pearson r = {r:.3f}")
    assert r > MIN_CORRELATION, r


def test_the_video_carries_the_track_at_its_length(walk_video):
    made, _ = walk_video
    probe = subprocess.run([audio.ffmpeg_exe(), "-hide_banner", "-i", str(made.path)],
                           capture_output=True, text=True)
    assert "Audio: aac" in probe.stderr and "Video: h264" in probe.stderr, probe.stderr
    sound = audio.decode(made.path)
    assert sound.duration == pytest.approx(SECONDS, abs=0.03)
    # It is the track: the same loudness envelope frame by frame.
    heard = audio.analyse(sound, FPS, made.frames).loudness
    assert np.corrcoef(heard, envelope((np.arange(made.frames) + 0.5) / FPS))[0, 1] > 0.99
    assert made.seconds == pytest.approx(SECONDS) and made.fps == FPS


def test_default_mappings_walk_on_loudness_jump_on_beats_and_bend_on_bands():
    recipe = Recipe(latent=LatentSpec(seed=2.0),
                    bends=[_bend("rotate", angle=10.0), _bend("zoom", scale=1.0)])
    defaults = music.default_audio_mappings(recipe)
    by_name = {m["name"]: m for m in defaults}
    assert set(by_name) == {"walk", "beat", "bass0", "mid1"}
    assert by_name["walk"]["mode"] == "rate" and by_name["beat"]["mode"] == "add"
    assert by_name["bass0"]["target"] == "bends.0.params.angle"
    assert by_name["bass0"]["out"] == [10.0, 10.0 + 0.25 * 720]
    recipe.mappings = defaults
    mappings.validate(recipe)
    # Played by a click track: the seed jumps on each beat, and walks little between them.
    samples, beats = click_track(3.0, 120.0)
    features = audio.analyse(audio.AudioTrack(samples.astype(np.float32), SR), FPS)
    performer = mappings.Performer(recipe)
    seeds = []
    for k in range(features.frames):
        for name, value in features.at(k).items():
            performer.feed({"kind": "audio", "feature": name, "value": value})
        seeds.append(performer.frame(k / FPS).latent.seed)
    steps = np.diff(seeds)
    on_beat = np.floor(beats * FPS).astype(int)
    assert steps[on_beat[on_beat > 0] - 1].min() > 3 * np.median(steps)
    assert seeds[-1] - seeds[0] == pytest.approx(
        len(beats) * music.BEAT_JUMP + music.WALK_SPEED * np.sum(features.loudness[1:]) / FPS,
        abs=0.1)


def _bend(op: str, **params: float):
    from engine.tools.bending import Bend
    return Bend("b8.conv1", op, dict(params))


def test_cancel_leaves_no_file(tone, model, tmp_path):
    out = tmp_path / "cancelled.mp4"
    seen: list[int] = []
    with pytest.raises(VideoCancelled):
        music.music_video(walk_recipe(), tone, out, fps=FPS, model=model,
                          progress=seen.append, cancel=lambda: len(seen) >= 3)
    assert seen == [0, 1, 2]
    assert list(tmp_path.iterdir()) == []


def test_frames_are_bounded(tone, model, tmp_path, monkeypatch):
    monkeypatch.setenv("STUDIO_MAX_MUSIC_VIDEO_FRAMES", "4")
    with pytest.raises(StudioError, match="frames: 5 is above the limit of 4 "
                                          r"\(STUDIO_MAX_MUSIC_VIDEO_FRAMES\)"):
        music.music_video(walk_recipe(), tone, tmp_path / "x.mp4", frames=5, model=model)
    made = music.music_video(walk_recipe(), tone, tmp_path / "cut.mp4", fps=FPS, model=model)
    assert made.cut and made.frames == 4
    assert audio.decode(made.path).duration == pytest.approx(4 / FPS, abs=0.03)
    for bad, words in ((dict(fps=0), "fps"), (dict(fps=1000), "STUDIO_MAX_VIDEO_FPS"),
                       (dict(start=SECONDS + 1), "past the end of the track"),
                       (dict(start=-1.0), "start")):
        with pytest.raises(StudioError, match=words):
            music.music_video(walk_recipe(), tone, tmp_path / "bad.mp4", model=model, **bad)
    with pytest.raises(StudioError, match="a music video is an .mp4"):
        music.music_video(walk_recipe(), tone, tmp_path / "x.gif", model=model)


def test_command_line(tone, tmp_path, capsys):
    from engine.__main__ import main

    recipe = walk_recipe()
    path = recipe.save(tmp_path / "r.json")
    out = tmp_path / "v.mp4"
    assert main(["music-video", str(tone), "--recipe", str(path), "--out", str(out),
                 "--fps", "8", "--frames", "4", "--start", "0.5"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert len(list(read_video_frames(out))) == 4
    assert audio.decode(out).duration == pytest.approx(0.5, abs=0.03)
    # More frames than the track has: the video stops with the track.
    made = music.music_video(recipe, tone, tmp_path / "end.mp4", fps=4, frames=100,
                             start=SECONDS - 1.0)
    assert made.frames == 4 and not made.cut
    (tmp_path / "bad.json").write_text(json.dumps({"mappings": [{"name": "x"}]}))
    assert main(["music-video", str(tone), "--recipe", str(tmp_path / "bad.json"),
                 "--out", str(tmp_path / "bad.mp4")]) == 2
    assert "mappings[0]" in capsys.readouterr().err


def test_hostile_start_and_size_are_refused_before_the_track_is_decoded(
        tone, model, tmp_path, monkeypatch):
    def no_decode(*_args, **_kwargs):
        raise AssertionError("the track was decoded before the inputs were checked")

    monkeypatch.setattr(audio, "decode", no_decode)
    for bad, words in ((dict(start=1e308), "STUDIO_MAX_AUDIO_SECONDS"),
                       (dict(start=float("inf")), "start"), (dict(start=float("nan")), "start"),
                       (dict(size=100000), "output_size.*STUDIO_MAX_OUTPUT_SIZE")):
        with pytest.raises(StudioError, match=words):
            music.music_video(walk_recipe(), tone, tmp_path / "bad.mp4", model=model, **bad)
    assert list(tmp_path.iterdir()) == []


def test_frames_for_renders_through_the_recipes_renderer_and_its_size_check(tone, model):
    from engine.recipes.recipe import recipe_frames

    features = audio.analyse(audio.decode(tone), FPS, 3)
    with pytest.raises(StudioError, match="output_size"):
        next(music.frames_for(walk_recipe(), features, model, size=100000))
    frames = list(music.frames_for(walk_recipe(), features, model, size=40))
    assert [f.shape for f in frames] == [(40, 40, 3)] * 3
    # The first frame (time 0, nothing integrated yet) is the recipe's own picture.
    sized = walk_recipe()
    sized.output_size = 40
    assert np.array_equal(frames[0], next(recipe_frames([sized], model)))


def test_command_line_refuses_a_huge_size_in_one_sentence(tone, tmp_path, capsys,
                                                           monkeypatch):
    from engine.__main__ import main

    monkeypatch.setattr(audio, "decode", lambda *_a, **_k: pytest.fail("decoded first"))
    assert main(["music-video", str(tone), "--out", str(tmp_path / "v.mp4"),
                 "--size", "100000"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines()
              if line.startswith("error:")]  # the rest is the progress bar
    assert len(errors) == 1 and "output_size: 100000" in errors[0]
    assert "STUDIO_MAX_OUTPUT_SIZE" in errors[0]
    assert list(tmp_path.iterdir()) == []


def test_a_studio_music_video_renders_the_recipe_as_it_was_when_the_job_began(
        tone, tmp_path, monkeypatch):
    """The page and the live channel edit the session's recipe in place while the job
    decodes and renders on another thread: an edit landing then changes no frame."""
    from studio import session as S
    from studio import videos

    monkeypatch.setenv("STUDIO_OUTPUT_DIR", str(tmp_path))
    sess = S.new_session("default")
    sess.recipe = walk_recipe()
    decode = audio.decode

    def decode_while_editing(*args, **kwargs):
        sess.recipe.latent.psi = -1.0           # an edit made while the track decodes
        sess.recipe.mappings.clear()
        return decode(*args, **kwargs)

    made = videos.music_video(sess, str(tone), 3, FPS)
    monkeypatch.setattr(audio, "decode", decode_while_editing)
    sess.recipe = walk_recipe()
    edited = videos.music_video(sess, str(tone), 3, FPS)
    assert sess.recipe.latent.psi == -1.0       # the edit did land, on the session
    before, during = list(read_video_frames(made)), list(read_video_frames(edited))
    assert len(before) == len(during) == 3
    assert all(np.array_equal(a, b) for a, b in zip(before, during, strict=True))
