"""Mappings: schema and validation, ranges and curves, smoothing, apply with clamping, learn,
and performances fed synthetic MIDI-like and audio-like event streams."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
from conftest import make_tiny_generator

from engine.base.errors import StudioError
from engine.base.limits import Limits
from engine.recipes import bundle, mappings
from engine.recipes.mappings import MappingError, Performer, Smoother, map_value
from engine.recipes.recipe import Recipe, RecipeError, TranslatorSpec, render, set_field, validate
from engine.tools.bending import Bend, WeightEdit
from engine.tools.blend import BlendSpec
from engine.tools.latents import DirectionEdit, LatentSpec, LayerEdit

G = make_tiny_generator()
CC21 = {"kind": "midi", "type": "cc", "channel": 0, "number": 21}


def knob(name="knob1", target="bends.0.params.angle", **kw) -> dict:
    return {"name": name, "target": target, "source": dict(CC21), "out": [0, 180], **kw}


def performance_recipe() -> Recipe:
    return Recipe(latent=LatentSpec(seed=3.0, psi=0.7,
                                    directions=[DirectionEdit("sefa", 0, 0.0)]),
                  bends=[Bend("b8.conv0", "rotate", {"angle": 30.0})],
                  weight_edits=[WeightEdit("b16.conv0", "scale", {"factor": 1.0})],
                  mappings=[knob(), {"name": "bass", "target": "latent.psi",
                                     "source": {"kind": "audio", "feature": "bass"},
                                     "out": [0.5, 1.0], "curve": "smoothstep",
                                     "attack": 0.05, "release": 0.4}])


# ----------------------------------------------------------------------------------------
# Schema: part of the recipe.


def test_mappings_save_load_bundle_and_render(tmp_path):
    r = performance_recipe()
    path = r.save(tmp_path / "set.json")
    assert json.loads(path.read_text())["mappings"] == r.mappings
    loaded = Recipe.load(path)
    assert loaded.mappings == r.mappings
    zipped = bundle.save_bundle(r, tmp_path / "set.zip")
    unpacked = bundle.read_bundle(zipped, tmp_path / "unpacked")
    assert unpacked.mappings == r.mappings
    validate(loaded, G)  # mappings do not change the picture: the recipe renders as before
    plain = copy.deepcopy(loaded)
    plain.mappings = []
    assert np.array_equal(np.asarray(render(loaded, G)), np.asarray(render(plain, G)))


def test_a_file_without_mappings_reads_with_none():
    assert Recipe.from_json('{"latent": {"seed": 2}}').mappings == []


def test_a_bad_mapping_makes_the_recipe_invalid_with_one_sentence():
    data = json.loads(performance_recipe().to_json())
    data["mappings"][0]["target"] = "bends.3.params.angle"
    r = Recipe.from_dict(data)  # well-formed JSON: the check is semantic
    with pytest.raises(RecipeError) as err:
        validate(r, G)
    message = str(err.value)
    assert "\n" not in message
    assert "mappings[0].target: 'bends.3.params.angle' names bend 3, and the recipe has 1" \
        in message
    with pytest.raises(RecipeError, match=r"mappings\[0\]: 'knob' is not a mapping"):
        Recipe.from_dict({"mappings": ["knob"]})


# ----------------------------------------------------------------------------------------
# Validation.


@pytest.mark.parametrize("change, words", [
    ({"target": "latent.colour"}, "'latent.colour' is not a field a mapping can drive"),
    ({"target": "model"}, "'model' is not a field a mapping can drive"),
    ({"target": "bends.0.params.spin"}, "operation 'rotate' has no parameter 'spin'"),
    ({"target": "bends.0.params.fill"}, "parameter 'fill' is a choice, not a number"),
    ({"target": "blend.alpha"}, "the recipe has no blend"),
    ({"target": "translator.strength"}, "the recipe has no translator"),
    ({"target": "latent.mix_seed"}, "the recipe sets no mix_seed"),
    ({"target": ""}, "must be a field path"),
    ({"target": 7}, "must be a field path"),
    ({"out": [0, 400]}, "out: 400 is outside bends.0.params.angle's range -360..360"),
    ({"out": [0]}, "out: [0] must be two numbers"),
    ({"out": [0, float("nan")]}, "must be two numbers"),
    ({"in": [5, 5]}, "in: [5.0, 5.0] is empty"),
    ({"curve": "wobbly"}, "curve: 'wobbly' is not one of linear, exponential"),
    ({"curve": "steps", "steps": 1}, "steps: 1 must be a whole number from 2 to 128"),
    ({"attack": -1}, "attack: -1 must be seconds from 0 to 60"),
    ({"release": 3600}, "release: 3600 must be seconds from 0 to 60"),
    ({"mode": "toggle"}, "mode: 'toggle' is not one of set, add, rate"),
    ({"name": "knob 1"}, "name: 'knob 1' must be 1 to 64 letters"),
    ({"name": "x" * 65}, "must be 1 to 64 letters"),
    ({"colour": 1}, "colour: unknown key"),
    ({"source": {"kind": "midi", "type": "cc", "number": 128}}, "number 128 must be"),
    ({"source": {"kind": "midi", "type": "cc", "channel": 16, "number": 1}},
     "channel 16 must be a whole number from 0 to 15"),
    ({"source": {"kind": "midi", "type": "pitchbend", "number": 1}}, "a pitchbend has no"),
    ({"source": {"kind": "midi", "type": "sysex"}}, "type 'sysex' is not one of"),
    ({"source": {"kind": "dmx"}}, "kind 'dmx' is not one of midi, osc, audio, key"),
    ({"source": {"kind": "audio", "feature": "vocals"}}, "feature 'vocals' is not one of"),
    ({"source": {"kind": "audio", "feature": "bass", "gain": 2}}, "unknown key 'gain'"),
    ({"source": {"kind": "osc", "address": "studio/x"}}, "must be an OSC address"),
    ({"source": {"kind": "osc", "address": "/" + "a" * 200}}, "must be an OSC address"),
    ({"source": {"kind": "key", "key": ""}}, "must be a key name"),
    ({"source": "cc21"}, "is not an object"),
])
def test_each_bad_mapping_is_named_in_one_sentence(change, words):
    r = performance_recipe()
    r.mappings[0].update(change)
    with pytest.raises(MappingError) as err:
        mappings.validate(r)
    message = str(err.value)
    assert "\n" not in message and words in message, message
    assert message.startswith("The mappings have 1 problem: mappings[0]"), message
    assert isinstance(err.value, StudioError)


def test_every_mappable_field_validates_and_the_rest_do_not():
    r = Recipe(latent=LatentSpec(seed=1.5, mix_seed=4, translate=[0.0, 0.0],
                                 directions=[DirectionEdit("sefa", 0, 0.5)],
                                 layer_edits=[LayerEdit("random", 1, 7)]),
               bends=[Bend("b8.conv0", "zoom", {"scale": 2.0})],
               weight_edits=[WeightEdit("b16.conv0", "scale", {"factor": 1.0})],
               blend=BlendSpec(model="other", mode="interpolate", alpha=0.3,
                               alphas=[0.0, 0.5, 1.0]),
               translator=TranslatorSpec(encoder="enc", strength=0.8))
    good = {"latent.seed": (1.5, 0, 2**32 - 1), "latent.psi": (1.0, -5, 5),
            "latent.rotate": (0.0, -360, 360), "latent.noise_seed": (0, 0, 2**32 - 1),
            "latent.mix_seed": (4, 0, 2**32 - 1), "latent.translate.1": (0.0, -10, 10),
            "latent.directions.0.amount": (0.5, None, None),
            "latent.layer_edits[0].seed": (7, 0, 2**32 - 1),
            "bends.0.params.scale": (2.0, 0.05, 20),
            "bends.0.params.fill": None,  # a choice: refused below
            "weight_edits.0.params.factor": (1.0, -100, 100),
            "bends.0.channels.fraction": (0.5, 1 / 1024, 1),
            "blend.alpha": (0.3, 0, 1), "blend.alphas.2": (1.0, 0, 1),
            "translator.strength": (0.8, 0, 1)}
    for path, expected in good.items():
        if expected is None:
            with pytest.raises(MappingError):
                mappings.field_info(r, path)
            continue
        info = mappings.field_info(r, path)
        assert (info.current, info.lo, info.hi) == pytest.approx(expected, nan_ok=True), path
    for path in ("version", "output_size", "latent.cutoff", "bends.0.layer",
                 "latent.directions.0.index", "blend.swap_res", "blend.alphas.3",
                 "latent.translate.2", "bends.0.channels.k", "translator.input_size"):
        with pytest.raises(MappingError):
            mappings.field_info(r, path)


def test_names_are_unique_and_counts_bounded():
    r = performance_recipe()
    r.mappings[1]["name"] = "knob1"
    assert mappings.mapping_problems(r) == [
        "mappings[1].name: 'knob1' names another mapping too"]
    r = Recipe(bends=[Bend("b8.conv0", "rotate")],
               mappings=[knob(f"k{i}") for i in range(3)])
    assert mappings.mapping_problems(r, Limits(mappings=3)) == []
    assert mappings.mapping_problems(r, Limits(mappings=2)) == [
        "mappings: 3 entries are above the limit of 2 (STUDIO_MAX_MAPPINGS)"]


# ----------------------------------------------------------------------------------------
# Ranges and curves.


def test_ranges_map_ends_to_ends_and_hold_inputs_outside():
    m = knob(out=[0, 180])  # in defaults to MIDI's 0..127
    assert map_value(m, 0) == 0 and map_value(m, 127) == 180
    assert map_value(m, 63.5) == pytest.approx(90)
    assert map_value(m, -40) == 0 and map_value(m, 500) == 180  # held at the ends
    assert map_value(m, float("nan")) == 0
    inverted = knob(out=[180, 0], **{"in": [10, 20]})
    assert map_value(inverted, 10) == 180 and map_value(inverted, 12.5) == pytest.approx(135)
    bend_wheel = knob(source={"kind": "midi", "type": "pitchbend", "channel": 2})
    assert map_value(bend_wheel, 16383) == 180 and map_value(bend_wheel, 8191.5) == 90
    audio = knob(source={"kind": "audio", "feature": "mid"})
    assert map_value(audio, 0.25) == pytest.approx(45)


@pytest.mark.parametrize("curve, points", [
    ("linear", {0: 0, 0.25: 0.25, 0.5: 0.5, 1: 1}),
    ("exponential", {0: 0, 0.5: 9 / 99, 0.75: (100 ** 0.75 - 1) / 99, 1: 1}),
    ("smoothstep", {0: 0, 0.25: 0.15625, 0.5: 0.5, 0.75: 0.84375, 1: 1}),
    ("steps", {0: 0, 0.24: 0, 0.26: 1 / 3, 0.49: 1 / 3, 0.51: 2 / 3, 0.76: 1, 1: 1}),
])
def test_each_curve(curve, points):
    m = {"name": "c", "target": "latent.psi", "source": {"kind": "osc", "address": "/x"},
         "out": [-1, 3], "curve": curve, "steps": 4}
    for t, shaped in points.items():
        assert map_value(m, t) == pytest.approx(-1 + 4 * shaped), (curve, t)
    values = [map_value(m, t) for t in np.linspace(0, 1, 101)]
    assert all(b >= a for a, b in zip(values, values[1:]))  # every curve rises


def test_steps_gives_exactly_n_levels():
    m = knob(curve="steps", steps=5, out=[0, 100])
    levels = {map_value(m, x) for x in range(128)}
    assert sorted(levels) == [0, 25, 50, 75, 100]


# ----------------------------------------------------------------------------------------
# Smoothing.


def test_attack_and_release_are_time_constants_whatever_the_frame_rate():
    for fps in (10, 60, 1000):
        s = Smoother(attack=0.2, release=1.0, value=0.0)
        s.update(0.0, 0.0)
        t = 0.0
        while t < 0.2 - 1e-9:  # rise for one attack time constant
            t += 1 / fps
            s.update(1.0, t)
        assert s.value == pytest.approx(1 - math.exp(-1), abs=1e-6), fps
        top = s.value
        s.update(0.0, t + 1.0)  # fall for one release time constant
        assert s.value == pytest.approx(top * math.exp(-1), abs=1e-6)


def test_zero_smoothing_follows_at_once_and_the_clock_does_not_run_back():
    s = Smoother()
    assert s.update(5.0, 0.0) == 5.0 and s.update(-2.0, 0.01) == -2.0
    slow = Smoother(attack=1.0, release=1.0, value=0.0)
    slow.update(0.0, 10.0)
    assert slow.update(1.0, 5.0) == 0.0  # an earlier time moves nothing


# ----------------------------------------------------------------------------------------
# apply, set_fields, learn.


def test_apply_clamps_to_the_field_range_and_rounds_whole_numbers():
    r = performance_recipe()
    r.mappings.append({"name": "seed", "target": "latent.noise_seed",
                       "source": {"kind": "key", "key": "n"}, "out": [0, 9]})
    out = mappings.apply(r, {"knob1": 999.0, "bass": -7.0, "seed": 4.6})
    assert out.bends[0].params["angle"] == 360.0
    assert out.latent.psi == -5.0
    assert out.latent.noise_seed == 5 and isinstance(out.latent.noise_seed, int)
    assert r.bends[0].params["angle"] == 30.0 and r.latent.psi == 0.7  # a copy
    with pytest.raises(MappingError, match="no mapping is named 'knob9'"):
        mappings.apply(r, {"knob9": 1.0})
    with pytest.raises(MappingError, match="is not a finite number"):
        mappings.apply(r, {"knob1": float("inf")})


def test_set_fields_renders_as_the_sweep_setter_does():
    r = performance_recipe()
    r.mappings = []
    driven = mappings.set_fields(r, {"bends.0.params.angle": 75.0, "latent.seed": 3.5})
    swept = set_field(set_field(r, "bends.0.params.angle", 75.0), "latent.seed", 3.5)
    assert driven == swept
    assert np.array_equal(np.asarray(render(driven, G)), np.asarray(render(swept, G)))
    assert not np.array_equal(np.asarray(render(driven, G)), np.asarray(render(r, G)))


def test_learn_binds_the_last_moved_control_to_a_field():
    r = performance_recipe()
    event = {"kind": "midi", "type": "cc", "channel": 3, "number": 74, "value": 90}
    learned = mappings.learn(r, event, "weight_edits.0.params.factor", "cutoff")
    m = learned.mappings[-1]
    assert m == {"name": "cutoff", "target": "weight_edits.0.params.factor",
                 "source": {"kind": "midi", "type": "cc", "channel": 3, "number": 74},
                 "in": [0.0, 127.0], "out": [-100.0, 100.0]}
    # Learning the same knob again rebinds it rather than adding a second mapping.
    again = mappings.learn(learned, event, "latent.psi", "psi", out=[0, 1])
    assert [x["name"] for x in again.mappings] == ["knob1", "bass", "psi"]
    # An open field learns a unit range from its value.
    walk = mappings.learn(r, {"kind": "key", "key": "w", "value": 1}, "latent.seed", "walk")
    assert walk.mappings[-1]["out"] == [3.0, 4.0]
    with pytest.raises(MappingError, match="not a field a mapping can drive"):
        mappings.learn(r, event, "model", "x")


# ----------------------------------------------------------------------------------------
# Event streams.


def test_routing_matches_type_channel_number_address_feature_and_key():
    ms = [knob("a"), knob("b", source={"kind": "midi", "type": "note", "channel": 0,
                                       "number": 21}),
          knob("c", source={"kind": "osc", "address": "/fader/1"}),
          knob("d", source={"kind": "audio", "feature": "onset"}),
          knob("e", source={"kind": "key", "key": "ArrowUp"})]
    assert mappings.route(ms, {**CC21, "value": 1}) == ["a"]
    assert mappings.route(ms, {**CC21, "channel": 1, "value": 1}) == []
    assert mappings.route(ms, {**CC21, "type": "note", "value": 1}) == ["b"]
    assert mappings.route(ms, {"kind": "osc", "address": "/fader/1", "value": 1}) == ["c"]
    assert mappings.route(ms, {"kind": "osc", "address": "/studio/map/a", "value": 1}) == ["a"]
    assert mappings.route(ms, {"kind": "audio", "feature": "onset", "value": 1}) == ["d"]
    assert mappings.route(ms, {"kind": "key", "key": "ArrowUp", "value": 1}) == ["e"]
    assert mappings.route(ms, {"kind": "key", "key": "ArrowDown", "value": 1}) == []


def test_a_midi_ramp_drives_the_bend_frame_by_frame():
    r = performance_recipe()
    p = Performer(r)
    angles = []
    for i in range(128):  # a knob turned through its range, one CC message a frame
        p.feed({**CC21, "value": i})
        p.feed({**CC21, "channel": 5, "value": 127 - i})  # another channel: ignored
        angles.append(p.frame(i / 60).bends[0].params["angle"])
    assert angles == pytest.approx([i * 180 / 127 for i in range(128)])
    # The same events replay to the same recipes.
    replay = Performer(r)
    for i in range(128):
        replay.feed({**CC21, "value": i})
        assert replay.frame(i / 60).bends[0].params["angle"] == angles[i]


def test_an_audio_stream_is_smoothed_with_attack_and_release():
    r = performance_recipe()  # bass -> psi 0.5..1.0, smoothstep, attack 0.05, release 0.4
    p = Performer(r)
    fps, psis = 100, []
    envelope = [1.0] * 50 + [0.0] * 150  # half a second of bass, then silence
    for i, bass in enumerate(envelope):
        p.feed({"kind": "audio", "feature": "bass", "value": bass})
        psis.append(p.frame(i / fps).latent.psi)
    # From psi 0.7 it rises to 1.0 within a few attack constants and falls with release.
    assert psis[0] == pytest.approx(0.7)
    assert psis[5] == pytest.approx(1.0 - 0.3 * math.exp(-0.05 / 0.05), abs=1e-9)
    assert psis[49] == pytest.approx(1.0, abs=1e-3)
    top = psis[49]
    assert psis[49 + 40] == pytest.approx(0.5 + (top - 0.5) * math.exp(-1), abs=1e-9)
    assert all(b <= a for a, b in zip(psis[50:], psis[51:]))


def test_walk_speed_and_beat_jumps_from_audio():
    r = Recipe(latent=LatentSpec(seed=10.0), mappings=[
        {"name": "speed", "target": "latent.seed", "mode": "rate", "out": [0.0, 2.0],
         "source": {"kind": "audio", "feature": "loudness"}},
        {"name": "jump", "target": "latent.seed", "mode": "add", "out": [0.0, 1.0],
         "source": {"kind": "audio", "feature": "onset"}}])
    p = Performer(r)
    fps = 50
    onsets = {25, 60, 75}
    for i in range(101):  # two seconds at loudness 0.5 (1 seed a second), three beats
        p.feed({"kind": "audio", "feature": "loudness", "value": 0.5})
        p.feed({"kind": "audio", "feature": "onset", "value": 1.0 if i in onsets else 0.0})
        seed = p.frame(i / fps).latent.seed
        if i == 50:
            assert seed == pytest.approx(10.0 + 1.0 + 1)  # a second walked, one beat
    assert seed == pytest.approx(10.0 + 2.0 + 3)
