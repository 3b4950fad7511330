"""The Train tab's logic without a browser: uploaded pictures are checked and stored by
content, the page says how long a run takes before it starts (from a measured speed), a run
streams grids and curves, Cancel keeps a checkpoint that the next press resumes, a session runs
one long job at a time, and the result joins the session's model list."""

from __future__ import annotations

import zipfile
from pathlib import Path

import gradio as gr
import pytest
import torch
from PIL import Image

from engine.base.errors import StudioError
from engine.training.faces import render_faces
from engine.training.loop import read_metrics
from engine.training.train_gan import METRICS_NAME
from studio import finetune, models
from studio import session as S
from studio.tabs import train as tab
from studio.ui import UI

TINY16 = str(Path(__file__).parent / "data" / "tiny16" / "generator.safetensors")


@pytest.fixture(autouse=True)
def one_thread():
    """A 16 px model's ops are tiny: on a busy shared CPU a second intra-op thread made
    these runs several times slower and adds nothing the test looks at."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def picture_files(folder: Path, count: int, first_seed: int = 0) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, face in enumerate(render_faces(range(first_seed, first_seed + count), 24)):
        path = folder / f"face{i}.png"
        Image.fromarray(face[:, : 20 + i % 4]).save(path)  # not square, not the model's size
        paths.append(str(path))
    return paths


def page() -> UI:
    names = ["session", "gt_estimate", "gt_status", "gt_plot", "gt_samples", "gt_model",
             "gt_load", "model_box"]
    return UI(model_choices=[("Default", "default")], **{n: n for n in names})


def run_to_end(ui: UI, sess: S.Session, files: list[str], steps: int, **kw) -> dict:
    settings = dict(batch=4, augment="ada", xflip=True, fit="crop") | kw
    last: dict = {}
    for out in tab.train(ui, sess, files, steps, settings["batch"], settings["augment"],
                         settings["xflip"], settings["fit"]):
        last = {**last, **out}
    return last


def test_pictures_are_checked_stored_by_content_and_counted(tmp_path):
    sess = S.new_session(TINY16)
    files = picture_files(tmp_path / "a", 12)
    (tmp_path / "a" / "broken.png").write_bytes(b"\x89PNG not really")
    pics = finetune.prepare_pictures(sess, files + [str(tmp_path / "a" / "broken.png")], 16)
    assert pics.pictures == 12 and "Skipped 1 of 13" in pics.note
    assert pics.data.is_relative_to(finetune.files.session_dir(sess.token))
    again = finetune.prepare_pictures(sess, files + [str(tmp_path / "a" / "broken.png")], 16)
    assert again.data == pics.data  # the same pictures: the same folder, so runs resume

    archive = tmp_path / "set.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in files:
            zf.write(f, f"set/{Path(f).name}")
    assert finetune.prepare_pictures(sess, [str(archive)], 16).pictures == 12
    with pytest.raises(StudioError, match="either one .zip of pictures or several"):
        finetune.prepare_pictures(sess, [str(archive), files[0]], 16)
    with pytest.raises(StudioError, match="3 picture files are too few"):
        finetune.prepare_pictures(sess, files[:3], 16)
    with pytest.raises(StudioError, match="upload your pictures first"):
        finetune.prepare_pictures(sess, [], 16)


def test_estimate_is_said_before_starting_and_warns_past_the_time_limit():
    text = finetune.estimate(6.0, 100, 8, "cpu")
    assert text.startswith("On this CPU (no GPU here) fine-tuning runs at about 6.0 images/s")
    assert "100 steps of 8 pictures take about 2 min" in text
    slow = finetune.estimate(0.5, 500, 16, "cpu")
    assert f"more than this studio's {finetune.LIMITS.gan_minutes} min" in slow
    assert "stops after about 56 steps" in slow  # 30 min * 0.5 img/s / 16


def test_a_run_streams_grids_and_curves_cancels_resumes_and_joins_the_model_list(tmp_path):
    ui = page()
    sess = S.new_session(TINY16)
    files = picture_files(tmp_path / "pics", 12)
    checked = tab.check.__wrapped__(ui, sess, files, 6, 4, "ada", "crop")
    estimate = checked[ui.gt_estimate]
    assert "**12 pictures** ready at 16 px" in estimate and "images/s" in estimate
    assert "this CPU" in estimate or "CUDA" in estimate

    # Cancel as soon as the first step is done: a checkpoint, a sentence, no model yet.
    real_train = finetune.fine_tune

    def cancel_after_first_step(cfg, progress=None, cancel=None, on_metrics=None):
        def metrics(step, m):
            on_metrics(step, m)
            sess.jobs.cancel.set()
        return real_train(cfg, progress, cancel, metrics)

    finetune.fine_tune = cancel_after_first_step
    try:
        stopped = run_to_end(ui, sess, files, 6)
    finally:
        finetune.fine_tune = real_train
    assert "cancelled after a checkpoint" in stopped[ui.gt_status]
    assert ui.gt_model not in stopped and sess.jobs.running is None

    done = run_to_end(ui, sess, files, 6)
    assert "Done: 24 pictures shown in 6 steps" in done[ui.gt_status], done[ui.gt_status]
    path = done[ui.gt_model]
    run = Path(path).parent
    steps = [r["step"] for r in read_metrics(run / METRICS_NAME)]
    assert steps == list(range(1, 7))  # resumed after the cancel: no step twice, none lost
    assert done[ui.gt_samples] and Path(done[ui.gt_samples]).exists()
    assert set(done[ui.gt_plot]["curve"]) == {"loss_g", "loss_d", "aug_p"}
    assert (path in [c[1] for c in models.session_choices(ui.model_choices, sess)])
    G = models.generator(path)  # the export loads like any model
    assert torch.isfinite(G(G.seed_to_z(0))).all()


def test_one_long_job_per_session(tmp_path):
    ui = page()
    sess = S.new_session(TINY16)
    sess.jobs.claim("a projection")
    files = picture_files(tmp_path / "p", 10)
    with pytest.raises(gr.Error, match="already running a long job"):
        next(tab.train(ui, sess, files, 2, 2, "ada", False, "crop"))
    sess.jobs.release()
    with pytest.raises(gr.Error, match="steps must be between 1 and"):
        next(tab.train(ui, sess, files, 10_000, 2, "ada", False, "crop"))
    assert sess.jobs.running is None  # a refused start leaves no job claimed


def test_pictures_are_read_inside_a_long_job_slot_only(tmp_path, monkeypatch):
    """Issue 30 item 4: the pictures were decoded before the long-job slot was taken (the
    check and the run's first step, 9 events at once): three 8 MB zips of 50,000 1x1 PNGs
    cost +1.8 GB. Now only storing them happens outside; every read is inside a slot."""
    from contextlib import contextmanager

    from studio import jobs

    held: list[int] = []
    real_slot = jobs.LANE.slot

    @contextmanager
    def slot(*args, **kwargs):
        with real_slot(*args, **kwargs) as cancel:
            held.append(1)
            try:
                yield cancel
            finally:
                held.pop()

    reads: list[bool] = []
    real_load = finetune.datasets.load_pictures

    def load(*args, **kwargs):
        reads.append(bool(held))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(jobs.LANE, "slot", slot)
    monkeypatch.setattr(finetune.datasets, "load_pictures", load)
    ui = page()
    sess = S.new_session(TINY16)
    files = picture_files(tmp_path / "p", 10)
    checked = tab.check.__wrapped__(ui, sess, files, 1, 2, "none", "crop")
    assert "**10 pictures** ready at 16 px" in checked[ui.gt_estimate]
    done = run_to_end(ui, sess, files, 1, batch=2, augment="none")
    assert "Done" in done[ui.gt_status] and "**10 pictures**" in done[ui.gt_estimate]
    assert len(reads) >= 2 and all(reads), reads


def test_a_picture_set_over_the_run_budget_is_refused_unread(tmp_path, monkeypatch):
    import dataclasses

    monkeypatch.setattr(finetune, "SERVER", dataclasses.replace(finetune.SERVER,
                                                                picture_bytes=9000))
    monkeypatch.setattr(finetune.datasets, "load_pictures", None)  # any read would fail
    sess = S.new_session(TINY16)
    files = picture_files(tmp_path / "p", 12)  # 12 x 16 x 16 x 3 = 9216 bytes once read
    with pytest.raises(StudioError, match=r"12 pictures at 16 px take .*STUDIO_MAX_PICTURE_"):
        finetune.store_pictures(sess, files, 16)
    assert finetune.store_pictures(sess, files[:11], 16)[0].is_dir()


def test_a_running_estimate_comes_from_the_runs_own_speed_and_is_kept():
    """Issue #33 item 9: the time left follows the speed the run measures (the set-up before
    its first report not counted), and the next estimate for the model starts from it."""
    points = [(1, {"time_s": 9.0}), (3, {"time_s": 10.0}), (5, {"time_s": 11.0})]
    assert finetune.run_speed(points, 2) == 4.0  # 4 steps of 2 pictures in 2 s
    assert finetune.run_estimate(points, 100, 2) == (
        "Step 5 of 100: this run measures 4.0 images/s, so about 48 s left.")
    assert finetune.run_speed(points[:1], 2) is None
    assert finetune.run_estimate(points[:1], 100, 2) is None
    finetune.remember_speed("model-sha-for-the-test", 2, "ada", "cpu", 4.0)
    assert finetune.speed(None, "model-sha-for-the-test", 2, "ada", "cpu",
                          measure=False) == 4.0
