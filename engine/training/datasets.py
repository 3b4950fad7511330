"""Training data: image datasets of procedural faces (engine.training.faces, optionally one
trait of them) or of a folder or .zip of pictures, read with bounded size and cost.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from engine.base.errors import StudioError
from engine.training.faces import face_pool, face_traits, render_faces

__all__ = [
    "FACE_VARIANTS",
    "IMAGE_SUFFIXES",
    "DatasetError",
    "ImageDataset",
    "LoadedPictures",
    "load_image_folder",
    "zip_entry_count",
    "load_pictures",
    "make_dataset",
    "variant_seeds",
]

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp"})


# ----------------------------------------------------------------------------- datasets


class ImageDataset(torch.utils.data.Dataset):
    """uint8 [N, H, W, 3] images served as float32 [3, H, W] tensors in [-1, 1].

    With ``xflip=True`` the dataset has 2N items: item ``N + i`` is item ``i`` mirrored
    left-right (deterministic, as in StyleGAN2-ADA, so any sampler works).
    """

    def __init__(self, images: np.ndarray, xflip: bool = False) -> None:
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(
                "images must be a uint8 array of shape [N, H, W, 3]; "
                f"got {images.dtype} {images.shape}."
            )
        if len(images) == 0:
            raise ValueError("images must hold at least one image.")
        self.images = images
        self.xflip = bool(xflip)
        self.description = f"{len(images)} pictures"  # what the data is, for model cards
        self.notes: list[str] = []                     # sentences for the user (skipped files)

    @property
    def resolution(self) -> int:
        return int(self.images.shape[1])

    def __len__(self) -> int:
        return len(self.images) * (2 if self.xflip else 1)

    def __getitem__(self, index: int) -> torch.Tensor:
        n = len(self.images)
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        img = self.images[index % n]
        if index >= n:
            img = img[:, ::-1]
        return _to_tensor(np.ascontiguousarray(img)[None])[0]

    def batch(self, indices: Sequence[int] | np.ndarray) -> torch.Tensor:
        """A float32 [B, 3, H, W] batch at once, faster than a DataLoader for small images."""
        idx = np.asarray(indices, dtype=np.int64) % len(self)
        n = len(self.images)
        imgs = self.images[idx % n]
        flip = idx >= n
        if flip.any():
            imgs[flip] = imgs[flip][:, :, ::-1]  # imgs is a fancy-indexed copy, safe to edit
        return _to_tensor(imgs)


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    return t.to(torch.float32).div_(127.5).sub_(1.0)


class DatasetError(StudioError, ValueError):
    """Training pictures that cannot be used: missing, none readable, too few, too big."""


# Hostile-input bounds: a picture file, a decoded picture, and the whole decoded dataset.
MAX_PICTURE_BYTES = 64 * 2**20
MAX_PICTURE_PIXELS = 80_000_000           # about 9000 x 9000
MAX_DATASET_BYTES = 6 * 2**30             # decoded uint8 pixels held in memory
MAX_PICTURE_FILES = 200_000
FITS = ("crop", "pad")


@dataclass
class LoadedPictures:
    """Pictures read from a folder or zip, squared and resized, with what was skipped."""
    images: np.ndarray                               # uint8 [N, res, res, 3]
    source: str                                      # the folder or zip as given
    files: int                                       # picture files found
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (name, why)

    def skipped_sentence(self) -> str | None:
        """One sentence about unreadable files, or None when every file was read."""
        if not self.skipped:
            return None
        name, why = self.skipped[0]
        return (f"Skipped {len(self.skipped)} of {self.files} picture files that could not be "
                f"read (first: {name}: {why}).")


def _picture_names(root: Path) -> list[str]:
    if root.is_dir():
        names = [str(p.relative_to(root)) for p in root.rglob("*")
                 if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    else:
        with zipfile.ZipFile(root) as zf:
            names = [i.filename for i in zf.infolist() if not i.is_dir()
                     and Path(i.filename).suffix.lower() in IMAGE_SUFFIXES]
    # macOS archive litter: resource forks named like pictures, never pictures themselves.
    return sorted(n for n in names if "__MACOSX" not in Path(n).parts
                  and not Path(n).name.startswith("._"))


def zip_entry_count(path: str | Path) -> int:
    """How many entries a zip's end record says it holds: at least its pictures, read from
    its last 64 KiB without listing them (listing 50,000 names takes ~30 MB)."""
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(max(0, size - (1 << 16) - 22))
        tail = f.read()
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) < at + 12:
        raise DatasetError(f"{Path(path).name} is not a zip file this studio can read.")
    entries = struct.unpack("<H", tail[at + 10:at + 12])[0]
    if entries == 0xFFFF:  # zip64: the count is in another record; list the names instead
        try:
            with zipfile.ZipFile(path) as zf:
                return len(zf.infolist())
        except (zipfile.BadZipFile, OSError) as exc:
            raise DatasetError(f"{Path(path).name} is a damaged zip file ({exc}).") from exc
    return entries


def _read_bytes(root: Path, zf: zipfile.ZipFile | None, name: str) -> bytes:
    """A picture file's bytes, refusing one over MAX_PICTURE_BYTES before reading it all."""
    if zf is not None:
        info = zf.getinfo(name)
        if info.file_size > MAX_PICTURE_BYTES:
            raise ValueError(f"over {MAX_PICTURE_BYTES // 2**20} MB")
        with zf.open(info) as f:  # checks the CRC, so a damaged member raises BadZipFile
            data = f.read(MAX_PICTURE_BYTES + 1)
    else:
        with open(root / name, "rb") as f:
            data = f.read(MAX_PICTURE_BYTES + 1)
    if len(data) > MAX_PICTURE_BYTES:  # a zip entry that lied about its size
        raise ValueError(f"over {MAX_PICTURE_BYTES // 2**20} MB")
    return data


def load_pictures(source: str | Path, resolution: int, fit: str = "crop",
                  progress: Callable[[int, int], None] | None = None) -> LoadedPictures:
    """Every picture in a folder (recursive) or a .zip, squared (`fit`: 'crop' the centre or
    'pad' with the border colour) and resized to `resolution`: uint8 [N, res, res, 3].

    Unreadable, damaged or oversized files are skipped and listed; no readable picture at all
    is a DatasetError. Memory is bounded: file sizes, decoded sizes and the whole decoded set
    are checked before they are read.
    """
    if fit not in FITS:
        raise DatasetError(f"fit must be one of {', '.join(FITS)}; got {fit!r}.")
    root = Path(source).expanduser()
    is_zip = root.is_file() and zipfile.is_zipfile(root)
    if not root.is_dir() and not is_zip:
        raise DatasetError(f"{str(source)!r} is neither a folder of pictures nor a .zip of them.")
    try:
        names = _picture_names(root)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DatasetError(f"{root.name} is a damaged zip file ({exc}).") from exc
    if not names:
        raise DatasetError(f"{str(source)!r} contains no images "
                           f"(looked for {', '.join(sorted(IMAGE_SUFFIXES))}).")
    if len(names) > MAX_PICTURE_FILES:
        raise DatasetError(f"{str(source)!r} holds {len(names)} pictures, more than the limit "
                           f"of {MAX_PICTURE_FILES}; train on a subset.")
    need = len(names) * resolution * resolution * 3
    if need > MAX_DATASET_BYTES:
        raise DatasetError(f"{len(names)} pictures at {resolution} px need "
                           f"{need / 2**30:.1f} GB of memory, over the limit of "
                           f"{MAX_DATASET_BYTES / 2**30:.0f} GB; train on fewer pictures.")
    out = np.empty((len(names), resolution, resolution, 3), np.uint8)
    kept, skipped = 0, []
    zf = zipfile.ZipFile(root) if is_zip else None
    try:
        for i, name in enumerate(names):
            try:
                data = _read_bytes(root, zf, name)
                with warnings.catch_warnings():  # we check the pixel count ourselves
                    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                    with Image.open(io.BytesIO(data)) as im:
                        w, h = im.size
                        if w * h > MAX_PICTURE_PIXELS:
                            raise ValueError(f"{w}x{h} pixels is over the limit of "
                                             f"{MAX_PICTURE_PIXELS // 1_000_000} megapixels")
                        im.draft("RGB", (resolution, resolution))  # JPEG: decode smaller
                        out[kept] = square_rgb(im, resolution, fit=fit)
                kept += 1
            except (OSError, ValueError, zipfile.BadZipFile, Image.DecompressionBombError,
                    EOFError, SyntaxError) as exc:  # what Pillow raises for bad files
                skipped.append((name, _short(exc)))
            if progress is not None:
                progress(i + 1, len(names))
    finally:
        if zf is not None:
            zf.close()
    if kept == 0:
        raise DatasetError(f"{str(source)!r} contains no readable images: all {len(names)} "
                           f"picture files failed (first: {skipped[0][0]}: {skipped[0][1]}).")
    return LoadedPictures(out[:kept].copy() if kept < len(names) else out, str(source),
                          len(names), skipped)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:120].rstrip(".")


def load_image_folder(path: str | Path, resolution: int) -> np.ndarray:
    """Every image under ``path`` (recursive), centre-cropped and resized: uint8 [N, H, W, 3]."""
    loaded = load_pictures(path, resolution)
    if loaded.skipped:
        warnings.warn(loaded.skipped_sentence() or "", stacklevel=2)
    return loaded.images


def square_rgb(im: Image.Image, resolution: int, fit: str = "crop") -> np.ndarray:
    """uint8 [res, res, 3]: EXIF upright, transparency on white, RGB, made square (`fit`
    'crop': the centre square; 'pad': the whole picture on its mean border colour), resized
    with Lanczos. Training folders and projected photos both go through it."""
    im = ImageOps.exif_transpose(im)
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        # Put transparent pixels on white rather than on whatever colour they hide.
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(bg, rgba)
    im = im.convert("RGB")
    w, h = im.size
    if fit == "pad" and w != h:
        pixels = np.asarray(im)
        border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
        colour = tuple(int(c) for c in border.mean(0).round())
        # Resize first, then pad at the target size: padding first would build a
        # max(w, h)^2 canvas (a 40000x1 picture: 4.8 GB).
        scale = resolution / max(w, h)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        im = im.resize(size, Image.Resampling.LANCZOS)
        canvas = Image.new("RGB", (resolution, resolution), colour)
        canvas.paste(im, ((resolution - size[0]) // 2, (resolution - size[1]) // 2))
        return np.asarray(canvas, dtype=np.uint8).copy()
    else:
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        im = im.crop((left, top, left + side, top + side))
    if side != resolution:
        im = im.resize((resolution, resolution), Image.Resampling.LANCZOS)
    return np.asarray(im, dtype=np.uint8).copy()


# Procedural variants for fine-tuning experiments: a subset of the faces by trait.
FACE_VARIANTS: dict[str, Callable[[dict[str, object]], bool]] = {
    "glasses": lambda t: t["glasses"] is not None,
    "no-glasses": lambda t: t["glasses"] is None,
    "bald": lambda t: t["hair_style"] == "bald",
    "long-hair": lambda t: t["hair_style"] == "long",
    "grin": lambda t: t["mouth"] == "grin",
}


def variant_seeds(variant: str, count: int, first_seed: int = 0) -> list[int]:
    """The first `count` face seeds from `first_seed` on whose traits fit `variant`."""
    if variant not in FACE_VARIANTS:
        raise DatasetError(f"Unknown face variant {variant!r}; choose from "
                           f"{', '.join(FACE_VARIANTS)}.")
    keep, seeds, seed = FACE_VARIANTS[variant], [], first_seed
    while len(seeds) < count:
        if keep(face_traits(seed)):
            seeds.append(seed)
        seed += 1
        if seed - first_seed > 100 * count + 1000:
            raise DatasetError(f"The variant {variant!r} is too rare to find {count} faces.")
    return seeds


def make_dataset(data: str, resolution: int, count: int = 30000, xflip: bool = False,
                 fit: str = "crop", progress: Callable[[int, int], None] | None = None
                 ) -> ImageDataset:
    """``data`` is "faces" (``count`` procedural faces), "faces:VARIANT" (``count`` faces with
    one trait, e.g. faces:glasses; see FACE_VARIANTS), a folder or a .zip of pictures.

    The dataset carries `description` (for model cards) and `notes` (e.g. skipped files).
    """
    if data == "faces":
        ds = ImageDataset(face_pool(count, resolution, progress=progress), xflip=xflip)
        ds.description = f"procedural faces (engine.training.faces, {count}-face pool)"
        return ds
    if data.startswith("faces:"):
        variant = data.split(":", 1)[1]
        seeds = variant_seeds(variant, count)
        ds = ImageDataset(render_faces(seeds, resolution), xflip=xflip)
        ds.description = f"procedural faces, variant {variant!r} ({count} faces)"
        return ds
    path = Path(data).expanduser()
    if path.is_dir() or (path.is_file() and zipfile.is_zipfile(path)):
        loaded = load_pictures(path, resolution, fit=fit, progress=progress)
        ds = ImageDataset(loaded.images, xflip=xflip)
        kind = "zip" if path.is_file() else "folder"
        ds.description = (f"{len(loaded.images)} pictures from the {kind} {path.name} "
                          f"({fit} to square)")
        note = loaded.skipped_sentence()
        ds.notes = [note] if note else []
        return ds
    raise DatasetError(f"data must be 'faces', 'faces:VARIANT', an existing folder or a .zip "
                       f"of pictures; got {data!r}.")
