"""Fine-tuning with ADA: the default model moves towards a new picture set, a killed run
resumes exactly, ADA's p reacts to overfitting, FreezeD freezes, unusable bases and picture
sets are refused in one sentence, the export loads in the zoo, and every CLI option has help."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from engine.base.errors import StudioError
from engine.base.metrics import swd
from engine.gan.checkpoints import load_generator, save_generator
from engine.models import zoo
from engine.training.datasets import variant_seeds
from engine.training.faces import render_faces
from engine.training.loop import read_metrics
from engine.training.train_gan import (
    CARD_NAME,
    CHECKPOINT_NAME,
    METRICS_NAME,
    MODEL_NAME,
    TrainConfig,
    TrainingCancelled,
    load_discriminator,
    train,
)
from tests.conftest import make_tiny_generator
from tests.helpers.nvlabs_pickles import write_nvlabs_pickle
from tests.helpers.runs import (
    engine_cmd,
    kill_after_steps,
    kill_step,
    logged_steps,
    run_to_end,
)

TINY16 = str(Path(__file__).parent / "data" / "tiny16" / "generator.safetensors")


@pytest.fixture(autouse=True)
def one_thread():
    """These networks are tiny: a second intra-op thread only adds synchronisation, and on a
    shared, busy CPU it made these runs 5-10x slower (the subprocesses run with
    OMP_NUM_THREADS=1 too, so every run here computes alike)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def samples(G: torch.nn.Module, n: int, first_seed: int = 10_000) -> np.ndarray:
    with torch.no_grad():
        z = torch.cat([G.seed_to_z(s) for s in range(first_seed, first_seed + n)])
        img = torch.cat([G(zb) for zb in z.split(50)])
    return ((img.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def tiny_run(out: Path, **kw) -> TrainConfig:
    settings = dict(base=TINY16, data="faces", pool=16, batch=8, total_kimg=0.016,
                    snapshot_kimg=100, sample_kimg=100, out=str(out))
    return TrainConfig(**{**settings, **kw})


# Deterministic columns of the per-step log (times and images/s are not).
EXACT = ("loss_g", "loss_d", "d_real", "d_fake", "sign_real", "aug_p", "r1", "kimg")


@pytest.mark.slow
def test_finetuning_moves_the_default_model_to_bald_faces_and_resumes_exactly(tmp_path):
    """200 bald faces shown to the default model (25 steps of 8) in a process killed after
    its first checkpoint (5 to 12 logged steps in) and run again: the resumed run ends
    closer to bald faces (SWD) and its every step equals an uninterrupted run's.

    Bald faces are 8% of the procedural faces and differ clearly under SWD (58 between all
    faces and bald ones, 21 between two draws of bald ones; x1e3, 100 images). Measured on
    the default model: SWD to bald faces 79.5 before; after these 25 steps 58.6, 63.7, 61.4
    (seeds 0, 1, 2): the margin of 8 is half the smallest fall. (At the from-scratch lr_g
    0.0025 the samples turn green and SWD rises: see README.)"""
    flags = ["--base", "default", "--data", "faces:bald", "--pool", "200", "--batch", "8",
             "--total-kimg", "0.2", "--lr-g", "0.0005", "--snapshot-kimg", "0.032",
             "--sample-kimg", "1"]
    killed = tmp_path / "killed"
    # A checkpoint every 4 steps: killed 5 to 12 steps in, after the first.
    kill_after_steps(engine_cmd("train-gan", "--out", str(killed), *flags),
                     killed / CHECKPOINT_NAME, logged_steps(killed / METRICS_NAME),
                     kill_step(4, 5, 12))
    at_kill = int(torch.load(killed / CHECKPOINT_NAME, weights_only=True)["step"])
    assert 0 < at_kill < 25
    assert "resumed from" in run_to_end(engine_cmd("train-gan", "--out", str(killed), *flags))
    log = read_metrics(killed / METRICS_NAME)
    assert [r["step"] for r in log] == list(range(1, 26))  # one run: no repeats, no gaps

    # An uninterrupted run through two steps past the checkpoint: the same numbers at every
    # step, so the resumed run continued from exactly the state the killed one saved
    # (weights, both optimisers, EMA, ADA, the random draws).
    whole = tmp_path / "whole"
    upto = ["--total-kimg", f"{(at_kill + 2) * 8 / 1000:g}"]
    run_to_end(engine_cmd("train-gan", "--out", str(whole), *flags, *upto))
    reference = read_metrics(whole / METRICS_NAME)
    assert len(reference) == at_kill + 2
    for ours, theirs in zip(log, reference):
        assert {k: ours.get(k) for k in EXACT} == {k: theirs.get(k) for k in EXACT}, ours["step"]

    target = render_faces(variant_seeds("bald", 100, first_seed=100_000), 64)
    before = swd(samples(zoo.load("default").G, 100), target)["mean"]
    after = swd(samples(load_generator(killed / MODEL_NAME), 100), target)["mean"]
    assert after < before - 8, (before, after)
    card = (killed / CARD_NAME).read_text()
    assert "fine-tuned from" in card and "0.2 kimg" in card and "bald" in card
    assert zoo.load(str(killed / MODEL_NAME)).resolution == 64  # the studio's loader takes it


@pytest.mark.slow
def test_ada_p_rises_on_a_tiny_set_and_stays_near_zero_on_a_large_one(tmp_path):
    """The same run (tiny16, which already draws faces and has its own D; seed 0; 200 steps
    of 8) on 10 pictures and on 1000: on 10 the discriminator learns them by heart (more than
    60% of D(real) > 0) and ADA raises p; on 1000 it cannot, and p stays near 0.

    Measured with these settings over seeds 0-5, mean p over the second half: 0.029-0.055 on
    10 pictures, 0.001-0.007 on 1000; the smallest gap between the two of one seed was
    0.025. p moves in steps of 0.02 (32 images / 1.6 kimg), so one lucky adjustment on the
    large set lasts a while: the test compares the two sets at the same steps with half the
    smallest gap, and bounds the large set's mean by twice its largest, not its maximum."""
    p = {}
    for pool in (10, 1000):
        train(tiny_run(tmp_path / str(pool), pool=pool, total_kimg=1.6, ada_kimg=1.6,
                       ada_interval=4))
        log = read_metrics(tmp_path / str(pool) / METRICS_NAME)
        assert len(log) == 200
        p[pool] = np.array([r["aug_p"] for r in log])
    late_tiny, late_large = p[10][100:].mean(), p[1000][100:].mean()
    assert late_tiny - late_large >= 0.0125, (late_tiny, late_large)
    assert late_large <= 0.015, p[1000]
    assert p[10].max() >= 0.04  # at least two adjustments up


def test_freeze_d_keeps_the_first_blocks_and_the_base_discriminator_is_used(tmp_path):
    before = load_discriminator(Path(TINY16.replace(".safetensors", ".d.safetensors")))
    train(tiny_run(tmp_path / "frozen", freeze_d=1))
    after = load_file(str(tmp_path / "frozen" / "generator.d.safetensors"))
    for name, value in before.state_dict().items():
        same = torch.equal(value, after[name])
        assert same if name.startswith("b16.") else True, name
    assert not torch.equal(before.b8.conv0.weight, after["b8.conv0.weight"])


def test_finetuning_from_an_nvlabs_pickle_starts_from_its_own_discriminator(
        tmp_path, nvlabs_modules):
    # tiny16's G and D written the way NVlabs' training loop pickles them (persistence
    # records carrying module_src, which must never run), then fine-tuned from that file.
    G = load_generator(TINY16)
    D = load_discriminator(Path(TINY16.replace(".safetensors", ".d.safetensors")))
    pkl = tmp_path / "network-snapshot-000100.pkl"
    write_nvlabs_pickle(pkl, G, nvlabs_modules, D)
    train(tiny_run(tmp_path / "nv", base=str(pkl), freeze_d=1))
    after = load_file(str(tmp_path / "nv" / "generator.d.safetensors"))
    # The frozen block is the pickle's own, bit for bit (a fresh D would be random there),
    # and the trained blocks moved only by two small steps away from it.
    for name, value in D.state_dict().items():
        if name.startswith("b16."):
            assert torch.equal(value, after[name]), name
    moved = max(float((after[n] - v).abs().max()) for n, v in D.state_dict().items()
                if n.startswith("b8.") and v.dtype.is_floating_point)
    assert 0 < moved < 0.05, moved
    card = (tmp_path / "nv" / CARD_NAME).read_text()
    assert "network-snapshot-000100.pkl" in card
    assert not nvlabs_modules.marker.exists()


def test_cancel_writes_a_checkpoint_and_says_how_to_resume(tmp_path):
    with pytest.raises(TrainingCancelled, match="same output folder to resume"):
        train(tiny_run(tmp_path / "c"), cancel=lambda: True)
    assert (tmp_path / "c" / CHECKPOINT_NAME).exists()


def test_unusable_bases_and_settings_are_refused_in_one_sentence(tmp_path):
    grey = tmp_path / "grey.safetensors"
    save_generator(make_tiny_generator(0, img_channels=1), grey, source="test")
    with pytest.raises(StudioError, match="1-channel images but the training pictures are RGB"):
        train(tiny_run(tmp_path / "g", base=str(grey)))
    labelled = tmp_path / "labelled.safetensors"
    save_generator(make_tiny_generator(0, c_dim=3), labelled, source="test")
    with pytest.raises(StudioError, match="conditional model"):
        train(tiny_run(tmp_path / "l", base=str(labelled)))
    with pytest.raises(StudioError, match="makes 16 px images, not 32 px"):
        train(tiny_run(tmp_path / "r", resolution=32))
    with pytest.raises(StudioError, match="--freeze-d must be between 0 and 2"):
        train(tiny_run(tmp_path / "f", freeze_d=5))
    train(tiny_run(tmp_path / "s"))
    with pytest.raises(StudioError, match="was written with lr_g=0.0025, not 0.001"):
        train(tiny_run(tmp_path / "s", lr_g=0.001, total_kimg=0.032))


def test_picture_sets_from_a_zip_with_bad_files_and_too_few_pictures(tmp_path):
    faces = render_faces(range(14), 48)
    archive = tmp_path / "pictures.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for i, face in enumerate(faces):
            path = tmp_path / f"f{i}.png"
            Image.fromarray(face[:, : 30 + i]).save(path)  # non-square, different widths
            zf.write(path, f"set/f{i}.png")
        zf.writestr("set/broken.jpg", b"not a jpeg at all")
        zf.writestr("__MACOSX/set/._f0.png", b"resource fork")
    notes = []
    cfg = tiny_run(tmp_path / "z", data=str(archive), fit="pad")
    train(cfg, on_metrics=lambda step, m: notes.append((step, m["aug_p"])))
    assert [s for s, _ in notes] == [1, 2]  # structured per-step metrics reach the caller
    card = (tmp_path / "z" / CARD_NAME).read_text()
    assert "14 pictures from the zip pictures.zip (pad to square)" in card

    few = tmp_path / "few"
    few.mkdir()
    for i in range(3):
        Image.fromarray(faces[i]).save(few / f"{i}.png")
    (few / "bad.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(StudioError, match="has 3 readable pictures; training needs at least"):
        train(tiny_run(tmp_path / "few_run", data=str(few)))


def test_every_cli_option_has_help():
    from engine.__main__ import build_parser

    parser = build_parser("train-gan")
    sub = next(a for a in parser._actions if a.dest == "verb").choices["train-gan"]
    options = [a for a in sub._actions if a.option_strings and a.dest != "help"]
    assert len(options) >= 30
    for action in options:
        assert action.help and len(action.help) > 15, action.option_strings
