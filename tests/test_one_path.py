"""One path from a control to an edit (issue 32): the live channel and the Gradio events map a
control's value to a recipe edit through the same session-layer function, so both give the
same recipe and the same sentence for the same input."""

from __future__ import annotations

import pytest

from engine.base.errors import StudioError
from engine.tools.bending import ChannelSelection
from studio import live, ui
from studio import session as S
from studio.limits import LIMITS


def test_walk_seeds_read_alike_on_the_live_channel_and_for_the_walk_video():
    sess = S.new_session("default")
    too_many = ", ".join(["1"] * (LIMITS.grid_values + 1))
    for text in ("1, x", "", too_many):
        with pytest.raises(StudioError) as on_live:
            live.play_frames(sess, {"what": "walk", "seeds": text, "frames": 4, "fps": 10})
        with pytest.raises(StudioError) as on_page:
            ui.floats(text, "keyframe seeds")     # what the Explore tab's walk video reads
        assert str(on_live.value) == str(on_page.value), text


def _bent(op: str = "rotate") -> S.Session:
    sess = S.new_session("default")
    S.add_bend(sess, "b16.conv1", op, ChannelSelection(mode="all"))
    return sess


def test_a_bend_slider_sets_the_same_parameter_live_and_in_the_tab():
    for op in ("threshold", "translate", "sinusoidal"):  # ops with a second numeric slider
        on_live, in_tab = _bent(op), _bent(op)
        live.apply(on_live, [{"kind": "bend", "slot": 1, "value": "0.3"}])
        assert S.set_bend_slot(in_tab, "float", 1, 0.3)
        assert on_live.recipe == in_tab.recipe
        assert on_live.recipe != _bent(op).recipe   # the slot did set something


def test_the_weight_amount_slider_sets_the_same_parameter_live_and_in_the_tab():
    from engine.tools.bending import WeightEdit
    sessions = []
    for _ in range(2):
        sess = S.new_session("default")
        S.add_weight_edit(sess, WeightEdit(layer="b16.conv1", op="scale",
                                           params={"axis": "in", "factor": 2.0},
                                           channels=ChannelSelection(mode="all")))
        sessions.append(sess)
    live.apply(sessions[0], [{"kind": "weight", "index": 0, "value": "0.5"}])
    assert S.set_weight_amount(sessions[1], 0, 0.5)
    assert sessions[0].recipe == sessions[1].recipe
    assert sessions[0].recipe.weight_edits[0].params["factor"] == 0.5
    with pytest.raises(StudioError, match="there is no weight edit 3"):
        live.apply(sessions[0], [{"kind": "weight", "index": 3, "value": "1"}])


def test_a_render_validates_its_bends_once(monkeypatch):
    """recipe.render checks the recipe where it renders, and the taps do not check again
    (they did: recipe.validate, then bending.make_taps)."""
    from engine.recipes import recipe
    from engine.tools import bending
    from studio import models

    sess = _bent("threshold")
    seen = []
    real = bending.validate_bend

    def counting(bend, G, *args, **kwargs):
        seen.append(bend.op)
        return real(bend, G, *args, **kwargs)

    monkeypatch.setattr(bending, "validate_bend", counting)
    monkeypatch.setattr(recipe, "validate_bend", counting)
    recipe.render(sess.recipe, models.load("default"))
    assert seen == ["threshold"]
    bad = sess.recipe
    bad.bends[0].params["threshold"] = float("nan")
    with pytest.raises(StudioError, match=r"bends\[0\]\.params\.threshold"):
        recipe.render(bad, models.load("default"))
