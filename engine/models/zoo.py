"""The model zoo: a catalogue of Hub checkpoints, download + convert + cache, and an LRU.

A model is named by a *spec*, the same everywhere (`load`, every CLI `--model`, the studio):

- a catalogue id from engine/models/catalogue.json, e.g. `default` (the embedded 64 px model);
- `hf://owner/repo/path/in/repo[@revision]` (or a huggingface.co resolve/blob URL);
- a local file in any checkpoint format engine.gan.checkpoints reads.

Hub files come through `huggingface_hub.hf_hub_download`, so its cache, `HF_HOME`,
`HF_HUB_CACHE`, `HF_HUB_OFFLINE`, `HF_TOKEN` and `HF_ENDPOINT` behave as users expect; we read
those variables at call time (huggingface_hub reads some only at import). Each source file is
converted once into our safetensors + JSON sidecar, stored under
`$HF_HOME/activation-studio/converted/<sha256 of the source>.safetensors`; later loads read
that. `ACTIVATION_STUDIO_PRELOAD_CACHE` names a read-only Hub cache looked in first (a Space's
build-time downloads, when HF_HOME moved to persistent storage). Loaded generators stay in an
LRU bounded by count (`ACTIVATION_STUDIO_MAX_MODELS`, default 3) and bytes
(`ACTIVATION_STUDIO_MAX_MODEL_MB`, default 4096); two callers asking for the same model at once
share one load.

In studio mode (a public server: `STUDIO_SERVER_FILES=studio`, or on a Space) a visitor can
name any Hub file, so: its size is read from the Hub's metadata and refused above
`STUDIO_MAX_CHECKPOINT_BYTES` before a byte is downloaded (and the download is pinned to
the commit that answered, so the file cannot grow in between); the owner's `HF_TOKEN` goes
only to catalogue repositories and those listed in `STUDIO_TOKEN_REPOS`, never to a
visitor's; and downloads plus their conversions are kept within `STUDIO_MAX_HUB_CACHE_BYTES`,
least recently used first.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from engine.base import devices
from engine.base.errors import CheckpointError, StudioError, UnsafePickleError
from engine.base.limits import current_limits, studio_mode
from engine.gan.stylegan2 import Generator, GeneratorConfig, prepare_for_device

Progress = Callable[[float, str], None]

MODELS_DIR = Path(__file__).resolve().parent
CATALOGUE_PATH = MODELS_DIR / "catalogue.json"
DEFAULT_ID = "default"
DEFAULT_MODEL_PATH = MODELS_DIR / "default_model" / "faces64.safetensors"
FORMATS = ("nvlabs-pkl", "tf-pkl", "rosinality-pt", "safetensors")
HF_PREFIX = "hf://"
HUB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}")
HUB_REVISION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,127}")
HUB_URL = re.compile(r"^https?://(?:www\.)?(?:huggingface\.co|hf\.co)/"
                     r"(?P<repo>[^/]+/[^/]+)/(?:resolve|blob)/(?P<rev>[^/]+)/(?P<path>.+)$")
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
ENV_MAX_MODELS = "ACTIVATION_STUDIO_MAX_MODELS"
ENV_MAX_MODEL_MB = "ACTIVATION_STUDIO_MAX_MODEL_MB"
DEFAULT_MAX_MODELS = 3
DEFAULT_MAX_MODEL_MB = 4096
ENV_PRELOAD_CACHE = "ACTIVATION_STUDIO_PRELOAD_CACHE"  # a read-only Hub cache to look in first
ETAG_TIMEOUT_S = 10.0  # seconds to wait for the Hub's metadata answer (HF_HUB_ETAG_TIMEOUT wins)
ENV_TOKEN_REPOS = "STUDIO_TOKEN_REPOS"  # studio mode: more repos HF_TOKEN may open

# Shares of the progress bar: download, then conversion, then moving to the device.
DOWNLOAD_SHARE, CONVERT_SHARE = 0.80, 0.15


# ----------------------------------------------------------------------------------------
# Catalogue.


@dataclass(frozen=True)
class CatalogueEntry:
    """One row of engine/catalogue.json."""
    id: str                    # short name users type, e.g. 'ffhq-512'
    title: str                 # human-readable name for menus
    repo_id: str | None        # Hub repository, None for files shipped with the studio
    filename: str              # path inside the repo (or inside engine/ for local entries)
    format: str                # one of FORMATS (what the file is expected to hold)
    resolution: int            # output size in pixels
    conditional: bool          # needs a class label
    licence: str               # licence of the weights
    description: str           # one line
    verified: bool             # file name confirmed on the Hub (see the catalogue's 'about')
    revision: str | None = None  # pinned revision, None = main
    sha256: str | None = None    # expected sha256 of the downloaded file, when known
    preload: bool = False        # a Space fetches it at build time (README preload_from_hub)

    @property
    def spec(self) -> str:
        """Where the entry points: an hf:// location, or the local file."""
        if self.repo_id is None:
            return str(MODELS_DIR / self.filename)
        rev = f"@{self.revision}" if self.revision else ""
        return f"{HF_PREFIX}{self.repo_id}/{self.filename}{rev}"


REQUIRED_FIELDS = ("id", "title", "repo_id", "filename", "format", "resolution", "conditional",
                   "licence", "description", "verified")

_catalogue_cache: tuple[float, list[CatalogueEntry]] | None = None


def catalogue(path: str | os.PathLike | None = None) -> list[CatalogueEntry]:
    """The catalogue entries in file order ('default' first); re-read when the file changes."""
    global _catalogue_cache
    p = Path(path) if path is not None else CATALOGUE_PATH
    mtime = p.stat().st_mtime
    if path is None and _catalogue_cache is not None and _catalogue_cache[0] == mtime:
        return list(_catalogue_cache[1])
    entries = parse_catalogue(json.loads(p.read_text(encoding="utf-8")))
    if path is None:
        _catalogue_cache = (mtime, entries)
    return list(entries)


def parse_catalogue(data: Any) -> list[CatalogueEntry]:
    """Validate catalogue JSON ({'models': [...]}) and build the entries."""
    rows = data.get("models") if isinstance(data, dict) else None
    if not isinstance(rows, list) or not rows:
        raise StudioError("The model catalogue has no 'models' list.")
    entries, seen = [], set()
    for i, row in enumerate(rows):
        missing = [k for k in REQUIRED_FIELDS if k not in row]
        if missing:
            raise StudioError(f"Catalogue entry {i} lacks the field(s) {', '.join(missing)}.")
        if row["id"] in seen:
            raise StudioError(f"The catalogue lists the id {row['id']!r} twice.")
        if row["format"] not in FORMATS:
            raise StudioError(f"Catalogue entry {row['id']!r} has the unknown format "
                              f"{row['format']!r} (known: {', '.join(FORMATS)}).")
        seen.add(row["id"])
        known = set(CatalogueEntry.__dataclass_fields__)
        entries.append(CatalogueEntry(**{k: v for k, v in row.items() if k in known}))
    if entries[0].id != DEFAULT_ID:
        raise StudioError(f"The first catalogue entry must be {DEFAULT_ID!r}.")
    return entries


def _entry(model_id: str) -> CatalogueEntry | None:
    return next((e for e in catalogue() if e.id == model_id), None)


# ----------------------------------------------------------------------------------------
# Specs.


@dataclass(frozen=True)
class Resolved:
    """Where a spec points. kind: 'local' (a file here) or 'hub' (a Hub file)."""
    id: str                          # the normalised spec (cache key)
    kind: str
    title: str
    path: Path | None = None         # local file
    repo_id: str | None = None       # Hub repository
    filename: str | None = None      # path inside the repo
    revision: str | None = None      # None = main
    entry: CatalogueEntry | None = None


def resolve(spec: str) -> Resolved:
    """Turn a spec (catalogue id, hf://..., Hub URL, local path) into a `Resolved`."""
    spec = str(spec).strip()
    if not spec:
        raise StudioError("No model given: use a catalogue id such as 'default', an "
                          "hf://owner/repo/file location or a checkpoint path.")
    entry = _entry(spec)
    if entry is not None:
        if entry.repo_id is None:
            return Resolved(entry.id, "local", entry.title, path=MODELS_DIR / entry.filename,
                            entry=entry)
        return Resolved(entry.id, "hub", entry.title, repo_id=entry.repo_id,
                        filename=entry.filename, revision=entry.revision, entry=entry)
    m = HUB_URL.match(spec)
    if m:
        spec = f"{HF_PREFIX}{m['repo']}/{m['path']}" + (
            "" if m["rev"] == "main" else f"@{m['rev']}")
    if spec.startswith(HF_PREFIX):
        return _resolve_hf(spec)
    path = Path(spec).expanduser()
    if path.exists():
        path = path.resolve()
        return Resolved(str(path), "local", path.name, path=path)
    ids = ", ".join(e.id for e in catalogue())
    raise StudioError(f"{spec!r} is neither a catalogue id ({ids}), an "
                      f"hf://owner/repo/file location nor an existing file.")


def _resolve_hf(spec: str) -> Resolved:
    body, revision = spec[len(HF_PREFIX):], None
    at = body.rfind("@")
    if at > body.rfind("/"):  # '@rev' after the file name only
        body, revision = body[:at], body[at + 1:] or None
    parts = [p for p in body.split("/") if p]
    if len(parts) < 3:
        raise StudioError(f"{spec!r} is not a Hub file location: write "
                          f"hf://owner/repo/path/to/file.pkl[@revision].")
    repo_id, filename = "/".join(parts[:2]), "/".join(parts[2:])
    # Checked here, before huggingface_hub sees them, so a hostile location ('..', spaces,
    # a revision with a slash) gets our sentence rather than a library's traceback text.
    if (not all(HUB_NAME.fullmatch(p) and ".." not in p for p in parts[:2])
            or any(p in (".", "..") for p in parts[2:])
            or (revision is not None and (not HUB_REVISION.fullmatch(revision)
                                          or ".." in revision))):
        raise StudioError(f"{spec!r} is not a Hub file location: owner and repository names "
                          f"use letters, digits, '-', '_' and '.', and the path no '..'.")
    if revision == "main":
        revision = None
    norm = f"{HF_PREFIX}{repo_id}/{filename}" + (f"@{revision}" if revision else "")
    entry = next((e for e in catalogue() if e.repo_id == repo_id and e.filename == filename
                  and e.revision == revision), None)
    return Resolved(norm, "hub", entry.title if entry else f"{repo_id}/{filename}",
                    repo_id=repo_id, filename=filename, revision=revision, entry=entry)


# ----------------------------------------------------------------------------------------
# Cache locations (read from the environment at call time).


def hf_home() -> Path:
    """`$HF_HOME`, else `$XDG_CACHE_HOME/huggingface`, else ~/.cache/huggingface."""
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(xdg).expanduser() / "huggingface"


def hub_cache_dir() -> Path:
    """The Hub download cache: `$HF_HUB_CACHE`, else `$HF_HOME/hub`."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    return hf_home() / "hub"


def preload_cache_dir() -> Path | None:
    """A second, read-only Hub cache to look in before downloading: the image's own cache,
    where a Space's `preload_from_hub` put files at build time, when HF_HOME was moved to
    persistent storage (studio/storage.py sets it). None when unset or the same folder."""
    value = os.environ.get(ENV_PRELOAD_CACHE)
    if not value:
        return None
    folder = Path(value).expanduser()
    return None if folder.resolve() == hub_cache_dir().resolve() else folder


def _preloaded(r: Resolved) -> str | None:
    """The file in the preload cache, or None (not there, or no such cache)."""
    folder = preload_cache_dir()
    if folder is None or r.repo_id is None or not folder.is_dir():
        return None
    from huggingface_hub import try_to_load_from_cache

    hit = try_to_load_from_cache(r.repo_id, r.filename, cache_dir=str(folder),
                                 revision=r.revision)
    return hit if isinstance(hit, str) else None


def converted_dir() -> Path:
    """Our converted safetensors files, beside the Hub cache."""
    return hf_home() / "activation-studio" / "converted"


def _offline() -> bool:
    """HF_HUB_OFFLINE as set now; huggingface_hub's import-time reading when it is unset."""
    value = os.environ.get("HF_HUB_OFFLINE")
    if value is None:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    return value.strip().upper() in {"1", "ON", "YES", "TRUE"}


# ----------------------------------------------------------------------------------------
# Loaded models and the LRU.


@dataclass
class LoadedModel:
    """A generator ready to render, with where it came from."""
    G: Generator                 # eval mode, requires_grad False, on `device`
    sha256: str                  # of our safetensors file
    id: str                      # the normalised spec
    title: str
    config: GeneratorConfig
    source: Any                  # provenance recorded in the sidecar
    resolution: int
    path: Path | None = None     # our safetensors file
    device: str = "cpu"
    nbytes: int = 0              # parameters + buffers
    notes: list[str] = field(default_factory=list)


@dataclass
class _Pending:
    future: Future = field(default_factory=Future)
    listeners: list[Progress] = field(default_factory=list)
    last: tuple[float, str] = (0.0, "starting")


_lock = threading.Lock()
_models: OrderedDict[str, LoadedModel] = OrderedDict()
_pending: dict[str, _Pending] = {}


def _after_fork_in_child() -> None:
    """A forked process (a ZeroGPU worker) starts as a copy of this one taken at any moment:
    a load another thread was running there never finishes here, and a lock a thread held
    stays held. So: fresh locks, no loads in flight (the models already loaded stay)."""
    global _lock, _cache_lock
    _lock, _cache_lock = threading.Lock(), threading.Lock()
    _pending.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _device(device: str | torch.device | None) -> str:
    """The canonical name ('cuda' -> 'cuda:0'), so one model is cached once per device;
    None means where models are kept (engine.base.devices: STUDIO_DEVICE; the CPU on ZeroGPU)."""
    return str(devices.storage_device() if device is None else devices.canonical(device))


def load(spec: str, progress: Progress | None = None,
         device: str | torch.device | None = None) -> LoadedModel:
    """Load a model by spec (see module doc); cached, thread-safe, one load per model.

    progress(fraction in [0, 1], message) hears download bytes and conversion steps; a caller
    that joins a load already running hears the rest of that load.
    """
    r = resolve(spec)
    dev = _device(device)
    key = f"{r.id}|{dev}"
    with _lock:
        hit = _models.get(key)
        if hit is not None:
            _models.move_to_end(key)
            _evict_locked()  # the limits are read each time: honour a lowered one now
        else:
            pending = _pending.get(key)
            owner = pending is None
            if owner:
                pending = _pending[key] = _Pending()
            if progress is not None:
                pending.listeners.append(progress)
                if not owner:
                    progress(*pending.last)
    if hit is not None:
        if progress is not None:
            progress(1.0, f"{hit.title} is loaded")
        return hit
    if not owner:
        return pending.future.result()

    def report(fraction: float, message: str) -> None:
        with _lock:
            pending.last = (fraction, message)
            listeners = list(pending.listeners)
        for fn in listeners:
            fn(fraction, message)

    try:
        model = _copy_to(other, dev) if (other := _loaded_elsewhere(r.id)) is not None \
            else _load_uncached(r, report, dev)
    except BaseException as exc:
        with _lock:
            _pending.pop(key, None)
        pending.future.set_exception(exc)
        raise
    with _lock:
        _pending.pop(key, None)
        _models[key] = model
        _evict_locked()
    pending.future.set_result(model)
    report(1.0, f"{model.title} is loaded")
    return model


def _loaded_elsewhere(model_id: str) -> LoadedModel | None:
    """The model already loaded on another device (a ZeroGPU call finds the CPU copy)."""
    with _lock:
        return next((m for k, m in _models.items() if k.startswith(f"{model_id}|")), None)


def _copy_to(model: LoadedModel, device: str) -> LoadedModel:
    """A copy of a loaded model on `device`, made from its weights in memory (no disk read)."""
    if devices.canonical(device).type == "cuda":
        devices.apply_precision_policy()
    # deepcopy keeps every buffer (non-persistent ones too); .to then moves the copy only.
    G = prepare_for_device(copy.deepcopy(model.G).to(device).eval().requires_grad_(False))
    devices.mark_copy(G, model.G)
    return dataclasses.replace(model, G=G, device=device)


def _limits() -> tuple[int, int]:
    def env_int(name: str, default: int) -> int:
        try:
            return max(1, int(os.environ.get(name, default)))
        except ValueError:
            return default
    return (env_int(ENV_MAX_MODELS, DEFAULT_MAX_MODELS),
            env_int(ENV_MAX_MODEL_MB, DEFAULT_MAX_MODEL_MB) * 2 ** 20)


_evict_listeners: list[Callable[[LoadedModel], None]] = []


def on_evict(listener: Callable[[LoadedModel], None]) -> None:
    """Call listener(model) when a model leaves the LRU, so caches elsewhere that hold its
    generator (translators) let it go too: an evicted model must free its memory. Called
    with the LRU's lock held: a listener must be quick and must not call into the zoo."""
    _evict_listeners.append(listener)


def _forget_locked(model: LoadedModel) -> None:
    for listener in _evict_listeners:
        listener(model)


def _evict_locked() -> None:
    """Drop least recently used models over the count or byte limit (keep the newest)."""
    max_models, max_bytes = _limits()
    while len(_models) > 1 and (len(_models) > max_models
                                or sum(m.nbytes for m in _models.values()) > max_bytes):
        _forget_locked(_models.popitem(last=False)[1])


def loaded_models() -> list[LoadedModel]:
    """Models in the LRU, least recently used first."""
    with _lock:
        return list(_models.values())


def clear_cache() -> None:
    """Forget every loaded model (files on disk stay)."""
    with _lock:
        for model in _models.values():
            _forget_locked(model)
        _models.clear()


# ----------------------------------------------------------------------------------------
# Loading one model.


def _load_uncached(r: Resolved, progress: Progress, device: str) -> LoadedModel:
    from engine.gan.checkpoints import sha256_file

    if r.kind == "hub":
        source_path, source_sha = _download(r, progress)
    else:
        source_path = _local_path(r)
        source_sha = None
    if _is_studio_file(source_path):
        ours, source = source_path, {"path": str(source_path)}
    else:
        if source_sha is None:
            progress(DOWNLOAD_SHARE * 0.5, f"hashing {source_path.name}")
            source_sha = sha256_file(source_path)
        ours = converted_dir() / f"{source_sha}.safetensors"
        source = _source_record(r, source_path, source_sha)
        if not _usable(ours):
            _convert(r, source_path, source_sha, ours, source, progress)
    progress(DOWNLOAD_SHARE + CONVERT_SHARE, "reading the converted model")
    with _cache_lock:
        _reading.add(ours)
    try:
        if r.kind == "hub" or ours != source_path:  # a download or a conversion (uploads'
            _touch(ours)                            # too): both count toward the bounded cache
            trim_hub_cache()
        try:
            loaded, sidecar = _read_ours(ours)
        except CheckpointError:
            if ours == source_path:
                raise
            # A damaged conversion is ours to redo: drop it and convert again once.
            _remove(ours)
            _convert(r, source_path, source_sha, ours, source, progress)
            loaded, sidecar = _read_ours(ours)
    finally:
        with _cache_lock:
            _reading.discard(ours)
    from engine.gan.checkpoints import build_generator

    if devices.canonical(device).type == "cuda":
        devices.apply_precision_policy()
    G = prepare_for_device(build_generator(loaded).to(device).eval().requires_grad_(False))
    nbytes = sum(t.numel() * t.element_size()
                 for t in list(G.parameters()) + list(G.buffers()))
    return LoadedModel(G=G, sha256=sidecar["sha256"], id=r.id, title=r.title,
                       config=loaded.config, source=sidecar.get("source", source),
                       resolution=loaded.config.resolution, path=ours, device=device,
                       nbytes=nbytes, notes=list(loaded.notes))


def _local_path(r: Resolved) -> Path:
    """The file a local spec names, once it is known to be a regular file under the
    checkpoint size limit: it is hashed next, and hashing /dev/zero would never end."""
    from engine.base.files import regular_file_size
    from engine.base.limits import current_limits

    assert r.path is not None
    if r.path.is_dir():
        raise StudioError(f"{r.path.name or r.path} is a folder, not a checkpoint file; name "
                          f"the .pkl, .pt or .safetensors file inside it.")
    if r.path.exists():
        regular_file_size(r.path, "checkpoint file", current_limits().checkpoint_bytes)
        return r.path
    if r.entry is not None and r.entry.id == DEFAULT_ID:
        where = r.path.relative_to(MODELS_DIR.parents[1])
        raise StudioError(f"The default model is missing ({where}"
                          f" is not there yet); train it with `python -m engine train-gan` or "
                          f"pick another model.")
    raise StudioError(f"There is no file at {r.path}.")


def _is_studio_file(path: Path) -> bool:
    """Our own format: safetensors with a sidecar; read directly, never converted."""
    from engine.gan.checkpoints import sidecar_path

    return path.suffix == ".safetensors" and sidecar_path(path).exists()


def _usable(path: Path) -> bool:
    from engine.gan.checkpoints import sidecar_path

    return path.exists() and sidecar_path(path).exists()


def _read_ours(path: Path) -> tuple[Any, dict[str, Any]]:
    from engine.gan.checkpoints import read_checkpoint, sha256_file, sidecar_path

    loaded = read_checkpoint(path)  # verifies the sidecar's sha256 against the file
    side = sidecar_path(path)
    sidecar = json.loads(side.read_text(encoding="utf-8")) if side.exists() else {}
    if not sidecar.get("sha256"):
        sidecar["sha256"] = sha256_file(path)
    return loaded, sidecar


def _source_record(r: Resolved, path: Path, sha: str) -> dict[str, Any]:
    rec: dict[str, Any] = {"spec": r.id, "source_sha256": sha, "file": path.name}
    if r.kind == "hub":
        rec.update(repo_id=r.repo_id, filename=r.filename, revision=r.revision or "main")
        commit = _commit_of(path)
        if commit:
            rec["commit"] = commit
    else:
        rec["path"] = str(path)
    return rec


def _commit_of(pointer: Path) -> str | None:
    # Hub cache layout: .../snapshots/<commit>/<path in repo>.
    parts = pointer.parts
    if "snapshots" in parts:
        i = parts.index("snapshots")
        if i + 1 < len(parts):
            return parts[i + 1]
    return None


def _convert(r: Resolved, source_path: Path, source_sha: str, ours: Path,
             source: dict[str, Any], progress: Progress) -> None:
    """Read any checkpoint format and write our safetensors + sidecar (atomically)."""
    from engine.gan.checkpoints import build_generator, read_checkpoint, save_generator

    base = DOWNLOAD_SHARE
    progress(base, f"reading {source_path.name}")
    try:
        loaded = read_checkpoint(source_path)
        progress(base + CONVERT_SHARE * 0.5, "building the generator")
        G = build_generator(loaded)
    except UnsafePickleError:
        raise
    except CheckpointError as exc:
        if r.kind != "hub":
            raise  # its sentence already names the local file
        message = str(exc).rstrip(".")
        if _looks_corrupt(message):
            _discard_download(source_path)
            raise StudioError(f"The download of {r.id} is corrupt or incomplete ({message}); "
                              f"it was removed from the cache, so load it again.") from exc
        raise StudioError(f"{r.id} is not a StyleGAN2 checkpoint the studio can read "
                          f"({message}).") from exc
    progress(base + CONVERT_SHARE * 0.8, "saving the converted model")
    source = {**source, "format": loaded.source_format}
    save_generator(G, ours, source=source)


def _looks_corrupt(message: str) -> bool:
    m = message.lower()
    return any(w in m for w in ("truncated", "corrupt", "empty", "garbled", "ends early"))


def _remove(path: Path) -> None:
    from engine.gan.checkpoints import sidecar_path

    for p in (path, sidecar_path(path)):
        try:
            p.unlink()
        except FileNotFoundError:
            pass


# ----------------------------------------------------------------------------------------
# Hub downloads.


def _download(r: Resolved, progress: Progress) -> tuple[Path, str | None]:
    """hf_hub_download with progress; returns (snapshot path, sha256 of the file if known).

    The sha256 is known without hashing when the cache stored the file under its LFS sha256
    and we already converted it (a cached load must not re-hash hundreds of megabytes).
    """
    from engine.gan.checkpoints import sha256_file

    progress(0.0, f"looking up {r.repo_id}/{r.filename}")
    try:
        local = Path(_preloaded(r) or _hf_download(r, progress))
    except StudioError:
        raise
    except Exception as exc:  # huggingface_hub's typed errors -> one sentence
        raise _hub_error(exc, r) from exc
    blob_name = Path(os.path.realpath(local)).name
    expected = r.entry.sha256 if r.entry is not None else None
    if SHA256_HEX.match(blob_name) and _usable(converted_dir() / f"{blob_name}.safetensors"):
        return local, blob_name
    # First time we see this file: hash it to check it and to name its conversion.
    progress(DOWNLOAD_SHARE, f"checking {local.name}")
    actual = sha256_file(local)
    claimed = blob_name if SHA256_HEX.match(blob_name) else None
    if (claimed and claimed != actual) or (expected and expected != actual):
        _discard_download(local)
        raise StudioError(f"The download of {r.id} is corrupt or incomplete (its checksum does "
                          f"not match); it was removed from the cache, so load it again.")
    return local, actual


def _hf_download(r: Resolved, progress: Progress) -> str:
    from tqdm.auto import tqdm

    class _ProgressBar(tqdm):
        """huggingface_hub's byte counter, forwarded to our callback (never drawn)."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.pop("name", None)
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)
            self._bytes = int(kwargs.get("initial") or 0)
            self._total = kwargs.get("total")
            self._last = 0.0

        def update(self, n: float | None = 1) -> bool | None:
            self._bytes += int(n or 0)
            now = time.monotonic()
            if now - self._last > 0.1 or (self._total and self._bytes >= self._total):
                self._last = now
                total = self._total or 0
                frac = min(self._bytes / total, 1.0) if total else 0.0
                size = f" of {total / 2**20:.1f} MB" if total else ""
                progress(DOWNLOAD_SHARE * frac,
                         f"downloading {r.filename}: {self._bytes / 2**20:.1f} MB{size}")
            return super().update(n)

    assert r.repo_id is not None and r.filename is not None
    return hub_file(r.repo_id, r.filename, r.revision, current_limits().checkpoint_bytes,
                    tqdm_class=_ProgressBar)


def _etag_timeout() -> float:
    return float(os.environ.get("HF_HUB_ETAG_TIMEOUT") or ETAG_TIMEOUT_S)


def hub_token(repo_id: str) -> str | bool | None:
    """The token a request to `repo_id` carries: on your own machine HF_TOKEN (or your
    login); in studio mode the owner's HF_TOKEN only for catalogue repositories and those in
    STUDIO_TOKEN_REPOS, and for any other repository none at all (False: not even a stored
    login), so a visitor cannot reach the owner's private or gated repositories."""
    token = os.environ.get("HF_TOKEN") or None
    if not studio_mode():
        return token
    allowed = {e.repo_id for e in catalogue() if e.repo_id} | {
        name.strip() for name in os.environ.get(ENV_TOKEN_REPOS, "").split(",") if name.strip()}
    return token if repo_id in allowed else False


def hub_file(repo_id: str, filename: str, revision: str | None, max_bytes: int,
             tqdm_class: Any = None, limit_name: str = "STUDIO_MAX_CHECKPOINT_BYTES") -> str:
    """hf_hub_download of one file with the studio-mode guards (see module doc): the Hub's
    metadata first, the size under `max_bytes`, the download pinned to the commit that
    answered, the cache trimmed to make room. Raises huggingface_hub's errors as they are
    (callers turn them into sentences) and StudioError for a file over the limit."""
    from huggingface_hub import hf_hub_download

    endpoint = os.environ.get("HF_ENDPOINT") or None
    token = hub_token(repo_id)
    kwargs: dict[str, Any] = {"cache_dir": str(hub_cache_dir()), "endpoint": endpoint,
                              "token": token, "etag_timeout": _etag_timeout()}
    if tqdm_class is not None:
        kwargs["tqdm_class"] = tqdm_class
    if not studio_mode() or _offline():
        return hf_hub_download(repo_id, filename, revision=revision,
                               local_files_only=_offline(), **kwargs)
    from huggingface_hub import errors as hf_errors
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    try:
        meta = get_hf_file_metadata(hf_hub_url(repo_id, filename, revision=revision,
                                               endpoint=endpoint),
                                    token=token, timeout=_etag_timeout(), endpoint=endpoint)
    except hf_errors.HfHubHTTPError:
        raise  # the Hub answered: not found, gated, ... (no cached copy should hide that)
    except Exception as exc:
        # The Hub did not answer: a copy fetched earlier (size checked then) still serves,
        # as hf_hub_download itself would do. With none, the cache's "not found" is raised
        # with the network error as its cause, as hf_hub_download reports it.
        try:
            return hf_hub_download(repo_id, filename, revision=revision,
                                   local_files_only=True, **kwargs)
        except Exception as local_exc:
            raise local_exc from exc
    where = f"{repo_id}/{filename}"
    if meta.size is None or meta.size > max_bytes:
        size = "of unknown size" if meta.size is None else f"{meta.size / 2**20:.1f} MiB"
        raise StudioError(f"{where} is {size}, more than this studio's limit of "
                          f"{max_bytes / 2**20:.0f} MiB ({limit_name}), so it was not "
                          f"downloaded.")
    # The commit that answered names an immutable file: the size just checked is the size
    # downloaded (huggingface_hub refuses a body of any other length).
    pinned = meta.commit_hash or revision
    with _cache_lock:
        _in_use.add((repo_id, pinned))
    try:
        trim_hub_cache(incoming=meta.size)
        path = hf_hub_download(repo_id, filename, revision=pinned, **kwargs)
    finally:
        with _cache_lock:
            _in_use.discard((repo_id, pinned))
    if pinned and pinned != (revision or "main"):
        _remember_ref(Path(path), revision or "main", pinned)
    _touch(Path(path))
    return path


def _remember_ref(snapshot_file: Path, revision: str, commit: str) -> None:
    """Record that `revision` pointed at `commit` (the cache's refs/<revision> file, which a
    download by commit does not write), so the file is found by revision when the Hub is
    unreachable later."""
    parts = snapshot_file.parts
    if "snapshots" not in parts or "/" in revision or "\\" in revision:
        return
    ref = Path(*parts[: parts.index("snapshots")]) / "refs" / revision
    try:
        if ref.exists() and ref.read_text() == commit:
            return
        ref.parent.mkdir(parents=True, exist_ok=True)
        tmp = ref.with_name(f".{ref.name}.{os.getpid()}.tmp")
        tmp.write_text(commit)
        os.replace(tmp, ref)
    except OSError:  # a read-only cache: the file still loads while the Hub answers
        pass


# ----------------------------------------------------------------------------------------
# The bounded Hub cache (studio mode).

_cache_lock = threading.Lock()
_in_use: set[tuple[str, str | None]] = set()  # (repo, commit) downloads under way: kept
_reading: set[Path] = set()  # converted files being read: kept


def _touch(path: Path) -> None:
    """Mark a cached file as just used (its blob's times), for the LRU; access times alone
    are unreliable (noatime/relatime mounts)."""
    try:
        os.utime(os.path.realpath(path))
    except OSError:  # a read-only cache (the Space image's preloads): not ours to trim
        pass


def trim_hub_cache(incoming: int = 0) -> int:
    """In studio mode, delete the least recently used Hub downloads and conversions until
    they and `incoming` more bytes fit in STUDIO_MAX_HUB_CACHE_BYTES; returns bytes freed.
    Downloads under way and converted files being read stay."""
    if not studio_mode():
        return 0
    limit = current_limits().hub_cache_bytes
    with _cache_lock:
        items = _cache_items()
        total = sum(size for _, size, _, _ in items)
        freed = 0
        for _, size, delete, protected in sorted(items, key=lambda item: item[0]):
            if total + incoming - freed <= limit:
                break
            if not protected:
                delete()
                freed += size
        return freed


def _cache_items() -> list[tuple[float, int, Callable[[], None], bool]]:
    """(last use, bytes, delete, protected) for every Hub revision and converted model."""
    items: list[tuple[float, int, Callable[[], None], bool]] = []
    cache = hub_cache_dir()
    if cache.is_dir():
        from huggingface_hub import scan_cache_dir

        info = scan_cache_dir(cache)
        for repo in info.repos:
            for rev in repo.revisions:
                used = max([f.blob_last_accessed for f in rev.files] +
                           [f.blob_last_modified for f in rev.files] + [0.0])
                protected = any((repo.repo_id, c) in _in_use
                                for c in (rev.commit_hash, *rev.refs, None))
                items.append((used, rev.size_on_disk,
                              lambda h=rev.commit_hash: info.delete_revisions(h).execute(),
                              protected))
    folder = converted_dir()
    if folder.is_dir():
        from engine.gan.checkpoints import sidecar_path

        for path in folder.glob("*.safetensors"):
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            side = sidecar_path(path)
            size = st.st_size + (side.stat().st_size if side.exists() else 0)
            items.append((st.st_mtime, size, lambda p=path: _remove(p), path in _reading))
    return items


def _hub_error(exc: Exception, r: Resolved) -> StudioError:
    """One actionable sentence for each way a Hub download fails."""
    from huggingface_hub import errors as hf

    where = f"{r.repo_id}/{r.filename}" + (f"@{r.revision}" if r.revision else "")
    status = getattr(getattr(exc, "response", None), "status_code", None)
    chain, cause = [], exc
    while cause is not None and len(chain) < 8:
        chain.append(type(cause).__name__)
        cause = cause.__cause__ or cause.__context__
    if isinstance(exc, hf.GatedRepoError):
        return StudioError(f"{r.repo_id} is gated: accept its conditions on "
                           f"https://huggingface.co/{r.repo_id} and set HF_TOKEN (or run "
                           f"`hf auth login`) to a token with read access.")
    if isinstance(exc, hf.RepositoryNotFoundError):
        if status == 401 and os.environ.get("HF_TOKEN"):
            return StudioError(f"The Hub refused your HF_TOKEN for {r.repo_id}; check that the "
                               f"token is valid and can read this repository.")
        return StudioError(f"The Hub has no repository {r.repo_id} (or it is private: set "
                           f"HF_TOKEN to a token that can read it).")
    if isinstance(exc, hf.RevisionNotFoundError):
        return StudioError(f"{r.repo_id} has no revision {r.revision!r}; use a branch, tag or "
                           f"commit that exists.")
    if isinstance(exc, hf.RemoteEntryNotFoundError):
        return StudioError(f"{r.repo_id} has no file {r.filename!r}; check the path inside "
                           f"the repository.")
    if isinstance(exc, hf.HfHubHTTPError) and status in (401, 403):
        return StudioError(f"The Hub refused access to {where} ({status}); set HF_TOKEN to a "
                           f"token that can read it.")
    if isinstance(exc, hf.LocalEntryNotFoundError) or isinstance(exc, hf.OfflineModeIsEnabled):
        if _offline():
            return StudioError(f"You are offline (HF_HUB_OFFLINE is set) and {where} is not in "
                               f"the cache; go online once and run `python -m engine zoo "
                               f"fetch {r.id}`.")
        if any("Timeout" in name for name in chain):
            return StudioError(f"The Hub did not answer in time for {where} and it is not in "
                               f"the cache; try again, or raise HF_HUB_ETAG_TIMEOUT.")
        endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
        return StudioError(f"Could not reach the Hub ({endpoint}) and {where} is not in the "
                           f"cache; check your connection.")
    if any(name in ("RemoteProtocolError", "ReadError", "ConnectError", "WriteError")
           for name in chain):
        return StudioError(f"The connection to the Hub broke while fetching {where}; check "
                           f"your connection and try again.")
    if any("Timeout" in name for name in chain) or isinstance(exc, TimeoutError):
        return StudioError(f"The download of {where} timed out; try again (or raise "
                           f"HF_HUB_DOWNLOAD_TIMEOUT).")
    if isinstance(exc, OSError) and "Consistency check failed" in str(exc):
        return StudioError(f"The download of {where} stopped early (size mismatch); load it "
                           f"again to retry.")
    if isinstance(exc, hf.HfHubHTTPError):
        return StudioError(f"The Hub answered {status} for {where}; try again later.")
    return StudioError(f"Downloading {where} failed ({type(exc).__name__}: "
                       f"{str(exc).splitlines()[0] if str(exc) else 'no details'}).")


def _discard_download(pointer: Path) -> None:
    """Delete a bad download from the Hub cache (snapshot link and blob) so it is refetched."""
    blob = Path(os.path.realpath(pointer))
    for p in {pointer, blob}:
        try:
            p.unlink()
        except OSError:  # gone already, or in a read-only (preload) cache that is not ours
            pass


# ----------------------------------------------------------------------------------------
# Ahead-of-time fetching and cache inspection (the `zoo` CLI).


def fetch(spec: str, progress: Progress | None = None) -> Path:
    """Download and convert a model without keeping it loaded; returns our safetensors path."""
    r = resolve(spec)
    cb = progress or (lambda f, m: None)
    with _lock:
        hit = next((m for k, m in _models.items() if k.startswith(f"{r.id}|")), None)
    if hit is not None and hit.path is not None:
        cb(1.0, f"{hit.title} is loaded")
        return hit.path
    model = _load_uncached(r, cb, "cpu")
    cb(1.0, f"{model.title} is ready")
    assert model.path is not None
    return model.path


def source_file(spec: str, progress: Progress | None = None) -> Path:
    """The checkpoint file a spec names, in its own format (downloaded for Hub specs).

    The trainer reads a discriminator from it; the converted file keeps the generator only.
    """
    r = resolve(spec)
    if r.kind == "hub":
        return _download(r, progress or (lambda f, m: None))[0]
    return _local_path(r)


def is_cached(entry: CatalogueEntry) -> bool:
    """Whether an entry loads without network: local and present, or converted before."""
    if entry.repo_id is None:
        return (MODELS_DIR / entry.filename).exists()
    if entry.sha256 and _usable(converted_dir() / f"{entry.sha256}.safetensors"):
        return True
    r = resolve(entry.id)
    if _preloaded(r) is not None:
        return True
    folder = hub_cache_dir() / f"models--{entry.repo_id.replace('/', '--')}" / "snapshots"
    if not folder.is_dir():
        return False
    for snap in folder.iterdir():
        f = snap / entry.filename
        if f.exists():
            blob = Path(os.path.realpath(f)).name
            if _usable(converted_dir() / f"{blob}.safetensors"):
                return True
    return False
