"""One validation path: every limit of engine/base/limits.py holds for recipes, whichever way they
arrive (engine.render, the CLI, the studio), with one sentence naming the field."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.base.limits import ENV_NAMES, LIMITS, Limits, current_limits
from engine.recipes import recipe as R
from engine.tools.bending import Bend, ChannelSelection, WeightEdit
from engine.tools.latents import DirectionEdit, LatentSpec, LayerEdit

ROOT = Path(__file__).resolve().parents[1]


def clusters(**kw) -> ChannelSelection:
    return ChannelSelection(mode="clusters", ids=[0], **kw)


# Each case: the limit, a recipe at the limit, a recipe one over, the field the sentence names.
def cases(limits: Limits) -> dict[str, tuple[R.Recipe, R.Recipe, str]]:
    bend, edit = Bend("b8.conv1", "identity"), WeightEdit("b8.conv1", "zero")
    layer_edit = LayerEdit("swap", 0, 1)

    def knobs(count: int) -> list[dict]:
        return [{"name": f"k{i}", "target": "latent.psi", "out": [0, 1],
                 "source": {"kind": "midi", "type": "cc", "number": i % 128}}
                for i in range(count)]
    return {
        "mappings": (R.Recipe(mappings=knobs(limits.mappings)),
                     R.Recipe(mappings=knobs(limits.mappings + 1)), "mappings"),
        "bends": (R.Recipe(bends=[bend] * limits.bends),
                  R.Recipe(bends=[bend] * (limits.bends + 1)), "bends"),
        "weight_edits": (R.Recipe(weight_edits=[edit] * limits.weight_edits),
                         R.Recipe(weight_edits=[edit] * (limits.weight_edits + 1)),
                         "weight_edits"),
        "layer_edits": (R.Recipe(latent=LatentSpec(layer_edits=[layer_edit] * limits.layer_edits)),
                        R.Recipe(latent=LatentSpec(layer_edits=[layer_edit] *
                                                   (limits.layer_edits + 1))),
                        "latent.layer_edits"),
        "output_size": (R.Recipe(output_size=limits.output_size),
                        R.Recipe(output_size=limits.output_size + 1), "output_size"),
        "translator_input_size": (
            R.Recipe(translator=R.TranslatorSpec("enc", None, limits.translator_input_size)),
            R.Recipe(translator=R.TranslatorSpec("enc", None, limits.translator_input_size + 1)),
            "translator.input_size"),
        "cluster_samples": (
            R.Recipe(bends=[Bend("b8.conv1", channels=clusters(samples=limits.cluster_samples))]),
            R.Recipe(bends=[Bend("b8.conv1",
                                 channels=clusters(samples=limits.cluster_samples + 1))]),
            "bends[0].channels.samples"),
        "cluster_k": (
            R.Recipe(bends=[Bend("b8.conv1", channels=clusters(k=limits.cluster_k))]),
            R.Recipe(bends=[Bend("b8.conv1", channels=clusters(k=limits.cluster_k + 1))]),
            "bends[0].channels.k"),
    }


@pytest.mark.parametrize("name", list(cases(LIMITS)))
def test_each_limit_is_refused_one_over_with_the_field_named(name):
    limits = Limits()
    at, over, field = cases(limits)[name]
    assert not [p for p in R.recipe_problems(at, limits=limits) if "limit" in p or
                "from 2 to" in p], name
    with pytest.raises(R.RecipeError) as err:
        R.validate(over, limits=limits)
    message = str(err.value)
    assert "\n" not in message and f"{field}: " in message, message
    assert ENV_NAMES[name] in message, message


def test_directions_are_counted_too():
    limits = Limits(directions=2)
    spec = LatentSpec(directions=[DirectionEdit("sefa", 0, 1.0)] * 3)
    problems = R.recipe_problems(R.Recipe(latent=spec), limits=limits)
    assert problems == ["latent.directions: 3 entries are above the limit of 2 "
                        "(STUDIO_MAX_DIRECTIONS)"]


def test_a_huge_recipe_is_refused_before_its_items_are_checked():
    # Past 4096 entries a list is refused while the recipe is read, one problem per list.
    data = {"bends": [{"layer": "b8.conv1", "op": "rotate", "params": {"angle": 400}}] * 10000,
            "latent": {"layer_edits": [{"op": "swap", "w_index": 0, "seed": 1}] * 20000}}
    start = time.perf_counter()
    with pytest.raises(R.RecipeError) as err:
        R.Recipe.from_dict(data)
    assert time.perf_counter() - start < 0.5
    assert err.value.problems == [
        "bends: 10000 entries are more than a recipe list holds (at most 4096)",
        "latent.layer_edits: 20000 entries are more than a recipe list holds (at most 4096)"]
    # Under that, the limits are checked by count before any item is.
    data = {"bends": data["bends"][:4000], "latent": {"layer_edits": data["latent"][
        "layer_edits"][:4000]}}
    recipe = R.Recipe.from_dict(data)
    start = time.perf_counter()
    problems = R.recipe_problems(recipe)
    assert time.perf_counter() - start < 0.05
    assert problems == ["bends: 4000 entries are above the limit of 64 (STUDIO_MAX_BENDS)",
                        "latent.layer_edits: 4000 entries are above the limit of 64 "
                        "(STUDIO_MAX_LAYER_EDITS)"]


def test_limits_follow_the_environment(monkeypatch):
    over = R.Recipe(bends=[Bend("b8.conv1", channels=clusters(samples=12000))])
    assert any("samples" in p for p in R.recipe_problems(over))
    monkeypatch.setenv("STUDIO_MAX_CLUSTER_SAMPLES", "20000")
    assert current_limits().cluster_samples == 20000
    assert not any("samples" in p for p in R.recipe_problems(over))


def test_render_refuses_before_any_work(tiny_generator, monkeypatch):
    from engine.tools import clusters as C

    G = tiny_generator()
    monkeypatch.setattr(C, "cluster_labels", lambda *a, **k: pytest.fail("clustering ran"))
    over = R.Recipe(bends=[Bend("b8.conv1", channels=clusters(samples=12000))])
    with pytest.raises(R.RecipeError, match=r"bends\[0\]\.channels\.samples: 12000 is above"):
        R.render(over, G)


def test_the_cli_and_the_studio_share_the_check(tmp_path):
    import studio.limits

    assert studio.limits.LIMITS is LIMITS and studio.limits.Limits is Limits
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"output_size": 4096}))
    proc = subprocess.run([sys.executable, "-m", "engine", "render", str(path), "--out",
                           str(tmp_path / "o.png")], capture_output=True, text=True, cwd=ROOT,
                          timeout=120, env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1",
                                            "HF_HUB_OFFLINE": "1", "HOME": str(tmp_path)})
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    assert "output_size: 4096 is above the limit of 2048 (STUDIO_MAX_OUTPUT_SIZE)" in \
        proc.stderr + proc.stdout
    assert not (tmp_path / "o.png").exists()


def test_the_long_job_lane_answers_busy_past_its_waiting_room():
    """STUDIO_HEAVY_JOBS=1, STUDIO_HEAVY_WAITING=1: a second visitor's long job waits, a
    third is told in a sentence that the studio is busy; the waiting one runs afterwards."""
    import threading
    import time

    from engine.base.errors import StudioError
    from studio.jobs import Jobs, Lane

    lane = Lane(1, 1)
    ran = threading.Event()

    def second_visitor() -> None:
        with lane.heavy(Jobs(), "a projection"):
            ran.set()

    with lane.heavy(Jobs(), "a projection"):
        waiter = threading.Thread(target=second_visitor)
        waiter.start()
        deadline = time.monotonic() + 30
        while lane._waiting == 0:  # until the second visitor waits for the slot
            assert time.monotonic() < deadline
            time.sleep(0.01)
        with pytest.raises(StudioError, match="the studio is busy with other visitors' long "
                                              "jobs; try again in a few minutes.") as err:
            with lane.heavy(Jobs(), "a projection"):
                pass
        assert "\n" not in str(err.value)
        assert not ran.is_set()
    waiter.join(timeout=30)
    assert ran.is_set()
