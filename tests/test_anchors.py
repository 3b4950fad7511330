"""The anchor bank of a model without a shipped one (issue 34): rendered once per model, with
progress and cancel, kept on disk by its weights; never inside an interactive call."""

from __future__ import annotations

import copy
import threading

import pytest
import torch

from engine.base.errors import StudioError
from engine.tools import anchors
from tests.conftest import make_tiny_generator
from tests.helpers.nvlabs_pickles import assert_one_sentence


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ACTIVATION_STUDIO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(anchors, "build_count", lambda G: 80)   # 2 batches: 64 and 16
    return tmp_path / "cache" / "anchors"


def no_rendering(*args, **kwargs):
    raise AssertionError("an anchor bank was rendered")


def test_bank_is_rendered_once_with_progress_then_read_from_disk(cache, monkeypatch):
    G = make_tiny_generator(seed=11).eval()
    steps: list[tuple[float, str]] = []
    bank = anchors.bank_for(G, progress=lambda f, m: steps.append((f, m)))
    assert bank.count == 80 and steps[-1] == (1.0, "anchor bank: 80 of 80 images")
    assert [f for f, _ in steps] == sorted(f for f, _ in steps) and len(steps) == 2
    assert [p.name for p in cache.iterdir()] == [f"{bank.weights_sha256}.anchors.safetensors"]
    # Another process (a copy of the model with the same weights) reads it back: nothing is
    # rendered, and it chooses exactly as the bank that was built.
    monkeypatch.setattr(anchors, "build_bank", no_rendering)
    again = anchors.bank_for(copy.deepcopy(G))
    assert again is not bank
    assert torch.equal(again.layouts, bank.layouts) and torch.equal(again.colours, bank.colours)
    assert anchors.bank_for(G) is bank   # kept with the model meanwhile


def test_interactive_calls_never_render_a_bank(cache, monkeypatch):
    G = make_tiny_generator(seed=12).eval()
    monkeypatch.setattr(anchors, "build_bank", no_rendering)
    with anchors.only_ready(), pytest.raises(StudioError) as err:
        anchors.bank_for(G)
    assert_one_sentence(err.value)
    assert "anchor bank" in str(err.value) and anchors.ready_bank(G) is None


def test_a_cancelled_bank_is_neither_kept_nor_written(cache):
    G = make_tiny_generator(seed=13).eval()
    stop = threading.Event()
    with pytest.raises(anchors.BankCancelled):
        anchors.bank_for(G, progress=lambda f, m: stop.set(), cancel=stop)
    assert anchors.ready_bank(G) is None and not cache.exists()


def test_a_damaged_cached_bank_is_rendered_again(cache):
    G = make_tiny_generator(seed=14).eval()
    bank = anchors.bank_for(G)
    path = cache / f"{bank.weights_sha256}.anchors.safetensors"
    path.write_bytes(b"not a bank")
    fresh = anchors.bank_for(copy.deepcopy(G))
    assert torch.equal(fresh.layouts, bank.layouts)


def test_studio_makes_the_bank_as_a_long_job_and_interactive_renders_refuse(cache, tmp_path):
    """Translate with 'blend towards: match' on a model without a bank: an interactive call
    (a webcam frame, a render) is refused in a sentence; the Translate button's long job
    makes the bank in a slot of the long-job lane, reporting progress; then it is ready."""
    from engine.recipes import recipe
    from studio import jobs, models, translation
    from studio import session as S
    from studio.tabs.translate import anchor_bank_job
    from tests.helpers.browser import tiny_model_file

    sess = S.new_session(tiny_model_file(tmp_path))
    sess.recipe.translator = recipe.TranslatorSpec(encoder="unused", image="unused",
                                                   strength=0.5, anchor="match")
    assert translation.needs_anchor_bank(sess)
    G = models.load(sess.model).G
    with pytest.raises(StudioError) as err:
        jobs.interactive(anchors.bank_for)(G)
    assert_one_sentence(err.value)
    lines: list[tuple[float, str]] = []
    anchor_bank_job(sess, lambda fraction, desc=None: lines.append((fraction, desc)))
    assert lines[-1] == (1.0, "anchor bank: 80 of 80 images")
    assert not translation.needs_anchor_bank(sess) and sess.jobs.running is None
    assert jobs.interactive(anchors.bank_for)(G) is anchors.ready_bank(G)
    sess.recipe.translator.anchor = "latent"   # blending towards the latent needs no bank
    anchors._banks.clear()
    assert not translation.needs_anchor_bank(sess)
