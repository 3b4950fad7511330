"""The GAN trainer: a few steps train and export, a resumed run equals an uninterrupted one,
and two CPU processes train together through accelerate (gloo)."""

import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from engine.gan.checkpoints import load_generator
from engine.tools.translator import run_processes
from engine.training.train_gan import CHECKPOINT_NAME, TrainConfig, train
from tests.helpers.runs import tiny_config


def test_train_exports_a_loadable_generator(tmp_path):
    path = train(tiny_config(tmp_path / "run"))
    G = load_generator(path)
    assert G(G.seed_to_z(0)).shape == (1, 3, 32, 32)
    assert list((tmp_path / "run" / "samples").glob("*.png"))
    assert (tmp_path / "run" / CHECKPOINT_NAME).exists()


def test_resume_equals_uninterrupted_run(tmp_path):
    whole = tiny_config(tmp_path / "whole")
    train(whole)
    half = tiny_config(tmp_path / "split", total_kimg=0.008)
    train(half)                                  # stops at 2 steps, checkpoint written
    train(replace(half, total_kimg=0.016))       # resumes from it for the last 2 steps
    a = torch.load(tmp_path / "whole" / CHECKPOINT_NAME, weights_only=True)["G_ema"]
    b = torch.load(tmp_path / "split" / CHECKPOINT_NAME, weights_only=True)["G_ema"]
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6), key


def _train_keeping_weights(cfg: TrainConfig, keep: str) -> None:
    """Train, then save this process's trained weights (G's and D's) to keep/rank{RANK}.pt.

    Only rank 0 writes checkpoints, so the weights are caught where the trainer hands them
    to all_reduce_grads (the real one still runs): those lists are the live parameters.
    """
    from engine.training import train_gan

    seen: dict[int, list[torch.nn.Parameter]] = {}
    real = train_gan.all_reduce_grads

    def all_reduce_and_note(params, world):
        seen.setdefault(id(params), params)
        real(params, world)

    train_gan.all_reduce_grads = all_reduce_and_note
    try:
        train(cfg)
    finally:
        train_gan.all_reduce_grads = real
    weights = {f"{i}.{j}": p.detach().clone()
               for i, params in enumerate(seen.values()) for j, p in enumerate(params)}
    torch.save(weights, Path(keep, f"rank{os.environ.get('RANK', '0')}.pt"))


def test_two_cpu_processes_train_together(tmp_path):
    """Two processes of batch 2 each end with the same weights (gradients are averaged), and
    those are not what one process trains alone on rank 0's half of the data."""
    steps = dict(total_kimg=0.008, snapshot_kimg=0.008, sample_kimg=0.008)
    run_processes(_train_keeping_weights, 2, (tiny_config(tmp_path / "ddp", **steps),
                                              str(tmp_path)))
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    alone_dir = tmp_path / "alone"
    alone_dir.mkdir()
    _train_keeping_weights(tiny_config(tmp_path / "one", batch=2, **steps), str(alone_dir))
    alone = torch.load(alone_dir / "rank0.pt", weights_only=True)
    assert ranks[0].keys() == ranks[1].keys() == alone.keys()
    for key in ranks[0]:
        assert torch.equal(ranks[0][key], ranks[1][key]), key
    assert max(float((ranks[0][k] - alone[k]).abs().max()) for k in alone) > 1e-4
    G = load_generator(tmp_path / "ddp" / "generator.safetensors")
    assert torch.isfinite(G(G.seed_to_z(1))).all()


def _conv_job(out: str) -> None:
    y = torch.nn.functional.conv2d(torch.ones(8, 16, 64, 64), torch.ones(16, 16, 3, 3))
    Path(out, f"rank{os.environ['RANK']}").write_text(f"{float(y.sum()):.0f}")


@pytest.mark.timeout(120)
def test_processes_forked_after_multithreaded_work_do_not_hang(tmp_path):
    """With two intra-op threads, a process that has run a large op (an earlier training)
    has an OpenMP pool; children forked from it hung at their first large op (GNU OpenMP
    is not fork-safe) until each child ran single-threaded, as torchrun's children do."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        parent = torch.nn.functional.conv2d(torch.ones(8, 16, 64, 64), torch.ones(16, 16, 3, 3))
        assert parent.shape == (8, 16, 62, 62)
        run_processes(_conv_job, 2, (str(tmp_path),))
    finally:
        torch.set_num_threads(threads)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rank0", "rank1"]


def test_training_leaves_the_global_random_generator_alone(tmp_path) -> None:
    """A studio's other users draw from torch's global generator: a training must neither
    reseed nor consume it (its initial weights follow cfg.seed through a forked one)."""
    torch.manual_seed(12345)
    expected = torch.get_rng_state()
    train(tiny_config(tmp_path / "run", total_kimg=0.004, snapshot_kimg=0.004,
                      sample_kimg=0.004))
    assert torch.equal(torch.get_rng_state(), expected)
