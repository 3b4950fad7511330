"""Portable recipes: a recipe and every file it names, in one zip.

A recipe names some inputs by path on the machine that made it: the picture a translator
reads, the encoder, an uploaded checkpoint, a boundary file, a model to blend with. Those
paths mean nothing elsewhere. A bundle stores each such file once, named by its content
hash plus its file name (`inputs/<sha256[:16]>-<name>`; an encoder keeps its sidecar beside
it in `inputs/<sha256[:16]>-<folder>/`), and its recipe.json names them so. Reading a bundle
extracts them into a folder (names checked, every size declared in the zip checked before
anything is read, and checked again while reading) and points the recipe at the copies, so
the same recipe renders the same image bit for bit on any machine.

    python -m engine render bundle.zip --out image.png
"""

from __future__ import annotations

import hashlib
import os
import re
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.base.errors import StudioError
from engine.base.limits import current_limits

RECIPE_NAME = "recipe.json"
INPUTS = "inputs"
MAX_MEMBERS = 64                          # files in one bundle
MAX_RECIPE_BYTES = 2 * 2**20              # its recipe.json
_MEMBER = re.compile(r"^inputs/[0-9a-f]{16}-[\w.-]{1,120}(/[\w.-]{1,120})?$")


def _sha16(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def _safe_name(name: str) -> str:
    return re.sub(r"[^\w.-]", "_", name)[:120] or "file"


def _is_local_model(spec: str | None) -> bool:
    if not spec:
        return False
    from engine.models import zoo
    try:
        resolved = zoo.resolve(spec)
    except StudioError:
        return False
    return resolved.kind == "local" and resolved.entry is None


def _file_fields(recipe: Any) -> list[tuple[str, Callable[[], str | None], Callable[[str], None]]]:
    """(kind, get, set) for every field of `recipe` that names a file on this machine."""
    fields: list[tuple[str, Callable[[], Any], Callable[[str], None]]] = []
    if _is_local_model(recipe.model):
        fields.append(("file", lambda: recipe.model, lambda v: setattr(recipe, "model", v)))
    tr = recipe.translator
    if tr is not None:
        if tr.image:
            fields.append(("file", lambda: tr.image, lambda v: setattr(tr, "image", v)))
        if tr.encoder and not tr.encoder.startswith("hf://"):
            fields.append(("encoder", lambda: tr.encoder, lambda v: setattr(tr, "encoder", v)))
    for d in recipe.latent.directions:
        if getattr(d, "path", None):
            fields.append(("file", lambda d=d: d.path, lambda v, d=d: setattr(d, "path", v)))
    blend = getattr(recipe, "blend", None)
    if blend is not None and _is_local_model(blend.model):
        fields.append(("file", lambda: blend.model, lambda v: setattr(blend, "model", v)))
    return fields


def save_bundle(recipe: Any, out: str | os.PathLike) -> Path:
    """Write `recipe` and the files it names to the zip `out`; returns its path."""
    import copy

    from engine.tools.translator import sidecar_path

    portable = copy.deepcopy(recipe)
    members: dict[str, Path] = {}
    for kind, get, put in _file_fields(portable):
        path = Path(get())
        if not path.is_file():
            raise StudioError(f"the recipe names {path.name}, which is not on this machine "
                              f"any more; it cannot go into a bundle.")
        key = f"{INPUTS}/{_sha16(path)}-"
        if kind == "encoder":  # the weights and the sidecar that describes them
            folder = key + _safe_name(path.parent.name)
            members[f"{folder}/{_safe_name(path.name)}"] = path
            side = sidecar_path(path)
            if side.is_file():
                members[f"{folder}/{_safe_name(side.name)}"] = side
            put(f"{folder}/{_safe_name(path.name)}")
        else:
            members[key + _safe_name(path.name)] = path
            put(key + _safe_name(path.name))
    out = Path(out)
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as z:
        z.writestr(RECIPE_NAME, portable.to_json())
        for name, path in sorted(members.items()):
            z.write(path, name)
    return out


def is_bundle(path: str | os.PathLike) -> bool:
    return zipfile.is_zipfile(path)


def read_bundle(path: str | os.PathLike, into: str | os.PathLike,
                max_bytes: int | None = None) -> Any:
    """The bundle's recipe, its files extracted under `into` and named there. Nothing is
    left under `into` when the bundle is refused."""
    from engine.recipes.recipe import Recipe

    limit = current_limits().bundle_bytes if max_bytes is None else max_bytes
    into = Path(into)
    written: list[Path] = []
    try:
        with zipfile.ZipFile(path) as z:
            infos = _checked_members(z, limit)
            recipe = Recipe.from_json(_read_recipe(z).decode("utf-8"))
            budget = _Budget(limit)
            for info in infos:
                target = into / info.filename
                target.parent.mkdir(parents=True, exist_ok=True)
                written.append(target)
                _extract_member(z, info, target, budget)
    except (zipfile.BadZipFile, KeyError, UnicodeDecodeError, OSError, EOFError) as exc:
        _remove(written, into)
        raise StudioError(f"{Path(path).name} is not a recipe bundle this studio can read "
                          f"({type(exc).__name__}); save the bundle again.") from exc
    except BaseException:
        _remove(written, into)
        raise
    for _, get, put in _file_fields_named(recipe):
        name = get()
        if name.startswith(f"{INPUTS}/"):
            if not _MEMBER.match(name) or not (into / name).is_file():
                raise StudioError(f"the bundle's recipe names {name!r}, which the bundle "
                                  f"does not hold.")
            put(str(into / name))
    return recipe


def _remove(written: list[Path], into: Path) -> None:
    """Delete what a refused bundle wrote: its files, then the folders left empty."""
    for target in written:
        target.unlink(missing_ok=True)
    for target in written:
        for folder in target.parents:
            if folder == into.parent or not folder.is_relative_to(into):
                break
            try:
                folder.rmdir()
            except OSError:  # not empty (another member's) or gone already
                pass


def _file_fields_named(recipe: Any) -> list:
    """Like _file_fields, but for names inside a bundle (they are not on disk yet)."""
    fields = []
    tr = recipe.translator
    if isinstance(recipe.model, str) and recipe.model.startswith(f"{INPUTS}/"):
        fields.append((None, lambda: recipe.model, lambda v: setattr(recipe, "model", v)))
    if tr is not None:
        for attr in ("image", "encoder"):
            if getattr(tr, attr):
                fields.append((None, lambda a=attr: getattr(tr, a),
                               lambda v, a=attr: setattr(tr, a, v)))
    for d in recipe.latent.directions:
        if getattr(d, "path", None):
            fields.append((None, lambda d=d: d.path, lambda v, d=d: setattr(d, "path", v)))
    blend = getattr(recipe, "blend", None)
    if blend is not None and isinstance(blend.model, str):
        fields.append((None, lambda: blend.model, lambda v: setattr(blend, "model", v)))
    return fields


def _checked_members(z: zipfile.ZipFile, limit: int) -> list[zipfile.ZipInfo]:
    """The bundle's input files, after checking names, count and declared sizes."""
    infos = z.infolist()
    names = [i.filename for i in infos]
    if RECIPE_NAME not in names:
        raise StudioError("this zip holds no recipe.json; it is not a recipe bundle.")
    if len(infos) > MAX_MEMBERS:
        raise StudioError(f"the bundle holds {len(infos)} files, more than {MAX_MEMBERS}.")
    inputs = [i for i in infos if i.filename != RECIPE_NAME]
    for info in inputs:
        if not _MEMBER.match(info.filename):
            raise StudioError(f"the bundle holds {info.filename!r}, which is not where a "
                              f"bundle keeps its files.")
    if sum(i.file_size for i in infos) > limit:
        raise StudioError(f"the bundle unpacks to more than {_gib(limit)}, its limit "
                          f"(STUDIO_MAX_BUNDLE_BYTES).")
    return inputs


# A member deflated further than this is refused before reading (a checkpoint deflates about
# 1.1:1, a picture 1:1; a zip bomb of zeros 1000:1). Small members may compress well.
MAX_DEFLATE_RATIO = 50
RATIO_FREE_BYTES = 2**20
CHUNK_BYTES = 2**20


class _Budget:
    """Bytes a bundle may still unpack, counted as they stream (declarations can lie)."""

    def __init__(self, limit: int):
        self.limit, self.left = limit, limit

    def take(self, nbytes: int) -> None:
        self.left -= nbytes
        if self.left < 0:
            raise StudioError(f"the bundle unpacks to more than {_gib(self.limit)}, its "
                              f"limit (STUDIO_MAX_BUNDLE_BYTES).")


def _gib(nbytes: int) -> str:
    return f"{nbytes / 2**30:.1f} GiB" if nbytes >= 2**28 else f"{nbytes / 2**20:.1f} MiB"


def _read_recipe(z: zipfile.ZipFile) -> bytes:
    """recipe.json's bytes (small: held in memory), never more than MAX_RECIPE_BYTES."""
    info = z.getinfo(RECIPE_NAME)
    if info.file_size > MAX_RECIPE_BYTES:
        raise StudioError(f"{RECIPE_NAME} in the bundle is larger than its limit.")
    with z.open(info) as f:
        data = f.read(info.file_size + 1)
    if len(data) != info.file_size:
        raise StudioError(f"{RECIPE_NAME} in the bundle is not the size it declares.")
    return data


def _extract_member(z: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path,
                    budget: _Budget) -> None:
    """Stream one member to `target` in chunks: never more than it declares, nor more than
    the bundle's budget, nor deflated past MAX_DEFLATE_RATIO."""
    ratio = info.file_size / max(info.compress_size, 1)
    if info.file_size > RATIO_FREE_BYTES and ratio > MAX_DEFLATE_RATIO:
        raise StudioError(f"{info.filename} in the bundle unpacks {ratio:.0f} times larger than "
                          f"it is stored, which no model or picture does, so the bundle was "
                          f"not opened.")
    written = 0
    with z.open(info) as src, open(target, "wb") as dst:
        while chunk := src.read(min(CHUNK_BYTES, info.file_size + 1 - written)):
            written += len(chunk)
            if written > info.file_size:
                break
            budget.take(len(chunk))
            dst.write(chunk)
    if written != info.file_size:
        raise StudioError(f"{info.filename} in the bundle is not the size it declares.")
