"""engine/bundle.py: a recipe with its files renders the same image bit for bit after the
originals are gone, from Python and from `python -m engine render bundle.zip`; hostile zips
are refused in one sentence."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from PIL import Image

from engine.bending import Bend
from engine.bundle import read_bundle, save_bundle
from engine.errors import StudioError
from engine.latents import LatentSpec
from engine.recipe import Recipe, TranslatorSpec, render
from tests.browser_util import REPO
from tests.conftest import make_tiny_generator


@pytest.fixture
def recipe_with_files(tmp_path):
    """A recipe whose model, encoder (with sidecar) and picture are files under tmp/a."""
    from engine.checkpoints import save_generator
    from engine.translator import train_encoder

    src = tmp_path / "a"
    src.mkdir()
    G = make_tiny_generator(0)
    model = src / "tiny.safetensors"
    save_generator(G, model, source="bundle test")
    enc = train_encoder(G, layer="b8.conv1", steps=2, batch=2, out_dir=src / "enc")
    photo = src / "photo.png"
    Image.fromarray(np.random.RandomState(0).randint(0, 255, (40, 48, 3), np.uint8)).save(photo)
    return Recipe(model=str(model), latent=LatentSpec(seed=3, psi=0.7),
                  bends=[Bend("b8.conv1", "rotate", {"angle": 30.0})],
                  translator=TranslatorSpec(encoder=str(enc.path), image=str(photo)))


def test_a_bundle_renders_the_same_image_without_the_originals(recipe_with_files, tmp_path):
    r = recipe_with_files
    want = np.asarray(render(r))
    bundle = save_bundle(r, tmp_path / "b.zip")
    from engine.translator import SIDECAR_FILE
    names = zipfile.ZipFile(bundle).namelist()
    assert "recipe.json" in names and any(n.endswith("/" + SIDECAR_FILE) for n in names)
    assert len(names) == 5  # recipe, model, encoder + sidecar, picture
    shutil.rmtree(tmp_path / "a")  # the machine that made it is gone
    got = read_bundle(bundle, tmp_path / "x")
    assert got.translator.image.startswith(str(tmp_path / "x"))
    assert np.array_equal(np.asarray(render(got)), want)
    out = tmp_path / "cli.png"
    done = subprocess.run([sys.executable, "-m", "engine", "render", str(bundle), "--out",
                           str(out)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert np.array_equal(np.asarray(Image.open(out).convert("RGB")), want)


def test_render_input_supplies_the_picture(recipe_with_files, tmp_path):
    r = recipe_with_files
    other = tmp_path / "other.png"
    Image.fromarray(np.random.RandomState(5).randint(0, 255, (32, 32, 3), np.uint8)).save(other)
    r.translator.image = str(other)
    want = np.asarray(render(r))
    r.translator.image = None
    r.save(tmp_path / "r.json")
    out = tmp_path / "cli.png"
    done = subprocess.run([sys.executable, "-m", "engine", "render", str(tmp_path / "r.json"),
                           "--input", str(other), "--out", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert np.array_equal(np.asarray(Image.open(out).convert("RGB")), want)


@pytest.mark.parametrize("case, words", [
    ("traversal", "not where a bundle keeps"), ("no recipe", "no recipe.json"),
    ("missing", "does not hold"), ("not zip", "not a recipe bundle"),
])
def test_hostile_bundles_are_refused(tmp_path, case, words):
    path = tmp_path / "evil.zip"
    recipe = Recipe(model="default").to_json()
    if case == "not zip":
        path.write_text("PK but not really")
    else:
        with zipfile.ZipFile(path, "w") as z:
            if case != "no recipe":
                body = recipe if case != "missing" else recipe.replace(
                    '"translator": null',
                    '"translator": {"encoder": "inputs/0123456789abcdef-e/encoder.safetensors",'
                    ' "image": "inputs/0123456789abcdef-p.png"}')
                z.writestr("recipe.json", body)
            if case == "traversal":
                z.writestr("../../escape.txt", "x")
    with pytest.raises(StudioError, match=words):
        read_bundle(path, tmp_path / "x")
    assert not (tmp_path.parent / "escape.txt").exists()
