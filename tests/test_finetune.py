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

from engine.checkpoints import load_generator, save_generator
from engine.datasets import render_faces
from engine.errors import StudioError
from engine.loop import read_metrics
from engine.train_gan import (
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
from tests.test_checkpoints import nvlabs_modules, write_nvlabs_pickle  # noqa: F401
from tests.test_kill_resume import (
    assert_same_tensors,
    engine_cmd,
    kill_after_first_checkpoint,
    run_to_end,
)

TINY16 = str(Path(__file__).parent / "data" / "tiny16" / "generator.safetensors")


def samples(G: torch.nn.Module, n: int, first_seed: int = 10_000) -> np.ndarray:
    with torch.no_grad():
        z = torch.cat([G.seed_to_z(s) for s in range(first_seed, first_seed + n)])
        img = torch.cat([G(zb) for zb in z.split(50)])
    return ((img.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def tiny_run(out: Path, **kw) -> TrainConfig:
    settings = dict(base=TINY16, data="faces", pool=16, batch=8, total_kimg=0.016,
                    snapshot_kimg=100, sample_kimg=100, out=str(out))
    return TrainConfig(**{**settings, **kw})


@pytest.mark.slow
def test_finetuning_killed_resumes_to_the_uninterrupted_result(tmp_path):
    flags = ["--base", "default", "--data", "faces:bald", "--pool", "12", "--batch", "4",
             "--total-kimg", "0.048", "--snapshot-kimg", "0.004", "--sample-kimg", "1",
             "--augment", "fixed", "--aug-p", "0.5"]
    run_to_end(engine_cmd("train-gan", "--out", str(tmp_path / "whole"), *flags))
    killed = tmp_path / "killed"
    kill_after_first_checkpoint(engine_cmd("train-gan", "--out", str(killed), *flags),
                                killed / CHECKPOINT_NAME, 3)
    state = torch.load(killed / CHECKPOINT_NAME, weights_only=True)
    assert 0 < state["nimg"] < 48
    out = run_to_end(engine_cmd("train-gan", "--out", str(killed), *flags))
    assert "resumed from" in out
    for name in (MODEL_NAME, "generator.d.safetensors"):
        assert_same_tensors(load_file(str(tmp_path / "whole" / name)),
                            load_file(str(killed / name)), atol=1e-6)
    steps = [r["step"] for r in read_metrics(killed / METRICS_NAME)]
    assert steps == list(range(1, 13))  # the log reads as one run: no repeats, no gaps


def test_freeze_d_keeps_the_first_blocks_and_the_base_discriminator_is_used(tmp_path):
    before = load_discriminator(Path(TINY16.replace(".safetensors", ".d.safetensors")))
    train(tiny_run(tmp_path / "frozen", freeze_d=1))
    after = load_file(str(tmp_path / "frozen" / "generator.d.safetensors"))
    for name, value in before.state_dict().items():
        same = torch.equal(value, after[name])
        assert same if name.startswith("b16.") else True, name
    assert not torch.equal(before.b8.conv0.weight, after["b8.conv0.weight"])


def test_finetuning_from_an_nvlabs_pickle_starts_from_its_own_discriminator(
        tmp_path, nvlabs_modules):  # noqa: F811
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
