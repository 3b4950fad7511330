"""Trainings leave the process alone: no global generator reseeded or advanced, and the
shared generator they train against neither moved, unfrozen nor given gradients."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from engine.base.seeding import build_seeded, global_draws_from
from engine.tools import translator as T
from engine.tools.projector import LatentEncoder, LatentEncoderConfig, train_latent_encoder

TRAIN = dict(batch=2, stat_samples=8, eval_seeds=(), warmup=1, width=8, max_width=16,
             preview_every=0)


def global_states() -> tuple:
    return (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())


def assert_same_states(before: tuple, after: tuple) -> None:
    assert torch.equal(before[0], after[0]), "torch's global generator changed"
    assert np.array_equal(before[1], after[1]), "numpy's global generator changed"
    assert before[2] == after[2], "Python's random changed"


def flags(G: torch.nn.Module) -> tuple:
    params = list(G.parameters())
    return (G.training, str(params[0].device), [p.requires_grad for p in params],
            [p.grad is None for p in params])


@pytest.mark.parametrize("frozen", [True, False], ids=["cached-frozen", "trainable"])
def test_encoder_training_leaves_globals_and_the_shared_generator_alone(tiny_generator, frozen):
    G = tiny_generator()
    if frozen:  # how engine.models.zoo caches every model
        G.requires_grad_(False)
    weights = {k: v.clone() for k, v in G.state_dict().items()}
    before_flags = flags(G)
    torch.manual_seed(1234)  # some state of the process's own
    before = global_states()
    first = T.train_encoder(G, steps=2, seed=3, **TRAIN)
    assert_same_states(before, global_states())
    assert flags(G) == before_flags
    assert all(torch.equal(v, weights[k]) for k, v in G.state_dict().items())
    # The result depends on the seed only, not on what the global generators hold.
    torch.manual_seed(999)
    np.random.seed(5)
    again = T.train_encoder(G, steps=2, seed=3, **TRAIN)
    for k, v in first.encoder.state_dict().items():
        assert torch.equal(v, again.encoder.state_dict()[k]), k
    other = T.train_encoder(G, steps=2, seed=4, **TRAIN)
    assert not torch.equal(other.encoder.head.weight, first.encoder.head.weight)


def test_latent_encoder_training_leaves_globals_alone(tiny_generator, tmp_path):
    G = tiny_generator().requires_grad_(False)
    before_flags = flags(G)
    before = global_states()
    a = train_latent_encoder(G, steps=2, batch=2, out_dir=tmp_path / "a", seed=7, channels=4)
    assert_same_states(before, global_states())
    assert flags(G) == before_flags
    torch.manual_seed(42)
    b = train_latent_encoder(G, steps=2, batch=2, out_dir=tmp_path / "b", seed=7, channels=4)
    from safetensors.torch import load_file

    sa, sb = load_file(str(a)), load_file(str(b))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_build_seeded_is_torchs_default_initialisation_from_a_private_generator():
    """Same layer order, same draws: a generator seeded s gives exactly the weights that
    torch.manual_seed(s) and an ordinary construction give, without touching the latter."""
    def make() -> torch.nn.Module:
        return torch.nn.Sequential(
            LatentEncoder(LatentEncoderConfig(resolution=16, channels=8)),
            torch.nn.GroupNorm(2, 4), torch.nn.Linear(4, 3))

    before = torch.get_rng_state()
    mine = build_seeded(make, torch.Generator().manual_seed(5))
    assert torch.equal(before, torch.get_rng_state())
    torch.manual_seed(5)
    theirs = make()
    assert not mine[0].head[3].weight.any()  # the module's own zero head is kept
    for (name, a), b in zip(mine.state_dict().items(), theirs.state_dict().values(),
                            strict=True):
        assert torch.equal(a, b), name
    with pytest.raises(TypeError, match="Embedding"):
        build_seeded(lambda: torch.nn.Embedding(3, 2), torch.Generator())


def test_the_random_seed_button_ignores_global_seeding():
    """After any code seeds Python's global generator, the button's seeds still differ."""
    from studio.app import draw_seed

    draws = []
    for _ in range(4):
        random.seed(0)
        draws.append(draw_seed())
    assert len(set(draws)) > 1  # 4 equal draws from 100000 values: chance 1e-15
    state = random.getstate()
    draw_seed()
    assert random.getstate() == state


def test_global_draws_from_restores_the_global_generator(tiny_generator):
    from engine.gan.stylegan2 import Generator

    cfg = tiny_generator().cfg
    torch.manual_seed(77)
    before = global_states()
    with global_draws_from(5):
        a = Generator(cfg)
    assert_same_states(before, global_states())
    with global_draws_from(5):
        b = Generator(cfg)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(),
                                                 b.state_dict().values(), strict=True))
