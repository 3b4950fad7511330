"""Which files on the server the studio opens and writes, and how long it keeps them.

Three kinds of file may be opened on a request's behalf: those shipped with the studio (the
default model and its encoders), those Gradio stored for an upload, and those the studio
wrote itself (renders, recipes, input pictures, trained encoders). With
STUDIO_SERVER_FILES=studio (a Space's default) nothing else is opened, and a session may use
only its own uploads and outputs: a stranger can neither read another file of the server nor
another visitor's picture or encoder. Every refusal is the same sentence whatever the path,
so the answer tells nothing about which files exist.

Disk is bounded too: outputs older than STUDIO_FILE_MAX_AGE are deleted and the output
folder is kept under STUDIO_MAX_OUTPUT_BYTES, oldest first (Gradio's own delete_cache does the
same age rule for the upload folder, see studio/app.py, and the upload folder is kept under
STUDIO_MAX_UPLOADS_BYTES the same way, by a sweeper thread as well as before writes).
Nothing here imports Gradio.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

from engine.base.errors import StudioError
from studio.limits import SERVER, SERVER_FILES

OUT_DIR = Path(os.environ.get("STUDIO_OUTPUT_DIR") or tempfile.gettempdir()) / "activation-studio"
REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "engine" / "models" / "default_model"


def shipped() -> list[Path]:
    """Files every session may open: the shipped models and encoders, and the model the
    operator named in STUDIO_MODEL when that is a path."""
    roots = [SHIPPED]
    if os.environ.get("STUDIO_MODEL"):
        roots.append(Path(os.environ["STUDIO_MODEL"]))
    return roots

# One sentence for every path a request may not use: a missing file, a folder, a device, a
# file outside the studio and another session's upload all read the same.
REFUSED = ("this studio only opens files uploaded to it or written by it in this session; "
           "upload the file instead.")


def upload_folder() -> Path:
    """Where Gradio stores uploads (its own rule: GRADIO_TEMP_DIR, else <tmp>/gradio)."""
    return Path(os.environ.get("GRADIO_TEMP_DIR") or Path(tempfile.gettempdir()) / "gradio")


def session_dir(token: str) -> Path:
    """The folder of everything one session writes (inputs, renders, encoders)."""
    return OUT_DIR / "sessions" / token


def _resolved(path: str | Path) -> Path | None:
    try:
        return Path(path).expanduser().resolve()
    except (OSError, RuntimeError, ValueError):
        return None


def _inside(real: Path, roots: Iterable[Path]) -> bool:
    for root in roots:
        base = _resolved(root)
        if base is not None and real.is_relative_to(base):
            return True
    return False


def _regular(real: Path) -> bool:
    try:
        return real.is_file()  # follows links (already resolved); refuses folders, devices
    except OSError:
        return False


def check_server_file(path: str | Path) -> Path:
    """`path` if the studio may open it at all: shipped, uploaded, or written by the studio.

    The check a component runs before any handler sees its file (it does not know the
    session). With STUDIO_SERVER_FILES=any every path passes unchanged.
    """
    if SERVER_FILES == "any":
        return Path(path)
    real = _resolved(path)
    if real is None or not _inside(real, (*shipped(), upload_folder(), OUT_DIR)) \
            or not _regular(real):
        raise StudioError(REFUSED)
    return real


def check_session_file(path: str | Path, token: str, uploads: Iterable[str] = ()) -> Path:
    """`path` if this session may open it: shipped, one of its own uploads (`uploads`, the
    paths its events received), or under its own folder. Stricter than check_server_file,
    for paths that arrive as text (a model path, a recipe's files, an encoder)."""
    if SERVER_FILES == "any":
        return Path(path)
    real = _resolved(path)
    own = {_resolved(p) for p in uploads}
    if real is None or not _regular(real) or not (
            real in own or _inside(real, (*shipped(), session_dir(token)))):
        raise StudioError(REFUSED)
    return real


def is_output(path: str | Path, token: str | None = None) -> bool:
    """True for a file the studio wrote (with `token`: that session wrote)."""
    real = _resolved(path)
    root = OUT_DIR if token is None else session_dir(token)
    return real is not None and _inside(real, (root,)) and _regular(real)


def new_output_path(token: str | None, stem: str, suffix: str) -> Path:
    """A fresh empty file in the session's folder (token None: the shared folder, e.g. for
    pictures sent inline as data URLs before any session sees them), after making room."""
    make_room()
    folder = session_dir(token) if token else OUT_DIR / "shared"
    folder.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=stem + "-", suffix=suffix, dir=folder)
    os.close(fd)
    return Path(name)


def served(path: str | Path | None) -> str | None:
    """The path to hand Gradio for an output file (a download, a video, a picture).

    Gradio copies an output into its cache, and serves that copy, only from the temp
    folder, the working folder or its upload folder. With a data folder (STUDIO_DATA_DIR, a
    Space's /data) the studio's outputs live elsewhere, and naming that folder in
    `allowed_paths` would let anyone fetch every session's files by path; so each output
    from there is linked (or copied) into the upload folder under a fresh random folder.
    Gradio serves it as it serves any output, to the session that got its address, and its
    delete_cache removes it by age with the uploads."""
    if path is None:
        return None
    real = _resolved(path)
    if real is None or not _regular(real) or _inside(real, (
            Path(tempfile.gettempdir()), Path.cwd(), upload_folder())):
        return str(path)
    folder = upload_folder() / "studio-outputs" / uuid.uuid4().hex
    folder.mkdir(parents=True)
    target = folder / real.name
    try:
        os.link(real, target)  # no second copy where both folders share a disk
    except OSError:
        shutil.copyfile(real, target)
    return str(target)


# ----------------------------------------------------------------------------------------
# Cleaning.

_SWEEP_EVERY_S = 30.0
_sweep_lock = threading.Lock()


def _after_fork_in_child() -> None:
    """A ZeroGPU worker is a fork taken at any moment: a lock another thread held then stays
    held in the child, where no thread will release it."""
    global _sweep_lock
    _sweep_lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)
_last_sweep = [0.0]


def _files_under(root: Path) -> list[tuple[float, int, Path]]:
    """(modified time, size, path) of every regular file under root, links not followed."""
    found = []
    for folder, _, names in os.walk(root):
        for name in names:
            p = Path(folder) / name
            try:
                st = p.lstat()
            except OSError:
                continue
            if not p.is_symlink():
                found.append((st.st_mtime, st.st_size, p))
    return found


def sweep(now: float | None = None, max_age_s: float = SERVER.file_age_s,
          max_bytes: int = SERVER.output_bytes) -> int:
    """Delete outputs older than max_age_s, then the oldest outputs until the output folder
    holds at most max_bytes. Returns the bytes freed."""
    now = time.time() if now is None else now
    freed = 0
    outputs = []
    for mtime, size, p in sorted(_files_under(OUT_DIR)):
        if now - mtime > max_age_s:
            freed += _unlink(p, size)
        else:
            outputs.append((size, p))
    total = sum(size for size, _ in outputs)
    for size, p in outputs:  # oldest first
        if total <= max_bytes:
            break
        freed += _unlink(p, size)
        total -= size
    return freed


def sweep_uploads(max_bytes: int = SERVER.uploads_bytes) -> int:
    """Delete the oldest files in Gradio's upload folder (uploads, and the outputs it serves)
    until it holds at most max_bytes: an upload needs no event, so without this a client
    could fill the disk with 4 GiB files that wait a day for Gradio's age rule. Returns the
    bytes freed."""
    found = sorted(_files_under(upload_folder()))
    total = sum(size for _, size, _ in found)
    freed = 0
    for _, size, p in found:  # oldest first
        if total - freed <= max_bytes:
            break
        freed += _unlink(p, size)
    return freed


def start_sweeper(every_s: float = _SWEEP_EVERY_S) -> threading.Thread:
    """A daemon thread keeping the output and upload folders within their ceilings between
    requests (make_room runs only before the studio writes, and uploads run no studio code)."""
    def run() -> None:
        while True:
            time.sleep(every_s)
            try:
                sweep()
                sweep_uploads()
            except OSError:  # a folder vanished under the walk: the next round sees it
                pass

    thread = threading.Thread(target=run, name="studio-sweeper", daemon=True)
    thread.start()
    return thread


def _unlink(p: Path, size: int) -> int:
    try:
        p.unlink()
        return size
    except OSError:
        return 0


def make_room() -> None:
    """Run sweep() before a write, at most every 30 s (walking the folder costs a little):
    the ceiling holds to within what 30 s of requests can write."""
    with _sweep_lock:
        if time.monotonic() - _last_sweep[0] < _SWEEP_EVERY_S:
            return
        _last_sweep[0] = time.monotonic()
        sweep()
        sweep_uploads()


def discard_upload(path: str | Path) -> None:
    """Delete a refused upload at once (only ever a file inside Gradio's upload folder)."""
    real = _resolved(path)
    if real is not None and _inside(real, (upload_folder(),)) and _regular(real):
        _unlink(real, 0)
