"""The match anchor fitted to the picture (engine/tools/translate_match.py, issue 36): it
stays one of the model's samples, moves towards the picture's colours, and gives photos of other
colours translations of other colours with the defaults everyone uses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from engine.tools import translate_match as M
from engine.tools import translator as T

SHIPPED = Path(__file__).resolve().parents[1] / "engine" / "models" / "default_model"


@pytest.fixture(scope="module")
def G():
    from conftest import make_tiny_generator

    return make_tiny_generator()


@pytest.fixture(scope="module")
def default_translator():
    from engine.models import zoo

    m = zoo.load("default")
    return T.Translator.load(SHIPPED / "encoder_b16", m.G, model_sha256=m.sha256)


def _bank(G):
    from engine.tools import anchors as A

    return A.build_bank(G, 32, first_seed=300, batch=32)


def test_fit_brings_the_render_nearer_the_pictures_colours_and_stays_a_sample(G):
    from engine.tools import anchors as A

    bank = _bank(G)
    pics = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3)) * 2 - 1
    pics[0, 0] += 0.8                                    # a red one and a blue one
    pics[1, 2] += 0.8
    pics = pics.clamp(-1, 1)
    ws = A.seed_ws(G, [7, 8], psi=1.0)
    with torch.no_grad():
        def loss(anchor):
            return M.coarse_loss(G.synthesis(A.with_latent(G, anchor, ws)), pics)

        start = M.fit_anchor_ws(G, pics, ws, 0, bank)
        fitted = M.fit_anchor_ws(G, pics, ws, 15, bank)
        assert (loss(fitted) < 0.9 * loss(start)).all()
        # Zero steps: the bank's most alike image itself, at psi 1.
        best = A.similarity(pics, bank).argmax(1) + bank.first_seed
        assert torch.allclose(start, A.seed_ws(G, best.tolist(), psi=1.0))
        # Every layer reads one w, and that w is the mapping network's output: a sample.
        assert torch.allclose(fitted, fitted[:, :1].expand_as(fitted))
        assert not torch.allclose(fitted, start, atol=1e-4)
    # Deterministic: the page, the CLI and the library get the same anchor.
    assert torch.equal(fitted, M.fit_anchor_ws(G, pics, ws, 15, bank))


def test_fit_runs_inside_inference_mode_and_on_larger_models_stops_early(G, monkeypatch):
    from engine.tools import anchors as A

    bank = _bank(G)
    pics = torch.zeros(1, 3, 32, 32)
    with torch.inference_mode():                 # as translate_tensor calls it
        out = M.fit_anchor_ws(G, pics, A.seed_ws(G, [1]), 2, bank)
    assert out.shape == (1, G.num_ws, G.cfg.w_dim)
    assert M._fit_stop(G) is None
    monkeypatch.setattr(M, "FIT_MAX_RES", 16)
    assert M._fit_stop(G) == "b16"
    with torch.inference_mode():
        assert M.fit_anchor_ws(G, pics, A.seed_ws(G, [1]), 2, bank).shape == out.shape


def _tinted(red: bool) -> np.ndarray:
    """A photo-like picture (a bright disc on a dark ground) tinted red or blue, with the
    same luminance layout either way."""
    yy, xx = np.mgrid[:96, :96]
    disc = ((yy - 40) ** 2 + (xx - 48) ** 2 < 30 ** 2).astype(np.float32)
    grey = 60 + 120 * disc
    tint = np.array([70.0, -20.0, -50.0]) if red else np.array([-50.0, -10.0, 80.0])
    tint -= tint @ np.array([0.299, 0.587, 0.114])       # no change in luminance
    return np.clip(grey[..., None] + tint, 0, 255).astype(np.uint8)


def test_photos_of_other_colours_give_translations_of_other_colours(default_translator):
    """With the defaults (the fitted anchor), a red photo's translation is much redder
    than a blue photo's (mean R - B: about 160 apart; the bank's anchor alone: 80), and
    each one's mean colour lies near its photo's (about 25 and 40 of 255 away; the bank's
    anchor alone: 64 and 89, both pinkish)."""
    tr = default_translator
    red, blue = _tinted(True), _tinted(False)
    out = tr.translate([red, blue], 0)
    mean = out.astype(float).mean((1, 2))
    warmth = mean[:, 0] - mean[:, 2]
    assert warmth[0] - warmth[1] > 120, warmth
    photo_mean = np.stack([red, blue]).astype(float).mean((1, 2))
    assert (np.linalg.norm(mean - photo_mean, axis=1) < 50).all(), (mean, photo_mean)
    # Each keeps its photo's layout: the disc is brighter than the ground in both.
    luma = out.astype(float) @ np.array([0.299, 0.587, 0.114])
    yy, xx = np.mgrid[:64, :64]
    disc = (yy - 27) ** 2 + (xx - 32) ** 2 < 18 ** 2
    assert (luma[:, disc].mean(1) > luma[:, ~disc].mean(1)).all()


def test_defaults_fit_the_anchor_and_differ_from_the_bank_alone(default_translator):
    from skimage import data

    tr = default_translator
    assert T.DEFAULTS.anchor == "match" and T.DEFAULTS.fit_steps > 0
    photo = data.coffee()
    fitted = tr.translate(photo, 0)
    assert np.array_equal(fitted, tr.translate(photo, 0, fit_steps=T.DEFAULTS.fit_steps))
    bank_alone = tr.translate(photo, 0, fit_steps=0)
    assert np.abs(fitted.astype(int) - bank_alone).mean() > 3


def test_defaults_translate_the_models_own_images_at_28_db(default_translator):
    """The model's own images (held-out seeds) through the defaults come back at >= 28 dB
    PSNR: the fit finds their own latents (bench_translator's 64 seeds: 29.3 dB; the bank's
    anchor alone: 23.5 dB)."""
    from engine.tools.latents import seed_to_z

    tr = default_translator
    G = tr.G
    z = torch.cat([seed_to_z(s, G.cfg.z_dim) for s in range(1_000_000, 1_000_008)])
    with torch.no_grad():
        ws = G.mapping(z, None)
        img = G.synthesis(ws)
    out = tr.translate_tensor(img, ws)     # every default: strength, anchor, fit
    assert float(T.psnr(out, img).mean()) >= 28.0
