"""Recipes: JSON round trips, validation with field paths, rendering, sweeps, imports, CLI."""

from __future__ import annotations

import contextlib
import dataclasses
import json

import numpy as np
import pytest
import torch
from conftest import make_tiny_generator
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import engine
from engine.base.errors import StudioError
from engine.recipes.bend_import import broad_layer_name, import_broad_yaml, import_notebook_template
from engine.recipes.recipe import (
    Recipe,
    RecipeError,
    TranslatorSpec,
    recipe_problems,
    render,
    render_tensor,
    set_field,
    sweep,
    sweep_values,
    validate,
)
from engine.tools import clusters
from engine.tools.bending import OPERATIONS, Bend, ChannelSelection, WeightEdit
from engine.tools.latents import LatentSpec, LayerEdit

G = make_tiny_generator()
LAYERS = [n for n in G.synthesis.layers if not n.endswith("torgb")]
SHAPES = G.layer_shapes()


def sample_recipe() -> Recipe:
    return Recipe(
        latent=LatentSpec(seed=3, psi=0.7, noise_mode="random", noise_seed=5,
                          layer_edits=[LayerEdit("negate", 2, 0)]),
        bends=[Bend("b8.conv0", "rotate", {"angle": 30.0}),
               Bend("b8.conv0", "ablate", channels=ChannelSelection("random", fraction=0.3,
                                                                    seed=1)),
               Bend("b16.conv1", "sinusoidal", {"mode": "warp", "amplitude": 0.05}),
               Bend("b32.conv0", "dilate", {"kernel": 3}, ChannelSelection(
                   "indices", indices=[0, 5, 7]), enabled=False)],
        weight_edits=[WeightEdit("b16.conv0", "noise", {"std": 0.5, "axis": "in"},
                                 ChannelSelection("indices", indices=[1, 2]))],
        output_size=48)


@contextlib.contextmanager
def fake_clusters():
    """Cluster labels without running KMeans: channel c is in cluster c % k."""
    old = clusters.cluster_labels

    def labels(G_, key, layer, k, samples=128, seed=0):
        return np.arange(G_.layer_shapes()[layer][0]) % k

    clusters.cluster_labels = labels
    try:
        yield
    finally:
        clusters.cluster_labels = old


# ----------------------------------------------------------------------------------------
# JSON.


def test_json_round_trip_renders_the_same_image(tmp_path):
    r = sample_recipe()
    path = r.save(tmp_path / "r.json")
    back = Recipe.load(path)
    assert back == r
    assert json.loads(path.read_text())["bends"][0]["params"] == {"angle": 30.0}
    a, b = render(r, G), render(back, G)
    assert a.size == (48, 48)
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert np.array_equal(np.asarray(engine.render(back, G)), np.asarray(a))


def test_from_json_reports_unknown_keys_and_wrong_types():
    d = json.loads(sample_recipe().to_json())
    d["colour"] = "red"
    d["bends"][0]["spin"] = 1
    d["bends"][1]["channels"]["k"] = 2.5
    d["latent"]["seed"] = "seven"
    d["weight_edits"] = {"not": "a list"}
    with pytest.raises(RecipeError) as err:
        Recipe.from_dict(d)
    p = err.value.problems
    assert "colour: unknown field (known: version, model, latent, bends, weight_edits, " \
           "translator, output_size, blend, mappings)" in p
    assert any(x.startswith("bends[0].spin: unknown field") for x in p)
    assert "bends[1].channels.k: 2.5 is not a whole number" in p
    assert "latent.seed: 'seven' is not a number" in p
    assert "weight_edits: {'not': 'a list'} is not a list" in p
    with pytest.raises(RecipeError, match="not valid JSON"):
        Recipe.from_json("{nope")
    with pytest.raises(RecipeError, match="is not an object"):
        Recipe.from_json("[1, 2]")
    with pytest.raises(RecipeError, match="nested too deeply"):  # not a RecursionError
        Recipe.from_json("[" * 100_000)
    # Python refuses to read integers over 4300 digits with a ValueError, not a JSON error.
    with pytest.raises(RecipeError, match="number too long"):
        Recipe.from_json('{"latent": {"seed": ' + "9" * 5000 + "}}")
    with pytest.raises(RecipeError, match=r"bends\[0\].layer: required field is missing"):
        Recipe.from_dict({"bends": [{"op": "ablate"}]})
    # Integral floats become ints (some JSON writers keep no integers).
    d = json.loads(sample_recipe().to_json())
    d["bends"][1]["channels"]["seed"] = 4.0
    assert Recipe.from_dict(d).bends[1].channels.seed == 4


def test_defaults_load_from_a_minimal_file():
    r = Recipe.from_json('{"latent": {"seed": 2}}')
    assert r.model == "default" and r.version == 1 and r.bends == []
    validate(r, G)


# ----------------------------------------------------------------------------------------
# Validation.


def test_validation_lists_every_problem_with_its_path():
    r = sample_recipe()
    r.bends[0].params["angle"] = 400
    r.bends[1].op = "melt"
    r.bends[2].layer = "b64.conv0"
    r.bends[3].channels = ChannelSelection("clusters", k=4, ids=[0, 9])
    r.weight_edits[0].params["axis"] = "sideways"
    r.latent.psi = 9.0
    r.latent.noise_mode = "loud"
    r.version = 2
    r.output_size = 2
    with pytest.raises(RecipeError) as err:
        validate(r, G)
    p = err.value.problems
    assert "bends[0].params.angle: 400 is above the maximum 360" in p
    assert any(x.startswith("bends[1].op: unknown operation 'melt'") for x in p)
    assert any(x.startswith("bends[2].layer: unknown layer 'b64.conv0'") for x in p)
    assert "bends[3].channels.ids[1]: cluster 9 is out of range (0..3 for k=4)" in p
    assert any(x.startswith("weight_edits[0].params.axis:") for x in p)
    assert any(x.startswith("latent.psi:") for x in p)
    assert any(x.startswith("latent.noise_mode:") for x in p)
    assert any(x.startswith("version: 2 is not supported") for x in p)
    assert any(x.startswith("output_size: 2") for x in p)
    assert len(p) == 9
    assert str(err.value).startswith("The recipe has 9 problems: ")
    assert isinstance(err.value, StudioError)


def test_validation_of_types_set_in_python():
    r = Recipe(bends=[Bend("b8.conv0", "rotate", {"angle": "left"})])
    r.latent.seed = None
    r.bends.append("not a bend")
    problems = recipe_problems(r, G)
    assert "bends[0].params.angle: 'left' is not a number" in problems
    assert "bends[1]: 'not a bend' is not an object" in problems
    assert any(x.startswith("latent.seed:") for x in problems)
    assert recipe_problems("nope") == ["recipe: 'nope' is not a Recipe"]


def test_validation_without_a_model_skips_model_checks():
    r = Recipe(bends=[Bend("b1024.conv0", "ablate", channels=ChannelSelection(
        "indices", indices=[900]))])
    validate(r)                   # no model: layer and channel range cannot be judged
    with pytest.raises(RecipeError, match="unknown layer"):
        validate(r, G)


def test_translator_fields(tmp_path):
    r = Recipe(translator=TranslatorSpec(encoder="", image=str(tmp_path / "none.png"),
                                         input_size=4))
    p = recipe_problems(r, G)
    assert "translator.encoder: name an encoder file or id" in p
    assert any(x.startswith("translator.image: file not found") for x in p)
    assert any(x.startswith("translator.input_size: 4") for x in p)
    assert Recipe.from_json(Recipe(translator=TranslatorSpec("enc.pt")).to_json()
                            ).translator == TranslatorSpec("enc.pt")


# ----------------------------------------------------------------------------------------
# Rendering.


def test_render_tensor_batches_and_bends_apply():
    r = Recipe(latent=LatentSpec(seed=1))
    base = render_tensor(r, G, seeds=[1, 2, 3])
    assert base.shape == (3, 3, 32, 32)
    single = render_tensor(r, G)
    assert torch.allclose(base[:1], single, atol=1e-5)
    r.bends = [Bend("b8.conv1", "flip_h")]
    bent = render_tensor(r, G, seeds=[1, 2, 3])
    assert not torch.allclose(bent, base)
    ws = G.mapping(torch.randn(2, 32))
    assert render_tensor(r, G, ws=ws).shape == (2, 3, 32, 32)


def test_cluster_bends_render():
    """A bend on clusters 0 and 2 ablates exactly those clusters' channels (c % 3 in {0, 2}
    under fake_clusters): the picture of the same bend on those channels by index."""
    r = Recipe(bends=[Bend("b16.conv0", "ablate", channels=ChannelSelection(
        "clusters", k=3, ids=[0, 2]))])
    with fake_clusters():
        img = render(r, G)
    assert img.size == (32, 32)
    chosen = [c for c in range(G.layer_shapes()["b16.conv0"][0]) if c % 3 in (0, 2)]
    by_index = Recipe(bends=[Bend("b16.conv0", "ablate", channels=ChannelSelection(
        "indices", indices=chosen))])
    assert np.array_equal(np.asarray(img), np.asarray(render(by_index, G)))
    assert not np.array_equal(np.asarray(img), np.asarray(render(Recipe(), G)))


def test_loaded_model_objects_are_accepted():
    @dataclasses.dataclass
    class Loaded:
        G: object
        sha256: str
        id: str

    r = sample_recipe()
    a = render(r, Loaded(G, "0" * 64, "tiny"))
    assert np.array_equal(np.asarray(a), np.asarray(render(r, G)))


def test_translator_recipe_without_image_is_a_user_error():
    r = Recipe(translator=TranslatorSpec("enc.pt"))
    with pytest.raises(StudioError):
        render(r, G)


# ----------------------------------------------------------------------------------------
# Sweeps.


def test_sweep_values_run_from_start_to_stop():
    """frames values evenly spaced, both ends included; one frame is the start alone."""
    assert sweep_values(0.5, 2.0, 2).tolist() == [0.5, 2.0]
    assert np.allclose(sweep_values(-1.0, 1.0, 5), [-1.0, -0.5, 0.0, 0.5, 1.0])
    assert sweep_values(3.0, 9.0, 1).tolist() == [3.0]
    with pytest.raises(RecipeError, match="frames: 0 must be 1 or more"):
        sweep_values(0.0, 1.0, 0)


def test_set_field_paths():
    r = sample_recipe()
    assert set_field(r, "bends.0.params.angle", 90).bends[0].params["angle"] == 90.0
    assert set_field(r, "bends[2].params.freq_x", 3).bends[2].params["freq_x"] == 3.0
    assert set_field(r, "bends.3.params.kernel", 4.6).bends[3].params["kernel"] == 5
    assert set_field(r, "latent.seed", 2.5).latent.seed == 2.5
    assert set_field(r, "latent.noise_seed", 2.5).latent.noise_seed == 2
    assert set_field(r, "weight_edits.0.params.std", 0.1).weight_edits[0].params["std"] == 0.1
    assert r.bends[0].params["angle"] == 30.0       # the original is untouched
    for bad, why in [("bends.9.params.angle", "no such field"),
                     ("bends.0.params.zzz", "has no parameter"),
                     ("model", "not a numeric field"),
                     ("latent.nothing", "no such field"),
                     ("", "not a field path")]:
        with pytest.raises(RecipeError, match=why):
            set_field(r, bad, 1.0)


def test_sweep_writes_a_video(tmp_path):
    r = Recipe(bends=[Bend("b8.conv1", "rotate", {"angle": 0.0})])
    seen = []
    out = sweep(r, "bends.0.params.angle", 0, 360, 6, tmp_path / "spin.gif", fps=6, model=G,
                progress=seen.append)
    from PIL import Image

    with Image.open(out) as im:
        assert im.n_frames == 6
    assert seen == list(range(6))
    out = sweep(Recipe(), "latent.seed", 0, 2, 4, tmp_path / "seeds.mp4", model=G)
    assert out.stat().st_size > 0
    with pytest.raises(RecipeError, match="above the maximum"):
        sweep(r, "bends.0.params.angle", 0, 720, 4, tmp_path / "bad.gif", model=G)
    assert not (tmp_path / "bad.gif").exists()


# ----------------------------------------------------------------------------------------
# Property tests: random valid recipes render; random invalid ones fail with RecipeError.


def _param_value(spec):
    if spec.type == "bool":
        return st.booleans()
    if spec.type == "choice":
        return st.sampled_from(spec.choices)
    lo = spec.min if spec.min is not None else -10
    hi = spec.max if spec.max is not None else 10
    if spec.type == "int":
        return st.integers(int(lo), min(int(hi), int(lo) + 8))
    return st.floats(lo, hi, allow_nan=False)


@st.composite
def valid_bend(draw):
    layer = draw(st.sampled_from(LAYERS))
    op = OPERATIONS[draw(st.sampled_from(sorted(OPERATIONS)))]
    specs = draw(st.lists(st.sampled_from(op.params), unique_by=lambda p: p.name)
                 ) if op.params else []
    params = {p.name: draw(_param_value(p)) for p in specs}
    channels = SHAPES[layer][0]
    mode = draw(st.sampled_from(["all", "indices", "random", "clusters"]))
    if mode == "indices":
        sel = ChannelSelection("indices", indices=draw(st.lists(
            st.integers(0, channels - 1), min_size=1, max_size=6)))
    elif mode == "random":
        sel = ChannelSelection("random", fraction=draw(st.floats(0.01, 1.0)),
                               seed=draw(st.integers(0, 100)))
    elif mode == "clusters":
        k = draw(st.integers(2, 6))
        sel = ChannelSelection("clusters", k=k, ids=draw(st.lists(
            st.integers(0, k - 1), min_size=1, max_size=3)))
    else:
        sel = ChannelSelection()
    return Bend(layer, op.name, params, sel, draw(st.booleans()))


@st.composite
def valid_recipe(draw):
    latent = LatentSpec(seed=draw(st.floats(0, 1000)), psi=draw(st.floats(0, 1.5)),
                        noise_mode=draw(st.sampled_from(["const", "random", "none"])))
    return Recipe(latent=latent, bends=draw(st.lists(valid_bend(), max_size=4)))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_recipe())
def test_random_valid_recipes_render(recipe):
    with fake_clusters():
        validate(recipe, G)
        img = render(recipe, G)
    assert img.size == (32, 32)
    # ... and survive a JSON round trip unchanged.
    assert Recipe.from_json(recipe.to_json()) == recipe


def _latent(d: dict) -> dict:
    """The latent mapping to corrupt (a scratch one when another corruption replaced it)."""
    return d["latent"] if isinstance(d.get("latent"), dict) else {}


CORRUPTIONS = [
    ("bends", lambda d: d["bends"].append({"layer": "b8.conv0", "op": "explode"})),
    ("bends", lambda d: d["bends"].append({"layer": "b3.conv0", "op": "ablate"})),
    ("bends", lambda d: d["bends"].append({"layer": "b8.conv0", "op": "rotate",
                                           "params": {"angle": 1e6}})),
    ("bends", lambda d: d["bends"].append({"layer": "b8.conv0", "op": "rotate",
                                           "params": {"angle": [1]}})),
    ("bends", lambda d: d["bends"].append({"layer": "b8.conv0", "op": "rotate",
                                           "params": {"wobble": 1}})),
    ("bends", lambda d: d["bends"].append({"layer": "b8.conv0", "op": "ablate",
                                           "channels": {"mode": "indices",
                                                        "indices": [10 ** 6]}})),
    ("bends", lambda d: d["bends"].append({"layer": "b8.conv0", "op": "ablate",
                                           "channels": {"mode": "clusters", "k": 3,
                                                        "ids": [3]}})),
    ("bends", lambda d: d["bends"].append({"layer": "b8.conv0", "op": "ablate",
                                           "channels": {"mode": "random",
                                                        "fraction": 2}})),
    ("bends", lambda d: d["bends"].append({"layer": 8, "op": None})),
    ("bends", lambda d: d["bends"].append("rotate please")),
    ("latent", lambda d: _latent(d).update(seed=-1)),
    ("latent", lambda d: _latent(d).update(psi="high")),
    ("latent", lambda d: _latent(d).update(noise_mode=3)),
    ("latent", lambda d: _latent(d).update(cutoff=99)),
    ("latent", lambda d: _latent(d).update(layer_edits=[{"op": "swap", "w_index": 40}])),
    ("latent", lambda d: d.update(latent=[])),
    ("version", lambda d: d.update(version="one")),
    ("output_size", lambda d: d.update(output_size=-5)),
    ("model", lambda d: d.update(model="")),
    ("weight_edits", lambda d: d["weight_edits"].append({"layer": "b8.conv0", "op": "fold"})),
    ("translator", lambda d: d.update(translator={"encoder": 5})),
    ("unknown", lambda d: d.update(surprise=True)),
]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_recipe(), st.lists(st.sampled_from(range(len(CORRUPTIONS))), min_size=1,
                                max_size=3))
def test_random_invalid_recipes_fail_validation_with_a_message(recipe, picks):
    d = json.loads(recipe.to_json())
    for i in picks:
        CORRUPTIONS[i][1](d)
    with pytest.raises(RecipeError) as err:
        validate(Recipe.from_dict(d), G)
    assert err.value.problems and all(":" in p for p in err.value.problems)
    assert str(err.value).startswith("The recipe has")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10, 10**6) | st.floats(allow_nan=True)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["layer", "op", "params", "channels", "mode", "seed", "psi", "angle",
                         "k", "ids", "indices", "latent", "bends", "x"]), inner, max_size=4),
    max_leaves=12)


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.sampled_from(["model", "latent", "bends", "weight_edits",
                                        "translator", "output_size", "version", "junk"]),
                       json_values, max_size=4))
def test_arbitrary_json_never_crashes(data):
    try:
        recipe = Recipe.from_dict(data)
        validate(recipe, G)
    except RecipeError as err:
        assert err.problems
        return
    with fake_clusters():
        render(recipe, G)


# ----------------------------------------------------------------------------------------
# Imports.


NOTEBOOK_TEMPLATE = [
    {"resolution": 8, "install_after": "Conv0_up",
     "layers": [{"operation": "rotate", "clusters": [0, 2], "angle": 45},
                {"operation": "translate", "clusters": [], "x": 0.25, "y": -0.1}]},
    {"resolution": 16, "install_after": "Conv1",
     "layers": [{"operation": "erode", "clusters": [1], "kernel_size": 3},
                {"operation": "binary-threshold", "clusters": None, "threshold": 0.3},
                {"operation": "sine", "freq_x": 2, "amplitude": 0.2},
                {"operation": "scalar-multiply", "clusters": [3], "scalar": -1.5},
                {"operation": "teleport", "clusters": [0]},
                {"operation": "zoom", "scale": 1.3, "wobble": 2}]},
    {"resolution": 4, "install_after": "Conv0_up",
     "layers": [{"operation": "flip-h"}]},
    {"resolution": 128, "install_after": "Conv1", "layers": [{"operation": "ablate"}]},
    {"resolution": 12, "install_after": "Conv1", "layers": []},
]


def test_notebook_template_imports_and_renders():
    bends, warnings = import_notebook_template(NOTEBOOK_TEMPLATE, G)
    by = [(b.layer, b.op) for b in bends]
    assert by == [("b8.conv0", "rotate"), ("b8.conv0", "translate"), ("b16.conv1", "erode"),
                  ("b16.conv1", "threshold"), ("b16.conv1", "sinusoidal"),
                  ("b16.conv1", "multiply"), ("b16.conv1", "zoom"), ("b4.conv1", "flip_h")]
    # 'rotate' and 'translate' are seed operations: the seed's fill and interpolation apply.
    assert bends[0].params == {"angle": 45.0, "fill": "reflect", "interpolation": "nearest"}
    assert bends[0].channels.mode == "clusters" and bends[0].channels.ids == [0, 2]
    assert bends[1].params == {"x_shift": 0.25, "y_shift": -0.1, "fill": "reflect",
                               "interpolation": "nearest"}
    assert bends[1].channels.mode == "all"
    assert bends[5].params == {"factor": -1.5}
    text = "\n".join(warnings)
    assert "'teleport' has no counterpart" in text
    assert "'wobble' has no counterpart" in text
    assert "4 x 4 Conv0_up bends the constant input" in text
    assert "b128.conv1" in text                      # not in this 32 px model: skipped
    assert "12 is not a power of two" in text
    with fake_clusters():
        img = render(Recipe(bends=bends), G)
    assert img.size == (32, 32)
    # JSON text works too.
    again, _ = import_notebook_template(json.dumps(NOTEBOOK_TEMPLATE), G)
    assert again == bends


BROAD_YAML = """
transforms:
- layer: 1
  transform: "translate"
  params: [0.25, 0.0]
  features: "all"
  feature-param:
- layer: 2
  transform: "ablate"
  params: []
  features: "cluster"
  feature-param: 2
- layer: 4
  transform: "binary-thresh"
  params: [0.5]
  features: "random"
  feature-param: 0.5
- layer: 3
  transform: "erode"
  params: [1]
  features: "all"
- layer: 5
  transform: "invert"
  params: []
  features: "all"
- layer: 0
  transform: "rotate"
  params: [45]
  features: "all"
- layer: 6
  transform: "scale"
  params: [1.2]
  features: "all"
- layer: 5
  transform: "scalar-multiply"
  params: [-0.5]
  features: "all"
- layer: 3
  transform: "flip-h"
  features: "all"
- layer: 12
  transform: "dilate"
  params: [2]
  features: "all"
- layer: 1
  transform: "resize"
  params: [2]
  features: "all"
- layer: 1
  transform: "rotate"
  params: []
  features: "all"
- layer: 2
  transform: "ablate"
  features: "some"
all-transforms:
- layer: 1
  transform: "erode"
  params: [2]
"""


def test_broad_layer_ids_follow_the_rosinality_order():
    assert [broad_layer_name(i) for i in range(7)] == [
        "b4.conv1", "b8.conv0", "b8.conv1", "b16.conv0", "b16.conv1", "b32.conv0",
        "b32.conv1"]
    assert broad_layer_name(16) == "b1024.conv1"
    # Same order as our layer list without the torgb layers.
    assert [broad_layer_name(i) for i in range(len(LAYERS))] == LAYERS


def test_broad_yaml_imports_and_renders():
    bends, warnings = import_broad_yaml(BROAD_YAML, G)
    got = [(b.layer, b.op) for b in bends]
    assert got == [("b8.conv0", "translate"), ("b8.conv1", "ablate"),
                   ("b16.conv1", "threshold"), ("b16.conv0", "erode"), ("b32.conv0", "invert"),
                   ("b4.conv1", "rotate"), ("b32.conv1", "zoom"), ("b32.conv0", "multiply"),
                   ("b16.conv0", "flip_h"), ("b8.conv0", "erode")]
    assert [b.enabled for b in bends] == [True] * 9 + [False]   # all-transforms: disabled
    assert bends[0].params == {"x_shift": 0.25, "y_shift": 0.0, "fill": "zero",
                               "interpolation": "bilinear", "sampling": "opencv"}
    assert bends[1].channels == ChannelSelection("clusters", ids=[2], k=5)
    assert bends[2].channels.mode == "random" and bends[2].channels.fraction == 0.5
    assert bends[3].params == {"kernel": 3, "shape": "ellipse"}   # radius 1 -> 3 x 3
    assert bends[4].params == {"offset": 1.0}           # Broad's invert is 1 - x
    text = "\n".join(warnings)
    assert "all-transforms" in text
    assert "layer 12 is b256.conv1, which this model does not have" in text
    assert "Broad's resize grows the map" in text
    assert "rotate needs 1 parameter(s)" in text
    assert "'some' is not all, random or cluster" in text
    assert "k-means of the layer (k=5), not Broad's" in text
    assert len(warnings) == len({w.split(":")[0] for w in warnings})   # one line each
    with fake_clusters():
        img = render(Recipe(bends=bends), G)
    assert img.size == (32, 32)


def test_broad_cluster_file_gives_explicit_channels():
    cluster_dict = {2: [{"feature_index": i, "cluster_index": i % 3} for i in range(32)]}
    bends, warnings = import_broad_yaml(BROAD_YAML, G, cluster_dict=cluster_dict)
    assert bends[1].channels == ChannelSelection("indices", indices=list(range(2, 32, 3)))
    assert not any("own clustering" in w for w in warnings)


def test_bad_import_files_are_user_errors():
    with pytest.raises(StudioError):
        import_broad_yaml("just: [a, map")
    with pytest.raises(StudioError, match="no 'transforms'"):
        import_broad_yaml("layers: []")
    with pytest.raises(StudioError):
        import_notebook_template("42")
    bends, warnings = import_broad_yaml("transforms:\n- 7\n- {layer: x}\n")
    assert bends == [] and len(warnings) == 2


# ----------------------------------------------------------------------------------------
# Command line, through engine.models.zoo with a saved tiny model.


@pytest.fixture
def saved_model(tmp_path, monkeypatch):
    from engine.gan.checkpoints import save_generator

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    path = tmp_path / "tiny.safetensors"
    save_generator(G, path, source="test")
    return path


def test_cli_render_and_sweep(tmp_path, saved_model, capsys):
    from PIL import Image

    from engine.__main__ import main

    r = sample_recipe()
    r.model = str(saved_model)
    rp = r.save(tmp_path / "r.json")
    assert main(["render", str(rp), "--out", str(tmp_path / "x.png")]) == 0
    img = Image.open(tmp_path / "x.png")
    assert img.size == (48, 48)
    assert np.array_equal(np.asarray(img), np.asarray(render(r, G)))
    assert main(["sweep", str(rp), "--param", "bends.0.params.angle", "--from", "0", "--to",
                 "360", "--frames", "5", "--out", str(tmp_path / "spin.mp4")]) == 0
    assert (tmp_path / "spin.mp4").stat().st_size > 0
    assert main(["sweep", str(rp), "--param", "latent.seed", "--from", "0", "--to", "3",
                 "--frames", "3", "--fps", "5", "--out", str(tmp_path / "s.gif")]) == 0
    # User errors print one line and exit 2.
    assert main(["sweep", str(rp), "--param", "bends.0.params.nope", "--from", "0", "--to",
                 "1", "--frames", "2", "--out", str(tmp_path / "n.mp4")]) == 2
    assert main(["render", str(tmp_path / "missing.json"), "--out",
                 str(tmp_path / "y.png")]) == 2
    err = capsys.readouterr().err
    assert "has no parameter 'nope'" in err and "not found" in err


def test_cli_renders_broad_yaml_and_seed_template(tmp_path, saved_model, capsys):
    from PIL import Image

    from engine.__main__ import main

    cfg, clusters = tmp_path / "config.yaml", tmp_path / "clusters.yaml"
    cfg.write_text(BROAD_YAML)
    clusters.write_text("2:\n" + "".join(f"- {{cluster_index: {i % 3}, feature_index: {i}}}\n"
                                         for i in range(40)))
    out = tmp_path / "broad.png"
    assert main(["render", str(cfg), "--clusters", str(clusters), "--model", str(saved_model),
                 "--out", str(out)]) == 0
    bends, warnings = import_broad_yaml(BROAD_YAML, G, cluster_dict=clusters.read_text())
    assert bends[1].channels.indices == list(range(2, 32, 3))   # 40 listed, 32 exist
    want = render(Recipe(model=str(saved_model), bends=bends), G)
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(want))
    err = capsys.readouterr().err
    assert err.count("note: ") == len(warnings) and "lie beyond this layer's 32" in err
    # The seed README's form: a Python assignment in a .py file.
    template = tmp_path / "template.py"
    template.write_text("operations = " + repr(NOTEBOOK_TEMPLATE[:1]))
    assert main(["render", str(template), "--model", str(saved_model), "--out",
                 str(tmp_path / "seed.png")]) == 0
    assert main(["render", str(tmp_path / "template.py"), "--clusters", str(clusters),
                 "--model", str(saved_model), "--out", str(tmp_path / "z.png")]) == 2
    assert "cluster file goes with a network-bending YAML" in capsys.readouterr().err


def test_render_loads_the_recipe_model_through_the_zoo(saved_model):
    r = Recipe(model=str(saved_model), bends=[Bend("b8.conv1", "invert")])
    assert np.array_equal(np.asarray(render(r)), np.asarray(render(r, G)))


def test_default_model_recipe_renders():
    img = render(Recipe(bends=[Bend("b16.conv0", "rotate", {"angle": 90.0})]))
    assert img.size == (64, 64)


def test_translator_recipe_renders(tmp_path):
    from PIL import Image

    from engine.tools.translator import make_encoder, save_encoder, weights_sha256

    enc = make_encoder(G, "b16.conv0", input_size=32)
    path = save_encoder(enc, tmp_path / "enc.safetensors",
                        meta={"base_model_weights_sha256": weights_sha256(G)})
    pic = tmp_path / "in.png"
    Image.fromarray((np.random.RandomState(0).rand(40, 50, 3) * 255).astype(np.uint8)).save(pic)
    r = Recipe(translator=TranslatorSpec(str(path), str(pic)),
               bends=[Bend("b32.conv0", "flip_h")])
    r = Recipe.from_json(r.to_json())
    img = render(r, G)
    assert img.size == (32, 32)
    r.bends = []
    assert not np.array_equal(np.asarray(render(r, G)), np.asarray(img))


def test_a_recipe_with_a_million_bad_channels_is_refused_in_a_short_message():
    """A 1.3 MB recipe listing 180000 out-of-range channels took 5 s to check and sent a
    13 MB error to the page. A list longer than any layer is one problem; a message lists
    the first MAX_LISTED_PROBLEMS problems and counts the rest."""
    import time

    from engine.recipes.fields import MAX_LISTED_PROBLEMS
    from engine.recipes.recipe import MAX_LIST_ENTRIES, validate
    from engine.tools.bending import MAX_SELECTION_ENTRIES

    G = make_tiny_generator()
    many = {"bends": [{"op": "ablate", "layer": "b16.conv1",
                       "channels": {"mode": "indices", "indices": list(range(10**6))}}]}
    start = time.perf_counter()
    with pytest.raises(RecipeError) as info:
        Recipe.from_dict(many)
    assert time.perf_counter() - start < 1.0
    assert info.value.problems == [f"bends[0].channels.indices: 1000000 entries are more than "
                                   f"a recipe list holds (at most {MAX_LIST_ENTRIES})"]
    # Built in Python, the same list is refused by the selection's own check.
    built = Recipe(bends=[Bend("b16.conv1", "ablate", {},
                               ChannelSelection("indices", indices=list(range(10**6))))])
    start = time.perf_counter()
    with pytest.raises(RecipeError) as info:
        validate(built, G)
    assert time.perf_counter() - start < 1.0
    assert any(f"at most {MAX_SELECTION_ENTRIES}" in p for p in info.value.problems)
    bad = {"bends": [{"op": "ablate", "layer": "b16.conv1",
                      "channels": {"mode": "indices", "indices": list(range(100, 200))}}]}
    with pytest.raises(RecipeError) as info:
        validate(Recipe.from_dict(bad), G)
    message = str(info.value)
    assert len(info.value.problems) == 100 and message.startswith("The recipe has 100 problems")
    assert message.count("is out of range") == MAX_LISTED_PROBLEMS
    assert message.endswith(f"; and {100 - MAX_LISTED_PROBLEMS} more") and len(message) < 3000
