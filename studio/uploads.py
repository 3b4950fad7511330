"""Reading what users upload: images, recipes, boundaries. Every failure is one sentence.

Uploads come from strangers, so each reader checks size before decoding, refuses files that
are empty, truncated or not what their name claims, and caps the pixel count so a
decompression bomb is refused before it is expanded. Each kind of upload has its own size
limit (pictures and recipes small, checkpoints large); a file over its limit is deleted at
once. Every path goes through studio.files.check_server_file first, so with
STUDIO_SERVER_FILES=studio no request can make the studio read a file it was not given. The
limits come from engine/base/limits.py (environment variables), so a Space can tune them without
a code change.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
import warnings
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps, UnidentifiedImageError

from engine.base.errors import StudioError
from studio import files
from studio.limits import LIMITS, SERVER

# Largest image (in pixels) an upload may decode to; 40 MP holds any phone photo.
MAX_IMAGE_PIXELS = LIMITS.image_pixels
# Largest file (bytes) accepted per kind of upload.
MAX_UPLOAD_BYTES = LIMITS.upload_bytes          # a picture
MAX_RECIPE_BYTES = SERVER.recipe_bytes
MAX_BOUNDARY_BYTES = SERVER.boundary_bytes


def _path_of(upload: Any) -> Path:
    """Gradio hands files over as a path string, a dict with 'path', or an object with .name
    or .path; the path must be one the studio may open (studio.files)."""
    if upload is None:
        raise StudioError("no file was uploaded; choose a file first.")
    if isinstance(upload, dict):
        upload = upload.get("path") or upload.get("name")
    upload = getattr(upload, "path", None) or getattr(upload, "name", upload)
    if not isinstance(upload, (str, Path)) or not str(upload):
        raise StudioError("no file was uploaded; choose a file first.")
    path = files.check_server_file(upload)
    if not path.is_file():
        raise StudioError("the uploaded file could not be found on the server; upload it again.")
    return path


def _check_size(path: Path, limit: int, what: str) -> int:
    size = path.stat().st_size
    if size == 0:
        raise StudioError(f"the uploaded {what} is empty (0 bytes); choose another file.")
    if size > limit:
        files.discard_upload(path)  # never keep what a limit refused
        raise StudioError(f"the uploaded {what} is {size / 2**20:.1f} MiB, more than the "
                          f"{limit / 2**20:.0f} MiB limit; choose a smaller file.")
    return size


def _data_url_bytes(url: str) -> bytes:
    """The bytes of a `data:image/...;base64,` URL, refused by length before decoding."""
    head, _, body = url.partition(",")
    if ";base64" not in head or not body:
        raise StudioError("the picture could not be read; upload a PNG or JPEG.")
    if len(body) * 3 // 4 > MAX_UPLOAD_BYTES:
        raise StudioError(f"the picture is more than the {MAX_UPLOAD_BYTES / 2**20:.0f} MiB "
                          f"limit; choose a smaller file.")
    try:
        return base64.b64decode(body, validate=False)
    except (binascii.Error, ValueError) as exc:
        raise StudioError("the picture could not be read; upload a PNG or JPEG.") from exc


def open_image(image: Any, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """An uploaded image (path, dict, data URL, bytes, numpy array or PIL image) as an RGB
    PIL image: the one reader every picture a request brings goes through.

    EXIF orientation is applied, alpha is flattened onto white, only the first frame of an
    animation is used, and a picture over WORKING_PIXELS is shrunk as it is read (a JPEG
    decodes at a reduced scale). Raises StudioError for anything that is not a readable
    image.
    """
    if image is None:
        raise StudioError("no image was given; upload a picture first.")
    if isinstance(image, Image.Image):
        _check_pixels(*image.size, max_pixels)
        return _shrunk(_to_rgb(image))
    if hasattr(image, "shape") and hasattr(image, "dtype"):  # numpy from gr.Image
        if len(image.shape) >= 2:
            _check_pixels(int(image.shape[1]), int(image.shape[0]), max_pixels)
        try:
            return _shrunk(_to_rgb(Image.fromarray(image)))
        except (TypeError, ValueError) as exc:
            raise StudioError("the picture could not be read; upload a PNG or JPEG.") from exc
    if isinstance(image, str) and image.startswith("data:"):
        image = _data_url_bytes(image)
    if isinstance(image, bytes):
        if not image:
            raise StudioError("the uploaded image is empty (0 bytes); choose another file.")
        if len(image) > MAX_UPLOAD_BYTES:
            raise StudioError(f"the picture is more than the {MAX_UPLOAD_BYTES / 2**20:.0f} "
                              f"MiB limit; choose a smaller file.")
        return _decode(io.BytesIO(image), "the picture", max_pixels)
    path = _path_of(image)
    _check_size(path, MAX_UPLOAD_BYTES, "image")
    return _decode(path, path.name, max_pixels)


# What a request's picture is worked on at: nothing the studio makes from one needs more
# than 1024 px on its short side (encoder inputs, projections, model sides), and a 40 MP
# photo held as floats costs gigabytes, so bigger pictures are shrunk as they are read.
WORKING_PIXELS = 2048 * 2048
WORKING_SHORT_SIDE = 1024


def _working_size(w: int, h: int) -> tuple[int, int] | None:
    """The size a w x h picture is shrunk to on reading, or None to keep it whole."""
    by_pixels = (WORKING_PIXELS / max(1, w * h)) ** 0.5
    by_side = WORKING_SHORT_SIDE / max(1, min(w, h))
    if max(by_pixels, by_side) >= 1:
        return None
    if by_pixels >= by_side:  # rounded down: within the pixel count
        return max(1, int(w * by_pixels)), max(1, int(h * by_pixels))
    return math.ceil(w * by_side), math.ceil(h * by_side)  # rounded up: the short side kept


def _shrunk(im: Image.Image) -> Image.Image:
    working = _working_size(*im.size)
    return im if working is None else im.resize(working, Image.Resampling.LANCZOS)


def _check_pixels(w: int, h: int, max_pixels: int) -> None:
    if w * h > max_pixels:
        raise StudioError(f"the image is {w}x{h} pixels, more than the "
                          f"{max_pixels / 1e6:.0f} megapixel limit; upload a smaller picture.")


def _decode(source: Path | io.BytesIO, name: str, max_pixels: int) -> Image.Image:
    try:
        # Image.open reads only the header, so the size check runs before any decoding
        # (PIL's own bomb warning is ours to give, as a sentence).
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(source) as im:
                _check_pixels(*im.size, max_pixels)
                im.seek(0)
                working = _working_size(*im.size)
                if working is not None:
                    im.draft("RGB", working)  # a JPEG decodes at 1/2..1/8 scale: less memory
                im.load()
                return _shrunk(_to_rgb(im))
    except StudioError:
        raise
    except Image.DecompressionBombError as exc:
        raise StudioError(f"the image is larger than the {max_pixels / 1e6:.0f} megapixel "
                          f"limit; upload a smaller picture.") from exc
    except UnidentifiedImageError as exc:
        raise StudioError(f"{name} is not an image this studio can read; upload a "
                          f"PNG, JPEG or WebP picture.") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise StudioError(f"{name} is damaged or truncated and cannot be read; "
                          f"upload the picture again or choose another.") from exc


def _to_rgb(im: Image.Image) -> Image.Image:
    im = ImageOps.exif_transpose(im) or im
    if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        flat = Image.new("RGB", rgba.size, (255, 255, 255))
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit greyscale: scale to 8 bits instead of clipping everything to white.
        im = im.point(lambda v: v / 256).convert("L")
    return im.convert("RGB")


def read_json(upload: Any, what: str = "recipe") -> dict[str, Any]:
    """An uploaded JSON file as a dict, with a clear sentence when it is not JSON."""
    path = _path_of(upload)
    _check_size(path, MAX_RECIPE_BYTES, what)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as exc:  # also bad UTF-8 and 5000-digit numbers
        raise StudioError(f"{path.name} is not a JSON {what}; upload a .json file saved by the "
                          f"studio or the command line.") from exc
    if not isinstance(data, dict):
        raise StudioError(f"{path.name} holds JSON but not a {what} (expected an object).")
    return data


def upload_path(upload: Any, what: str = "file", limit: int = MAX_BOUNDARY_BYTES) -> Path:
    """The server-side path of an uploaded file after the empty/too-large checks."""
    path = _path_of(upload)
    _check_size(path, limit, what)
    return path
