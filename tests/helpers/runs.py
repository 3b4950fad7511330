"""Runs the tests share: the engine's command line run to its end or killed part way,
tiny GAN training settings, and a briefly fine-tuned copy of a generator."""

from __future__ import annotations

import copy
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from engine.training.train_gan import TrainConfig
from tests.helpers.browser import REPO

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def engine_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "engine", *args]


def run_to_end(cmd: list[str]) -> str:
    done = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def kill_after_steps(cmd: list[str], checkpoint: Path, steps_done: Callable[[], int],
                     at_step: int) -> int:
    """Start cmd; SIGKILL it once its first checkpoint exists and steps_done() (its own
    record of the steps it took: logged_steps, checkpoint_step) reaches `at_step`. The kill
    lands at the same point of the run on a fast CPU or a slow one, where a wall-clock delay
    would not. Returns steps_done() at the kill."""
    proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not checkpoint.exists() or steps_done() < at_step:
            if proc.poll() is not None:
                raise AssertionError(f"the job ended before step {at_step}: "
                                     f"{proc.stderr.read()[-2000:]}")
            assert time.monotonic() < deadline, f"not at step {at_step} within 240 s"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL, "the job finished before the kill"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    return steps_done()


def logged_steps(log: Path) -> Callable[[], int]:
    """The number of steps a JSON-lines metrics log (one line a step) holds so far."""
    def count() -> int:
        try:
            return log.read_bytes().count(b"\n")
        except FileNotFoundError:
            return 0
    return count


def checkpoint_step(path: Path) -> Callable[[], int]:
    """The step a checkpoint (written whole, replaced atomically) was saved at; 0 before
    the first."""
    def step() -> int:
        try:
            return int(torch.load(path, weights_only=True)["step"])
        except FileNotFoundError:
            return 0
    return step


def kill_step(seed: int, low: int, high: int) -> int:
    """A step in [low, high] drawn from `seed`: where a killed-and-resumed test kills."""
    return random.Random(seed).randint(low, high)


def tiny_config(out, **kw) -> TrainConfig:
    settings = dict(data="faces", out=str(out), resolution=32, channel_base=256,
                    channel_max=16, z_dim=16, w_dim=16, mapping_layers=2, batch=4, pool=32,
                    total_kimg=0.016, snapshot_kimg=0.008, sample_kimg=0.008, r1_interval=2)
    return TrainConfig(**{**settings, **kw})


def fine_tune_briefly(G: torch.nn.Module, steps: int = 2, seed: int = 0) -> torch.nn.Module:
    """A second model of G's architecture: a few gradient steps on the synthesis network that
    push the images towards a warmer colour, as a real fine-tune moves a base model.
    (Adam's per-parameter step size, done by hand: torch.optim's first call costs seconds.)"""
    H = copy.deepcopy(G).train()
    params = [p.requires_grad_(True) for n, p in H.named_parameters()
              if n.startswith("synthesis.")]
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        z = torch.randn(2, H.cfg.z_dim, generator=gen)
        img = H(z)
        loss = (img[:, 0] - 1).square().mean() + (img[:, 2] + 1).square().mean()
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, g in zip(params, grads):
                p -= 2e-3 * g.sign()
    return H.eval().requires_grad_(False)
