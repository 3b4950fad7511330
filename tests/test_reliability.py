"""Reliability under bad input and faults: hostile uploads, corrupted checkpoints, a full
disk while saving, and memory that stays flat across many sessions.

Every bad upload must give a one-sentence StudioError or the right picture; every corrupted
checkpoint must give a CheckpointError or exactly the original weights (never silently wrong
ones); a failed save must leave the previous model loadable. The load test with concurrent
clients lives in benchmarks/load_test.py.
"""

from __future__ import annotations

import errno
import gc
import os
import random
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine.base.errors import CheckpointError, StudioError
from engine.gan import checkpoints
from engine.gan.checkpoints import load_generator, save_generator, sidecar_path
from studio import uploads
from tests.conftest import make_tiny_generator

# ----------------------------------------------------------------------------------------
# Uploads.


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def _bomb_png(path: Path, side: int = 20000) -> None:
    """A real 1-bit side x side PNG: ~50 MB of pixels that compress to a few tens of KB."""
    row = b"\x00" + b"\x00" * ((side + 7) // 8)  # filter byte + packed bits
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
                     + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b""))


def _noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.RandomState(seed).randint(0, 255, (h, w, 3), np.uint8)


@pytest.mark.parametrize("kind, words", [
    ("empty.png", "empty"),
    ("truncated.png", "damaged or truncated"),
    ("truncated.jpg", "damaged or truncated"),
    ("text.png", "not an image"),
    ("header-only.png", "not an image|damaged or truncated"),
    ("bomb.png", "pixel limit"),
    ("lying-header.png", "pixel limit"),
])
def test_bad_uploads_give_one_sentence(tmp_path, kind, words):
    path = tmp_path / kind
    if kind == "empty.png":
        path.write_bytes(b"")
    elif kind.startswith("truncated"):
        Image.fromarray(_noise(96, 96)).save(path, quality=95)
        data = path.read_bytes()
        path.write_bytes(data[:len(data) * 2 // 3])
    elif kind == "text.png":
        path.write_text("<html>definitely not a picture</html>")
    elif kind == "header-only.png":
        Image.fromarray(_noise(8, 8)).save(path)
        path.write_bytes(path.read_bytes()[:20])
    elif kind == "bomb.png":
        _bomb_png(path)
        assert path.stat().st_size < 1_000_000  # small on disk, 400 MP when decoded
    else:  # a normal 8x8 PNG whose header is edited to claim 20000x20000
        Image.fromarray(_noise(8, 8)).save(path)
        data = bytearray(path.read_bytes())
        ihdr = bytes(data[12:16]) + struct.pack(">II", 20000, 20000) + bytes(data[24:29])
        data[16:24] = ihdr[4:12]
        data[29:33] = struct.pack(">I", zlib.crc32(ihdr) & 0xFFFFFFFF)
        path.write_bytes(bytes(data))
    with pytest.raises(StudioError, match=words) as info:
        uploads.open_image(str(path))
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message


def test_upload_larger_than_the_byte_limit_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.fromarray(_noise(64, 64)).save(path)
    monkeypatch.setattr(uploads, "MAX_UPLOAD_BYTES", 1000)
    with pytest.raises(StudioError, match="MiB limit"):
        uploads.open_image(str(path))


def test_odd_but_valid_images_read_correctly(tmp_path):
    # 16-bit greyscale: scaled to 8 bits, not clipped to white.
    grey16 = np.tile(np.linspace(0, 65535, 16).astype(np.uint16), (4, 1))
    Image.fromarray(grey16).save(tmp_path / "g16.png")
    got = np.asarray(uploads.open_image(str(tmp_path / "g16.png")))
    assert got.shape == (4, 16, 3)
    assert np.abs(got[0, :, 0].astype(int) - (grey16[0] // 256)).max() <= 1

    # 16-bit RGB (48 bits per pixel).
    rgb16 = (np.arange(4 * 4 * 3).reshape(4, 4, 3) * 1000).astype(">u2")
    png = _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 4, 16, 2, 0, 0, 0))
    raw = b"".join(b"\x00" + rgb16[y].tobytes() for y in range(4))
    (tmp_path / "rgb48.png").write_bytes(b"\x89PNG\r\n\x1a\n" + png + _png_chunk(
        b"IDAT", zlib.compress(raw)) + _png_chunk(b"IEND", b""))
    got = np.asarray(uploads.open_image(str(tmp_path / "rgb48.png")))
    assert got.shape == (4, 4, 3)
    assert np.abs(got.astype(int) - (rgb16.astype(int) >> 8)).max() <= 1

    # CMYK JPEG: pure cyan ink comes back cyan.
    Image.new("CMYK", (16, 16), (255, 0, 0, 0)).save(tmp_path / "cmyk.jpg", quality=95)
    r, g, b = uploads.open_image(str(tmp_path / "cmyk.jpg")).getpixel((8, 8))
    assert r < 30 and g > 225 and b > 225

    # Palette, with and without a transparent index.
    pal = Image.new("P", (4, 4), 1)
    pal.putpalette([0, 0, 0, 200, 10, 20] + [0] * 762)
    pal.save(tmp_path / "pal.png")
    assert uploads.open_image(str(tmp_path / "pal.png")).getpixel((0, 0)) == (200, 10, 20)
    pal.save(tmp_path / "pal-t.png", transparency=1)
    assert uploads.open_image(str(tmp_path / "pal-t.png")).getpixel((0, 0)) == (255, 255, 255)

    # RGBA half transparent: blended onto white; LA likewise.
    Image.new("RGBA", (4, 4), (0, 0, 0, 128)).save(tmp_path / "rgba.png")
    r, g, b = uploads.open_image(str(tmp_path / "rgba.png")).getpixel((1, 1))
    assert 120 <= r <= 135 and r == g == b
    Image.new("LA", (4, 4), (0, 0)).save(tmp_path / "la.png")
    assert uploads.open_image(str(tmp_path / "la.png")).getpixel((0, 0)) == (255, 255, 255)

    # Tiny 1x1 and a large-but-allowed picture.
    Image.new("RGB", (1, 1), (1, 2, 3)).save(tmp_path / "one.png")
    one = uploads.open_image(str(tmp_path / "one.png"))
    assert one.size == (1, 1) and one.getpixel((0, 0)) == (1, 2, 3)
    # A 12 MP photo is read shrunk to the working size (4 MP, aspect kept; 61cd5a2).
    Image.new("RGB", (4000, 3000), (9, 9, 9)).save(tmp_path / "big.jpg")
    big = uploads.open_image(str(tmp_path / "big.jpg"))
    assert big.size == (2364, 1773) and big.size[0] * big.size[1] <= uploads.WORKING_PIXELS
    assert np.abs(np.asarray(big).astype(int) - 9).max() <= 2


def test_animated_gif_uses_its_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:],
                   duration=50, loop=0)
    with Image.open(tmp_path / "anim.gif") as im:
        assert im.n_frames == 3
        im.seek(2)  # an image object left on a later frame still gives frame 0
        got = uploads.open_image(im)
    assert got.mode == "RGB"
    first = uploads.open_image(str(tmp_path / "anim.gif"))
    assert first.getpixel((4, 4)) == (255, 0, 0)


@pytest.mark.parametrize("orientation, size, red_at", [
    (1, (40, 20), (5, 10)),    # as stored: red on the left
    (3, (40, 20), (35, 10)),   # 180 degrees: red on the right
    (6, (20, 40), (10, 5)),    # shown rotated 90 clockwise: the left edge becomes the top
    (8, (20, 40), (10, 35)),   # shown rotated 90 anticlockwise: the left edge, the bottom
])
def test_exif_rotated_photos_are_turned_upright(tmp_path, orientation, size, red_at):
    im = Image.new("RGB", (40, 20), (0, 0, 255))
    im.paste((255, 0, 0), (0, 0, 20, 20))  # left half red, right half blue
    exif = im.getexif()
    exif[0x0112] = orientation
    im.save(tmp_path / "photo.jpg", exif=exif, quality=95)
    got = uploads.open_image(str(tmp_path / "photo.jpg"))
    assert got.size == size
    r, g, b = got.getpixel(red_at)
    assert r > 200 and b < 60


# ----------------------------------------------------------------------------------------
# Hostile checkpoints: random byte flips.


def _flip(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        i = rng.randrange(len(out))
        out[i] ^= 1 << rng.randrange(8)
    return bytes(out)


def _same_weights(G, ref: dict[str, torch.Tensor]) -> bool:
    sd = G.state_dict()
    return sd.keys() == ref.keys() and all(torch.equal(sd[k], ref[k]) for k in ref)


def _fuzz(path: Path, variants: int, seed: int, ref: dict[str, torch.Tensor],
          target: Path | None = None) -> dict[str, int]:
    """Load `variants` bit-flipped copies of `target` (default `path`); tally the outcomes."""
    target = target or path
    original = target.read_bytes()
    rng = random.Random(seed)
    tally = {"refused": 0, "identical": 0}
    try:
        for _ in range(variants):
            target.write_bytes(_flip(original, rng))
            try:
                G = load_generator(path)
            except CheckpointError as exc:
                assert "\n" not in str(exc)
                tally["refused"] += 1
                continue
            # Loading is only acceptable when nothing that matters changed.
            assert _same_weights(G, ref), "a corrupted checkpoint loaded different weights"
            tally["identical"] += 1
    finally:
        target.write_bytes(original)
    return tally


def test_bit_flipped_safetensors_and_sidecars_never_load_wrong_weights(tmp_path):
    G = make_tiny_generator(3)
    path = tmp_path / "model.safetensors"
    save_generator(G, path, source="fuzz")
    ref = {k: v.clone() for k, v in load_generator(path).state_dict().items()}
    tally = _fuzz(path, 40, seed=1, ref=ref)
    assert tally["refused"] == 40  # the sha256 in the sidecar catches every flip
    side = _fuzz(path, 15, seed=2, ref=ref, target=sidecar_path(path))
    assert side["refused"] + side["identical"] == 15
    assert _same_weights(load_generator(path), ref)  # the restored pair still loads


def test_sidecar_config_edit_is_caught_by_the_embedded_config(tmp_path):
    import json

    path = tmp_path / "model.safetensors"
    save_generator(make_tiny_generator(0), path)
    side = json.loads(sidecar_path(path).read_text())
    side["config"]["mapping_lr_mul"] = 0.03  # same shapes, different model
    sidecar_path(path).write_text(json.dumps(side))
    with pytest.raises(CheckpointError, match="differs"):
        load_generator(path)


def test_bit_flipped_rosinality_checkpoints_are_refused(tmp_path):
    from tests.helpers.nvlabs_pickles import to_rosinality

    G = make_tiny_generator(4)
    path = tmp_path / "ros.pt"
    torch.save({"g_ema": to_rosinality(G), "latent_avg": G.mapping.w_avg.clone()}, path)
    ref = {k: v.clone() for k, v in load_generator(path).state_dict().items()}
    tally = _fuzz(path, 40, seed=5, ref=ref)
    # torch.load itself ignores the zip CRCs; the reader checks them, so flips in tensor
    # data are refused instead of loading as silently wrong weights.
    assert tally["refused"] + tally["identical"] == 40 and tally["refused"] >= 30


# ----------------------------------------------------------------------------------------
# Disk full while saving.


def _enospc(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("fault", ["tensor write", "sidecar write", "every rename",
                                   "last rename"])
def test_disk_full_while_saving_keeps_the_previous_model(tmp_path, monkeypatch, fault):
    import safetensors.torch

    path = tmp_path / "model.safetensors"
    old = make_tiny_generator(0)
    save_generator(old, path, source="old")
    ref = {k: v.clone() for k, v in old.state_dict().items()}
    before = sorted(p.name for p in tmp_path.iterdir())

    if fault == "tensor write":
        real_save = safetensors.torch.save_file

        def half_write(state, filename, metadata=None):
            real_save(state, filename, metadata=metadata)
            with open(filename, "r+b") as f:  # the disk filled up half way through
                f.truncate(os.path.getsize(filename) // 2)
            _enospc()
        monkeypatch.setattr(safetensors.torch, "save_file", half_write)
    elif fault == "sidecar write":
        monkeypatch.setattr(Path, "write_text", _enospc)
    elif fault == "every rename":
        monkeypatch.setattr(checkpoints.os, "replace", _enospc)
    else:
        real_replace = os.replace

        def fail_tensor_rename(src, dst):
            if str(dst).endswith(".safetensors"):
                _enospc()
            real_replace(src, dst)
        monkeypatch.setattr(checkpoints.os, "replace", fail_tensor_rename)

    with pytest.raises(OSError) as info:
        save_generator(make_tiny_generator(1), path, source="new")
    assert info.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no temp files left
    assert _same_weights(load_generator(path), ref)


# ----------------------------------------------------------------------------------------
# Memory: many sessions created and dropped.


def _rss_mb() -> float:
    psutil = pytest.importorskip("psutil")
    return psutil.Process().memory_info().rss / 2**20


def test_200_sessions_leave_memory_flat(tmp_path, monkeypatch):
    """Sessions as the studio makes them (session.new_session), rendered through studio.render
    and the zoo's LRU, then dropped: RSS after 200 must stay near RSS after a warm-up."""
    from engine.models import zoo
    from engine.tools.bending import Bend, ChannelSelection
    from studio import render
    from studio.session import new_session

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    model = tmp_path / "tiny.safetensors"
    save_generator(make_tiny_generator(0), model)
    ops = [("rotate", {"angle": 30.0}), ("multiply", {"factor": 1.5}),
           ("invert", {}), ("translate", {"x_shift": 0.2})]
    layers = ["b8.conv1", "b16.conv0", "b32.conv1"]

    def one_session(i: int) -> None:
        op, params = ops[i % len(ops)]
        sess = new_session(str(model))
        sess.recipe.latent.seed = float(i)
        sess.recipe.bends.append(Bend(layer=layers[i % len(layers)], op=op,
                                      params=dict(params),
                                      channels=ChannelSelection(mode="random", fraction=0.5,
                                                                seed=i)))
        assert render.render(sess).size == (32, 32)
        assert render.render(sess, with_bends=False).size == (32, 32)

    try:
        for i in range(30):  # warm up allocator, model LRU and caches
            one_session(i)
        gc.collect()
        before = _rss_mb()
        for i in range(200):
            one_session(1000 + i)
        gc.collect()
        after = _rss_mb()
        assert len(zoo.loaded_models()) <= 3
    finally:
        zoo.clear_cache()
    assert after - before < 40, f"RSS grew by {after - before:.1f} MiB over 200 sessions"


def test_model_lru_stays_bounded(tmp_path, monkeypatch):
    from engine.models import zoo

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("ACTIVATION_STUDIO_MAX_MODELS", "2")
    zoo.clear_cache()
    try:
        for i in range(5):
            path = tmp_path / f"m{i}.safetensors"
            save_generator(make_tiny_generator(i), path)
            zoo.load(str(path))
            assert len(zoo.loaded_models()) <= 2
    finally:
        zoo.clear_cache()


# ----------------------------------------------------------------------------------------
# Isolation under (light) load: the benchmark's check at a small scale.


def test_concurrent_clients_get_their_own_renders(monkeypatch):
    """3 gradio_client users at once, each with its own seed and bend, through a real
    server: every image equals that user's solo render (benchmarks/load_test.py, scaled
    down; the full 8 x 25 run is the benchmark)."""
    import importlib.util

    pytest.importorskip("gradio_client")
    repo = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("load_test",
                                                  repo / "benchmarks" / "load_test.py")
    load_test = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "load_test", load_test)  # dataclasses look it up
    spec.loader.exec_module(load_test)
    assert load_test.main(["--clients", "3", "--requests", "4"]) == 0
