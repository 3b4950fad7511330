"""Tests for engine.training.datasets: procedural faces, pools, folders and the torch dataset."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine.training import faces
from engine.training.datasets import ImageDataset, load_image_folder, make_dataset
from engine.training.faces import face_pool, face_traits, render_face, render_faces
from tests.helpers.memory import peak_rss_mb, reset_peak_rss


@pytest.fixture(scope="module")
def faces64() -> np.ndarray:
    return render_faces(range(64), 64)


def test_render_face_shape_and_dtype() -> None:
    for res in (32, 64):
        img = render_face(1, res)
        assert img.shape == (res, res, 3)
        assert img.dtype == np.uint8


def test_render_face_is_deterministic() -> None:
    assert np.array_equal(render_face(7), render_face(7))
    assert not np.array_equal(render_face(7), render_face(8))


def test_render_faces_matches_render_face(faces64: np.ndarray) -> None:
    assert faces64.shape == (64, 64, 64, 3) and faces64.dtype == np.uint8
    assert np.array_equal(faces64[5], render_face(5))


def test_faces_vary(faces64: np.ndarray) -> None:
    # Background corner and the hair/top-of-head region must differ a lot between faces.
    corner = faces64[:, :5, :5].reshape(64, -1, 3).mean(axis=1)
    hair = faces64[:, 10:15, 26:38].reshape(64, -1, 3).mean(axis=1)
    assert corner.std(axis=0).mean() > 25
    assert hair.std(axis=0).mean() > 25
    # Whole images are far apart too, not just shifted copies of one face.
    flat = faces64.reshape(64, -1).astype(np.float32)
    assert np.abs(flat[1:] - flat[:-1]).mean() > 20


def test_traits_cover_every_part() -> None:
    traits = [face_traits(i) for i in range(200)]
    glasses = sum(t["glasses"] is not None for t in traits)
    assert 20 < glasses < 100  # about a quarter
    assert {t["hair_style"] for t in traits} == {
        "short",
        "long",
        "bob",
        "curly",
        "spiky",
        "bun",
        "bald",
        "fringe",
    }
    assert {t["mouth"] for t in traits} == {"smile", "neutral", "frown", "open", "grin"}
    assert all(-8.0 <= t["angle"] <= 8.0 for t in traits)
    assert face_traits(3) == face_traits(3)


def test_face_pool_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, int]] = []
    pool = face_pool(
        6, 32, first_seed=10, cache_dir=tmp_path, progress=lambda d, t: calls.append((d, t))
    )
    assert pool.shape == (6, 32, 32, 3) and pool.dtype == np.uint8
    assert np.array_equal(pool[2], render_face(12, 32))
    assert calls[-1] == (6, 6)
    files = list(tmp_path.iterdir())
    assert [f.name for f in files] == [f"faces-32-10-6-v{faces.VERSION}.npy"]

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("the cached pool should have been read, not rendered")

    monkeypatch.setattr(faces, "render_face", boom)
    again = face_pool(6, 32, first_seed=10, cache_dir=tmp_path)
    assert np.array_equal(pool, again)


def _write_images(folder: Path) -> None:
    # Non-square: red bands left and right of a blue square, so the centre crop is blue.
    wide = np.zeros((20, 40, 3), np.uint8)
    wide[:, :10] = (255, 0, 0)
    wide[:, 10:30] = (0, 0, 255)
    wide[:, 30:] = (255, 0, 0)
    Image.fromarray(wide).save(folder / "a_wide.png")
    # RGBA, fully transparent: should land on white, not on black.
    Image.new("RGBA", (24, 24), (0, 0, 0, 0)).save(folder / "b_rgba.png")
    sub = folder / "nested"
    sub.mkdir()
    Image.new("RGB", (30, 30), (0, 200, 0)).save(sub / "c_green.jpg", quality=95)
    (folder / "notes.txt").write_text("not an image")


def test_load_image_folder(tmp_path: Path) -> None:
    _write_images(tmp_path)
    images = load_image_folder(tmp_path, 16)
    assert images.shape == (3, 16, 16, 3) and images.dtype == np.uint8
    wide, rgba, green = images.astype(int)
    assert wide[..., 2].min() > 200 and wide[..., 0].max() < 40
    assert rgba.min() == 255
    assert abs(green[..., 1].mean() - 200) < 10 and green[..., 0].mean() < 20


def test_load_image_folder_applies_exif_orientation(tmp_path: Path) -> None:
    # 40x20, red top half and blue bottom half; orientation 6 means "rotate 90 degrees
    # clockwise to display", after which red is on the right.
    img = np.zeros((20, 40, 3), np.uint8)
    img[:10] = (255, 0, 0)
    img[10:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(img).save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    out = load_image_folder(tmp_path, 8)[0].astype(int)
    assert out[:, -1, 0].mean() > 200 and out[:, 0, 2].mean() > 200


def test_empty_folder_and_bad_data(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("no pictures here")
    with pytest.raises(ValueError, match="no images"):
        load_image_folder(tmp_path, 16)
    with pytest.raises(ValueError, match="an existing folder or a .zip"):
        make_dataset("not-a-dataset-or-folder", 16)


def test_image_dataset_and_make_dataset(tmp_path: Path) -> None:
    _write_images(tmp_path)
    ds = make_dataset(str(tmp_path), 16)
    assert isinstance(ds, ImageDataset) and len(ds) == 3 and ds.resolution == 16
    x = ds[0]
    assert x.dtype == torch.float32 and x.shape == (3, 16, 16)
    assert x.min() >= -1.0 and x.max() <= 1.0
    assert torch.allclose(ds[1], torch.ones(3, 16, 16))  # white

    pool = np.stack([render_face(i, 16) for i in range(4)])
    flipped = ImageDataset(pool, xflip=True)
    assert len(flipped) == 8
    assert torch.equal(flipped[5], flipped[1].flip(-1))
    batch = flipped.batch([0, 5])
    assert batch.shape == (2, 3, 16, 16)
    assert torch.equal(batch[0], flipped[0]) and torch.equal(batch[1], flipped[5])
    with pytest.raises(ValueError):
        ImageDataset(pool.astype(np.float32))


def test_make_dataset_faces(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(faces, "default_cache_dir", lambda: tmp_path)
    ds = make_dataset("faces", 16, count=5, xflip=True)
    assert len(ds) == 10 and ds[0].shape == (3, 16, 16)
    assert (tmp_path / f"faces-16-0-5-v{faces.VERSION}.npy").is_file()


def test_square_rgb_pad_keeps_the_picture_centred_and_never_builds_the_big_square() -> None:
    from engine.training.datasets import square_rgb

    # A 400x100 red strip on a white 1-pixel frame: padded, it sits as a 64x16 band in the
    # middle of a square filled with the frame's (white) colour.
    im = Image.new("RGB", (400, 100), (255, 255, 255))
    im.paste(Image.new("RGB", (398, 98), (200, 0, 0)), (1, 1))
    out = square_rgb(im, 64, fit="pad")
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    assert (out[:20] > 240).all() and (out[-20:] > 240).all()
    assert abs(int(out[32, 32, 0]) - 200) <= 2 and out[32, 32, 1] <= 3
    # A 40000x1 picture (40 MP, under the pixel cap): padding before resizing built a
    # 40000^2 canvas (4.8 GB); it now costs about the picture itself.
    before = reset_peak_rss(os.getpid())  # an earlier test's peak would hide this one's
    line = square_rgb(Image.new("RGB", (40000, 1), (10, 20, 30)), 64, fit="pad")
    grown_mb = peak_rss_mb(os.getpid()) - before
    assert line.shape == (64, 64, 3) and (line == (10, 20, 30)).all()
    assert grown_mb < 200, grown_mb
