"""Audio analysis: decoding any file through imageio-ffmpeg's binary (bounded, hostile files
refused in one sentence), loudness, bands, onsets and tempo of synthetic tracks whose
envelope, bands and beat times are known."""

from __future__ import annotations

import os
import subprocess

import numpy as np
import pytest

from engine.base import audio
from engine.base.errors import StudioError
from tests.helpers.audio_tracks import click_track, envelope, tone_track, write_wav

SR = audio.SAMPLE_RATE


@pytest.fixture(scope="module")
def clicks(tmp_path_factory):
    samples, beats = click_track(6.0, 120.0)
    path = write_wav(tmp_path_factory.mktemp("audio") / "clicks.wav", samples, SR)
    return audio.decode(path), beats


def test_decode_reads_any_rate_and_channel_count_to_mono_float(tmp_path):
    tone, _ = tone_track(1.0, 44100, freq=440)
    stereo = np.stack([tone, tone], axis=1)
    track = audio.decode(write_wav(tmp_path / "stereo.wav", stereo, 44100))
    assert track.sample_rate == SR and track.samples.dtype == np.float32
    assert track.duration == pytest.approx(1.0, abs=1e-3)
    reference, _ = tone_track(1.0, SR, freq=440)
    # Resampled and downmixed, the tone is the same tone (16-bit and filter tails aside).
    middle = slice(1000, SR - 1000)
    assert np.abs(track.samples[middle] - reference[middle]).max() < 0.02
    assert not track.truncated


def test_decode_reads_compressed_formats(tmp_path):
    tone, _ = tone_track(1.0, SR)
    wav = write_wav(tmp_path / "tone.wav", tone, SR)
    flac = tmp_path / "tone.flac"
    subprocess.run([audio.ffmpeg_exe(), "-v", "error", "-i", str(wav), str(flac)], check=True)
    assert np.array_equal(audio.decode(flac).samples, audio.decode(wav).samples)  # lossless


def test_duration_is_bounded_and_says_so(tmp_path, monkeypatch):
    tone, _ = tone_track(3.0, SR)
    path = write_wav(tmp_path / "long.wav", tone, SR)
    monkeypatch.setenv("STUDIO_MAX_AUDIO_SECONDS", "2")
    track = audio.decode(path)
    assert track.truncated and len(track.samples) == 2 * SR


@pytest.mark.parametrize("case, words", [
    ("text", "not an audio file this studio can read"),
    ("empty", "is empty"),
    ("video", "it has no audio stream"),
    ("playlist", "not an audio file this studio can read"),
    ("folder", "audio file"),
    ("big", "STUDIO_MAX_AUDIO_BYTES"),
])
def test_hostile_or_non_audio_files_get_one_sentence(tmp_path, monkeypatch, case, words):
    path = tmp_path / "song.wav"
    if case == "text":
        path.write_text("not a song\n" * 100)
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "video":  # a video file with pictures and no sound
        from engine.base.video import write_video
        path = write_video([np.zeros((16, 16, 3), np.uint8)] * 4, tmp_path / "silent.mp4")
    elif case == "playlist":  # an HLS playlist naming a local file: never followed
        tone, _ = tone_track(0.5, SR)
        write_wav(tmp_path / "secret.wav", tone, SR)
        path = tmp_path / "song.m3u8"
        path.write_text("#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1,\nsecret.wav\n"
                        "#EXT-X-ENDLIST\n")
    elif case == "folder":
        path.mkdir()
    elif case == "big":
        tone, _ = tone_track(1.0, SR)
        write_wav(path, tone, SR)
        monkeypatch.setenv("STUDIO_MAX_AUDIO_BYTES", "1000")
    with pytest.raises(StudioError) as err:
        audio.decode(path)
    message = str(err.value)
    assert words in message and "\n" not in message, message
    assert str(tmp_path) not in message or case in ("folder", "big"), message


def test_loudness_follows_the_known_envelope():
    samples, _ = tone_track(5.0, SR)
    track = audio.AudioTrack(samples.astype(np.float32), SR)
    fps = 25
    features = audio.analyse(track, fps)
    assert features.frames == 125
    centres = (np.arange(features.frames) + 0.5) / fps
    expected = envelope(centres)
    assert np.corrcoef(features.loudness, expected)[0, 1] > 0.999
    # Scaled to the track's maximum, the loudness is the envelope itself (within a frame's
    # variation of the envelope).
    assert np.abs(features.loudness - expected / expected.max()).max() < 0.03
    assert features.loudness.max() == pytest.approx(1.0)


def test_bands_separate_bass_mid_and_treble():
    t = np.arange(3 * SR) / SR
    freq = np.where(t < 1, 80.0, np.where(t < 2, 1000.0, 7000.0))
    samples = (0.5 * np.sin(2 * np.pi * np.cumsum(freq) / SR)).astype(np.float32)
    features = audio.analyse(audio.AudioTrack(samples, SR), 10)
    thirds = [slice(2, 8), slice(12, 18), slice(22, 28)]  # away from the switches
    for band, own in (("bass", 0), ("mid", 1), ("treble", 2)):
        values = getattr(features, band)
        assert values[thirds[own]].min() > 0.8, band
        for other in {0, 1, 2} - {own}:
            assert values[thirds[other]].max() < 0.05, (band, other)


def test_onsets_land_on_the_beats(clicks):
    track, beats = clicks
    features = audio.analyse(track, 30)
    found = features.onset_times
    assert len(found) == len(beats), (found, beats)
    assert np.abs(found - beats).max() < 0.012  # within 12 ms of each beat
    # Per frame: 1 on the frame each beat falls in, 0 elsewhere.
    assert sorted(np.flatnonzero(features.onset)) == sorted(set(np.floor(found * 30).astype(int)))


@pytest.mark.parametrize("bpm", [90.0, 120.0, 150.0])
def test_tempo_from_the_onset_autocorrelation(bpm, tmp_path):
    samples, _ = click_track(8.0, bpm, seed=int(bpm))
    track = audio.AudioTrack(samples.astype(np.float32), SR)
    assert audio.analyse(track, 30).tempo == pytest.approx(bpm, rel=0.015)


def test_silence_and_a_steady_tone_have_no_onsets_or_tempo():
    silence = audio.AudioTrack(np.zeros(2 * SR, np.float32), SR)
    features = audio.analyse(silence, 24)
    assert features.tempo == 0.0 and len(features.onset_times) == 0
    assert not features.loudness.any() and not features.bass.any()
    t = np.arange(3 * SR) / SR
    steady = audio.AudioTrack((0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), SR)
    assert len(audio.analyse(steady, 24).onset_times) <= 1  # at most its start


def test_frame_features_are_what_audio_mappings_read(clicks):
    track, _ = clicks
    features = audio.analyse(track, 30, frames=12)
    assert features.frames == 12
    at = features.at(7)
    assert set(at) == set(audio.FEATURES)
    assert all(0.0 <= v <= 1.0 for v in at.values())
    from engine.recipes.mappings import AUDIO_FEATURES
    assert set(AUDIO_FEATURES) == set(audio.FEATURES)
    with pytest.raises(StudioError, match="fps must be positive"):
        audio.analyse(track, 0)


def test_fifo_is_refused_unopened(tmp_path):
    fifo = tmp_path / "song.wav"
    os.mkfifo(fifo)
    with pytest.raises(StudioError, match="audio file"):
        audio.decode(fifo)
