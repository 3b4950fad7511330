"""The studio scripted through gradio_client against a real server, plus its upload readers.

The server runs `spaces_app.py` on a tiny random model (fast); the browser tests cover the
default model. The bend scripted here must give exactly the image that engine.recipes.recipe
renders for the recipe the studio saves: the page adds no maths of its own.
"""

from __future__ import annotations

import json
import time
import zipfile

import numpy as np
import pytest
from PIL import Image

from engine.base.errors import StudioError
from studio import uploads
from tests.helpers.browser import job_progress, studio_client, studio_server, tiny_model_file

gradio_client = pytest.importorskip("gradio_client")


# ----------------------------------------------------------------------------------------
# Upload readers (no server).


def test_open_image_reads_png_jpeg_and_flattens_alpha(tmp_path):
    rgba = Image.new("RGBA", (8, 6), (255, 0, 0, 0))
    rgba.save(tmp_path / "a.png")
    Image.new("RGB", (8, 6), (0, 0, 255)).save(tmp_path / "b.jpg")
    a = uploads.open_image(str(tmp_path / "a.png"))
    assert a.mode == "RGB" and a.size == (8, 6)
    assert a.getpixel((0, 0)) == (255, 255, 255)  # transparent -> white, not black
    assert uploads.open_image({"path": str(tmp_path / "b.jpg")}).mode == "RGB"


def test_open_image_applies_exif_rotation(tmp_path):
    im = Image.new("RGB", (10, 4))
    exif = im.getexif()
    exif[274] = 6  # rotate 90 degrees clockwise to display
    im.save(tmp_path / "r.jpg", exif=exif)
    assert uploads.open_image(str(tmp_path / "r.jpg")).size == (4, 10)


def test_a_big_picture_is_shrunk_as_it_is_read(tmp_path, monkeypatch):
    """Issue 30: a 36 MP JPEG (1.5 MB) as a webcam frame, translate input or projection was
    decoded whole and held as floats (measured: +516 MB, 7.0 s per picture; now +108 MB,
    1.6 s). It is decoded at a reduced JPEG scale and shrunk to the working size; pictures
    up to that size are read exactly as before."""
    rng = np.random.RandomState(0)
    big = Image.fromarray(rng.randint(0, 255, (52, 69, 3), np.uint8)).resize((6928, 5196))
    big.save(tmp_path / "big.jpg", quality=60)
    from PIL import JpegImagePlugin

    drafts = []
    real_draft = JpegImagePlugin.JpegImageFile.draft
    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", lambda im, mode, size: (
        drafts.append(size), real_draft(im, mode, size))[1])
    for source in (str(tmp_path / "big.jpg"), big, np.asarray(big)):
        pic = uploads.open_image(source)
        w, h = pic.size
        assert w * h <= uploads.WORKING_PIXELS and min(w, h) >= uploads.WORKING_SHORT_SIDE
        assert abs(w / h - 6928 / 5196) < 0.01, pic.size
    assert drafts == [(w, h)]  # the file was decoded at a reduced scale
    small = Image.fromarray(rng.randint(0, 255, (1500, 1300, 3), np.uint8))
    small.save(tmp_path / "small.png")
    assert np.array_equal(np.asarray(uploads.open_image(str(tmp_path / "small.png"))),
                          np.asarray(small))


@pytest.mark.parametrize("kind, words", [
    ("empty", "empty"), ("text", "not an image"), ("truncated", "damaged or truncated"),
    ("huge", "pixel"),
])
def test_bad_images_raise_one_sentence(tmp_path, kind, words):
    path = tmp_path / f"{kind}.png"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("hello, I am not a picture")
    elif kind == "truncated":
        Image.fromarray(np.random.RandomState(0).randint(0, 255, (64, 64, 3), np.uint8)
                        ).save(path)
        data = path.read_bytes()
        path.write_bytes(data[:len(data) // 3])
    else:
        Image.new("L", (5000, 5000)).save(path)
    with pytest.raises(StudioError, match=words):
        uploads.open_image(str(path), max_pixels=1_000_000 if kind == "huge" else
                           uploads.MAX_IMAGE_PIXELS)


def test_read_json_refuses_non_json(tmp_path):
    (tmp_path / "r.json").write_text("{not json")
    with pytest.raises(StudioError, match="not a JSON recipe"):
        uploads.read_json(str(tmp_path / "r.json"))
    (tmp_path / "l.json").write_text("[1, 2]")
    with pytest.raises(StudioError, match="not a recipe"):
        uploads.read_json(str(tmp_path / "l.json"))
    for body in (b'{"a": ' + b"9" * 5000 + b"}", b'{"\xff": 1}', b"[" * 100_000):
        (tmp_path / "odd.json").write_bytes(body)
        with pytest.raises(StudioError, match="not a JSON recipe"):
            uploads.read_json(str(tmp_path / "odd.json"))


def test_grids_carry_row_and_column_labels(tmp_path):
    """Issue #24 item 7: seeds x psi and style-mix grids name their rows and columns."""
    from studio import render
    from studio.session import new_session

    sess = new_session(tiny_model_file(tmp_path))
    for img in (render.psi_grid(sess, [0, 1], [1.0, 0.5]), render.mix_grid(sess, [0, 1], 5)):
        arr = np.asarray(img)
        assert arr.shape[0] > 2 * 128 and arr.shape[1] > 2 * 128  # 32 px tiles enlarged
        assert (arr[:, :80] < 100).any() and (arr[:20, 84:] < 100).any()  # text in margins


# ----------------------------------------------------------------------------------------
# The API, through a real server.


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("studio-api")
    model = tiny_model_file(folder)
    with studio_server(model, env={"STUDIO_OUTPUT_DIR": str(folder / "out"),
                                   "ACTIVATION_STUDIO_CACHE": str(folder / "cache")}) as url:
        yield url, model


def _pixels(path: str) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_script_a_bend_through_the_api(server):
    from engine.models import zoo
    from engine.recipes import recipe

    url, model = server
    client = studio_client(url)
    plain = client.predict(model, api_name="/load_model")[1]  # (card, image, before, ...)
    # Sliders moved before there is anything to change: nothing happens, and no error.
    client.predict(0.5, api_name="/bend_slider_0")
    client.predict(None, 1.5, api_name="/change_weight_edit")
    client.predict(0.5, "crop", api_name="/translate_style")
    status = client.predict("b16.conv1", 4, 16, api_name="/compute_clusters")[0]
    assert "4 clusters" in status
    client.predict([0, 2], api_name="/select_clusters")
    added = client.predict("rotate", "b16.conv1", "selected clusters", 0.5,
                           api_name="/add_bend")
    rotated45 = _pixels(added[0])
    assert not np.array_equal(rotated45, _pixels(plain))

    turned = client.predict(0, "angle", "90", api_name="/set_bend_param")
    rotated90 = _pixels(turned)
    assert not np.array_equal(rotated90, rotated45)

    path, text = client.predict(api_name="/save_recipe")
    saved = json.loads(open(path, encoding="utf-8").read())
    assert saved["bends"][0]["op"] == "rotate"
    assert saved["bends"][0]["params"]["angle"] == 90.0
    assert saved["bends"][0]["channels"] == {**saved["bends"][0]["channels"],
                                             "mode": "clusters", "ids": [0, 2], "k": 4}
    # The page's picture is exactly the engine's render of the page's recipe.
    r = recipe.Recipe.from_json(text)
    again = np.asarray(recipe.render(r, zoo.load(model)))
    assert np.array_equal(again, rotated90)
    # A sweep of the bend's angle through the API: the frames asked for.
    video = client.predict("angle", 0, 90, 3, 8, "256", api_name="/render_sweep")
    assert _video_frames(video) == 3


def test_api_errors_are_sentences_and_the_server_survives(server, tmp_path):
    from gradio_client import handle_file

    url, model = server
    client = studio_client(url)
    client.predict(model, api_name="/load_model")
    bad = tmp_path / "bad.png"
    bad.write_text("not a picture")
    with pytest.raises(Exception, match="not an image this studio can read"):
        client.predict(handle_file(str(bad)), 10, True, api_name="/project")
    with pytest.raises(Exception, match="no bend 3"):
        client.predict(3, "angle", "10", api_name="/set_bend_param")
    client.predict("rotate", "b16.conv1", "all channels", 0.5, api_name="/add_bend")
    with pytest.raises(Exception, match="angle"):
        client.predict(0, "angle", "9999", api_name="/set_bend_param")
    recipe_file = tmp_path / "bad-recipe.json"
    recipe_file.write_text(json.dumps({"version": 1, "model": model, "bends": [
        {"layer": "b16.conv1", "op": "explode"}]}))
    with pytest.raises(Exception, match="explode"):
        client.predict(handle_file(str(recipe_file)), api_name="/load_recipe")
    # Still serving after the failures.
    assert client.predict(0, "angle", "30", api_name="/set_bend_param")


def test_sessions_do_not_share_bends(server):
    url, model = server
    a, b = studio_client(url), studio_client(url)
    plain = _pixels(a.predict(model, api_name="/load_model")[1])
    b.predict(model, api_name="/load_model")
    b.predict("invert", "b8.conv1", "all channels", 0.5, api_name="/add_bend")
    _, text = a.predict(api_name="/save_recipe")
    assert json.loads(text)["bends"] == []
    seed_img = a.predict(0, 0, 0.7, 0, "const", 0, False, 1, 0, 8, "sefa", None,
                         0, 0, 0, 0, 0, 0, 8, api_name="/set_latent")[0]
    assert np.array_equal(_pixels(seed_img), plain)


def test_cancel_stops_a_long_job(server, tmp_path):
    from gradio_client import handle_file

    url, model = server
    client = studio_client(url)
    client.predict(model, api_name="/load_model")
    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.RandomState(1).randint(0, 255, (80, 60, 3), np.uint8)).save(photo)
    t0 = time.monotonic()
    job = client.submit(handle_file(str(photo)), 1000, True, api_name="/project")
    while job_progress(job) == 0.0:  # until the projection reports its first steps
        assert time.monotonic() - t0 < 60 and not job.done(), job.status()
        time.sleep(0.05)
    client.predict(api_name="/cancel_projection")
    # A cancelled fit is not an error: the status line says so (issue #24, item 5).
    status = job.result(timeout=120)[2]
    assert "cancelled" in status
    assert time.monotonic() - t0 < 60  # 1000 steps would take far longer
    assert client.predict(api_name="/save_recipe")[0]


def test_limits_from_the_environment_hold_for_api_calls(tmp_path):
    """STUDIO_MAX_* set on the server cap what any request can ask, API included; with
    STUDIO_SERVER_FILES=studio no request can name a file the studio was not given."""
    from gradio_client import handle_file

    from studio.limits import Limits

    studio_files = tmp_path / "out" / "activation-studio"  # the server's OUT_DIR
    studio_files.mkdir(parents=True)
    model = tiny_model_file(studio_files)
    env = {"STUDIO_OUTPUT_DIR": str(tmp_path / "out"), "STUDIO_MAX_VIDEO_FRAMES": "6",
           "STUDIO_MAX_IMAGE_PIXELS": "4000", "STUDIO_MAX_GRID_VALUES": "3",
           "STUDIO_SERVER_FILES": "studio"}
    with studio_server(model, env=env) as url:
        client = studio_client(url)
        client.predict(model, api_name="/load_model")
        outside = tiny_model_file(tmp_path)  # a real checkpoint, but not the studio's
        for spec in (outside, "/etc/passwd", "/etc"):
            with pytest.raises(Exception, match="only opens files uploaded to it"):
                client.predict(spec, api_name="/load_model")
        bad = json.loads(client.predict(api_name="/save_recipe")[1])
        bad["model"] = "/etc/passwd"
        (tmp_path / "bad.json").write_text(json.dumps(bad))
        with pytest.raises(Exception, match="only opens files uploaded to it"):
            client.predict(handle_file(str(tmp_path / "bad.json")), api_name="/load_recipe")
        bad["model"] = model
        bad["blend"] = {"model": outside, "mode": "swap", "swap_res": 8}
        (tmp_path / "blend.json").write_text(json.dumps(bad))
        with pytest.raises(Exception, match="only opens files uploaded to it"):
            client.predict(handle_file(str(tmp_path / "blend.json")), api_name="/load_recipe")
        with pytest.raises(Exception, match="maximum"):
            client.predict("0, 1", 7, 10, False, "w", api_name="/render_walk")
        video = client.predict("0, 1", 6, 10, False, "w", api_name="/render_walk")
        assert _video_frames(video) == 6
        with pytest.raises(Exception, match="at most 3"):
            client.predict("0, 1, 2, 3", "0.5", "seeds × ψ", api_name="/render_grid")
        photo = tmp_path / "photo.png"
        Image.new("RGB", (100, 100), (9, 9, 9)).save(photo)  # 10 000 px > 4 000
        with pytest.raises(Exception, match="pixel"):
            client.predict(handle_file(str(photo)), 10, True, api_name="/project")
        assert client.predict("0", "0.5", "seeds × ψ", api_name="/render_grid")  # still serving
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STUDIO_MAX_VIDEO_FRAMES", "lots")
        with pytest.raises(ValueError, match="STUDIO_MAX_VIDEO_FRAMES must be a number"):
            Limits.from_env()


def _video_frames(data) -> int:
    from engine.base.video import read_video_frames

    path = data["video"] if isinstance(data, dict) else data
    return sum(1 for _ in read_video_frames(path))


def test_a_bundle_saved_on_one_server_renders_the_same_on_a_fresh_one(server, tmp_path):
    """Issue #24: the recipe names an uploaded checkpoint; its bundle carries the file, and
    a fresh server in studio mode (another output folder, nothing shared) loads it to the
    same image bit for bit."""
    from gradio_client import handle_file

    url, model = server
    a = studio_client(url)
    upload = tmp_path / "mine.safetensors"
    upload.write_bytes(open(model, "rb").read())
    a.predict(handle_file(str(upload)), api_name="/upload_checkpoint")
    a.predict("rotate", "b16.conv1", "all channels", 0.5, api_name="/add_bend")
    want = _pixels(a.predict(0, "angle", "70", api_name="/set_bend_param"))
    bundle, _ = a.predict(api_name="/save_bundle")
    fresh = tmp_path / "fresh"
    (tmp_path / "other-model").mkdir()
    other_model = tiny_model_file(tmp_path / "other-model")  # same weights, other file
    with studio_server(other_model, env={"STUDIO_OUTPUT_DIR": str(fresh / "out"),
                                         "GRADIO_TEMP_DIR": str(fresh / "gradio"),
                                         "STUDIO_SERVER_FILES": "studio"}) as url_b:
        b = studio_client(url_b)
        b.predict(other_model, api_name="/load_model")
        got = b.predict(handle_file(bundle), api_name="/load_recipe")[1]
        assert np.array_equal(_pixels(got), want)


def test_a_cancelled_video_is_a_note_not_an_error(server):
    """Issue #24 item 5: Cancel stops a walk video at its next frame; the call ends without
    an error and the session takes another long job at once."""
    url, model = server
    client = studio_client(url)
    client.predict(model, api_name="/load_model")
    job = client.submit("0, 1, 2", 240, 24, True, "z", api_name="/render_walk")
    deadline = time.monotonic() + 60
    while job.status().progress_data is None and not job.done():
        assert time.monotonic() < deadline
        time.sleep(0.1)
    t0 = time.monotonic()
    client.predict(api_name="/cancel_walk")
    job.result(timeout=60)  # no exception
    assert time.monotonic() - t0 < 30
    # The size as the API page documents it (a string), here "model size".
    assert client.predict("0, 1", 2, 8, False, "w", "0", api_name="/render_walk")


def test_the_training_loss_curve_is_the_engines_per_step_metrics(server):
    """Issue #24: the loss plot is fed by the engine's (step, metrics), not read back from
    the progress text: one point per engine step, whose mean is the final loss it reports."""
    url, model = server
    client = studio_client(url)
    client.predict(model, api_name="/load_model")
    _, status, plot, _ = client.predict("b8.conv1", 10, 2, api_name="/train_encoder")
    rows = [dict(zip(plot["columns"], row)) for row in plot["data"]]
    assert [r["step"] for r in rows] == list(range(1, 11))
    assert {r["curve"] for r in rows} == {"loss"}
    final = float(status.split("final loss ")[1].split(",")[0])
    assert np.mean([r["value"] for r in rows]) == pytest.approx(final, abs=2e-6)


def test_checked_file_takes_several_uploads_in_studio_mode(tmp_path, monkeypatch):
    """A multiple-file component (the Train tab's pictures) receives Gradio's ListFiles, not a
    list: each upload is checked, and an upload is accepted, not refused as a server path."""
    import gradio as gr
    from gradio.data_classes import FileData, ListFiles

    from studio import files
    from studio.ui import checked_file

    monkeypatch.setattr(files, "SERVER_FILES", "studio")
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    upload = tmp_path / "gradio" / "abc" / "a.png"
    upload.parent.mkdir(parents=True)
    upload.write_bytes(b"\x89PNG")
    comp = checked_file(gr.File(file_count="multiple"))
    assert comp.preprocess(ListFiles(root=[FileData(path=str(upload))])) == [str(upload)]
    outside = tmp_path / "elsewhere.png"
    outside.write_bytes(b"\x89PNG")
    with pytest.raises(gr.Error, match="only opens files uploaded"):
        comp.preprocess(ListFiles(root=[FileData(path=str(upload)),
                                        FileData(path=str(outside))]))


def test_each_server_limit_refuses_one_over_with_a_sentence(tmp_path):
    """STUDIO_MAX_TRAIN_STEPS / _TRAIN_BATCH / _PROJECTION_STEPS / _VIDEO_FPS /
    _BOUNDARY_BYTES / _GAN_UPLOAD_BYTES: a request one over each is refused in a sentence
    that names it, and the server keeps serving."""
    from gradio_client import handle_file

    model = tiny_model_file(tmp_path)
    env = {"STUDIO_OUTPUT_DIR": str(tmp_path / "out"), "STUDIO_MAX_TRAIN_STEPS": "20",
           "STUDIO_MAX_TRAIN_BATCH": "2", "STUDIO_MAX_PROJECTION_STEPS": "20",
           "STUDIO_MAX_VIDEO_FPS": "5", "STUDIO_MAX_BOUNDARY_BYTES": "1000",
           "STUDIO_MAX_GAN_UPLOAD_BYTES": "1000"}
    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.RandomState(1).randint(0, 255, (40, 40, 3), np.uint8)).save(photo)
    boundary = tmp_path / "boundary.npy"
    np.save(boundary, np.ones((1, 32)))  # 384 bytes: under the 1000 byte limit
    big_boundary = tmp_path / "big.npy"
    np.save(big_boundary, np.ones((8, 32)))  # 2176 bytes
    pictures = tmp_path / "pictures.zip"
    with zipfile.ZipFile(pictures, "w", zipfile.ZIP_STORED) as z:
        z.writestr("a.png", photo.read_bytes())  # about 5 KB: over 1000 bytes
    calls = {
        "train steps": (lambda c: c.predict("b16.conv1", 21, 2, api_name="/train_encoder"),
                        "21 is greater than maximum value 20"),
        "train batch": (lambda c: c.predict("b16.conv1", 20, 3, api_name="/train_encoder"),
                        "3 is greater than maximum value 2"),
        "projection steps": (lambda c: c.predict(handle_file(str(photo)), 21, True,
                                                 api_name="/project"),
                             "21 is greater than maximum value 20"),
        "video fps": (lambda c: c.predict("0, 1", 4, 6, False, "w", api_name="/render_walk"),
                      "6 is greater than maximum value 5"),
        "boundary bytes": (lambda c: c.predict(
            0, 0, 0.7, 0, "const", 0, False, 1, 0, 8, "file", handle_file(str(big_boundary)),
            0, 0, 0, 0, 0, 0, 8, api_name="/set_latent"), "uploaded boundary is"),
        "GAN upload bytes": (lambda c: c.predict([handle_file(str(pictures))], 10, 4, "ada",
                                                 "crop", api_name="/check_pictures"),
                             "uploaded picture is"),
    }
    with studio_server(model, env=env) as url:
        client = studio_client(url)
        client.predict(model, api_name="/load_model")
        for name, (call, words) in calls.items():
            with pytest.raises(Exception) as err:
                call(client)
            message = str(err.value)
            assert words in message and "Traceback" not in message, (name, message)
        # Under the limits the same calls are served: a small boundary, a walk at 5 fps.
        assert client.predict(0, 0, 0.7, 0, "const", 0, False, 1, 0, 8, "file",
                              handle_file(str(boundary)), 0, 0, 0, 0, 0, 0, 8,
                              api_name="/set_latent")[0]
        assert _video_frames(client.predict("0, 1", 4, 5, False, "w",
                                            api_name="/render_walk")) == 4
