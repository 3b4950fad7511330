"""Issue #14, studio side: a hostile visitor against a real `spaces_app.py` server.

One server in studio mode (STUDIO_SERVER_FILES=studio, small per-kind upload limits, one
long job at a time) on the tiny random model. Each test attacks through gradio_client the
way a stranger would (raw {"path": ...} payloads, pixel bombs, a second long job, another
session's files, a NaN edit), then checks: refused with one sentence, the server's peak
memory (VmHWM of its process) barely moved, nothing was copied into the studio's folders
from outside, and the server still renders the session's image exactly as before.
"""

from __future__ import annotations

import json
import os
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers.browser import (
    SERVER_PIDS,
    job_progress,
    queue_call,
    studio_client,
    studio_server,
    tiny_model_file,
    upload_file,
)
from tests.helpers.memory import peak_rss_mb, reset_peak_rss

gradio_client = pytest.importorskip("gradio_client")

REFUSED = "this studio only opens files uploaded to it or written by it in this session"
# What Gradio itself answers for a file component's payload without its 'meta' (it refuses
# those before the studio sees them): also the same whatever the path.
GRADIO_REFUSED = "The upstream Gradio app has raised an exception"
RECIPE_LIMIT = 4096
PICTURE_BUDGET = 32 << 20  # one fine-tuning's pictures, decoded


def png_bomb(path: Path, width: int, height: int) -> None:
    """A greyscale PNG of width x height black pixels, compressed in chunks (a few hundred
    KB on disk, width*height bytes once decoded) without ever holding the raw image."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (len(data).to_bytes(4, "big") + kind + data
                + zlib.crc32(kind + data).to_bytes(4, "big"))

    comp = zlib.compressobj(9)
    row = b"\0" * (width + 1)  # filter byte + pixels
    body = b"".join(comp.compress(row * 256) for _ in range(height // 256))
    body += comp.compress(row * (height % 256)) + comp.flush()
    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body)
                     + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("studio-hardening")
    model = tiny_model_file(folder)
    env = {"STUDIO_OUTPUT_DIR": str(folder / "out"), "GRADIO_TEMP_DIR": str(folder / "gradio"),
           "ACTIVATION_STUDIO_CACHE": str(folder / "cache"), "STUDIO_SERVER_FILES": "studio",
           "STUDIO_MAX_RECIPE_BYTES": str(RECIPE_LIMIT), "STUDIO_HEAVY_JOBS": "1",
           "STUDIO_MAX_PICTURE_BYTES": str(PICTURE_BUDGET)}
    with studio_server(model, env=env) as url:
        yield url, model, folder


def _pixels(data) -> np.ndarray:
    path = data["path"] if isinstance(data, dict) else data
    return np.asarray(Image.open(path).convert("RGB"))


def _session(url: str, model: str):
    """A fresh client on the model; returns (client, its current image)."""
    client = studio_client(url)
    image = _pixels(client.predict(model, api_name="/load_model")[1])
    return client, image


def _still_renders(client, image: np.ndarray) -> None:
    """The session's picture, rendered again, is exactly the one from before the attack."""
    out = client.predict(0, 0, 0.7, 0, "const", 0, False, 1, 0, 8, "sefa", None,
                         0, 0, 0, 0, 0, 0, 8, api_name="/set_latent")[0]
    assert np.array_equal(_pixels(out), image)


def _error(call) -> str:
    with pytest.raises(Exception) as info:
        call()
    return str(info.value)


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def test_every_image_input_has_the_pixel_cap(server, tmp_path):
    """Item 2: a 13000x13000 PNG (a few hundred KB) to the webcam, projection and translate
    endpoints, as an upload and inline as a data URL, is refused unread."""
    from gradio_client import handle_file

    url, model, _ = server
    client, image = _session(url, model)
    bomb = tmp_path / "bomb.png"
    png_bomb(bomb, 13000, 13000)
    assert bomb.stat().st_size < 1_000_000
    import base64
    inline = {"url": "data:image/png;base64," + base64.b64encode(bomb.read_bytes()).decode(),
              "meta": {"_type": "gradio.FileData"}}
    before = reset_peak_rss(SERVER_PIDS[url])
    calls = [lambda: client.predict("enc", handle_file(str(bomb)), api_name="/translate_frame"),
             lambda: client.predict("enc", inline, api_name="/translate_frame"),
             lambda: client.predict(handle_file(str(bomb)), 10, True, api_name="/project"),
             lambda: client.predict("enc", handle_file(str(bomb)), api_name="/translate")]
    for call in calls:
        assert "megapixel limit" in _error(call)
    grown = peak_rss_mb(SERVER_PIDS[url]) - before
    assert grown < 150, f"the server's peak memory grew {grown:.0f} MiB"  # decoded: 161 MiB
    _still_renders(client, image)


@pytest.mark.parametrize("target", ["/etc/passwd", "/nonexistent/x.png", "/dev/zero", "/tmp",
                                    "outside.png", "empty.png", "../../../etc/hostname"])
def test_server_files_get_one_sentence_whatever_the_path(server, tmp_path, target):
    """Item 3: image inputs given {"path": ...} without meta, load_model and the webcam's
    encoder path: refused with the same sentence whether the file exists, is empty, is a
    folder or a device; nothing of it is copied into the studio's folders."""
    url, model, folder = server
    Image.new("RGB", (8, 8), (200, 10, 10)).save(tmp_path / "outside.png")
    (tmp_path / "empty.png").write_bytes(b"")
    path = str(tmp_path / target) if not target.startswith(("/", "..")) else target
    client, image = _session(url, model)
    seen = _files(folder / "gradio") | _files(folder / "out")
    calls = [lambda: client.predict({"path": path}, 10, True, api_name="/project"),
             lambda: client.predict("enc", {"path": path}, api_name="/translate"),
             lambda: client.predict("enc", {"path": path}, api_name="/translate_frame"),
             lambda: client.predict(path, api_name="/load_model")]
    for call in calls:
        assert _error(call) == REFUSED + "; upload the file instead."
    for name in ("/load_recipe", "/upload_checkpoint"):  # gr.File / gr.UploadButton
        message = _error(lambda n=name: client.predict({"path": path}, api_name=n))
        assert message.startswith((REFUSED, GRADIO_REFUSED)) and path not in message
    # The webcam's encoder path: a real frame, an encoder outside the studio -> no frame.
    frame = tmp_path / "frame.png"
    Image.new("RGB", (16, 16), (9, 99, 9)).save(frame)
    assert queue_call(client, "/translate_frame", [path, upload_file(url, frame), 1.0,
                                                     "crop", "match"]) == [None]
    new = (_files(folder / "gradio") | _files(folder / "out")) - seen
    assert not [f for f in new if Path(f).name in ("passwd", "outside.png", "hostname")]
    _still_renders(client, image)


def test_long_jobs_one_per_session_and_one_at_a_time(server, tmp_path):
    """Item 6: a session's second long job is refused at once with a sentence; another
    session's long job waits for the slot (STUDIO_HEAVY_JOBS=1) while its interactive
    renders keep being served."""
    from gradio_client import handle_file

    url, model, _ = server
    a, _ = _session(url, model)
    b, b_image = _session(url, model)
    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.RandomState(1).randint(0, 255, (40, 40, 3), np.uint8)).save(photo)
    job = a.submit(handle_file(str(photo)), 1000, True, api_name="/project")
    deadline = time.monotonic() + 30
    while job.status().progress_data is None:  # until the projection reports a step
        assert time.monotonic() < deadline and not job.done(), job.status()
        time.sleep(0.2)
    msg = _error(lambda: a.predict("0, 1", 2, 8, False, "w", api_name="/render_walk"))
    assert "already running a long job (a projection)" in msg
    assert "wait for it to finish or press its Cancel button" in msg
    waiting = b.submit("b16.conv1", 3, 16, api_name="/compute_clusters")
    # A's projection moves on 20 more steps: time B's small clustering needs, were it let run.
    start, deadline = job_progress(job), time.monotonic() + 60
    while job_progress(job) < start + 0.02:
        assert time.monotonic() < deadline and not job.done(), job.status()
        time.sleep(0.05)
    assert not waiting.done(), "B's clustering ran beside A's projection"
    t0 = time.monotonic()
    _still_renders(b, b_image)  # interactive lane: served while A's job holds the slot
    assert time.monotonic() - t0 < 20
    a.predict(api_name="/cancel_projection")
    assert "cancelled" in job.result(timeout=120)[2]  # the status line, not an error
    assert "3 clusters" in waiting.result(timeout=120)[0]
    assert a.predict("0, 1", 4, 8, False, "w", api_name="/render_walk")  # A may run one now


def test_upload_kinds_have_their_own_limits(server, tmp_path):
    """Item 7: a recipe over STUDIO_MAX_RECIPE_BYTES is refused (the checkpoint limit does
    not apply to it) and deleted from the upload folder at once."""
    from gradio_client import handle_file

    url, model, folder = server
    client, image = _session(url, model)
    big = tmp_path / "big-recipe.json"
    big.write_text(json.dumps({"version": 1, "model": model, "pad": "x" * RECIPE_LIMIT}))
    assert "limit" in _error(lambda: client.predict(handle_file(str(big)),
                                                    api_name="/load_recipe"))
    assert not [p for p in (folder / "gradio").rglob("big-recipe.json")]
    _still_renders(client, image)


def test_old_outputs_are_cleaned_and_the_folder_has_a_ceiling(tmp_path, monkeypatch):
    """Item 7: sweep() deletes outputs past their age, then the oldest until the folder
    fits its ceiling; a server writing its first output runs it."""
    from studio import files

    monkeypatch.setattr(files, "OUT_DIR", tmp_path)
    now = time.time()
    for i, (age_h, size) in enumerate([(30, 100), (5, 400), (3, 400), (1, 400)]):
        p = tmp_path / "sessions" / f"s{i}" / "f.bin"
        p.parent.mkdir(parents=True)
        p.write_bytes(b"x" * size)
        os.utime(p, (now - age_h * 3600, now - age_h * 3600))
    freed = files.sweep(now, max_age_s=24 * 3600, max_bytes=900)
    left = sorted(p.parent.name for p in tmp_path.rglob("f.bin"))
    assert left == ["s2", "s3"] and freed == 500  # the 30 h one by age, then the oldest


def test_sessions_see_only_their_own_uploads_and_encoders(server, tmp_path):
    """Item 9: B does not see A's trained encoder, cannot translate with it, and a recipe
    naming A's picture or A's uploaded checkpoint is refused."""
    from gradio_client import handle_file

    url, model, folder = server
    a, _ = _session(url, model)
    b, b_image = _session(url, model)
    upload = tmp_path / "mine.safetensors"
    upload.write_bytes(Path(model).read_bytes())
    a_model = a.predict(handle_file(str(upload)), api_name="/upload_checkpoint")[0]["value"]
    assert a_model.startswith(str(folder / "gradio"))  # Gradio's upload folder
    a.predict(model, api_name="/load_model")
    a.predict("b8.conv1", 10, 2, api_name="/train_encoder")
    a_encoders = a.predict(None, api_name="/list_encoders")
    trained = [c[1] for c in a_encoders["choices"] if "trained here" in c[0]]
    assert trained, a_encoders
    assert not [c for c in b.predict(None, api_name="/list_encoders")["choices"]
                if "trained here" in c[0]]
    # Issue 30: a fresh client with no session yet listed every session's encoders.
    fresh = studio_client(url).predict(None, api_name="/list_encoders")["choices"]
    assert not [c for c in fresh if "trained here" in c[0] or "sessions" in c[1]], fresh
    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.RandomState(2).randint(0, 255, (40, 40, 3), np.uint8)).save(photo)
    a.predict(trained[0], handle_file(str(photo)), api_name="/translate")
    recipe_path, text = a.predict(api_name="/save_recipe")
    a_recipe = json.loads(text)
    assert a_recipe["translator"]["image"]
    assert _error(lambda: b.predict(trained[0], handle_file(str(photo)),
                                    api_name="/translate")).startswith(REFUSED)
    frame = upload_file(url, photo)
    cam = [trained[0], frame, 1.0, "crop", "match"]
    assert queue_call(b, "/translate_frame", cam) == [None]
    assert queue_call(a, "/translate_frame", cam)[0] is not None
    for edit in ({}, {"translator": None, "model": a_model}):
        (tmp_path / "r.json").write_text(json.dumps({**a_recipe, **edit}))
        assert _error(lambda: b.predict(handle_file(str(tmp_path / "r.json")),
                                        api_name="/load_recipe")).startswith(REFUSED)
    assert _error(lambda: b.predict(a_model, api_name="/load_model")).startswith(REFUSED)
    a.predict(handle_file(str(tmp_path / "r.json")), api_name="/load_recipe")  # A's own: fine
    _still_renders(b, b_image)


def test_a_failed_edit_leaves_the_session_as_it_was(server):
    """Item 11: add_bend with a NaN fraction fails and leaves no bend behind; the session's
    recipe is byte for byte what it was, and the next render is the same image."""
    url, model, _ = server
    client, image = _session(url, model)
    client.predict("rotate", "b8.conv1", "all channels", 0.5, api_name="/add_bend")
    _, before = client.predict(api_name="/save_recipe")
    _error(lambda: client.predict("rotate", "b8.conv1", "random fraction", float("nan"),
                                  api_name="/add_bend"))
    _error(lambda: client.predict(0, "angle", "nan", api_name="/set_bend_param"))
    _, after = client.predict(api_name="/save_recipe")
    assert json.loads(after) == json.loads(before)
    client.predict(api_name="/remove_bend")
    _still_renders(client, image)



def test_every_bound_handler_refuses_nan_in_one_sentence() -> None:
    """NaN from an API client passes Gradio's range check; handlers doing int() of it failed
    with Gradio's generic error (add_layer_edit, compute_clusters, teach_samples, project)."""
    import gradio as gr

    from studio.tabs.explore import add_layer_edit
    from studio.ui import UI, bind

    handler = bind(add_layer_edit, UI())
    for bad in (float("nan"), float("inf"), float("-inf")):
        with pytest.raises(gr.Error, match="not finite"):
            handler(None, "swap", bad, 0)
    with pytest.raises(gr.Error, match="loading its model"):  # finite: on to the handler
        handler(None, "swap", 1.0, 0)


def test_a_recipe_may_use_cached_clusterings_only(server, tmp_path):
    """Issue 30 item 3: a recipe whose bend names a clustering this server has not computed
    (any k, samples or cluster_seed) ran it in the interactive lane, outside the one long job
    rule and without Cancel (hours at the limits). Now it is refused in one sentence before
    anything is computed; the Clusters tab (a long job) computes it, then the recipe loads."""
    from gradio_client import handle_file

    url, model, folder = server
    client, image = _session(url, model)
    cache = folder / "cache"
    cached_before = _files(cache) if cache.exists() else set()

    def recipe_file(seed: int) -> str:
        path = tmp_path / f"clusters-seed{seed}.json"
        path.write_text(json.dumps({"version": 1, "model": model, "bends": [
            {"layer": "b16.conv1", "op": "invert",
             "channels": {"mode": "clusters", "ids": [0], "k": 3, "samples": 20,
                          "cluster_seed": seed}}]}))
        return handle_file(str(path))

    for seed, words in ((7, "with cluster_seed 0 only"), (0, "compute it on the Clusters tab")):
        message = _error(lambda s=seed: client.predict(recipe_file(s), api_name="/load_recipe"))
        assert "has not been computed on this server yet" in message and words in message, \
            message
        assert "\n" not in message and "Traceback" not in message, message
    assert (_files(cache) if cache.exists() else set()) == cached_before  # nothing computed
    _still_renders(client, image)  # the refused recipe left the session as it was
    assert "3 clusters" in client.predict("b16.conv1", 3, 20, api_name="/compute_clusters")[0]
    client.predict(recipe_file(0), api_name="/load_recipe")
    shown = json.loads(client.predict(api_name="/show_recipe"))
    assert shown["bends"][0]["channels"]["mode"] == "clusters", shown


def test_training_pictures_over_the_budget_are_refused_unread(server, tmp_path):
    """Issue 30 item 4: three visitors at once each send a ~6 MB zip of 50,000 1x1 PNGs to
    the Train tab's check (146 MiB each once read at 32 px; before, all three were decoded at
    once, outside the long-job slot). Refused by their count, before any is decoded."""
    import io
    import zipfile

    from gradio_client import handle_file

    url, model, _ = server
    png = io.BytesIO()
    Image.new("RGB", (1, 1)).save(png, "PNG")
    archive = tmp_path / "dots.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for i in range(50_000):
            z.writestr(f"dots/{i:05d}.png", png.getvalue())
    clients = [_session(url, model)[0] for _ in range(3)]
    few = tmp_path / "few.zip"  # the tab's first call imports the trainer: not the attack's
    with zipfile.ZipFile(few, "w") as z:
        z.writestr("one.png", png.getvalue())
    _error(lambda: clients[0].predict([handle_file(str(few))], 10, 4, "ada", "crop",
                                      api_name="/check_pictures"))
    pid = SERVER_PIDS[url]
    before = reset_peak_rss(pid)
    jobs = [c.submit([handle_file(str(archive))], 10, 4, "ada", "crop",
                     api_name="/check_pictures") for c in clients]
    messages = []
    for job in jobs:
        try:
            messages.append(f"not refused: {job.result(timeout=300)}")
        except Exception as exc:  # noqa: BLE001 - gradio_client's AppError carries the text
            messages.append(str(exc))
    grown = peak_rss_mb(pid) - before
    for message in messages:
        assert "50000 files in the zip at 32 px take 146 MiB once read" in message, message
        assert "STUDIO_MAX_PICTURE_BYTES" in message, message
    assert grown < 100, f"the server's peak memory grew {grown:.0f} MiB"


def test_running_out_of_memory_is_one_sentence() -> None:
    """Issue 30: a MemoryError (a size no check caught) reached the page as Gradio's bare
    "Error" with a traceback in the log; every handler kind now says what happened."""
    import gradio as gr

    from studio import jobs
    from studio.ui import job_errors, user_errors

    def greedy(*_args):
        raise MemoryError

    for wrap in (user_errors, job_errors):
        with pytest.raises(gr.Error, match="ran out of memory") as err:
            wrap(greedy)()
        assert "\n" not in str(err.value.message) and str(err.value.message).endswith(".")
    claimed = jobs.Jobs()
    claimed.claim("a test job")
    states = list(jobs.polled_job(claimed, lambda **_: greedy(), "cancelled", "the test job "
                                  "stopped", every=0.05))
    assert states[-1].error == ("the test job stopped: the server ran out of memory; try a "
                                "smaller setting."), states[-1].error


def test_the_upload_folder_has_a_byte_ceiling(tmp_path):
    """Issue 30: /gradio_api/upload keeps any file up to 4 GiB for a day with no event
    attached. A server whose upload folder may hold 3 MiB gets five 1 MiB uploads and no
    event: its sweeper deletes the oldest until the folder fits."""
    folder = tmp_path / "gradio"
    model = tiny_model_file(tmp_path)
    env = {"GRADIO_TEMP_DIR": str(folder), "STUDIO_OUTPUT_DIR": str(tmp_path / "out"),
           "STUDIO_MAX_UPLOADS_BYTES": str(3 << 20)}
    with studio_server(model, env=env) as url:
        sent, start = [], time.time() - 60
        for i in range(5):
            blob = tmp_path / f"blob{i}.bin"
            blob.write_bytes(bytes([i]) * (1 << 20))
            sent.append(Path(upload_file(url, blob)["path"]))
            os.utime(sent[-1], (start + i, start + i))  # distinct times: "oldest" is defined
        deadline = time.monotonic() + 120  # the sweeper runs every 30 s

        def held() -> int:
            return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())

        while held() > 3 << 20:
            assert time.monotonic() < deadline, f"the upload folder still holds {held()} bytes"
            time.sleep(1)
        assert not sent[0].exists() and sent[-1].exists()
