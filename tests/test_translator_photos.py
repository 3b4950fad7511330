"""Translator on photos (#18): augmentations, unlabelled-photo losses, domain strength,
framing, and the shipped encoders' fidelity on the default model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine.base.errors import StudioError
from engine.tools import translator as T

TRAIN = dict(batch=2, stat_samples=8, eval_seeds=(), warmup=1, width=8, max_width=16,
             preview_every=0)
SHIPPED = Path(__file__).resolve().parents[1] / "engine" / "models" / "default_model"


@pytest.fixture(scope="module")
def G():
    from conftest import make_tiny_generator

    return make_tiny_generator()


@pytest.fixture(scope="module")
def tr(G):
    torch.manual_seed(0)
    return T.Translator(G, T.make_encoder(G, width=8, max_width=16), check_model=False)


@pytest.fixture()
def photo_dir(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    for i, shape in enumerate([(40, 70, 3), (90, 50, 3), (33, 33, 3)]):
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(tmp_path / f"{i}.png")
    (tmp_path / "broken.jpg").write_bytes(b"not a picture")
    return tmp_path


def _images(n: int = 4, size: int = 32) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(1)) * 2 - 1


# --- augmentations -----------------------------------------------------------------------


def test_augmentations_keep_shape_and_range_and_change_the_picture():
    x = _images()
    a = T.Augmentations(p=1.0, background=1.0, jpeg=1.0)
    y = T.augment(x, torch.Generator().manual_seed(0), a)
    assert y.shape == x.shape and y.min() >= -1 and y.max() <= 1
    assert (y - x).abs().mean() > 0.01
    again = T.augment(x, torch.Generator().manual_seed(0), a)
    assert torch.equal(y, again)  # every draw comes from the generator
    off = T.augment(x, torch.Generator().manual_seed(0), T.Augmentations(p=0.0))
    assert torch.equal(off, x)


def test_each_photometric_augmentation_alone():
    x = _images()
    gen = torch.Generator().manual_seed(2)
    for y in (T.colour_jitter(x, gen, 0.3, 0.1), T.gaussian_blur(x, 1.5),
              T.jpeg_round_trip(x[0], 20)[None]):
        assert y.shape[1:] == x.shape[1:] and y.min() >= -1 and y.max() <= 1
    # Blur keeps the mean (a normalised kernel) and lowers the pixel-to-pixel variation.
    b = T.gaussian_blur(x, 1.5)
    assert torch.allclose(b.mean(), x.mean(), atol=0.02)
    assert b.diff(dim=-1).abs().mean() < 0.5 * x.diff(dim=-1).abs().mean()
    # A hue turn with every other jitter at zero keeps each pixel's grey level.
    grey = x.mean(1)
    turned = T.colour_jitter(x * 0.5, gen, 0.0, 0.25)
    assert torch.allclose(turned.mean(1), (x * 0.5).mean(1), atol=1e-4)
    assert not torch.allclose(turned, x * 0.5, atol=1e-3)
    assert grey.shape == turned.mean(1).shape


def test_identity_warp_and_flip():
    x = _images(2)
    eye = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]).expand(2, 2, 3)
    assert torch.allclose(T.warp(x, eye), x, atol=1e-5)
    flip = torch.tensor([[-1.0, 0, 0], [0, 1.0, 0]]).expand(2, 2, 3)
    assert torch.allclose(T.warp(x, flip), x.flip(-1), atol=1e-5)
    theta = T.random_affine(torch.Generator().manual_seed(0), 8, T.Augmentations(scale=0.2))
    zoom = theta[:, 1, 1]
    assert theta.shape == (8, 2, 3) and (zoom >= 1 / 1.2 - 1e-6).all() and (zoom <= 1.2).all()


def test_background_mask_finds_a_flat_background():
    img = torch.full((1, 3, 32, 32), 0.4)
    img[..., 8:32, 10:22] = torch.tensor([-0.8, 0.1, 0.9]).view(1, 3, 1, 1)  # a "person"
    m = T.background_mask(img)
    assert m.shape == (1, 1, 32, 32)
    assert m[0, 0, :4, :4].mean() > 0.8 and m[0, 0, 20:, 12:20].mean() < 0.05


def test_bad_augmentation_settings_are_refused():
    with pytest.raises(StudioError, match="probability"):
        T.Augmentations(p=2.0)
    with pytest.raises(StudioError, match="unknown augmentation"):
        T.Augmentations.from_dict({"sharpen": 1})
    with pytest.raises(StudioError, match="from 0"):
        T.Augmentations(blur=float("nan"))


# --- unlabelled photos -------------------------------------------------------------------


def test_photo_set_reads_crops_and_skips_broken_files(photo_dir):
    ps = T.PhotoSet(photo_dir, max_side=48)
    assert len(ps) == 3
    assert all(min(im.shape[-2:]) <= 48 for im in ps.images)
    crops = ps.crops(torch.Generator().manual_seed(0), 5, 16)
    assert crops.shape == (5, 3, 16, 16) and crops.min() >= -1 and crops.max() <= 1


def test_photo_losses_are_zero_at_their_targets():
    z = torch.randn(64, 8, 4, 4, generator=torch.Generator().manual_seed(0))
    z = (z - z.mean((0, 2, 3), keepdim=True)) / z.std(dim=(0, 2, 3), keepdim=True)
    assert T.activation_stats_loss(z) < 1e-8
    assert T.activation_stats_loss(z * 2 + 1) > 1.0
    photo = _images(2, 64)
    assert T.round_trip_loss(photo, photo) < 1e-6
    # Only coarse scales count: fine texture costs little next to the full image loss,
    # a colour shift as much.
    texture = 0.3 * torch.sign(torch.randn(2, 3, 64, 64, generator=torch.Generator()
                                           .manual_seed(0)))
    assert T.round_trip_loss(photo + texture, photo) < 0.25 * T.image_loss(photo + texture,
                                                                           photo)
    assert T.round_trip_loss(photo + 0.3, photo) > 0.5 * T.image_loss(photo + 0.3, photo)


def test_training_with_augmentations_and_photos_runs_and_resumes(G, photo_dir, tmp_path):
    kw = dict(TRAIN, steps=3, seed=1, augment={"p": 1.0, "background": 1.0},
              photos=str(photo_dir), stats_weight=0.5, round_trip_weight=0.5, photo_batch=2)
    full = T.train_encoder(G, out_dir=tmp_path / "a", **kw)
    assert full.steps == 3 and np.isfinite(full.metrics["final_loss"])
    meta = json.loads((tmp_path / "a" / T.SIDECAR_FILE).read_text())
    assert meta["training"]["augment"] == {"p": 1.0, "background": 1.0}
    assert meta["training"]["stats_weight"] == 0.5
    # Fine-tuning from it starts from its weights.
    tuned = T.train_encoder(G, steps=1, init_from=str(tmp_path / "a"), lr=1e-9,
                            **{k: v for k, v in TRAIN.items()})
    for k, v in full.encoder.state_dict().items():
        assert torch.allclose(tuned.encoder.state_dict()[k], v, atol=1e-5), k
    with pytest.raises(StudioError, match="photos"):
        T.train_encoder(G, steps=1, stats_weight=1.0, **TRAIN)


# --- domain strength and framing ---------------------------------------------------------


def test_strength_zero_is_the_latents_own_image_and_one_the_encoders(G, tr):
    ws = tr.ws_for(3)
    act = tr.encode(_images(1))
    with torch.no_grad():
        own = G.synthesis(ws)
        encoder_only = G.synthesis(ws, start=(tr.layer, act))
        assert torch.allclose(tr.render(act, ws, 0.0), own, atol=1e-5)
        assert torch.allclose(tr.render(act, ws, 1.0), encoder_only, atol=1e-6)
        half = tr.render(act, ws, 0.5)
        assert not torch.allclose(half, own, atol=1e-3)
        assert not torch.allclose(half, encoder_only, atol=1e-3)
        # With random noise both renders read the same maps: still the latent's image.
        full = G.synthesis(ws, noise_mode="random",
                           noise_generator=torch.Generator().manual_seed(4))
        zero = tr.render(act, ws, 0.0, noise_mode="random",
                         noise_generator=torch.Generator().manual_seed(4))
        assert torch.allclose(zero, full, atol=1e-5)


def test_strength_through_translate_and_frames(tr):
    pic = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    own = tr.translate(pic, 2, strength=0.0, anchor="latent")
    from engine.tools.latents import to_uint8

    with torch.no_grad():
        assert np.array_equal(own, to_uint8(tr.G.synthesis(tr.ws_for(2)))[0])
    tr.set_latent(2, strength=0.0, anchor="latent")
    assert np.array_equal(tr.translate_frame(pic), own)
    for bad in (-0.1, 1.5, float("nan"), "lots"):
        with pytest.raises(StudioError, match="strength"):
            tr.translate(pic, 2, strength=bad)


def test_framing_modes(tr):
    wide = np.zeros((30, 90, 3), np.uint8)
    wide[:, :30] = 255                         # white left third
    for framing in T.FRAMINGS:
        out, seen = tr.translate(wide, 1, framing=framing, return_framed=True)
        assert out.shape == (32, 32, 3) and seen.shape == (tr.input_size, tr.input_size, 3)
    _, crop = tr.translate(wide, 1, framing="crop", return_framed=True)
    _, fit = tr.translate(wide, 1, framing="fit", return_framed=True)
    _, pad = tr.translate(wide, 1, framing="pad", return_framed=True)
    assert crop.max() < 30                     # the centre third is black
    assert fit[:, :8].min() > 200 and fit[:, -8:].max() < 30
    assert pad[:8].std() < 1 and pad[-8:].std() < 1          # bands of one border colour
    assert 60 < pad[0, 0, 0] < 120                            # white on a third of the border
    assert pad[12:20, :8].min() > 200 and pad[12:20, -8:].max() < 30  # the whole picture
    # A batch of pictures of different shapes is framed one by one.
    outs, seen = tr.translate([wide, wide[:, :40]], 1, framing="pad", return_framed=True)
    assert outs.shape == (2, 32, 32, 3) and seen.shape == (2, tr.input_size, tr.input_size, 3)
    with pytest.raises(StudioError, match="framing"):
        tr.translate(wide, 1, framing="stretch")


def test_recipe_carries_strength_and_framing(G, tmp_path):
    from engine.recipes import recipe as R
    from engine.tools.latents import LatentSpec

    torch.manual_seed(0)
    enc = T.make_encoder(G, width=8, max_width=16)
    path = T.save_encoder(enc, tmp_path / "enc", meta={
        "base_model_weights_sha256": T.weights_sha256(G)})
    pic = tmp_path / "pic.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (20, 50, 3), dtype=np.uint8)
                    ).save(pic)
    spec = R.TranslatorSpec(encoder=str(path), image=str(pic), strength=0.0, framing="pad",
                            anchor="latent")
    r = R.Recipe(model="tiny", latent=LatentSpec(seed=4), translator=spec)
    assert R.Recipe.from_json(r.to_json()).translator == spec
    plain = R.render(R.Recipe(model="tiny", latent=LatentSpec(seed=4)), G)
    assert np.array_equal(np.asarray(R.render(r, G)), np.asarray(plain))  # strength 0
    old = json.loads(r.to_json())
    del old["translator"]["strength"], old["translator"]["framing"]   # an older recipe
    assert R.Recipe.from_dict(old).translator.strength == 1.0
    bad = R.Recipe(translator=R.TranslatorSpec(str(path), str(pic), strength=1.5,
                                               framing="zoom"))
    problems = R.recipe_problems(bad)
    assert any("translator.strength" in p for p in problems)
    assert any("translator.framing" in p for p in problems)


# --- anchors: blending towards the model's image laid out like the picture ---------------


def test_layouts_are_correlations_of_pooled_luminance():
    from engine.tools import anchors as A

    x = _images(3)
    lay = A.layouts(x)
    assert lay.shape == (3, A.CELLS * A.CELLS)
    assert torch.allclose(lay.norm(dim=1), torch.ones(3), atol=1e-5)
    assert torch.allclose(lay.mean(1), torch.zeros(3), atol=1e-6)
    # Brightness and contrast do not change a layout; a left-right flip does.
    assert torch.allclose(A.layouts(0.5 * x - 0.2), lay, atol=1e-4)
    assert (A.layouts(x.flip(-1)) * lay).sum(1).max() < 0.9
    ref = x[:1]
    lum = (ref * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1)
    pooled = torch.nn.functional.adaptive_avg_pool2d(lum, A.CELLS).flatten()
    assert np.isclose(float(lay[0] @ A.layouts(ref)[0]), 1.0, atol=1e-5)
    corr = np.corrcoef(pooled.numpy(), A.layouts(ref)[0].numpy())[0, 1]
    assert corr > 0.9999


def test_anchor_bank_round_trip_and_lookup(G, tmp_path):
    from engine.tools import anchors as A

    bank = A.build_bank(G, 24, first_seed=100, batch=10)
    assert bank.count == 24 and bank.weights_sha256 == T.weights_sha256(G)
    again = A.AnchorBank.load(bank.save(tmp_path / "bank.safetensors"))
    assert again.first_seed == 100 and again.weights_sha256 == bank.weights_sha256
    assert torch.allclose(again.layouts, bank.layouts, atol=2e-3)   # stored as float16
    assert torch.allclose(again.colours, bank.colours, atol=2e-3)
    (tmp_path / "junk.safetensors").write_bytes(b"nonsense")
    with pytest.raises(StudioError, match="anchor bank"):
        A.AnchorBank.load(tmp_path / "junk.safetensors")
    # A picture that is one of the bank's images finds that seed (one candidate) ...
    with torch.no_grad():
        pics = G.synthesis(A.seed_ws(G, [107, 119], psi=1.0))
    ws = A.seed_ws(G, [3, 4])
    found = A.anchor_ws(G, pics, ws, bank, candidates=1, psi=0.7, blend=1)
    assert torch.allclose(found, A.seed_ws(G, [107, 119], psi=0.7), atol=1e-6)
    # ... and among several, the one whose w is nearest the user's.
    top5 = A.similarity(pics[:1], bank).topk(5).indices[0] + 100
    pick = int(top5[3])
    near = A.anchor_ws(G, pics[:1], A.seed_ws(G, [pick], psi=0.7), bank, candidates=5,
                       psi=0.7, blend=1)
    assert torch.allclose(near, A.seed_ws(G, [pick], psi=0.7), atol=1e-6)
    # A kept anchor stays while its layout is within the margin of the best one's.
    score = A.similarity(pics[:1], bank)[0]
    best, second = score.topk(2).indices.tolist()
    gap = float(score[best] - score[second])
    held = torch.tensor([second])
    assert A.choose(G, pics[:1], ws[:1], bank, keep=held, margin=gap + 1e-4).tolist() == [
        second]
    assert A.choose(G, pics[:1], ws[:1], bank, keep=held, margin=gap / 2).tolist() == [best]
    assert A.choose(G, pics[:1], ws[:1], bank, keep=torch.tensor([-1])).tolist() == [best]


def test_render_towards_an_anchor_is_style_mixing_at_strength_zero(G, tr):
    from engine.tools import anchors as A

    ws, anchor = tr.ws_for(3), A.seed_ws(G, [11])
    act = tr.encode(_images(1))
    # The anchor writes every block but the last A.LATENT_BLOCKS; the latent writes those.
    cut = G.synthesis.w_index[G.cfg.resolution >> (A.LATENT_BLOCKS - 1)]
    with torch.no_grad():
        mixed = G.synthesis(torch.cat([anchor[:, :cut], ws[:, cut:]], 1))
        assert torch.allclose(tr.render(act, ws, 0.0, anchor_ws=anchor), mixed, atol=1e-5)
        assert torch.allclose(tr.render(act, ws, 1.0, anchor_ws=anchor),
                              tr.render(act, ws, 1.0), atol=1e-6)


def test_translate_with_the_match_anchor(G, tr, monkeypatch):
    from engine.tools import anchors as A

    bank = A.build_bank(G, 16, batch=16)
    monkeypatch.setattr(A, "bank_for", lambda G_: bank)
    pic = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    latent = tr.translate(pic, 2, strength=0.3, anchor="latent")
    match = tr.translate(pic, 2, strength=0.3, anchor="match")
    assert np.abs(latent.astype(int) - match.astype(int)).mean() > 1
    # At strength 1 there is nothing to blend: no anchor is looked up.
    monkeypatch.setattr(A, "bank_for", lambda G_: pytest.fail("looked up at strength 1"))
    assert np.array_equal(tr.translate(pic, 2, strength=1.0, anchor="match"),
                          tr.translate(pic, 2, strength=1.0, anchor="latent"))
    monkeypatch.setattr(A, "bank_for", lambda G_: bank)
    tr.set_latent(2, strength=0.3, anchor="match")   # frames: the bank's anchor, no fit
    bank_alone = tr.translate(pic, 2, strength=0.3, anchor="match", fit_steps=0)
    assert np.abs(tr.translate_frame(pic).astype(int) - bank_alone.astype(int)).max() <= 1
    for bad in ("nearest", None, 1):
        with pytest.raises(StudioError, match="blend towards"):
            tr.translate(pic, 2, strength=0.3, anchor=bad)


def test_recipe_carries_the_anchor(G, tmp_path):
    from engine.recipes import recipe as R

    spec = R.TranslatorSpec(encoder="enc", image=None, strength=0.3, anchor="match")
    r = R.Recipe(model="tiny", translator=spec)
    assert R.Recipe.from_json(r.to_json()).translator.anchor == "match"
    old = json.loads(r.to_json())
    del old["translator"]["anchor"]                  # a recipe from before anchors
    assert R.Recipe.from_dict(old).translator.anchor == "latent"
    bad = R.Recipe(translator=R.TranslatorSpec("enc", None, anchor="nearest"))
    assert any("translator.anchor" in p for p in R.recipe_problems(bad))


def test_the_default_models_shipped_bank_is_its_own():
    from engine.models import zoo
    from engine.tools import anchors as A

    G = zoo.load("default").G
    bank = A.bank_for(G)
    assert bank.count == A.BANK_SIZE and bank.weights_sha256 == T.weights_sha256(G)
    with torch.no_grad():   # bank seed 5 is found from its own image
        pic = G.synthesis(A.seed_ws(G, [A.FIRST_SEED + 5], psi=1.0))
    top = (A.layouts(pic) @ bank.layouts.T).argmax()
    assert int(top) == 5


# --- the shipped encoders ----------------------------------------------------------------


@pytest.mark.parametrize("folder", ["encoder_b16", "encoder_b8"])
def test_shipped_encoders_load_and_reach_their_psnr(folder):
    from engine.models import zoo

    m = zoo.load("default")
    tr = T.Translator.load(SHIPPED / folder, m.G, model_sha256=m.sha256)
    seeds = [1_000_000 + i for i in range(8)]  # held out: training draws z elsewhere
    assert T.fidelity_psnr(m.G, tr.encoder, seeds) >= 28.0
    meta = tr.encoder.meta
    assert meta["layer"] == folder.split("_")[1] + ".conv1"
    assert meta["training"]["augment"], "the shipped encoders are trained for photos"


# --- one set of defaults (issue 36) ------------------------------------------------------


def _page_translate_controls() -> dict[str, object]:
    """The Translate tab's controls as a new page shows them."""
    import gradio as gr

    from studio.tabs import translate as tab
    from studio.ui import UI

    ui = UI()
    with gr.Blocks():
        tab.layout(ui)
    return {"strength": ui.tr_strength.value, "anchor": ui.tr_anchor.value,
            "framing": ui.tr_framing.value}


def test_page_cli_and_library_give_the_same_picture_with_defaults(tmp_path):
    """The same photo through the page (its controls' starting values, a new session, the
    studio.render's render), the CLI with no options and Translator.translate with no options."""
    from skimage import data

    from engine.__main__ import main
    from engine.models import zoo
    from studio import render, translation
    from studio import session as S
    from studio.session import new_session

    photo = data.chelsea()
    encoder = SHIPPED / "encoder_b16"
    m = zoo.load("default")
    library = T.Translator.load(encoder, m.G, model_sha256=m.sha256).translate(photo)

    Image.fromarray(photo).save(tmp_path / "cat.png")
    assert main(["translate", str(tmp_path / "cat.png"), "--encoder", str(encoder),
                 "--out", str(tmp_path / "cli.png")]) == 0
    cli = np.asarray(Image.open(tmp_path / "cli.png").convert("RGB"))

    sess = new_session("default")
    controls = _page_translate_controls()
    assert controls == {"strength": T.DEFAULTS.strength, "anchor": T.DEFAULTS.anchor,
                        "framing": T.DEFAULTS.framing}
    path, _ = translation.save_input_image(sess, Image.fromarray(photo))
    S.set_translator(sess, str(encoder), path, **controls)
    page = np.asarray(render.render(sess).convert("RGB"))

    assert library.shape == cli.shape == page.shape == (64, 64, 3)
    assert np.array_equal(library, cli) and np.array_equal(library, page)
    # Not trivially equal: the defaults draw the model's content, not the encoder alone.
    encoder_alone = T.Translator.load(encoder, m.G).translate(photo, strength=1.0)
    assert np.abs(library.astype(int) - encoder_alone).mean() > 5


def test_anchors_are_matched_on_colour_and_blended_by_similarity(G):
    """Two pictures with one luminance layout but other colours find other anchors; the
    anchor is the softmax-weighted mean w of the most alike bank images."""
    from engine.tools import anchors as A

    bank = A.build_bank(G, 64, first_seed=200, batch=32)
    grey = torch.linspace(-0.8, 0.8, 32).view(1, 1, 1, 32).expand(1, 3, 32, 32)
    luma = torch.tensor(A._LUMA).view(1, 3, 1, 1)
    tint = torch.tensor([0.6, -0.4, 0.3]).view(1, 3, 1, 1)
    tint = tint - (tint * luma).sum(1, keepdim=True)      # no change in luminance
    red, cyan = (grey + tint).clamp(-1, 1), (grey - tint).clamp(-1, 1)
    pics = torch.cat([red, cyan])
    assert torch.allclose(A.layouts(red), A.layouts(cyan), atol=0.05)
    assert A.similarity(pics, bank).argmax(1).unique().numel() == 2
    score = A.similarity(pics, bank)
    top = score.topk(3, dim=1)
    ws = A.seed_ws(G, (top.indices[0] + 200).tolist())
    weight = torch.softmax(top.values[0] * 10.0, 0)
    expect = (weight[:, None, None] * ws).sum(0)
    got = A.blended_ws(G, pics, bank, count=3, sharpness=10.0)
    assert torch.allclose(got[0], expect, atol=1e-5)
    assert not torch.allclose(got[0], got[1], atol=1e-3)
    # Without colours (an older bank) the luminance layouts decide.
    old = A.AnchorBank(bank.layouts, bank.first_seed, bank.weights_sha256)
    assert torch.equal(A.similarity(pics, old), A.layouts(pics) @ bank.layouts.T)
