"""studio/session.py with plain pytest: every edit, all-or-nothing edits, undo/redo, and a
model switch resetting exactly what depends on the model. No Gradio, no server."""

from __future__ import annotations

import math

import pytest

from engine.base.errors import StudioError
from engine.recipes.recipe import Recipe
from engine.tools.bending import ChannelSelection, WeightEdit
from engine.tools.clusters import ClusterResult
from studio import session as S


def _clusters(k: int = 4) -> ClusterResult:
    labels = [c % k for c in range(32)]
    return ClusterResult(layer="b8.conv1", k=k, labels=labels, sizes=[32 // k] * k,
                         inertia=[0.0] * k, order=list(range(32)), samples=16)


@pytest.fixture
def sess() -> S.Session:
    return S.new_session("tiny")


def _edit(sess: S.Session, fn, *args, **kwargs):
    with S.edit(sess):
        return fn(sess, *args, **kwargs)


def test_bend_edits_add_set_move_toggle_remove(sess):
    _edit(sess, S.add_bend, "b8.conv1", "rotate", ChannelSelection())
    _edit(sess, S.add_bend, "b16.conv0", "multiply", ChannelSelection(mode="random",
                                                                       fraction=0.25))
    assert [b.op for b in sess.recipe.bends] == ["rotate", "multiply"] and sess.current == 1
    _edit(sess, S.set_bend_param, 0, "angle", "90")
    assert sess.recipe.bends[0].params["angle"] == 90.0 and sess.current == 0
    assert _edit(sess, S.move, "bend", 0, +1) == 1
    assert [b.op for b in sess.recipe.bends] == ["multiply", "rotate"] and sess.current == 1
    _edit(sess, S.toggle, "bend", 1, False)
    assert sess.recipe.bends[1].enabled is False
    _edit(sess, S.remove, "bend", 1)
    assert [b.op for b in sess.recipe.bends] == ["multiply"] and sess.current == 0
    _edit(sess, S.remove, "bend", None)
    assert sess.recipe.bends == [] and sess.current is None


def test_weight_edits_can_be_changed_and_removed_one_at_a_time(sess):
    for factor in (2.0, 3.0):
        _edit(sess, S.add_weight_edit, WeightEdit(layer="b8.conv1", op="scale",
                                                  params={"factor": factor, "axis": "in"}))
    _edit(sess, S.set_weight_edit, 0, factor=5)
    assert sess.recipe.weight_edits[0].params["factor"] == 5.0
    _edit(sess, S.move, "weight edit", 1, -1)
    assert [e.params["factor"] for e in sess.recipe.weight_edits] == [3.0, 5.0]
    _edit(sess, S.remove, "weight edit", 0)
    assert [e.params["factor"] for e in sess.recipe.weight_edits] == [5.0]
    with pytest.raises(StudioError, match="no parameter"):
        _edit(sess, S.set_weight_edit, 0, volume=1)


def test_latent_edits_and_projection(sess):
    _edit(sess, S.set_latent, seed=3.5, psi=0.5, mix_seed=7)
    lat = sess.recipe.latent
    assert (lat.seed, lat.psi, lat.mix_seed) == (3.5, 0.5, 7)
    _edit(sess, S.set_directions, "sefa", [0, 1.5, 0, -2], 0, None)
    assert [(d.index, d.amount) for d in lat.directions] == [(1, 1.5), (3, -2.0)]
    _edit(sess, S.add_layer_edit, "negate", 2)
    _edit(sess, S.add_layer_edit, "swap", 3, seed=9)
    _edit(sess, S.remove_layer_edit, 0)
    assert [(e.op, e.w_index) for e in sess.recipe.latent.layer_edits] == [("swap", 3)]
    with pytest.raises(StudioError, match="fit a photo"):
        _edit(sess, S.send_projection)
    sess.projected = [[0.0] * 4] * 6
    _edit(sess, S.send_projection)
    lat = sess.recipe.latent
    assert lat.w == [[0.0] * 4] * 6 and lat.psi == 1.0 and lat.layer_edits == []
    _edit(sess, S.set_latent, seed=4)  # moving the seed leaves the projected latent
    assert sess.recipe.latent.w is None


def test_cluster_selection(sess):
    with pytest.raises(StudioError, match="compute clusters first"):
        _edit(sess, S.select_clusters, [0])
    S.set_clusters(sess, _clusters(4))
    assert _edit(sess, S.select_clusters, [2, 0]) == [0, 2]
    _edit(sess, S.toggle_cluster, 2)
    assert sess.selected == [0]
    with pytest.raises(StudioError, match="no cluster 9"):
        _edit(sess, S.select_clusters, [9])
    sel = S.selection_for(sess, "selected clusters")
    assert (sel.mode, sel.ids, sel.k, sel.layer) == ("clusters", [0], 4, "b8.conv1")


@pytest.mark.parametrize("fraction", [math.nan, 0.0, 1.5])
def test_a_failed_edit_leaves_the_session_exactly_as_it_was(sess, fraction):
    _edit(sess, S.add_bend, "b8.conv1", "rotate", ChannelSelection())
    before = sess.snapshot()
    with pytest.raises(StudioError):
        with S.edit(sess):
            S.add_bend(sess, "b8.conv1", "rotate", S.selection_for(sess, "random fraction",
                                                                   fraction))
    with pytest.raises(ValueError):
        with S.edit(sess):  # any failure after the change, e.g. the render, rolls back too
            S.set_bend_param(sess, 0, "angle", 45)
            raise ValueError("render failed")
    assert sess.recipe == before["recipe"] and sess.current == before["current"]
    assert sess.undo == before["undo"] and sess.redo == before["redo"]


def test_undo_redo_walks_the_history_and_a_new_edit_clears_redo(sess):
    start = Recipe.from_json(sess.recipe.to_json())
    for angle in (10, 20, 30):
        if not sess.recipe.bends:
            _edit(sess, S.add_bend, "b8.conv1", "rotate", ChannelSelection())
        _edit(sess, S.set_bend_param, 0, "angle", angle)
    assert S.undo(sess) and sess.recipe.bends[0].params["angle"] == 20.0
    assert S.undo(sess) and sess.recipe.bends[0].params["angle"] == 10.0
    assert S.redo(sess) and sess.recipe.bends[0].params["angle"] == 20.0
    _edit(sess, S.set_latent, psi=0.3)
    assert not S.redo(sess)  # a new edit forgets what was undone
    while S.undo(sess):
        pass
    assert sess.recipe == start and sess.current is None
    _edit(sess, S.set_latent, psi=0.7)  # no change: nothing to undo
    assert sess.undo == []


def test_a_gesture_is_one_undo_entry_however_many_steps(sess):
    """A slider dragged over the live channel: every step applies, one entry undoes them."""
    start = Recipe.from_json(sess.recipe.to_json())
    for psi in (0.1, 0.2, 0.3):
        with S.gesture(sess, "drag-1"):
            S.set_latent(sess, psi=psi)
    assert sess.recipe.latent.psi == 0.3 and len(sess.undo) == 1
    with S.gesture(sess, "drag-1"):
        S.set_latent(sess, psi=0.3)  # no change: the entry stays as it was
    with pytest.raises(StudioError), S.gesture(sess, "drag-1"):
        S.set_latent(sess, psi=0.9, nonsense=1)  # a failed step leaves nothing behind
    assert sess.recipe.latent.psi == 0.3 and len(sess.undo) == 1
    with S.gesture(sess, "drag-2"):  # the next drag: its own entry
        S.set_latent(sess, seed=5.0)
    assert len(sess.undo) == 2
    _edit(sess, S.set_latent, cutoff=2)  # another edit in between ends the drag's entry
    with S.gesture(sess, "drag-2"):
        S.set_latent(sess, seed=6.0)
    assert len(sess.undo) == 4 and sess.redo == []
    assert S.undo(sess) and sess.recipe.latent.seed == 5.0 and sess.recipe.latent.cutoff == 2
    with S.gesture(sess, "drag-2"):  # an undo took the drag's entry: a new one
        S.set_latent(sess, seed=7.0)
    assert len(sess.undo) == 4 and sess.redo == []
    while S.undo(sess):
        pass
    assert sess.recipe == start


def test_history_is_bounded(sess):
    for i in range(S.UNDO_DEPTH + 20):
        _edit(sess, S.set_latent, seed=float(i + 1))
    assert len(sess.undo) == S.UNDO_DEPTH
    while S.undo(sess):
        pass
    assert sess.recipe.latent.seed == 20.0  # the oldest 20 fell off


def test_switch_model_resets_what_depends_on_the_model(sess):
    sess.uploads.add("/uploads/x.png")
    token, jobs = sess.token, sess.jobs
    _edit(sess, S.add_bend, "b8.conv1", "rotate", ChannelSelection())
    S.set_clusters(sess, _clusters())
    sess.selected, sess.projected, sess.live = [1], [[0.0]], ("key", object())
    S.switch_model(sess, "other")
    assert sess.model == "other" and sess.recipe.bends == []
    assert (sess.clusters, sess.selected, sess.projected, sess.live, sess.current) == \
        (None, [], None, None, None)
    assert sess.undo == [] and sess.redo == []
    assert (sess.token, sess.jobs, sess.uploads) == (token, jobs, {"/uploads/x.png"})


def test_load_and_merge_recipes(sess):
    _edit(sess, S.add_bend, "b8.conv1", "rotate", ChannelSelection())
    other = S.new_session("tiny")
    _edit(other, S.add_bend, "b16.conv0", "invert", ChannelSelection())
    _edit(sess, S.load_recipe, other.recipe, merge=True)
    assert [b.op for b in sess.recipe.bends] == ["rotate", "invert"]
    S.set_clusters(sess, _clusters())
    _edit(sess, S.load_recipe, Recipe(model="elsewhere"))
    assert sess.model == "elsewhere" and sess.clusters is None and sess.recipe.bends == []
    assert S.undo(sess) and sess.model == "tiny"
    with pytest.raises(StudioError, match="not the one loaded"):
        _edit(sess, S.load_recipe, Recipe(model="elsewhere"), merge=True)


# ----------------------------------------------------------------------------------------
# Mappings follow the bends, edits and direction sliders they drive.

def _knob(name: str, target: str, number: int = 21) -> dict:
    return {"name": name, "target": target, "in": [0, 127], "out": [0, 1],
            "source": {"kind": "midi", "type": "cc", "channel": 0, "number": number}}


def _mapping_problems(sess: S.Session) -> list[str]:
    from engine.recipes.mappings import mapping_problems
    return mapping_problems(sess.recipe)


def test_mappings_follow_a_moved_bend_and_go_with_a_removed_one(sess):
    _edit(sess, S.add_bend, "b16.conv1", "rotate", ChannelSelection())
    _edit(sess, S.add_bend, "b32.conv1", "rotate", ChannelSelection())
    _edit(sess, S.set_bend_param, 0, "angle", 10)
    _edit(sess, S.set_bend_param, 1, "angle", 20)
    sess.recipe.mappings = [_knob("knob", "bends.0.params.angle"),
                            _knob("other", "bends[1].params.angle", 22),
                            _knob("psi", "latent.psi", 23)]
    _edit(sess, S.move, "bend", 0, +1)
    targets = {m["name"]: m["target"] for m in sess.recipe.mappings}
    assert targets == {"knob": "bends.1.params.angle", "other": "bends.0.params.angle",
                       "psi": "latent.psi"}
    assert sess.recipe.bends[1].layer == "b16.conv1"  # the knob still drives b16.conv1
    assert _edit(sess, S.remove, "bend", 1) == ["knob"]
    assert [m["name"] for m in sess.recipe.mappings] == ["other", "psi"]
    assert _mapping_problems(sess) == []
    assert _edit(sess, S.remove, "bend", None) == ["other"]
    assert _mapping_problems(sess) == []


def test_mappings_follow_weight_and_layer_edits(sess):
    for factor in (2.0, 3.0, 4.0):
        _edit(sess, S.add_weight_edit, WeightEdit(layer="b8.conv1", op="scale",
                                                  params={"factor": factor, "axis": "in"}))
    for seed in (1, 2):
        _edit(sess, S.add_layer_edit, "randomize", 0, seed)
    sess.recipe.mappings = [_knob("w2", "weight_edits.2.params.factor"),
                            _knob("w0", "weight_edits.0.params.factor", 22),
                            _knob("l1", "latent.layer_edits.1.seed", 23),
                            _knob("l0", "latent.layer_edits.0.seed", 24)]
    assert _edit(sess, S.remove, "weight edit", 1) == []
    assert _edit(sess, S.remove_layer_edit, 0) == ["l0"]
    targets = {m["name"]: m["target"] for m in sess.recipe.mappings}
    assert targets == {"w2": "weight_edits.1.params.factor",
                       "w0": "weight_edits.0.params.factor", "l1": "latent.layer_edits.0.seed"}
    assert sess.recipe.latent.layer_edits[0].seed == 2
    assert _mapping_problems(sess) == []


def test_mappings_follow_direction_sliders(sess):
    _edit(sess, S.set_directions, "sefa", [1.0, 2.0, 3.0], 0, None)
    sess.recipe.mappings = [_knob("d2", "latent.directions.2.amount"),
                            _knob("d0", "latent.directions.0.amount", 22)]
    # Slider 1 goes to 0 (its edit leaves the list): slider 2's mapping follows it.
    _edit(sess, S.set_directions, "sefa", [1.0, 0.0, 3.0], 0, None)
    targets = {m["name"]: m["target"] for m in sess.recipe.mappings}
    assert targets == {"d2": "latent.directions.1.amount", "d0": "latent.directions.0.amount"}
    assert sess.recipe.latent.directions[1].index == 2
    # A mapped slider moved to 0 keeps its edit at 0 (renders nothing), so its mapping stays.
    _edit(sess, S.set_directions, "sefa", [0.0, 0.0, 3.0], 0, None)
    assert [(d.index, d.amount) for d in sess.recipe.latent.directions] == [(0, 0.0), (2, 3.0)]
    assert _mapping_problems(sess) == []
    # A boundary file has one slider: the mapping of slider 2 goes.
    assert _edit(sess, S.set_directions, "file", [0.0, 0.0, 3.0], 0, None, "b.npy") == ["d2"]
    assert _mapping_problems(sess) == []


@pytest.mark.parametrize("amounts, position", [([0.0, 0.0, 1.5], 0), ([0.0, 1.0, 1.5], 1)])
def test_learning_a_direction_slider_drives_that_sliders_edit(sess, amounts, position):
    from engine.recipes.mappings import apply
    from studio import sources
    _edit(sess, S.set_directions, "sefa", amounts, 0, None)
    event = {"kind": "midi", "type": "cc", "channel": 0, "number": 21}
    _edit(sess, sources.learn, {"event": event, "name": "knob", "direction": 2,
                                "out": [-5, 5]})
    assert sess.recipe.mappings[0]["target"] == f"latent.directions.{position}.amount"
    driven = apply(sess.recipe, {"knob": 4.0}).latent.directions
    assert {d.index: d.amount for d in driven}[2] == 4.0
    # A slider at 0 has no edit yet: learning it makes one at 0 (rendering nothing) in
    # slider order, and the knob learned before still drives slider 2.
    _edit(sess, sources.learn, {"event": {**event, "number": 22}, "name": "zero",
                                "direction": 0, "out": [-5, 5]})
    assert [d.index for d in sess.recipe.latent.directions][0] == 0
    assert sess.recipe.latent.directions[0].amount == 0.0
    driven = apply(sess.recipe, {"knob": 4.0, "zero": -2.0}).latent.directions
    expected = {0: -2.0, 2: 4.0} | ({1: amounts[1]} if amounts[1] else {})
    assert {d.index: d.amount for d in driven} == expected
    assert _mapping_problems(sess) == []
    with pytest.raises(StudioError, match="direction sliders"):
        _edit(sess, sources.learn, {"event": event, "name": "x", "direction": "0"})
