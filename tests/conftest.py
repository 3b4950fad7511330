"""Shared fixtures: tiny random generators that run in milliseconds on CPU."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
import torch
from hypothesis import settings

from engine.gan.stylegan2 import Generator, GeneratorConfig
from tests.helpers.nvlabs_pickles import nvlabs_modules  # noqa: F401  (a fixture for every file)

# The suite compares renders bit for bit with CPU renders, so it runs on the CPU even where
# CUDA exists (STUDIO_DEVICE=cuda runs it there); tests about devices name theirs
# (tests/test_gpu.py).
os.environ.setdefault("STUDIO_DEVICE", "cpu")

# Hypothesis draws its examples from a fixed seed: a failure shows up on every run and every
# machine, not once in a while (HYPOTHESIS_PROFILE=explore draws new examples each run).
settings.register_profile("studio", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "studio"))

TINY_CONFIG = dict(z_dim=32, w_dim=32, resolution=32, channel_base=1024, channel_max=32,
                   mapping_layers=2)


def make_tiny_generator(seed: int = 0, **overrides) -> Generator:
    """A 32 px random Generator in eval mode; `overrides` change GeneratorConfig fields.

    Every weight is random, including the ones NVlabs initialises to constants (noise
    strengths, biases, w_avg), so a test notices when any tensor is lost or misplaced.
    """
    torch.manual_seed(seed)
    G = Generator(GeneratorConfig(**{**TINY_CONFIG, **overrides})).eval()
    with torch.no_grad():
        for name, p in G.named_parameters():
            if name.endswith("noise_strength"):
                p.uniform_(0.1, 0.5)
            elif name.endswith(".bias"):
                p.normal_(1.0 if ".affine." in name else 0.0, 0.2)
        G.mapping.w_avg.normal_()
    return G


@pytest.fixture
def tiny_generator() -> Callable[..., Generator]:
    """Factory: `tiny_generator(seed=0, architecture='resnet', conv_clamp=256, ...)`."""
    return make_tiny_generator


TINY_SG3 = dict(z_dim=16, w_dim=16, resolution=16, channel_base=512, channel_max=16,
                num_layers=6, num_critical=2, margin_size=4)


def make_tiny_stylegan3(preset: str = "stylegan3-t", seed: int = 0, **overrides):
    """A 16 px random StyleGAN3 generator (eval mode) with every tensor random, including
    the ones NVlabs initialises to constants (biases, magnitude EMAs, the input affine)."""
    from engine.gan.stylegan3 import Generator as SG3Generator
    from engine.gan.stylegan3 import StyleGAN3Config

    torch.manual_seed(seed)
    G = SG3Generator(StyleGAN3Config.preset(preset, **{**TINY_SG3, **overrides})).eval()
    with torch.no_grad():
        for name, p in G.named_parameters():
            if name.endswith(".bias"):
                p.normal_(1.0 if ".affine." in name else 0.0, 0.2)
        G.synthesis.input.affine.weight.normal_(0.0, 0.5)
        for name, b in G.named_buffers():
            if name.endswith("magnitude_ema"):
                b.uniform_(0.5, 2.0)
        G.mapping.w_avg.normal_()
    return G
