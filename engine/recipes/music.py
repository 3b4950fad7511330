"""Music videos: a recipe played by an audio track, rendered frame by frame, the track muxed in.

The track is decoded and analysed (`engine.base.audio`: loudness, bass / mid / treble, onsets
per video frame); each frame's features are fed as audio events to an
`engine.recipes.mappings.Performer` of the recipe, whose recipe for that frame's time is
rendered. The recipe's own audio
mappings drive it; a recipe without any gets `default_audio_mappings`: its walk (the
fractional seed) moves at a speed that follows loudness and jumps on onsets, and its bends'
first numeric parameters follow bass, mid and treble in turn. Frames go through
`engine.base.video.write_video` (progress per frame, cancel between frames), then ffmpeg copies the
video stream and encodes the track's matching stretch as AAC beside it. Length is bounded by
STUDIO_MAX_MUSIC_VIDEO_FRAMES (a longer track is cut there, and the result says so).

    python -m engine music-video track.wav --recipe r.json --out v.mp4
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.base import audio
from engine.base.errors import StudioError
from engine.base.limits import above_limit, current_limits
from engine.recipes import mappings

DEFAULT_FPS = 30
WALK_SPEED = 0.6        # seeds a second at full loudness
BEAT_JUMP = 0.35        # seeds an onset adds
BAND_SWING = 0.25       # a band at full moves its parameter this share of the parameter's range
AUDIO_BITRATE = "192k"
MUX_TIMEOUT_S = 300


@dataclass
class MusicVideo:
    """What `music_video` wrote."""
    path: Path
    frames: int
    fps: float
    seconds: float          # the video's (and its audio's) length
    tempo: float            # beats a minute found in the track
    onsets: int             # onsets inside the video
    cut: bool               # the track was longer than the frame limit allows


def default_audio_mappings(recipe: Any) -> list[dict[str, Any]]:
    """Audio mappings for a recipe that has none: a walk and band-driven bends."""
    out: list[dict[str, Any]] = []
    if recipe.latent.w is None:  # a saved W+ overrides the seed: nothing to walk
        seed = float(recipe.latent.seed)
        if seed + 1000 < mappings.MAX_SEED:
            out.append({"name": "walk", "target": "latent.seed", "mode": "rate",
                        "source": {"kind": "audio", "feature": "loudness"},
                        "out": [0.0, WALK_SPEED], "attack": 0.05, "release": 0.3})
            out.append({"name": "beat", "target": "latent.seed", "mode": "add",
                        "source": {"kind": "audio", "feature": "onset"},
                        "out": [0.0, BEAT_JUMP], "attack": 0.04, "release": 0.04})
    bands = ("bass", "mid", "treble")
    driven = 0
    for i, bend in enumerate(recipe.bends):
        param = _first_numeric_param(bend) if bend.enabled else None
        if param is None:
            continue
        info = mappings.field_info(recipe, f"bends.{i}.params.{param}")
        span = (info.hi - info.lo) if info.lo is not None and info.hi is not None else 2.0
        top = info.clamp(info.current + BAND_SWING * span)
        if top == info.current:  # at the top of its range: swing downwards
            top = info.clamp(info.current - BAND_SWING * span)
        band = bands[driven % len(bands)]
        out.append({"name": f"{band}{i}", "target": info.path,
                    "source": {"kind": "audio", "feature": band},
                    "out": [info.current, float(top)], "attack": 0.03, "release": 0.25})
        driven += 1
    return out[:current_limits().mappings]


def _first_numeric_param(bend: Any) -> str | None:
    from engine.tools.bending import OPERATIONS

    op = OPERATIONS.get(bend.op)
    if op is None:
        return None
    for spec in op.params:
        if spec.type == "float" and spec.name != "seed":
            return spec.name
    return None


def _audio_recipe(recipe: Any) -> Any:
    """The recipe with only its audio mappings (the defaults when it has none)."""
    played = copy.deepcopy(recipe)
    own = [m for m in played.mappings if (m.get("source") or {}).get("kind") == "audio"]
    played.mappings = own or default_audio_mappings(played)
    return played


def _frame_count(track: audio.AudioTrack, fps: float, start: float,
                 frames: int | None) -> tuple[int, bool]:
    """(frames to render, whether the limit cut the track short): `frames` (default: the
    rest of the track from `start`), never past the track's end."""
    limit = current_limits().music_video_frames
    if frames is not None:
        why = above_limit("music_video_frames", frames)
        if why:
            raise StudioError(f"frames: {why}")
        if frames < 1:
            raise StudioError(f"frames: {frames} must be 1 or more")
    whole = int(math.ceil((track.duration - start) * fps - 1e-9))
    if whole < 1:
        raise StudioError(f"start: {start:g} s is at or past the end of the track "
                          f"({track.duration:.2f} s)")
    if frames is not None:
        return min(frames, whole), False
    return min(whole, limit), whole > limit


def frames_for(recipe: Any, features: audio.AudioFeatures, model: Any,
               size: int | None = None) -> Iterator[np.ndarray]:
    """uint8 frames of `recipe` played by `features` (one per feature frame), `size` (else
    the recipe's output_size) applied by the recipe's own renderer, which checks it."""
    from engine.recipes.recipe import recipe_frames

    if size is not None:
        recipe = copy.copy(recipe)
        recipe.output_size = int(size)
    return recipe_frames(_played_frames(recipe, features), model)


def _played_frames(recipe: Any, features: audio.AudioFeatures) -> Iterator[Any]:
    """The recipe for each feature frame: the frame's audio events fed to its mappings."""
    performer = mappings.Performer(recipe)
    for k in range(features.frames):
        for feature, value in features.at(k).items():
            performer.feed({"kind": "audio", "feature": feature, "value": value})
        yield performer.frame(k / features.fps)


def music_video(recipe: Any, track_path: str | os.PathLike, out: str | os.PathLike,
                fps: float = DEFAULT_FPS, frames: int | None = None, start: float = 0.0,
                model: Any = None, progress: Callable[[int], Any] | None = None,
                cancel: Any = None, size: int | None = None) -> MusicVideo:
    """Render `recipe` played by the track at `track_path` into the .mp4 `out`, with the
    track's stretch from `start` seconds muxed in. progress(i) after frame i; `cancel`
    (callable, Event or bool) stops between frames and leaves no file."""
    from engine.base.files import atomic_write
    from engine.base.video import write_video

    out = Path(out)
    if out.suffix.lower() != ".mp4":
        raise StudioError(f"cannot write {out.name}: a music video is an .mp4")
    why = above_limit("video_fps", fps)
    if why or not fps > 0:
        raise StudioError(f"fps: {why or f'{fps} must be positive'}")
    longest = current_limits().audio_seconds
    if not (isinstance(start, int | float) and math.isfinite(start)
            and 0 <= start < longest):
        raise StudioError(f"start: {start!r} must be from 0 to under {longest} seconds "
                          f"(STUDIO_MAX_AUDIO_SECONDS, the longest track read)")
    if model is None:
        from engine.models import zoo

        model = zoo.load(recipe.model)
    from engine.recipes.recipe import validate

    if size is not None:  # the recipe's own size check, before any work
        recipe = copy.copy(recipe)
        recipe.output_size = size
    validate(recipe, model)  # every mapping, audio or not: a bad one is named before work
    track = audio.decode(track_path)
    frame_count, cut = _frame_count(track, fps, start, frames)
    first = int(round(start * track.sample_rate))
    part = audio.AudioTrack(track.samples[first:], track.sample_rate, track.name)
    features = audio.analyse(part, fps, frame_count)
    played = _audio_recipe(recipe)
    seconds = frame_count / fps

    def write(tmp: Path) -> None:
        silent = tmp.with_name(tmp.stem + ".video.mp4")
        try:
            write_video(frames_for(played, features, model), silent, fps=fps,
                        progress=progress, cancel=cancel)
            _mux(silent, Path(track_path), start, seconds, tmp)
        finally:
            silent.unlink(missing_ok=True)

    atomic_write(out, write)
    inside = features.onset_times[features.onset_times < seconds]
    return MusicVideo(out, frame_count, float(fps), seconds, features.tempo, len(inside), cut)


def _mux(video: Path, track: Path, start: float, seconds: float, out: Path) -> None:
    """Copy the video stream and encode the track from `start` for `seconds` as AAC."""
    command = [audio.ffmpeg_exe(), "-nostdin", "-v", "error", "-y", "-i", str(video),
               "-protocol_whitelist", "file", "-format_whitelist",
               ",".join(audio.AUDIO_FORMATS), "-ss", f"{start:.6f}", "-t", f"{seconds:.6f}",
               "-i", str(track), "-map", "0:v:0", "-map", "1:a:0", "-c:v", "copy",
               "-c:a", "aac", "-b:a", AUDIO_BITRATE, "-t", f"{seconds:.6f}",
               "-movflags", "+faststart", "-f", "mp4", str(out)]
    try:
        done = subprocess.run(command, capture_output=True, timeout=MUX_TIMEOUT_S,
                              check=False)
    except subprocess.TimeoutExpired:
        raise StudioError(f"adding the audio took over {MUX_TIMEOUT_S} s") from None
    if done.returncode != 0:
        raise StudioError(f"adding the audio to the video failed "
                          f"({audio._last_line(done.stderr)})")


# ----------------------------------------------------------------------------------------
# Command line.


def _cmd_music_video(args: argparse.Namespace) -> None:
    import sys

    from tqdm import tqdm

    from engine.recipes.recipe import Recipe

    recipe = Recipe.load(args.recipe) if args.recipe else Recipe()
    if args.model:
        recipe.model = args.model
    with tqdm(total=args.frames, unit="frame", desc="music video") as bar:
        made = music_video(recipe, args.track, args.out, fps=args.fps, frames=args.frames,
                           start=args.start, progress=lambda i: bar.update(1),
                           size=args.size)
    if made.cut:
        print(f"note: the track is longer than {made.frames} frames allow "
              f"(STUDIO_MAX_MUSIC_VIDEO_FRAMES); the video stops there", file=sys.stderr)
    print(f"wrote {made.path} ({made.frames} frames, {made.seconds:.2f} s at {made.fps:g} "
          f"fps, tempo {made.tempo:.1f} bpm, {made.onsets} onsets)")


def add_cli(sub: Any) -> None:
    p = sub.add_parser("music-video", help="render an audio-reactive video of a recipe, the "
                                           "track muxed in")
    p.add_argument("track", help="audio file (wav, mp3, flac, ogg, m4a, ... or a video's "
                                 "audio)")
    p.add_argument("--recipe", help="recipe .json; its audio mappings drive it (without "
                                    "any: a walk on loudness and beats, bends on the bands)")
    p.add_argument("--out", required=True, help="output .mp4")
    p.add_argument("--fps", type=float, default=DEFAULT_FPS, help="frames per second")
    p.add_argument("--frames", type=int, help="number of frames (default: the whole track)")
    p.add_argument("--start", type=float, default=0.0, help="start this many seconds in")
    p.add_argument("--size", type=int, help="resize frames to this many pixels a side")
    p.add_argument("--model", help="override the recipe's model spec")
    p.set_defaults(func=_cmd_music_video)
