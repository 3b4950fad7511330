"""Synthetic audio tracks whose loudness envelope, band content and beat times are known,
written with numpy and the stdlib wave module (16-bit PCM)."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np


def write_wav(path: Path, samples: np.ndarray, sample_rate: int) -> Path:
    """Write float samples in -1..1 ([n] mono or [n, channels]) as 16-bit PCM."""
    data = np.clip(np.asarray(samples, dtype=np.float64), -1, 1)
    channels = 1 if data.ndim == 1 else data.shape[1]
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(np.round(data * 32767).astype("<i2").tobytes())
    return path


def envelope(t: np.ndarray, period: float = 1.25) -> np.ndarray:
    """The known loudness envelope: 0.15 .. 1, rising and falling every `period` seconds."""
    return 0.15 + 0.85 * np.sin(np.pi * t / period) ** 2


def tone_track(seconds: float, sample_rate: int = 22050, freq: float = 220.0,
               period: float = 1.25) -> tuple[np.ndarray, np.ndarray]:
    """(samples, time of each sample): a tone whose amplitude is `envelope`."""
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    return 0.5 * envelope(t, period) * np.sin(2 * np.pi * freq * t), t


def click_track(seconds: float, bpm: float, sample_rate: int = 22050, first: float = 0.25,
                seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(samples, beat times): decaying noise bursts on every beat over a quiet tone."""
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    x = 0.05 * np.sin(2 * np.pi * 330 * t)
    beats = np.arange(first, seconds - 0.05, 60.0 / bpm)
    rng = np.random.default_rng(seed)
    n = int(0.06 * sample_rate)
    decay = np.exp(-np.arange(n) / (0.012 * sample_rate))
    for b in beats:
        i = int(round(b * sample_rate))
        x[i:i + n] += 0.6 * rng.standard_normal(len(x[i:i + n])) * decay[:len(x[i:i + n])]
    return x, beats
