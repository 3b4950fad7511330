"""Model blending: endpoints bit for bit, layer swap = A's layers then B's, interpolation,
refusal of mismatched architectures, recipe fields."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from engine.base.errors import StudioError
from engine.tools.blend import (
    BlendSpec,
    blend_generators,
    blend_problems,
    blended_generator,
    block_alphas,
    check_blendable,
)
from engine.tools.latents import LatentSpec, compute_ws
from tests.conftest import make_tiny_generator
from tests.helpers.runs import fine_tune_briefly


@pytest.fixture(scope="module")
def pair():
    A = make_tiny_generator(0)
    return A, fine_tune_briefly(A)


def _ws(G, seed=3):
    return compute_ws(G, LatentSpec(seed=seed))


def _render(G, ws):
    with torch.no_grad():
        return G.synthesis(ws, noise_mode="const")


def test_second_model_differs_where_it_was_tuned(pair):
    A, B = pair
    ws = _ws(A)
    assert not torch.equal(_render(A, ws), _render(B, ws))
    assert torch.equal(A.mapping.fc0.weight, B.mapping.fc0.weight)


@pytest.mark.parametrize("mapping", ["a", "b"])
def test_alpha_endpoints_are_the_models_bit_for_bit(pair, mapping):
    A, B = pair
    res = A.synthesis.block_resolutions
    as_a = blend_generators(A, B, {r: 0.0 for r in res}, mapping="a")
    as_b = blend_generators(A, B, {r: 1.0 for r in res}, mapping="b")
    for blended, src in ((as_a, A), (as_b, B)):
        sa, sb = blended.state_dict(), src.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sb)
        ws = compute_ws(blended, LatentSpec(seed=5))
        assert torch.equal(ws, compute_ws(src, LatentSpec(seed=5)))
        assert torch.equal(_render(blended, ws), _render(src, ws))
    # The shared models are never touched.
    assert not torch.equal(A.synthesis.b32.conv1.weight, B.synthesis.b32.conv1.weight)


@pytest.mark.parametrize("swap_res", [4, 8, 16])
def test_swap_equals_rendering_a_then_b(pair, swap_res):
    A, B = pair
    blended = blended_generator(A, B, BlendSpec(model="B", mode="swap", swap_res=swap_res))
    ws = _ws(A, seed=7)
    # A's layers up to b{N}: its last conv's output and the running image after b{N}.
    _, cap = A.synthesis(ws, capture={f"b{swap_res}.conv1", f"b{swap_res}.img"})
    nxt = swap_res * 2
    # B's layers from b{2N}: its first conv by hand, then start B's synthesis after it.
    conv0 = getattr(A.synthesis, f"b{nxt}").conv0  # (A's, to show that B's is different)
    b_conv0 = getattr(B.synthesis, f"b{nxt}").conv0
    assert not torch.equal(conv0.weight, b_conv0.weight)
    with torch.no_grad():
        x = b_conv0(cap[f"b{swap_res}.conv1"], ws[:, B.synthesis.w_index_of(f"b{nxt}.conv0")])
        a_then_b = B.synthesis(ws, start=(f"b{nxt}.conv0", x, cap[f"b{swap_res}.img"]))
    assert torch.equal(_render(blended, ws), a_then_b)


def test_interpolation_per_resolution(pair):
    A, B = pair
    alphas = {4: 0.0, 8: 0.25, 16: 1.0, 32: 0.5}
    blended = blend_generators(A, B, alphas, mapping="b")
    for name in ("synthesis.b8.conv0.weight", "synthesis.b32.torgb.affine.bias",
                 "synthesis.b8.conv1.noise_const"):
        res = int(name.split(".")[1][1:])
        a, b = A.state_dict()[name], B.state_dict()[name]
        assert torch.allclose(blended.state_dict()[name], a + alphas[res] * (b - a), atol=1e-7)
    assert torch.equal(blended.synthesis.b4.const, A.synthesis.b4.const)
    assert torch.equal(blended.synthesis.b16.conv1.weight, B.synthesis.b16.conv1.weight)
    assert torch.equal(blended.mapping.w_avg, B.mapping.w_avg)
    spec = BlendSpec(model="B", mode="interpolate", alphas=[0.0, 0.25, 1.0, 0.5], mapping="b")
    assert block_alphas(spec, A) == alphas
    assert block_alphas(BlendSpec(mode="interpolate", alpha=0.3), A) == {
        4: 0.3, 8: 0.3, 16: 0.3, 32: 0.3}


@pytest.mark.parametrize("override, named", [
    (dict(w_dim=16), "w_dim is 32 in A but 16 in B"),
    (dict(channel_max=16), "block b4 has 32 channels in A but 16 in B"),
    (dict(resolution=64), "resolution is 32 in A but 64 in B"),
    (dict(architecture="resnet"), "architecture is skip in A but resnet in B"),
    ("bias", "synthesis.b16.conv1.bias is [32] in A but [16] in B"),
])
def test_mismatched_architectures_are_refused_naming_the_first_difference(override, named):
    A = make_tiny_generator(0)
    if override == "bias":  # same configuration, one parameter of another size
        other = copy.deepcopy(A)
        other.synthesis.b16.conv1.bias = torch.nn.Parameter(torch.zeros(16))
    else:
        other = make_tiny_generator(1, **override)
    with pytest.raises(StudioError) as err:
        check_blendable(A, other)
    message = str(err.value)
    assert named in message and message.endswith(".") and message.count(". ") == 0
    with pytest.raises(StudioError, match="cannot be blended"):
        blend_generators(A, other, {r: 0.5 for r in A.synthesis.block_resolutions})


def test_blend_spec_problems(pair):
    A, _ = pair
    assert blend_problems(BlendSpec(model="x"), A) == []
    bad = BlendSpec(model="", mode="mix", swap_res=12, alpha=1.5, alphas=[0.1], mapping="c")
    fields = {p.split(":")[0] for p in blend_problems(bad, A)}
    assert fields == {"model", "mode", "mapping", "alpha", "alphas"}
    assert blend_problems(BlendSpec(model="x", swap_res=12), A)[0].startswith(
        "swap_res: 12 is not a block resolution")


def test_recipe_blend_renders_the_blend_of_default_and_its_fine_tune(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    from engine.gan.checkpoints import save_generator
    from engine.models import zoo
    from engine.recipes.recipe import Recipe, RecipeError, render_tensor, validate

    A = zoo.load("default").G
    B = fine_tune_briefly(A, steps=1)
    path_b = tmp_path / "tuned.safetensors"
    save_generator(B, path_b)
    recipe = Recipe(latent=LatentSpec(seed=4, psi=0.7),
                    blend=BlendSpec(model=str(path_b), mode="swap", swap_res=16))
    again = Recipe.from_json(recipe.to_json())
    assert again == recipe
    img = render_tensor(again)
    GB = zoo.load(str(path_b)).G
    expected = blended_generator(A, GB, recipe.blend)
    with torch.no_grad():
        direct = expected.synthesis(compute_ws(expected, recipe.latent), noise_mode="const")
    assert torch.equal(img, direct)
    plain = render_tensor(Recipe(latent=LatentSpec(seed=4, psi=0.7)))
    assert not torch.equal(img, plain)
    # alpha 0 with A's mapping is model A exactly, through the recipe too.
    zero = Recipe(latent=LatentSpec(seed=4, psi=0.7),
                  blend=BlendSpec(model=str(path_b), mode="interpolate", alpha=0.0))
    assert torch.equal(render_tensor(zero), plain)
    with pytest.raises(RecipeError, match="blend.swap_res: 12"):
        validate(Recipe(blend=BlendSpec(model=str(path_b), swap_res=12)), A)
    # A morph from A to B is a sweep of blend.alpha (mapping from A throughout).
    from engine.recipes.recipe import sweep_frames, to_uint8
    frames = list(sweep_frames(zero, "blend.alpha", 0.0, 1.0, 3))
    assert np.array_equal(frames[0], to_uint8(plain)[0])
    assert not np.array_equal(frames[1], frames[0]) and not np.array_equal(frames[2], frames[1])


def test_cli_blend_writes_a_model_that_loads(pair, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    from engine.__main__ import main
    from engine.gan.checkpoints import load_generator, save_generator

    A, B = pair
    save_generator(A, tmp_path / "a.safetensors")
    save_generator(B, tmp_path / "b.safetensors")
    out = tmp_path / "ab.safetensors"
    assert main(["blend", "--model", str(tmp_path / "a.safetensors"), "--with",
                 str(tmp_path / "b.safetensors"), "--swap-res", "8", "--out", str(out)]) == 0
    assert "b4:A b8:A b16:B b32:B" in capsys.readouterr().out
    G = load_generator(out)
    assert torch.equal(G.synthesis.b8.conv1.weight, A.synthesis.b8.conv1.weight)
    assert torch.equal(G.synthesis.b16.conv0.weight, B.synthesis.b16.conv0.weight)
    small = make_tiny_generator(0, channel_max=16)
    save_generator(small, tmp_path / "small.safetensors")
    assert main(["blend", "--model", str(tmp_path / "a.safetensors"), "--with",
                 str(tmp_path / "small.safetensors"), "--alpha", "0.5", "--out",
                 str(tmp_path / "x.safetensors")]) == 2
    assert "cannot be blended because block b4 has 32 channels" in capsys.readouterr().err


def test_a_model_without_blocks_is_refused_in_one_sentence(pair):
    A, _ = pair

    class Blockless(torch.nn.Module):  # stands in for an alias-free (StyleGAN3) generator
        def __init__(self) -> None:
            super().__init__()
            self.synthesis = torch.nn.Linear(2, 2)

    with pytest.raises(StudioError, match=r"^Model B has no StyleGAN2 blocks .*models\.$"):
        check_blendable(A, Blockless())
