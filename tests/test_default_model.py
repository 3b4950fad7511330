"""The embedded default model: it loads offline, renders deterministically, and is trained.

"Trained" is checked against the procedural training distribution with the sliced
Wasserstein distance on Laplacian patches: the shipped model must sit much closer to a
second draw of real faces (the floor) than a random-weight generator of the same shape does.
"""

import numpy as np
import torch

from engine.base.metrics import swd
from engine.gan.stylegan2 import Generator
from engine.models import zoo
from engine.training.faces import render_faces

COUNT = 256  # images per set: enough to separate trained from random by a wide margin


def _render(G: Generator, seeds: range) -> np.ndarray:
    with torch.no_grad():
        z = torch.cat([G.seed_to_z(s) for s in seeds])
        img = G(z)
    return ((img.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def test_default_model_loads_offline_and_is_deterministic(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = zoo.load("default", device="cpu")
    G = model.G
    assert model.resolution == 64 and G.cfg.z_dim == 128
    a = _render(G, range(4))
    b = _render(G, range(4))
    assert np.array_equal(a, b)
    assert a.std() > 20  # real pictures, not a flat colour
    assert not np.array_equal(a[0], a[1])


def test_default_model_is_close_to_its_training_distribution():
    G = zoo.load("default", device="cpu").G
    reals = render_faces(range(10_000_000, 10_000_000 + COUNT), 64)
    reals2 = render_faces(range(20_000_000, 20_000_000 + COUNT), 64)
    fakes = _render(G, range(COUNT))
    torch.manual_seed(0)
    randoms = _render(Generator(G.cfg).eval(), range(COUNT))
    floor = swd(reals, reals2)["mean"]
    shipped = swd(reals, fakes)["mean"]
    random = swd(reals, randoms)["mean"]
    # Much closer to the floor than to the random generator: within a third of the way.
    assert shipped - floor < (random - floor) / 3, (floor, shipped, random)
