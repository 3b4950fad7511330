"""engine.training.loop.StepLoop, the scaffold of the four training/optimisation loops:
resume equals an uninterrupted run, cancel and the time limit checkpoint first, metrics arrive
per step as (step, dict) however they are batched, checkpoints land when due, other settings are
refused (or ignored when not strict). A toy loop (gradient descent on a quadratic) keeps it
fast; the latent encoder shows it on a real loop."""

from __future__ import annotations

import pytest
import torch

from engine.base.errors import StudioError
from engine.training.loop import Checkpointer, LoopCancelled, StepLoop, read_metrics, step_generator


def descend(tmp_path, steps=6, cancel=None, every=2, max_seconds=None, seed=0,
            report_every=1, settings=None, strict=True, **kw):
    """Noisy gradient descent on |x - 3|^2 through a StepLoop; returns (x, loop, metrics)."""
    x = torch.zeros(4, requires_grad=True)
    opt = torch.optim.Adam([x], lr=0.3)
    seen: list[tuple[int, dict]] = []
    loop = StepLoop(steps, checkpoint_every=every, cancel=cancel, max_seconds=max_seconds,
                    checkpointer=Checkpointer(tmp_path / "ckpt.pt", settings or {"seed": seed},
                                              may_change=["steps"], strict=strict),
                    state=lambda: {"x": x.detach().clone(), "opt": opt.state_dict()},
                    on_metrics=lambda step, m: seen.append((step, m)), history_key="loss",
                    metrics_path=tmp_path / "log.jsonl", report_every=report_every, **kw)
    saved = loop.resume()
    if saved is not None:
        with torch.no_grad():
            x.copy_(saved["x"])
        opt.load_state_dict(saved["opt"])
    for step in loop:
        noise = torch.randn(4, generator=step_generator(seed, step, 0, "cpu"))
        loss = (x - 3 + 0.1 * noise).square().sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        loop.end_step({"loss": loss.detach(), "x0": float(x[0].detach())})
    return x.detach(), loop, seen


def cancel_at(n: int):
    calls = {"n": 0}

    def cancel() -> bool:
        calls["n"] += 1
        return calls["n"] > n
    return cancel


def test_cancel_checkpoints_and_the_resumed_run_equals_the_uninterrupted_one(tmp_path):
    whole, loop, seen = descend(tmp_path / "a")
    assert [s for s, _ in seen] == [1, 2, 3, 4, 5, 6]
    assert all(isinstance(m["loss"], float) and m["step"] == s for s, m in seen)
    assert loop.history == [m["loss"] for _, m in seen]
    with pytest.raises(LoopCancelled, match="step 4; run it again to resume"):
        descend(tmp_path / "b", cancel=cancel_at(4))
    assert torch.load(tmp_path / "b" / "ckpt.pt", weights_only=True)["step"] == 4
    x, loop, seen = descend(tmp_path / "b")
    assert torch.equal(x, whole) and loop.resumed_from == 4
    assert [s for s, _ in seen] == [5, 6]
    assert len(loop.history) == 6  # the checkpoint carried the first four
    # The log reads as one run.
    assert [r["step"] for r in read_metrics(tmp_path / "b" / "log.jsonl")] == [1, 2, 3, 4, 5, 6]
    # Longer runs may resume (steps may change); other settings are refused in one sentence.
    descend(tmp_path / "b", steps=8, settings={"seed": 0, "steps": 8})
    with pytest.raises(StudioError, match="was written with seed=0, not 1"):
        descend(tmp_path / "b", steps=9, settings={"seed": 1})
    _, loop, _ = descend(tmp_path / "b", steps=9, settings={"seed": 1}, strict=False)
    assert loop.resumed_from == 0  # not strict: another run's checkpoint is ignored


def test_checkpoints_land_when_due_and_at_the_end(tmp_path):
    saved_at: list[int] = []
    real = Checkpointer.save

    def spy(self, state):
        saved_at.append(state["step"])
        real(self, state)

    Checkpointer.save = spy
    try:
        descend(tmp_path / "a", steps=7, every=3)
        descend(tmp_path / "b", steps=5, every=0)
        with pytest.raises(LoopCancelled):
            descend(tmp_path / "c", steps=5, every=0, cancel=cancel_at(2))
    finally:
        Checkpointer.save = real
    assert saved_at == [3, 6, 7, 5, 2]


def test_a_time_limit_stops_after_a_checkpoint_without_raising(tmp_path):
    _, loop, seen = descend(tmp_path, max_seconds=0)
    assert loop.stopped == "time" and loop.step == 0 and seen == []
    assert torch.load(tmp_path / "ckpt.pt", weights_only=True)["step"] == 0


def test_batched_reports_still_give_every_step_and_one_progress_line_each(tmp_path):
    lines: list[tuple[float, str]] = []
    x, loop, seen = descend(tmp_path / "a", steps=7, report_every=3, every=0,
                            progress=lambda f, m: lines.append((f, m)))
    assert [s for s, _ in seen] == list(range(1, 8))  # all steps, read back in threes
    assert [f for f, _ in lines] == pytest.approx([3 / 7, 6 / 7, 1.0])
    assert lines[-1][1].startswith("step 7/7, loss ")
    whole, _, per_step = descend(tmp_path / "b", steps=7, every=0)
    assert torch.equal(x, whole) and [m for _, m in per_step] == [m for _, m in seen]


def test_units_other_than_steps(tmp_path):
    """The GAN trainer counts images: total and checkpoint_every in images, batch a step."""
    loop = StepLoop(10, per_step=4)
    steps = []
    for step in loop:
        steps.append(step)
        loop.end_step()
    assert steps == [0, 1, 2] and loop.done == 12 and loop.total_steps == 3


def test_latent_encoder_training_resumes_to_the_uninterrupted_result(tiny_generator, tmp_path):
    from safetensors.torch import load_file

    from engine.tools.projector import LatentEncoderCancelled, train_latent_encoder

    G = tiny_generator().requires_grad_(False)
    kw = dict(steps=4, batch=2, seed=5, channels=4, checkpoint_every=0)
    whole = train_latent_encoder(G, out_dir=tmp_path / "a", **kw)
    seen: list[int] = []
    with pytest.raises(LatentEncoderCancelled, match="step 2 of 4"):
        train_latent_encoder(G, out_dir=tmp_path / "b", cancel=cancel_at(2),
                             on_metrics=lambda step, m: seen.append(step), **kw)
    resumed = train_latent_encoder(G, out_dir=tmp_path / "b",
                                   on_metrics=lambda step, m: seen.append(step), **kw)
    assert seen == [1, 2, 3, 4]
    a, b = load_file(str(whole)), load_file(str(resumed))
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(StudioError, match="was written with lr=0.001, not 0.01"):
        train_latent_encoder(G, out_dir=tmp_path / "b", lr=0.01, **kw)
