"""Audio analysis for music videos: decode any audio file, then loudness, bands, onsets, tempo.

Decoding runs the ffmpeg binary that imageio-ffmpeg ships (no torchaudio, no librosa): mono
float32 PCM at `SAMPLE_RATE`, bounded in file size (STUDIO_MAX_AUDIO_BYTES) and duration
(STUDIO_MAX_AUDIO_SECONDS: a longer track is read up to the limit and says so). ffmpeg may
open only the common audio and video containers and only the local file, so a playlist or a
concat list dressed as a song cannot make it read other files or the network.

`analyse` gives per-video-frame features, each 0..1 (divided by the track's maximum):

- loudness: RMS of the samples inside each frame's interval [k/fps, (k+1)/fps);
- bass / mid / treble: the amplitude (square root of the power) in 20-250 Hz, 250-4000 Hz
  and 4000 Hz up, from a 2048-sample Hann STFT, read at each frame's centre;
- onset: 1 on the frames where an onset falls. Onsets are peaks of the spectral flux (the
  summed increase of log magnitude between 1024-sample STFT frames 256 apart) that are the
  largest within +-35 ms, stand above the local mean by `ONSET_DELTA` (flux scaled to 0..1)
  and follow the previous onset by at least 100 ms;
- tempo: the lag of the strongest autocorrelation of the flux between 40 and 240 beats a
  minute, weighted towards 120 (a log-normal prior one octave wide, as beat trackers do to
  choose between a tempo and its double or half), refined by a parabola through the peak.
"""

from __future__ import annotations

import math
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.base.errors import StudioError
from engine.base.limits import current_limits

SAMPLE_RATE = 22050
AUDIO_FORMATS = ("wav", "w64", "mp3", "flac", "ogg", "aac", "aiff", "caf", "wv", "matroska",
                 "webm", "mov", "mp4", "m4a", "3gp")  # the demuxers ffmpeg may open
DECODE_TIMEOUT_S = 180
BANDS = {"bass": (20.0, 250.0), "mid": (250.0, 4000.0), "treble": (4000.0, None)}
FEATURES = ("loudness", "bass", "mid", "treble", "onset")
BAND_FFT, BAND_HOP = 2048, 512
ONSET_FFT, ONSET_HOP = 1024, 256
ONSET_DELTA = 0.07          # how far above the local mean flux a peak must stand (0..1 scale)
ONSET_PEAK_S = 0.035        # a peak is the largest flux within this many seconds each side
ONSET_MEAN_S = 0.12         # the local mean spans this many seconds each side
ONSET_MIN_GAP_S = 0.1       # onsets at least this far apart
TEMPO_RANGE_BPM = (40.0, 240.0)
TEMPO_PRIOR_BPM = 120.0
TEMPO_BLUR_S = 0.02
SPECTRUM_CHUNK = 2048       # STFT frames transformed at once (bounds memory on long tracks)


@dataclass
class AudioTrack:
    """Mono PCM: float32 samples in -1..1."""
    samples: np.ndarray
    sample_rate: int
    name: str = ""
    truncated: bool = False  # the file is longer than STUDIO_MAX_AUDIO_SECONDS

    @property
    def duration(self) -> float:
        return len(self.samples) / self.sample_rate


@dataclass
class AudioFeatures:
    """Per-video-frame features (arrays of `frames` values, each 0..1), onsets and tempo."""
    fps: float
    loudness: np.ndarray
    bass: np.ndarray
    mid: np.ndarray
    treble: np.ndarray
    onset: np.ndarray
    onset_times: np.ndarray   # seconds
    tempo: float              # beats a minute (0 when the track has no pulse)

    @property
    def frames(self) -> int:
        return len(self.loudness)

    def at(self, frame: int) -> dict[str, float]:
        """The features of one frame, by name (the audio sources of engine.recipes.mappings)."""
        return {name: float(getattr(self, name)[frame]) for name in FEATURES}


def ffmpeg_exe() -> str:
    import imageio_ffmpeg  # lazy: only audio and video need ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def decode(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE,
           max_seconds: float | None = None) -> AudioTrack:
    """The audio of `path` as mono float32 at `sample_rate`; StudioError in one sentence for
    a file that is too big, not audio, or without an audio stream."""
    from engine.base.files import regular_file_size

    limits = current_limits()
    path = Path(path)
    name = path.name  # messages name the file, not where a server keeps it
    size = regular_file_size(path, "audio file")
    if size > limits.audio_bytes:
        raise StudioError(f"The audio file {name} is {size / 2**20:.1f} MiB, above the limit "
                          f"of {limits.audio_bytes / 2**20:.1f} MiB (STUDIO_MAX_AUDIO_BYTES).")
    if size == 0:
        raise StudioError(f"The audio file {name} is empty.")
    seconds = float(limits.audio_seconds if max_seconds is None
                     else min(max_seconds, limits.audio_seconds))
    command = [ffmpeg_exe(), "-nostdin", "-v", "error", "-protocol_whitelist", "file",
               "-format_whitelist", ",".join(AUDIO_FORMATS), "-i", str(path),
               "-map", "0:a:0", "-vn", "-sn", "-dn", "-ac", "2", "-ar", str(sample_rate),
               "-t", f"{seconds + 1.0 / sample_rate:.6f}", "-f", "f32le", "pipe:1"]
    try:
        done = subprocess.run(command, capture_output=True, timeout=DECODE_TIMEOUT_S,
                              check=False)
    except subprocess.TimeoutExpired:
        raise StudioError(f"Decoding {name} took over {DECODE_TIMEOUT_S} s; try a shorter "
                          f"or simpler file.") from None
    if done.returncode != 0:
        raise StudioError(f"{name} is not an audio file this studio can read "
                          f"({_last_line(done.stderr)}).")
    # Two channels, averaged here: ffmpeg's own mono downmix adds L and R at -3 dB each, so
    # a centred sound would come out 1.41 times louder than it is.
    pairs = np.frombuffer(done.stdout[: len(done.stdout) // 8 * 8], dtype="<f4")
    samples = pairs.reshape(-1, 2).mean(axis=1)
    if samples.size == 0:
        raise StudioError(f"{name} holds no audio.")
    limit = int(round(seconds * sample_rate))
    truncated = samples.size > limit
    samples = np.nan_to_num(samples[:limit].astype(np.float32), nan=0.0, posinf=0.0,
                            neginf=0.0)
    return AudioTrack(np.clip(samples, -1.0, 1.0), sample_rate, name, truncated)


def _last_line(stderr: bytes) -> str:
    lines = [x.strip() for x in stderr.decode("utf-8", "replace").splitlines() if x.strip()]
    if not lines:
        return "ffmpeg failed"
    if any("matches no streams" in x for x in lines):
        return "it has no audio stream"
    # ffmpeg ends with 'Error opening input files: <why>': the why is the useful part.
    return lines[-1].rsplit(": ", 1)[-1][:200].rstrip(".")


# ----------------------------------------------------------------------------------------
# Spectra.


def _magnitudes(x: np.ndarray, n_fft: int, hop: int) -> Iterator[np.ndarray]:
    """|STFT| of x in chunks of frames [frames, n_fft // 2 + 1]; frame j is centred on
    sample j * hop (the signal is zero-padded by half a window at each end)."""
    from numpy.lib.stride_tricks import sliding_window_view
    from scipy.signal import get_window

    padded = np.pad(x.astype(np.float32), (n_fft // 2, n_fft // 2))
    frames = sliding_window_view(padded, n_fft)[::hop]  # a view: nothing copied yet
    window = get_window("hann", n_fft).astype(np.float32)
    for start in range(0, len(frames), SPECTRUM_CHUNK):
        yield np.abs(np.fft.rfft(frames[start:start + SPECTRUM_CHUNK] * window, axis=1))


def band_envelopes(track: AudioTrack) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(frame times in seconds, {band: amplitude per STFT frame})."""
    freqs = np.fft.rfftfreq(BAND_FFT, 1.0 / track.sample_rate)
    masks = {name: (freqs >= lo) & (freqs < (hi or np.inf)) for name, (lo, hi) in BANDS.items()}
    out: dict[str, list[np.ndarray]] = {name: [] for name in BANDS}
    for mag in _magnitudes(track.samples, BAND_FFT, BAND_HOP):
        power = mag.astype(np.float64) ** 2
        for name, mask in masks.items():
            out[name].append(np.sqrt(power[:, mask].sum(axis=1)))
    envelopes = {name: np.concatenate(parts) for name, parts in out.items()}
    times = np.arange(len(envelopes["bass"])) * BAND_HOP / track.sample_rate
    return times, envelopes


def onset_envelope(track: AudioTrack) -> np.ndarray:
    """Spectral flux per onset frame (frame j at j * ONSET_HOP samples), scaled to 0..1."""
    flux, previous = [], None
    for mag in _magnitudes(track.samples, ONSET_FFT, ONSET_HOP):
        log_mag = np.log1p(100.0 * mag)
        before = np.vstack([log_mag[:1] if previous is None else previous, log_mag[:-1]])
        flux.append(np.maximum(log_mag - before, 0.0).sum(axis=1))
        previous = log_mag[-1:]
    env = np.concatenate(flux)
    top = env.max(initial=0.0)
    return env / top if top > 0 else env


def pick_onsets(env: np.ndarray, frame_rate: float) -> np.ndarray:
    """Frame indices of the onsets in a flux envelope (peak picking as the module says)."""
    from scipy.ndimage import maximum_filter1d, uniform_filter1d

    if env.size == 0:
        return np.zeros(0, dtype=int)
    peak = max(1, int(round(ONSET_PEAK_S * frame_rate)))
    mean = max(1, int(round(ONSET_MEAN_S * frame_rate)))
    gap = max(1, int(round(ONSET_MIN_GAP_S * frame_rate)))
    is_max = env >= maximum_filter1d(env, 2 * peak + 1, mode="nearest")
    local_mean = uniform_filter1d(env, 2 * mean + 1, mode="nearest")
    candidates = np.flatnonzero(is_max & (env >= local_mean + ONSET_DELTA) & (env > 0))
    onsets: list[int] = []
    for j in candidates:
        if not onsets or j - onsets[-1] >= gap:
            onsets.append(int(j))
    return np.asarray(onsets, dtype=int)


def estimate_tempo(env: np.ndarray, frame_rate: float) -> float:
    """Beats a minute from the autocorrelation of an onset envelope (0: no pulse)."""
    from scipy.ndimage import gaussian_filter1d

    # Blurred by ~20 ms first: a beat period that is not a whole number of frames puts the
    # peaks one frame apart alternately, which would favour the period's double.
    x = gaussian_filter1d(env, TEMPO_BLUR_S * frame_rate) if env.size else env
    x = x - x.mean() if x.size else x
    lo_bpm, hi_bpm = TEMPO_RANGE_BPM
    min_lag = int(math.floor(60.0 * frame_rate / hi_bpm))
    max_lag = int(math.ceil(60.0 * frame_rate / lo_bpm))
    if x.size <= max_lag + 1 or not np.any(x):
        return 0.0
    size = 1 << int(math.ceil(math.log2(2 * x.size)))
    spectrum = np.fft.rfft(x, size)
    acf = np.fft.irfft(spectrum * np.conj(spectrum), size)[: max_lag + 2]
    acf /= acf[0]
    lags = np.arange(min_lag, max_lag + 1)
    bpm = 60.0 * frame_rate / lags
    prior = np.exp(-0.5 * np.log2(bpm / TEMPO_PRIOR_BPM) ** 2)
    scores = acf[lags] * prior
    best = int(np.argmax(scores))
    if scores[best] <= 0:
        return 0.0
    lag = float(lags[best])
    if 0 < best < len(lags) - 1:  # a parabola through the peak and its neighbours
        a, b, c = acf[lags[best] - 1], acf[lags[best]], acf[lags[best] + 1]
        if a - 2 * b + c < 0:
            lag += 0.5 * (a - c) / (a - 2 * b + c)
    return 60.0 * frame_rate / lag


# ----------------------------------------------------------------------------------------
# Per video frame.


def _normalised(values: np.ndarray) -> np.ndarray:
    top = float(values.max(initial=0.0))
    return (values / top).astype(np.float32) if top > 0 else values.astype(np.float32)


def frame_loudness(track: AudioTrack, fps: float, frames: int) -> np.ndarray:
    """RMS of the samples in each video frame's interval (unscaled)."""
    edges = np.round(np.arange(frames + 1) * track.sample_rate / fps).astype(np.int64)
    edges = np.minimum(edges, len(track.samples))
    squares = np.concatenate([[0.0], np.cumsum(track.samples.astype(np.float64) ** 2)])
    counts = np.maximum(edges[1:] - edges[:-1], 1)
    return np.sqrt((squares[edges[1:]] - squares[edges[:-1]]) / counts)


def analyse(track: AudioTrack, fps: float, frames: int | None = None) -> AudioFeatures:
    """Features for `frames` video frames at `fps` (default: the whole track)."""
    if not fps > 0:
        raise StudioError(f"fps must be positive, got {fps}")
    if frames is None:
        frames = max(1, int(math.ceil(track.duration * fps)))
    centres = (np.arange(frames) + 0.5) / fps
    band_times, envelopes = band_envelopes(track)
    bands = {name: _normalised(np.interp(centres, band_times, env, right=0.0))
             for name, env in envelopes.items()}
    onset_rate = track.sample_rate / ONSET_HOP
    env = onset_envelope(track)
    # The flux of a centred Hann window rises fastest a quarter window before the attack
    # reaches its centre: the attack itself is that much later.
    onset_times = pick_onsets(env, onset_rate) / onset_rate + ONSET_FFT / 4 / track.sample_rate
    onset = np.zeros(frames, dtype=np.float32)
    hit = np.floor(onset_times * fps).astype(int)
    onset[hit[hit < frames]] = 1.0
    return AudioFeatures(fps=float(fps),
                         loudness=_normalised(frame_loudness(track, fps, frames)),
                         bass=bands["bass"], mid=bands["mid"], treble=bands["treble"],
                         onset=onset, onset_times=onset_times,
                         tempo=estimate_tempo(env, onset_rate))
