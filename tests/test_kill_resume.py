"""kill -9 during GAN training, encoder training and projection: the checkpoint left behind
loads, and running the same command again resumes and ends exactly where an uninterrupted
run ends. A full disk while a checkpoint is written leaves the previous one intact.

Each job runs as a real `python -m engine ...` process that saves its state every step; the
SIGKILL lands as soon as the job has logged a given number of steps (drawn per test from a
fixed seed), wherever the next step is then: a step, a save or the rename. Checkpoints are
written beside the target and renamed into place, so the old one stays whole until the new
one is complete.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from tests.helpers.browser import tiny_model_file
from tests.helpers.runs import (
    checkpoint_step,
    engine_cmd,
    kill_after_steps,
    kill_step,
    logged_steps,
    run_to_end,
)


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol=0.0):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=atol, rtol=0), key


def test_gan_training_killed_resumes_to_the_uninterrupted_result(tmp_path):
    flags = ["--data", "faces", "--resolution", "32", "--channel-base", "256",
             "--channel-max", "16", "--z-dim", "16", "--w-dim", "16", "--mapping-layers", "2",
             "--batch", "4", "--pool", "32", "--total-kimg", "0.16", "--snapshot-kimg", "0.004",
             "--sample-kimg", "1", "--r1-interval", "2"]
    run_to_end(engine_cmd("train-gan", "--out", str(tmp_path / "whole"), *flags))

    killed = tmp_path / "killed"
    # 40 steps of 4 images, a checkpoint after each: killed 2 to 20 steps in.
    kill_after_steps(engine_cmd("train-gan", "--out", str(killed), *flags),
                     killed / "checkpoint.pt", logged_steps(killed / "log.jsonl"),
                     kill_step(0, 2, 20))
    state = torch.load(killed / "checkpoint.pt", weights_only=True)  # whole, not torn
    assert 0 < state["nimg"] < 160
    assert not (killed / "generator.safetensors").exists()
    out = run_to_end(engine_cmd("train-gan", "--out", str(killed), *flags))
    assert f"resumed from {killed / 'checkpoint.pt'}" in out
    assert_same_tensors(load_file(str(tmp_path / "whole" / "generator.safetensors")),
                        load_file(str(killed / "generator.safetensors")), atol=1e-6)


def test_encoder_training_killed_resumes_to_the_uninterrupted_result(tmp_path):
    model = tiny_model_file(tmp_path)
    flags = ["--model", model, "--layer", "b16.conv1", "--steps", "60", "--batch", "2",
             "--width", "8", "--max-width", "16", "--blocks", "1", "--checkpoint-every", "1",
             "--preview-every", "0", "--cpu"]
    run_to_end(engine_cmd("train-encoder", "--out", str(tmp_path / "whole"), *flags))

    killed = tmp_path / "killed"
    kill_after_steps(engine_cmd("train-encoder", "--out", str(killed), *flags),
                     killed / "checkpoint.pt", checkpoint_step(killed / "checkpoint.pt"),
                     kill_step(1, 2, 30))
    step = torch.load(killed / "checkpoint.pt", weights_only=True)["step"]
    assert 0 < step < 60
    run_to_end(engine_cmd("train-encoder", "--out", str(killed), *flags))
    assert_same_tensors(load_file(str(tmp_path / "whole" / "encoder.safetensors")),
                        load_file(str(killed / "encoder.safetensors")))
    assert not (killed / "checkpoint.pt").exists()  # removed once the run finished


def test_projection_killed_resumes_to_the_uninterrupted_result(tmp_path):
    model = tiny_model_file(tmp_path)
    photo = tmp_path / "photo.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)).save(photo)
    flags = ["--model", model, "--steps", "150", "--checkpoint-every", "1", "--fps", "10",
             str(photo)]
    run_to_end(engine_cmd("project", "--out", str(tmp_path / "whole"), *flags))

    killed = tmp_path / "killed"
    state = killed / "projection_state.pt"
    kill_after_steps(engine_cmd("project", "--out", str(killed), *flags), state,
                     checkpoint_step(state), kill_step(2, 2, 75))
    step = torch.load(killed / "projection_state.pt", weights_only=True)["step"]
    assert 0 < step < 150
    out = run_to_end(engine_cmd("project", "--out", str(killed), *flags))
    assert "resumed from the checkpoint at step" in out
    whole_w = np.load(tmp_path / "whole" / "w.npy")
    assert np.allclose(np.load(killed / "w.npy"), whole_w, atol=1e-5)
    assert (killed / "projection.mp4").stat().st_size > 0


def test_disk_full_during_a_training_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    import errno
    from dataclasses import replace

    from engine.training.train_gan import CHECKPOINT_NAME, train
    from tests.helpers.runs import tiny_config

    cfg = tiny_config(tmp_path / "run", total_kimg=0.008)
    train(cfg)
    ckpt = tmp_path / "run" / CHECKPOINT_NAME
    before = ckpt.read_bytes()
    real_save = torch.save

    def save_then_fill_the_disk(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        with open(f, "r+b") as half:  # the disk filled half-way through the write
            half.truncate(len(before) // 2)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", save_then_fill_the_disk)
    with pytest.raises(OSError, match="No space left"):
        train(replace(cfg, total_kimg=0.016))
    monkeypatch.undo()
    assert ckpt.read_bytes() == before
    assert sorted(p.name for p in ckpt.parent.iterdir() if p.name.startswith(".")) == []
    train(replace(cfg, total_kimg=0.016))  # and the run resumes from it once space is back
    assert torch.load(ckpt, weights_only=True)["nimg"] == 16
