"""Reading what users upload: images, recipes, boundaries. Every failure is one sentence.

Uploads come from strangers, so each reader checks size before decoding, refuses files that
are empty, truncated or not what their name claims, and caps the pixel count so a
decompression bomb is refused before it is expanded. The limits come from engine/limits.py
(environment variables), so a Space can tune them without a code change.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps, UnidentifiedImageError

from engine.errors import StudioError
from studio.limits import LIMITS

# Largest image (in pixels) an upload may decode to; 40 MP holds any phone photo.
MAX_IMAGE_PIXELS = LIMITS.image_pixels
# Largest file (bytes) accepted for an image, a recipe or a boundary.
MAX_UPLOAD_BYTES = LIMITS.upload_bytes
MAX_RECIPE_BYTES = 2 * 1024 * 1024


def _path_of(upload: Any) -> Path:
    """Gradio hands files over as a path string, a dict with 'path', or an object with .name."""
    if upload is None:
        raise StudioError("no file was uploaded; choose a file first.")
    if isinstance(upload, dict):
        upload = upload.get("path") or upload.get("name")
    path = Path(getattr(upload, "name", upload))
    if not path.is_file():
        raise StudioError("the uploaded file could not be found on the server; upload it again.")
    return path


def _check_size(path: Path, limit: int, what: str) -> int:
    size = path.stat().st_size
    if size == 0:
        raise StudioError(f"the uploaded {what} is empty (0 bytes); choose another file.")
    if size > limit:
        raise StudioError(f"the uploaded {what} is {size / 2**20:.1f} MiB, more than the "
                          f"{limit / 2**20:.0f} MiB limit; choose a smaller file.")
    return size


def open_image(image: Any, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """An uploaded image (path, dict, numpy array or PIL image) as an RGB PIL image.

    EXIF orientation is applied, alpha is flattened onto white, and only the first frame of
    an animation is used. Raises StudioError for anything that is not a readable image.
    """
    if image is None:
        raise StudioError("no image was given; upload a picture first.")
    if isinstance(image, Image.Image):
        return _to_rgb(image)
    if hasattr(image, "shape") and hasattr(image, "dtype"):  # numpy from gr.Image
        try:
            return _to_rgb(Image.fromarray(image))
        except (TypeError, ValueError) as exc:
            raise StudioError("the picture could not be read; upload a PNG or JPEG.") from exc
    path = _path_of(image)
    _check_size(path, MAX_UPLOAD_BYTES, "image")
    try:
        # Image.open reads only the header, so the size check runs before any decoding.
        with Image.open(path) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise StudioError(f"the image is {w}x{h} pixels, more than the "
                                  f"{max_pixels / 1e6:.0f} megapixel limit; upload a "
                                  f"smaller picture.")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                im.seek(0)
                im.load()
            return _to_rgb(im)
    except StudioError:
        raise
    except Image.DecompressionBombError as exc:
        raise StudioError("the image is larger than the pixel limit; upload a smaller "
                          "picture.") from exc
    except UnidentifiedImageError as exc:
        raise StudioError(f"{path.name} is not an image this studio can read; upload a "
                          f"PNG, JPEG or WebP picture.") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise StudioError(f"{path.name} is damaged or truncated and cannot be read; "
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
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StudioError(f"{path.name} is not a JSON {what}; upload a .json file saved by the "
                          f"studio or the command line.") from exc
    if not isinstance(data, dict):
        raise StudioError(f"{path.name} holds JSON but not a {what} (expected an object).")
    return data


def upload_path(upload: Any, what: str = "file", limit: int = MAX_UPLOAD_BYTES) -> Path:
    """The server-side path of an uploaded file after the empty/too-large checks."""
    path = _path_of(upload)
    _check_size(path, limit, what)
    return path
