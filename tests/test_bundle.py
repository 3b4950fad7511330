"""engine/recipes/bundle.py: a recipe with its files renders the same image bit for bit after the
originals are gone, from Python and from `python -m engine render bundle.zip`; hostile zips
are refused in one sentence."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from PIL import Image

from engine.base.errors import StudioError
from engine.recipes.bundle import read_bundle, save_bundle
from engine.recipes.recipe import Recipe, TranslatorSpec, render
from engine.tools.bending import Bend
from engine.tools.latents import LatentSpec
from tests.conftest import make_tiny_generator
from tests.helpers.browser import REPO


@pytest.fixture
def recipe_with_files(tmp_path):
    """A recipe whose model, encoder (with sidecar) and picture are files under tmp/a."""
    from engine.gan.checkpoints import save_generator
    from engine.tools.translator import train_encoder

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
    from engine.tools.translator import SIDECAR_FILE
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


def test_a_boundary_file_and_odd_file_names_travel_in_the_bundle(tmp_path):
    """A direction read from a boundary file is one of the files a bundle carries, and file
    names are stored made safe (spaces, brackets -> '_', at most 120 characters)."""
    from engine.gan.checkpoints import save_generator
    from engine.tools.boundaries import save_boundary
    from engine.tools.latents import DirectionEdit

    src = tmp_path / "a"
    src.mkdir()
    G = make_tiny_generator(0)
    model = src / "my model (v2).safetensors"
    save_generator(G, model, source="bundle test")
    boundary = src / ("smile " + "x" * 200 + ".npy")
    save_boundary(boundary, np.random.RandomState(1).randn(1, G.cfg.w_dim), G)
    edit = DirectionEdit(method="file", path=str(boundary), amount=4.0)
    r = Recipe(model=str(model), latent=LatentSpec(seed=3, psi=0.7, directions=[edit]))
    want = np.asarray(render(r))
    assert not np.array_equal(want, np.asarray(render(Recipe(
        model=str(model), latent=LatentSpec(seed=3, psi=0.7)))))  # the direction shows
    bundle = save_bundle(r, tmp_path / "b.zip")
    inputs = sorted(n for n in zipfile.ZipFile(bundle).namelist() if n != "recipe.json")
    assert sorted(n[len("inputs/") + 17:] for n in inputs) == \
        ["my_model__v2_.safetensors", "smile_" + "x" * 114], inputs
    assert all(re.fullmatch(r"inputs/[0-9a-f]{16}-.+", n) for n in inputs), inputs
    shutil.rmtree(src)
    got = read_bundle(bundle, tmp_path / "x")
    assert got.latent.directions[0].path.startswith(str(tmp_path / "x"))
    assert got.model.startswith(str(tmp_path / "x"))
    assert np.array_equal(np.asarray(render(got)), want)


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


# A 2 MB zip whose one input is 2 GiB of zeros: read whole into memory before (+4.1 GB on
# the server, 2 GiB written to the session's folder), now refused before a byte is read.
@pytest.mark.parametrize("member_mib, words", [
    (2048, "more than 1.0 GiB"),       # over the default budget by what it declares
    (512, "times larger than it is stored"),  # under the budget, deflated 1000:1
])
def test_a_zip_bomb_bundle_is_refused_unread(tmp_path, member_mib, words):
    from tests.helpers import hostile as H

    path = H.zeros_bundle(tmp_path / "bomb.zip", member_mib << 20)
    assert path.stat().st_size < 3 << 20
    (message, peak), = H.peak_rss_of_loads([("bundle", path)], timeout=120)
    assert message is not None and words in message and "\n" not in message, message
    assert peak < 100, peak
    unpacked = tmp_path / "bomb.zip.unpacked"
    assert not unpacked.exists() or not any(unpacked.rglob("*")), list(unpacked.rglob("*"))


def test_the_bundle_budget_counts_every_member_and_leaves_nothing(tmp_path, monkeypatch):
    from engine.base.limits import current_limits

    assert current_limits().bundle_bytes == 2**30  # the default: far above any StyleGAN file
    rng = np.random.RandomState(0)
    path = tmp_path / "two.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("recipe.json", Recipe(model="default").to_json())
        for i in range(2):  # random bytes: deflate cannot shrink them, so no ratio refusal
            z.writestr(f"inputs/0123456789abcde{i}-p{i}.png", rng.bytes(3 << 20))
    read_bundle(path, tmp_path / "fits")  # 6 MiB: well under the default
    monkeypatch.setenv("STUDIO_MAX_BUNDLE_BYTES", str(5 << 20))
    with pytest.raises(StudioError, match=r"more than 5\.0 MiB.*STUDIO_MAX_BUNDLE_BYTES"):
        read_bundle(path, tmp_path / "over")
    assert not (tmp_path / "over").exists()


def test_a_member_longer_than_it_declares_is_refused_and_removed(tmp_path, monkeypatch):
    from engine.recipes import bundle

    monkeypatch.setattr(bundle, "CHUNK_BYTES", 1000)  # several chunks for a small member
    path = tmp_path / "lies.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("recipe.json", Recipe(model="default").to_json())
        z.writestr("inputs/0123456789abcdef-p.png", b"x" * 5000)
    raw = path.read_bytes()
    # The central directory says 4000 bytes; the data holds 5000.
    at = raw.rindex(b"PK\x01\x02")
    raw = raw[:at + 24] + (4000).to_bytes(4, "little") + raw[at + 28:]
    path.write_bytes(raw)
    with pytest.raises(StudioError, match="not the size it declares|not a recipe bundle"):
        read_bundle(path, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def _bundle_of(path, members: dict[str, bytes], recipe: bytes | None = None):
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("recipe.json", recipe if recipe is not None else
                   Recipe(model="default").to_json())
        for name, data in members.items():
            z.writestr(name, data)
    return path


def test_a_bundle_of_too_many_files_is_refused(tmp_path):
    from engine.recipes.bundle import MAX_MEMBERS

    names = {f"inputs/0123456789abcdef-p{i}.png": b"x" for i in range(MAX_MEMBERS)}
    with pytest.raises(StudioError, match=f"holds {MAX_MEMBERS + 1} files, more than "
                                          f"{MAX_MEMBERS}"):
        read_bundle(_bundle_of(tmp_path / "many.zip", names), tmp_path / "x")
    names.popitem()  # recipe.json and 63 inputs: 64 files, the limit itself
    read_bundle(_bundle_of(tmp_path / "fits.zip", names), tmp_path / "y")


def test_a_bundle_declaring_more_than_its_budget_is_refused_before_any_member_is_read(
        tmp_path, monkeypatch):
    """The declared sizes are summed first: a bundle over budget by what it declares is
    refused before a byte is written (the streaming budget alone would write up to the
    limit first)."""
    from engine.recipes import bundle

    rng = np.random.RandomState(1)
    members = {"inputs/0123456789abcdef-a.png": rng.bytes(3 << 20),
               "inputs/0123456789abcdef-b.png": rng.bytes(3 << 20)}
    path = _bundle_of(tmp_path / "big.zip", members)
    monkeypatch.setenv("STUDIO_MAX_BUNDLE_BYTES", str(5 << 20))
    read = []
    real = bundle._extract_member
    monkeypatch.setattr(bundle, "_extract_member", lambda *a: read.append(a) or real(*a))
    with pytest.raises(StudioError, match=r"unpacks to more than 5\.0 MiB"):
        read_bundle(path, tmp_path / "x")
    assert read == []
    monkeypatch.setenv("STUDIO_MAX_BUNDLE_BYTES", str(6 << 20 | 4096))  # room for recipe.json
    read_bundle(path, tmp_path / "y")
    assert len(read) == 2
    for name, data in members.items():  # every byte, the last chunk's included
        assert (tmp_path / "y" / name).read_bytes() == data


def test_a_recipe_json_too_large_or_not_its_declared_size_is_refused(tmp_path, monkeypatch):
    from engine.recipes import bundle

    monkeypatch.setattr(bundle, "MAX_RECIPE_BYTES", 4000)
    body = Recipe(model="default").to_json().encode()
    assert len(body) < 4000
    padded = body.rstrip(b"}") + b', "pad": "' + b"x" * (4001 - len(body) - 11) + b'"}'
    assert len(padded) == 4001
    with pytest.raises(StudioError, match="recipe.json in the bundle is larger than its limit"):
        read_bundle(_bundle_of(tmp_path / "big.zip", {}, padded), tmp_path / "x")
    path = _bundle_of(tmp_path / "lies.zip", {}, body)
    raw = path.read_bytes()
    at = raw.rindex(b"PK\x01\x02")  # the central directory says 40 bytes fewer
    raw = raw[:at + 24] + (len(body) - 40).to_bytes(4, "little") + raw[at + 28:]
    path.write_bytes(raw)
    with pytest.raises(StudioError, match="recipe.json in the bundle is not the size it "
                                          "declares|not a recipe bundle"):
        read_bundle(path, tmp_path / "y")


def test_a_small_member_may_deflate_well_and_a_larger_one_may_not(tmp_path):
    """Up to RATIO_FREE_BYTES a member may compress any amount (a blank mask, a tiny
    sidecar); one byte more of zeros and the ratio refuses it unread."""
    from engine.recipes.bundle import RATIO_FREE_BYTES

    zeros = {"inputs/0123456789abcdef-m.png": bytes(RATIO_FREE_BYTES)}
    read_bundle(_bundle_of(tmp_path / "ok.zip", zeros), tmp_path / "x")
    zeros = {"inputs/0123456789abcdef-m.png": bytes(RATIO_FREE_BYTES + 1)}
    with pytest.raises(StudioError, match="times larger than it is stored"):
        read_bundle(_bundle_of(tmp_path / "no.zip", zeros), tmp_path / "y")
